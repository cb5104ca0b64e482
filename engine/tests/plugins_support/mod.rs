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

/// `igpo serve retrieval`'s server over an index, on a free loopback port in
/// its own runtime; stopped (gracefully) when dropped.
pub struct RetrievalServer {
    pub origin: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RetrievalServer {
    pub fn start(index: &std::path::Path) -> RetrievalServer {
        use igpo_retrieval::serve::{bind, ServerConfig};
        let ix = std::sync::Arc::new(igpo_retrieval::Index::open(index).unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let bound = rt
            .block_on(bind(ServerConfig {
                addr: ([127, 0, 0, 1], 0).into(),
                ..ServerConfig::default()
            }))
            .unwrap();
        let origin = format!("http://{}", bound.local_addr);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            rt.block_on(bound.run(ix, async {
                let _ = stopped.await;
            }))
            .unwrap();
        });
        RetrievalServer {
            origin,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for RetrievalServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
