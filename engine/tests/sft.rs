//! SFT end to end on a tiny model: it overfits, resumes exactly, and bad
//! input stops it with a message naming the key or line.

mod common;

use std::path::{Path, PathBuf};

use igpo::backend::Cpu;
use igpo::model::init::{random_weights, write_model_dir};
use igpo::model::{Arch, ModelConfig};
use igpo::tensor::DType;
use igpo::train::{run_sft, SftConfig, SftRunOptions};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("igpo-sft-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A tiny random Qwen2 with the real Qwen2.5 tokenizer.
fn tiny_model(dir: &Path) {
    let tok = common::shared_data().join("qwen2.5-tokenizer.json");
    let config = ModelConfig {
        arch: Arch::Qwen2,
        vocab_size: 151936,
        hidden_size: 32,
        intermediate_size: 64,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-6,
        rope_theta: 1e6,
        max_position_embeddings: 512,
        tie_word_embeddings: true,
        attention_bias: true,
        bos_token_id: None,
        eos_token_ids: vec![151645],
    };
    write_model_dir(
        dir,
        &config,
        &random_weights(&config, 7),
        DType::F32,
        Some(&tok),
    )
    .unwrap();
}

const TRANSCRIPTS: &str = r#"{"messages":[{"role":"user","content":"Capital of France?"},{"role":"assistant","content":"Paris."}]}
{"messages":[{"role":"user","content":"Capital of Italy?"},{"role":"assistant","content":"Rome."}]}
{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"2+2?"},{"role":"assistant","content":"4"}]}
{"messages":[{"role":"user","content":"Color of the sky?"},{"role":"assistant","content":"Blue."}]}
"#;

fn write_run(dir: &Path, extra: &str, data: &str) -> PathBuf {
    std::fs::write(dir.join("train.jsonl"), data).unwrap();
    let cfg = format!(
        "model = \"model\"\n{extra}\n[data]\ntrain = \"train.jsonl\"\nmax_seq_len = 64\n\n\
         [train]\nrun_dir = \"run\"\nsteps = 6\nmicro_batch = 2\ngrad_accum = 2\ncheckpoint_every = 2\nkeep_last = 5\nlogprob_chunk = 20000\n\n\
         [optim]\nlr = 0.01\nweight_decay = 0.0\n"
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

fn run(path: &Path, opts: &SftRunOptions) -> igpo::train::SftOutcome {
    let cfg = SftConfig::load(path).unwrap();
    run_sft(Cpu, &cfg, &std::fs::read_to_string(path).unwrap(), opts).unwrap()
}

#[test]
fn sft_overfits_a_tiny_task() {
    let dir = scratch("overfit");
    tiny_model(&dir.join("model"));
    let path = write_run(&dir, "", TRANSCRIPTS);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("steps = 6", "steps = 60")
        .replace("grad_accum = 2", "grad_accum = 1");
    // Also exercises activation recomputation from the run file.
    let text = text.replace(
        "logprob_chunk = 20000",
        "logprob_chunk = 20000\nrecompute_activations = true",
    );
    std::fs::write(&path, text.replace("micro_batch = 2", "micro_batch = 4")).unwrap();
    let out = run(&path, &SftRunOptions::default());
    let (first, last) = (out.metrics[0].loss, out.metrics.last().unwrap().loss);
    eprintln!(
        "loss {first:.4} -> {last:.4} in {} steps",
        out.metrics.len()
    );
    assert!(
        last * 10.0 < first,
        "loss should fall 10x: {first} -> {last}"
    );
    let lines = std::fs::read_to_string(dir.join("run/metrics.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(lines, 60, "one metrics line per step");
    assert!(dir.join("run/config.toml").exists());
    // The final checkpoint is a model folder that loads.
    let ckpt = out.final_checkpoint.unwrap();
    igpo::model::load(&ckpt, igpo::backend::Cpu).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_is_exact() {
    let dir = scratch("resume");
    tiny_model(&dir.join("model"));
    // Straight: 6 steps.
    let straight = dir.join("straight");
    std::fs::create_dir_all(&straight).unwrap();
    std::fs::create_dir_all(straight.join("model")).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(dir.join("model").join(f), straight.join("model").join(f)).unwrap();
    }
    let a = run(
        &write_run(&straight, "", TRANSCRIPTS),
        &SftRunOptions::default(),
    );
    // Interrupted after step 3 (between checkpoints 2 and 4), then resumed.
    let b_path = write_run(&dir, "", TRANSCRIPTS);
    let first = run(
        &b_path,
        &SftRunOptions {
            resume: false,
            stop_after: Some(3),
        },
    );
    assert_eq!(first.metrics.len(), 3);
    // A half-written checkpoint must never be picked.
    std::fs::create_dir_all(dir.join("run/checkpoints/step-99")).unwrap();
    std::fs::write(dir.join("run/checkpoints/step-99/config.json"), "{}").unwrap();
    let b = run(
        &b_path,
        &SftRunOptions {
            resume: true,
            stop_after: None,
        },
    );
    let la: Vec<f64> = a.metrics.iter().map(|m| m.loss).collect();
    let lb: Vec<f64> = b.metrics.iter().map(|m| m.loss).collect();
    assert_eq!(la, lb, "losses of the straight and the resumed run");
    let wa = std::fs::read(straight.join("run/checkpoints/step-6/model.safetensors")).unwrap();
    let wb = std::fs::read(dir.join("run/checkpoints/step-6/model.safetensors")).unwrap();
    assert!(
        wa == wb,
        "final weights differ between straight and resumed runs"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn load_err(dir: &Path, extra: &str) -> String {
    let path = write_run(dir, extra, TRANSCRIPTS);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text = text.replace("\n[data]", &format!("{extra}\n[data]"));
    std::fs::write(&path, text).unwrap();
    SftConfig::load(&path)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
}

#[test]
fn bad_config_names_the_key() {
    let dir = scratch("badcfg");
    let path = write_run(&dir, "", TRANSCRIPTS);
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replace("steps = 6", "steps = 6\nstpes = 7")).unwrap();
    let e = SftConfig::load(&path).unwrap_err().to_string();
    assert!(e.contains("stpes") && e.contains("run.toml"), "{e}");
    std::fs::write(&path, good.replace("steps = 6", "steps = \"six\"")).unwrap();
    let e = SftConfig::load(&path).unwrap_err().to_string();
    assert!(e.contains("invalid type") && e.contains("run.toml"), "{e}");
    let _ = load_err;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_transcript_line_stops_before_training_or_is_skipped() {
    let dir = scratch("badline");
    tiny_model(&dir.join("model"));
    let data = format!("{TRANSCRIPTS}{{\"messages\": [oops\n");
    let path = write_run(&dir, "", &data);
    let cfg = SftConfig::load(&path).unwrap();
    let e = run_sft(Cpu, &cfg, "", &SftRunOptions::default())
        .err()
        .expect("must fail")
        .to_string();
    assert!(e.contains("train.jsonl:5"), "{e}");
    assert!(
        !dir.join("run/metrics.jsonl").exists(),
        "no training happened"
    );
    std::fs::write(
        &path,
        std::fs::read_to_string(&path).unwrap().replace(
            "max_seq_len = 64",
            "max_seq_len = 64\nskip_bad_lines = true",
        ),
    )
    .unwrap();
    let cfg = SftConfig::load(&path).unwrap();
    let out = run_sft(
        Cpu,
        &cfg,
        "",
        &SftRunOptions {
            resume: false,
            stop_after: Some(1),
        },
    )
    .unwrap();
    assert_eq!(out.skipped_lines, 1);
    let _ = std::fs::remove_dir_all(&dir);
}
