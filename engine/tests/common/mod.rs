//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A logits row's logsumexp, summed in f64 around the row's max.
pub fn logsumexp(row: &[f32]) -> f64 {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    f64::from(max)
        + row
            .iter()
            .map(|v| f64::from(v - max).exp())
            .sum::<f64>()
            .ln()
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The repository's data files, unpacked by `cargo xtask data` into
/// `target/data` (`cargo xtask test` passes it as `IGPO_DATA`). Panics with
/// a clear message when they are missing: tests need real data.
pub fn data_dir() -> PathBuf {
    let dir = std::env::var_os("IGPO_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/data"));
    assert!(
        dir.join("qwen2.5-tokenizer.json").exists(),
        "data not found at {} (run `cargo xtask data`, or set IGPO_DATA)",
        dir.display()
    );
    dir
}

/// One SFT conversation, one JSONL line (no newline).
pub const SFT_LINE: &str = r#"{"messages":[{"role":"user","content":"Capital of France?"},{"role":"assistant","content":"Paris."}]}"#;

/// An SFT run file over `model` and `sft.jsonl`: one step into `sft-run`.
pub const SFT_TOML: &str = "model = \"model\"\n[data]\ntrain = \"sft.jsonl\"\nmax_seq_len = 32\n\n\
     [train]\nrun_dir = \"sft-run\"\nsteps = 1\nmicro_batch = 1\nlogprob_chunk = 40000\n";

/// Two QA rows for the `qa-dataset` plugin (JSONL).
pub const QA_JSONL: &str = "{\"id\":\"q0\",\"question\":\"What is the capital of France?\",\"golden_answers\":[\"Paris\"]}\n\
     {\"id\":\"q1\",\"question\":\"What is the capital of Italy?\",\"golden_answers\":[\"Rome\"]}\n";

/// The Python of `cargo xtask test` (`IGPO_PYTHON`: a venv with
/// transformers, tensorboard, pyarrow and scipy, no torch:
/// `tools/reference/requirements.txt`);
/// `None` prints why the caller skips.
pub fn python(test: &str) -> Option<PathBuf> {
    match std::env::var_os("IGPO_PYTHON").map(PathBuf::from) {
        Some(p) if p.exists() => Some(p),
        _ => {
            eprintln!("skipped {test}: IGPO_PYTHON is not set (cargo xtask test sets it)");
            None
        }
    }
}

/// Real SmolLM2-135M-Instruct folder imported by `cargo xtask test`
/// (`IGPO_SMOLLM2_DIR`); `None` prints why the caller skips.
pub fn smollm2_dir(test: &str) -> Option<PathBuf> {
    match std::env::var_os("IGPO_SMOLLM2_DIR").map(PathBuf::from) {
        Some(d) if d.join("config.json").exists() => Some(d),
        _ => {
            eprintln!("skipped {test}: IGPO_SMOLLM2_DIR is not set (cargo xtask test sets it)");
            None
        }
    }
}

/// SmolLM2 after the short tool-call SFT `cargo xtask test` runs
/// (`IGPO_SMOLLM2_TOOL_DIR`): it calls the `search` tool; `None` prints why
/// the caller skips.
pub fn smollm2_tool_dir(test: &str) -> Option<PathBuf> {
    match std::env::var_os("IGPO_SMOLLM2_TOOL_DIR").map(PathBuf::from) {
        Some(d) if d.join("config.json").exists() => Some(d),
        _ => {
            eprintln!(
                "skipped {test}: IGPO_SMOLLM2_TOOL_DIR is not set (cargo xtask test sets it)"
            );
            None
        }
    }
}

/// A `Command` of this package's `igpo` binary, to add arguments,
/// environment and a working folder to before [`output`].
pub fn igpo_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_igpo"))
}

/// Runs `cmd` to the end: (exit code, stdout, stderr).
pub fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs this package's `igpo` binary with `envs` set: (exit code, stdout,
/// stderr).
pub fn igpo_env(args: &[&str], envs: &[(&str, &Path)]) -> (i32, String, String) {
    output(igpo_command().args(args).envs(envs.iter().copied()))
}

/// Runs this package's `igpo` binary: (exit code, stdout, stderr).
pub fn igpo(args: &[&str]) -> (i32, String, String) {
    igpo_env(args, &[])
}

/// The `igpo model init` arguments of a 1-layer, hidden-32 `arch` model
/// with the vocabulary of `tok` (a tokenizer.json), less the output folder.
pub fn tiny_model_args(arch: &str, tok: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "model",
        "init",
        "--arch",
        arch,
        "--layers",
        "1",
        "--hidden",
        "32",
        "--heads",
        "2",
        "--kv-heads",
        "1",
        "--intermediate",
        "64",
        "--vocab-from",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(tok.into());
    args
}

/// `igpo model init` of a 1-layer, hidden-32 Qwen2 with the real Qwen2.5
/// tokenizer into `dir`, plus `extra` flags (e.g. `--dtype f32`).
pub fn init_tiny_model(dir: &Path, extra: &[&str]) {
    let tok = data_dir().join("qwen2.5-tokenizer.json");
    init_tiny_model_of(dir, "qwen2", &tok, extra);
}

/// `igpo model init` of a 1-layer, hidden-32 `arch` model with the
/// vocabulary of `tok` (a tokenizer.json) into `dir` (any path, UTF-8 or
/// not), plus `extra` flags.
pub fn init_tiny_model_of(dir: &Path, arch: &str, tok: &Path, extra: &[&str]) {
    let (code, _, err) = output(
        igpo_command()
            .args(tiny_model_args(arch, tok))
            .args(extra)
            .arg(dir),
    );
    assert_eq!(code, 0, "model init failed: {err}");
}

/// The tests' tiny random Qwen2 (hidden 32, 2 layers, 4 heads over 2 KV
/// heads) at the real Qwen2.5 vocabulary, `max_positions` long.
pub fn tiny_qwen2(max_positions: usize) -> igpo::model::ModelConfig {
    igpo::model::ModelConfig {
        arch: igpo::model::Arch::Qwen2,
        vocab_size: 151936,
        hidden_size: 32,
        intermediate_size: 64,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-6,
        rope_theta: 1e6,
        rope_scaling: None,
        max_position_embeddings: max_positions,
        tie_word_embeddings: true,
        attention_bias: true,
        bos_token_id: None,
        eos_token_ids: vec![151645],
    }
}
