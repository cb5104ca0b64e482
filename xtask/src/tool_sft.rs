//! The tool-calling SmolLM2 of the rollout tests: a short SFT, made once per hash of its inputs.

use std::path::PathBuf;
use std::process::Command;

use crate::smollm2::SMOLLM2_SHA256;
use crate::{cargo, root, run, target, Result};

/// The tool-call SFT that makes SmolLM2 follow the agent's protocol for the
/// rollout tests (the base model never calls a tool). Small on purpose: it
/// runs on every clean CI machine. `{model}`, `{train}` and `{run_dir}` are
/// filled in with absolute paths.
const TOOL_SFT_CONFIG: &str = r#"# Written by `cargo xtask test` (xtask/src/tool_sft.rs, TOOL_SFT_CONFIG).
model = {model}

[data]
train = {train}
max_seq_len = 1024

[train]
run_dir = {run_dir}
steps = 8
micro_batch = 1
checkpoint_every = 0
keep_last = 1

[optim]
lr = 3e-4
weight_decay = 0.0

[schedule]
warmup_steps = 1
kind = "cosine"
min_lr_ratio = 0.1
"#;
/// Transcripts written by tools/make_tool_sft.py (one per SFT step).
const TOOL_SFT_TRANSCRIPTS: usize = 8;
/// The bm25-search config of the transcripts; engine/tests/rollout.rs uses
/// the same.
const TOOL_SFT_TOOL_CONFIG: &str = r#"{"k": 2, "max_chars": 300}"#;
/// Engine sources whose change can change the tuned model (corpus, plugin
/// host, system prompt, tokenizer, model, training); other edits reuse it.
const TOOL_SFT_SOURCES: &[&str] = &[
    "Cargo.lock",
    "engine/Cargo.toml",
    "engine/src/backend",
    "engine/src/data",
    "engine/src/model",
    "engine/src/plugins",
    "engine/src/rng.rs",
    "engine/src/rollout/protocol.rs",
    "engine/src/tensor",
    "engine/src/tokenizer",
    "engine/src/train/checkpoint.rs",
    "engine/src/train/mod.rs",
    "engine/src/train/optim.rs",
    "engine/src/train/sft.rs",
    "engine/src/train/sft_data.rs",
    "engine/src/cli/plugin_cmd.rs",
    "engine/src/cli/train_cmd.rs",
];

/// Every file under `path` (or `path` itself), sorted.
fn files_under(path: &std::path::Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            files_under(&e, out)?;
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

/// SHA-256 over everything the tool-SFT model is made from: the script, the
/// data, the SFT settings, the base model (its GGUF's hash; the importer is
/// in the hashed sources), the bm25-search component and the engine sources
/// in `TOOL_SFT_SOURCES`.
fn tool_sft_key(plugins: &std::path::Path, data: &std::path::Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut files = vec![
        root().join("tools/make_tool_sft.py"),
        data.join("squad-dev-v1.1.json"),
        data.join("wiki-summaries-en.json"),
        plugins.join("bm25-search.wasm"),
    ];
    for p in TOOL_SFT_SOURCES {
        files_under(&root().join(p), &mut files)?;
    }
    let mut h = Sha256::new();
    for part in [
        TOOL_SFT_CONFIG,
        &TOOL_SFT_TRANSCRIPTS.to_string(),
        TOOL_SFT_TOOL_CONFIG,
        SMOLLM2_SHA256,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    for f in &files {
        let bytes = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let name = f.strip_prefix(root()).unwrap_or(f).to_string_lossy();
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// SmolLM2 after a short tool-call SFT, under
/// `target/models/smollm2-tool-sft-KEY` (KEY: [`tool_sft_key`]); made once
/// per key: corpus (`igpo data corpus`) -> transcripts with real bm25-search
/// results (tools/make_tool_sft.py) -> `igpo sft`.
pub(crate) fn smollm2_tool_dir(
    base: &std::path::Path,
    plugins: &std::path::Path,
    data: &std::path::Path,
) -> Result<PathBuf> {
    let start = std::time::Instant::now();
    let key = tool_sft_key(plugins, data)?;
    let models = target().join("models");
    let name = format!("smollm2-tool-sft-{key}");
    let dir = models.join(&name);
    if dir.join("model.safetensors").exists() && dir.join("tokenizer.json").exists() {
        eprintln!("xtask: tool-SFT SmolLM2 cached in {}", dir.display());
        return Ok(dir);
    }
    let path_str = |p: &std::path::Path| serde_json::Value::String(p.display().to_string());
    // The dev-profile binary (`cargo test` builds the same one, with the
    // same features).
    run(cargo()
        .args(["build", "--quiet", "-p", "igpo"])
        .args(crate::mpi::TEST_FEATURES))?;
    let igpo = target().join("debug/igpo");
    let work = target().join("tool-sft");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let corpus = work.join("corpus");
    run(Command::new(&igpo)
        .args(["data", "corpus", "--squad"])
        .arg(data.join("squad-dev-v1.1.json"))
        .arg("--wiki")
        .arg(data.join("wiki-summaries-en.json"))
        .arg("--out")
        .arg(corpus.join("corpus.jsonl")))?;
    let transcripts = work.join("transcripts.jsonl");
    run(Command::new("python3")
        .arg(root().join("tools/make_tool_sft.py"))
        .arg("--squad")
        .arg(data.join("squad-dev-v1.1.json"))
        .arg("--igpo")
        .arg(&igpo)
        .arg("--plugin")
        .arg(plugins.join("bm25-search.wasm"))
        .arg("--corpus")
        .arg(&corpus)
        .args(["--tool-config", TOOL_SFT_TOOL_CONFIG])
        .args(["--n", &TOOL_SFT_TRANSCRIPTS.to_string()])
        .arg("--out")
        .arg(&transcripts)
        .env("IGPO_CACHE_DIR", plugins.join(".cache")))?;
    let run_dir = work.join("run");
    let config = TOOL_SFT_CONFIG
        .replace("{model}", &path_str(base).to_string())
        .replace("{train}", &path_str(&transcripts).to_string())
        .replace("{run_dir}", &path_str(&run_dir).to_string());
    let config_path = work.join("sft.toml");
    std::fs::write(&config_path, config).map_err(|e| format!("{}: {e}", config_path.display()))?;
    run(Command::new(&igpo)
        .args(["sft", "--config"])
        .arg(&config_path))?;
    // The newest checkpoint, exported with its f32 master weights (the
    // rollout tests use the model exactly as trained).
    let mut steps: Vec<PathBuf> = std::fs::read_dir(run_dir.join("checkpoints"))
        .map_err(|e| format!("{}: {e}", run_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("state/trainer_state.json").exists())
        .collect();
    steps.sort_by_key(|p| {
        p.file_name()
            .and_then(|n| n.to_str()?.strip_prefix("step-")?.parse::<u64>().ok())
    });
    let last = steps
        .pop()
        .ok_or_else(|| format!("{}: no checkpoint written", run_dir.display()))?;
    // Older keys' models go; this one appears complete or not at all.
    if let Ok(entries) = std::fs::read_dir(&models) {
        for e in entries.filter_map(|e| e.ok()) {
            if e.file_name()
                .to_string_lossy()
                .starts_with("smollm2-tool-sft-")
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    run(Command::new(&igpo)
        .args(["model", "export"])
        .arg(&last)
        .arg(&dir)
        .args(["--dtype", "f32"]))?;
    let _ = std::fs::remove_dir_all(&work);
    eprintln!(
        "xtask: tool-SFT SmolLM2 made in {:.1} s: {}",
        start.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(dir)
}
