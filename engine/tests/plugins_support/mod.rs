//! Helpers for the plugin tests: where `cargo xtask test` put the built
//! components, and a host whose compile cache lives beside them.
#![allow(dead_code)]

use std::path::PathBuf;

use igpo::plugins::PluginHost;

/// `IGPO_PLUGIN_DIR` (set by `cargo xtask test`); `None` prints why the
/// caller skips.
pub fn plugin_dir(test: &str) -> Option<PathBuf> {
    match std::env::var_os("IGPO_PLUGIN_DIR").map(PathBuf::from) {
        Some(d) if d.join("echo-tool.wasm").exists() => Some(d),
        Some(d) => panic!(
            "IGPO_PLUGIN_DIR={} has no echo-tool.wasm: run `cargo xtask plugins`",
            d.display()
        ),
        None => {
            eprintln!("skipped {test}: IGPO_PLUGIN_DIR not set (cargo xtask test sets it)");
            None
        }
    }
}

/// Precompiled components are cached next to the plugins; the `igpo`
/// binary finds the same cache with `IGPO_CACHE_DIR=<plugins>/.cache`.
pub fn cache_dir(plugins: &std::path::Path) -> PathBuf {
    plugins.join(".cache/components")
}

pub fn host(plugins: &std::path::Path) -> PluginHost {
    PluginHost::new(Some(cache_dir(plugins)))
}

/// A fresh scratch directory under cargo's per-test temp dir.
pub fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
