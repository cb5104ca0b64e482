//! SFT end to end on a tiny model: it overfits, resumes exactly, and bad
//! input stops it with a message naming the key or line.

mod common;

use std::path::{Path, PathBuf};

use igpo::backend::Cpu;
use igpo::model::init::{random_weights, write_model_dir};
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
    let tok = common::data_dir().join("qwen2.5-tokenizer.json");
    let config = common::tiny_qwen2(512);
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
    // The final checkpoint: `model/` is a bf16 Hugging Face folder with the
    // base model's tokenizer; the checkpoint itself loads as a model (its f32
    // master weights, which `model/` holds rounded to bf16).
    let ckpt = out.final_checkpoint.unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("model/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    assert_eq!(
        igpo::model::stored_dtype(&ckpt.join("model")).unwrap(),
        igpo::tensor::DType::BF16
    );
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(ckpt.join("model").join(f).is_file(), "model/{f} missing");
    }
    let master = igpo::model::load(&ckpt, igpo::backend::Cpu).unwrap();
    let bf16 = igpo::model::load(&ckpt.join("model"), igpo::backend::Cpu).unwrap();
    let (m, b) = (master.to_tensor_map(), bf16.to_tensor_map());
    let name = "model.layers.0.mlp.down_proj.weight";
    let (m, b) = (m[name].data(), b[name].data());
    assert!(
        m.iter().any(|x| half::bf16::from_f32(*x).to_f32() != *x),
        "master is f32"
    );
    assert!(m
        .iter()
        .zip(b)
        .all(|(x, y)| half::bf16::from_f32(*x).to_f32() == *y));
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
    std::fs::create_dir_all(dir.join("run/checkpoints/step-99/model")).unwrap();
    std::fs::create_dir_all(dir.join("run/checkpoints/step-99/state")).unwrap();
    std::fs::write(dir.join("run/checkpoints/step-99/model/config.json"), "{}").unwrap();
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
    for file in [
        "state/master.safetensors",
        "state/optimizer.safetensors",
        "model/model.safetensors",
    ] {
        let wa = std::fs::read(straight.join("run/checkpoints/step-6").join(file)).unwrap();
        let wb = std::fs::read(dir.join("run/checkpoints/step-6").join(file)).unwrap();
        assert!(wa == wb, "{file} differs between straight and resumed runs");
    }
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

/// The exported bf16 model folder of a short SFT run loads in transformers
/// as it is (dtype from `config.json`, tokenizer, generation config), and
/// transformers' logits on it equal igpo's on the same folder to float
/// rounding, and igpo's on the f32 checkpoint within bf16 tolerance.
#[test]
fn exported_checkpoint_loads_in_transformers_with_the_same_logits() {
    let Some(python) = common::python("exported_checkpoint_loads_in_transformers") else {
        return;
    };
    let dir = scratch("export-hf");
    tiny_model(&dir.join("model"));
    let path = write_run(&dir, "", TRANSCRIPTS);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("steps = 6", "steps = 2");
    std::fs::write(&path, text).unwrap();
    let ckpt = run(&path, &SftRunOptions::default())
        .final_checkpoint
        .unwrap();
    let out = dir.join("exported");
    let (code, _, err) = common::igpo(&[
        "model",
        "export",
        ckpt.to_str().unwrap(),
        out.to_str().unwrap(),
        "--dtype",
        "bf16",
    ]);
    assert_eq!(code, 0, "{err}");

    let text = "The capital of France is Paris.";
    let tok = igpo::tokenizer::Tokenizer::load_dir(&out).unwrap();
    let ids = tok.encode(text).unwrap();
    let logits_of = |model_dir: &Path| {
        let model = igpo::model::load(model_dir, igpo::backend::Cpu).unwrap();
        let mut cache = model.new_cache();
        model.forward(
            &mut [igpo::model::SeqStep {
                tokens: &ids,
                positions: None,
                cache: &mut cache,
            }],
            igpo::model::LogitRows::All,
        )
    };
    let ours = logits_of(&out);
    let master = logits_of(&ckpt);
    let ids_arg = ids
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let py = std::process::Command::new(&python)
        .arg(common::workspace().join("tools/reference/hf_load_logits.py"))
        .arg(&out)
        .args(["--ids", &ids_arg, "--text", text])
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "transformers could not load {}: {}",
        out.display(),
        String::from_utf8_lossy(&py.stderr)
    );
    let hf: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap();
    assert_eq!(hf["dtype"], "bfloat16", "transformers loaded another dtype");
    assert_eq!(hf["class"], "Qwen2ForCausalLM");
    assert_eq!(hf["eos_token_id"], 151645);
    let hf_ids: Vec<u32> = serde_json::from_value(hf["text_ids"].clone()).unwrap();
    assert_eq!(
        hf_ids, ids,
        "AutoTokenizer on the export tokenizes differently"
    );
    let (mut same_weights, mut vs_master) = (0f32, 0f32);
    for (r, row) in hf["logits"].as_array().unwrap().iter().enumerate() {
        let row: Vec<f32> = serde_json::from_value(row.clone()).unwrap();
        for (v, h) in row.iter().enumerate() {
            same_weights = same_weights.max((ours.row(r)[v] - h).abs());
            vs_master = vs_master.max((master.row(r)[v] - h).abs());
        }
    }
    eprintln!(
        "max |logit diff| vs transformers: igpo on the export {same_weights:.2e}, \
         igpo on the f32 checkpoint {vs_master:.2e}"
    );
    assert!(same_weights < 1e-4, "same bf16 weights: {same_weights}");
    assert!(
        vs_master < 5e-2,
        "f32 master vs its bf16 export: {vs_master}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--resume` on a run folder that holds only a checkpoint of the layout
/// before `model/` + `state/` stops with one error naming it, instead of
/// starting over and overwriting the run's metrics.
#[test]
fn resume_refuses_an_old_layout_checkpoint() {
    let dir = scratch("old-layout");
    tiny_model(&dir.join("model"));
    let path = write_run(&dir, "", TRANSCRIPTS);
    let old = dir.join("run/checkpoints/step-4");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("trainer_state.json"), "{}").unwrap();
    std::fs::write(dir.join("run/metrics.jsonl"), "{\"step\": 1}\n").unwrap();
    let cfg = SftConfig::load(&path).unwrap();
    let err = run_sft(
        Cpu,
        &cfg,
        &std::fs::read_to_string(&path).unwrap(),
        &SftRunOptions {
            resume: true,
            stop_after: None,
        },
    )
    .err()
    .expect("resume from an old-layout checkpoint must fail")
    .to_string();
    assert!(
        err.contains("step-4") && err.contains("old layout"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap(),
        "{\"step\": 1}\n",
        "the run's metrics were touched"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
