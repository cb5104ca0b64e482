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

/// `../shared/data` beside the checkout (override: `IGPO_SHARED_DATA`).
/// Panics with a clear message when it is missing: tests need real data.
pub fn shared_data() -> PathBuf {
    let dir = std::env::var_os("IGPO_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared/data"));
    assert!(
        dir.join("qwen2.5-tokenizer.json").exists(),
        "shared data not found at {} (set IGPO_SHARED_DATA)",
        dir.display()
    );
    dir
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
