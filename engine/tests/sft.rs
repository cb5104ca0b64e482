//! SFT end to end on a tiny model: it overfits, resumes exactly, and bad
//! input stops it with a message naming the key or line.

use crate::common;

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

/// The committed record of transformers loading an igpo export
/// (`tools/reference/hf_load_logits.py`, which needs torch; the suite does not).
const EXPORT_FIXTURE: &str = "tests/fixtures/hf/export-bf16.json";
const EXPORT_TEXT: &str = "The capital of France is Paris.";

/// `igpo model export DIR OUT --dtype bf16`, which must succeed.
fn export_bf16(src: &Path, out: &Path) {
    let (code, _, err) = common::igpo(&[
        "model",
        "export",
        src.to_str().unwrap(),
        out.to_str().unwrap(),
        "--dtype",
        "bf16",
    ]);
    assert_eq!(code, 0, "{err}");
}

/// igpo's f32 logits of `ids` on a model folder.
fn logits_of(model_dir: &Path, ids: &[u32]) -> igpo::tensor::Tensor {
    let model = igpo::model::load(model_dir, igpo::backend::Cpu).unwrap();
    let mut cache = model.new_cache();
    model.forward(
        &mut [igpo::model::SeqStep {
            tokens: ids,
            positions: None,
            cache: &mut cache,
        }],
        igpo::model::LogitRows::All,
    )
}

/// The committed fixture, or why it cannot be read.
fn export_fixture() -> Result<serde_json::Value, String> {
    let path = common::workspace().join(EXPORT_FIXTURE);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The sha256 of every file of a folder, by name.
fn file_hashes(dir: &Path) -> std::collections::BTreeMap<String, String> {
    use sha2::{Digest, Sha256};
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let bytes = std::fs::read(e.path()).unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                format!("{:x}", Sha256::digest(&bytes)),
            )
        })
        .collect()
}

/// The bf16 export of the tiny model is, byte for byte, the folder
/// transformers loaded when the fixture was recorded: there it loaded as
/// bf16 `Qwen2ForCausalLM` with eos 151645, AutoTokenizer gave igpo's ids,
/// and its logits (every 997th vocab id and each row's logsumexp) equal
/// igpo's on the same folder to float rounding.
#[test]
fn export_is_the_folder_transformers_loaded_with_the_same_logits() {
    let dir = scratch("export-hf");
    tiny_model(&dir.join("model"));
    let out = dir.join("exported");
    export_bf16(&dir.join("model"), &out);
    let record = format!(
        "re-record it if the change is meant (torch: tools/reference/requirements-torch.txt): \
         python tools/reference/hf_load_logits.py {} --text {EXPORT_TEXT:?} --fixture {EXPORT_FIXTURE}",
        out.display()
    );
    let fx = export_fixture().unwrap_or_else(|e| panic!("{e}; {record}"));
    let recorded: std::collections::BTreeMap<String, String> =
        serde_json::from_value(fx["files_sha256"].clone()).unwrap();
    assert_eq!(
        file_hashes(&out),
        recorded,
        "the export's bytes are not those transformers loaded for {EXPORT_FIXTURE}; {record}"
    );
    assert_eq!(fx["dtype"], "bfloat16", "transformers loaded another dtype");
    assert_eq!(fx["class"], "Qwen2ForCausalLM");
    assert_eq!(fx["eos_token_id"], 151645);
    assert_eq!(fx["text"], EXPORT_TEXT);

    let ids = igpo::tokenizer::Tokenizer::load_dir(&out)
        .unwrap()
        .encode(EXPORT_TEXT)
        .unwrap();
    let hf_ids: Vec<u32> = serde_json::from_value(fx["ids"].clone()).unwrap();
    assert_eq!(
        hf_ids, ids,
        "AutoTokenizer on the export tokenizes differently"
    );
    let ours = logits_of(&out, &ids);
    let probe_ids: Vec<usize> = serde_json::from_value(fx["probe_ids"].clone()).unwrap();
    let rows = fx["rows"].as_array().unwrap();
    assert_eq!(rows.len(), ids.len());
    let mut worst = 0f64;
    for (r, row) in rows.iter().enumerate() {
        let probe: Vec<f64> = serde_json::from_value(row["probe"].clone()).unwrap();
        for (&v, h) in probe_ids.iter().zip(&probe) {
            worst = worst.max((f64::from(ours.row(r)[v]) - h).abs());
        }
        let ours_lse = common::logsumexp(ours.row(r));
        worst = worst.max((ours_lse - row["lse"].as_f64().unwrap()).abs());
    }
    eprintln!("max |logit diff| vs transformers on the export: {worst:.2e}");
    assert!(worst < 1e-4, "same bf16 weights: {worst}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A short SFT run's checkpoint exports to bf16 in the format of the
/// folder transformers loaded above (the same files), and the export's
/// logits stay within bf16 rounding of the f32 checkpoint's.
#[test]
fn sft_checkpoint_exports_to_bf16_near_its_f32_master() {
    let dir = scratch("export-sft");
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
    export_bf16(&ckpt, &out);
    let fx = export_fixture().unwrap();
    let names: Vec<&String> = fx["files_sha256"].as_object().unwrap().keys().collect();
    let hashes = file_hashes(&out);
    assert_eq!(hashes.keys().collect::<Vec<_>>(), names);

    let ids = igpo::tokenizer::Tokenizer::load_dir(&out)
        .unwrap()
        .encode(EXPORT_TEXT)
        .unwrap();
    let (export, master) = (logits_of(&out, &ids), logits_of(&ckpt, &ids));
    let vs_master = (0..ids.len())
        .flat_map(|r| {
            let (e, m) = (export.row(r).to_vec(), master.row(r).to_vec());
            e.into_iter().zip(m).map(|(a, b)| (a - b).abs())
        })
        .fold(0f32, f32::max);
    eprintln!("max |logit diff| of the bf16 export vs its f32 checkpoint: {vs_master:.2e}");
    assert!(vs_master > 0.0, "the export should round to bf16");
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
