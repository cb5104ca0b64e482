//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

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

/// The Python of `cargo xtask test` (`IGPO_PYTHON`: a venv with torch,
/// transformers, tensorboard and pyarrow, `tools/reference/requirements.txt`);
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

/// Runs this package's `igpo` binary with `envs` set: (exit code, stdout,
/// stderr).
pub fn igpo_env(args: &[&str], envs: &[(&str, &std::path::Path)]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_igpo"))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs this package's `igpo` binary: (exit code, stdout, stderr).
pub fn igpo(args: &[&str]) -> (i32, String, String) {
    igpo_env(args, &[])
}

/// `igpo model init` of a 1-layer, hidden-32 Qwen2 with the real Qwen2.5
/// tokenizer into `dir`, plus `extra` flags (e.g. `--dtype f32`).
pub fn init_tiny_model(dir: &std::path::Path, extra: &[&str]) {
    let tok = data_dir().join("qwen2.5-tokenizer.json");
    init_tiny_model_of(dir, "qwen2", &tok, extra);
}

/// `igpo model init` of a 1-layer, hidden-32 `arch` model with the
/// vocabulary of `tok` (a tokenizer.json) into `dir`, plus `extra` flags.
pub fn init_tiny_model_of(
    dir: &std::path::Path,
    arch: &str,
    tok: &std::path::Path,
    extra: &[&str],
) {
    let mut args = vec![
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
        tok.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.push(dir.to_str().unwrap());
    let (code, _, err) = igpo(&args);
    assert_eq!(code, 0, "model init failed: {err}");
}
