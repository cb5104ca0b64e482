//! The wasmtime side: one engine with an epoch ticker, the compiled
//! component cache, the per-instance sandbox (store, WASI context, limits)
//! and turning wasmtime errors into [`PluginError`]s.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::http::{HttpGate, HttpHooks};
use super::stderr::StderrTail;
use super::{PluginError, PluginSpec, SandboxLimits, EPOCH_TICK, GUEST_DATA_DIR, WIT_VERSION};

/// Which contract a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum World {
    Tool,
    Reward,
    Dataset,
}

impl World {
    pub const ALL: [World; 3] = [World::Tool, World::Reward, World::Dataset];
    /// The interface a component of this world exports (unversioned).
    pub fn interface(self) -> &'static str {
        match self {
            World::Tool => "igpo:plugins/tool-api",
            World::Reward => "igpo:plugins/reward-api",
            World::Dataset => "igpo:plugins/dataset-api",
        }
    }
    pub fn export_name(self) -> String {
        format!("{}@{WIT_VERSION}", self.interface())
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            World::Tool => "tool",
            World::Reward => "reward",
            World::Dataset => "dataset",
        })
    }
}

/// The process-wide engine. Epoch interruption is on, so every store must
/// get a deadline before each call (the pool does).
pub(crate) fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut c = Config::new();
        c.wasm_component_model(true);
        c.epoch_interruption(true);
        c.cranelift_opt_level(wasmtime::OptLevel::Speed);
        // Many pooled instances: keep virtual reservations modest.
        c.memory_reservation(1 << 32);
        c.memory_guard_size(32 << 20);
        let engine = Engine::new(&c).expect("wasmtime engine config is valid");
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("igpo-wasm-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => return,
                }
            })
            .expect("spawn the epoch thread");
        engine
    })
}

/// Loads components, compiled once per content hash (in memory for the
/// process; on disk as precompiled `.cwasm` under `cache_dir`).
#[derive(Debug, Clone)]
pub struct PluginHost {
    cache_dir: Option<PathBuf>,
}

impl Default for PluginHost {
    fn default() -> Self {
        PluginHost::new(Self::default_cache_dir())
    }
}

type Memo = Mutex<HashMap<[u8; 32], Arc<OnceLock<Result<Component, String>>>>>;

impl PluginHost {
    /// `cache_dir: None` keeps compiled components in memory only.
    pub fn new(cache_dir: Option<PathBuf>) -> PluginHost {
        PluginHost { cache_dir }
    }

    /// `$IGPO_CACHE_DIR/components`, else `$XDG_CACHE_HOME/igpo/components`,
    /// else `$HOME/.cache/igpo/components`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        var("IGPO_CACHE_DIR")
            .map(|d| d.join("components"))
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("igpo/components")))
            .or_else(|| var("HOME").map(|d| d.join(".cache/igpo/components")))
    }

    /// The compiled component at `path`.
    pub(crate) fn component(&self, path: &Path) -> Result<Component, PluginError> {
        let bytes = read(path)?;
        let key = cache_key(&bytes);
        // Concurrent loaders of the same bytes wait for one compile.
        let cell = memo_cell(&key);
        let result = cell.get_or_init(|| self.compile_cached(&bytes, &key));
        result.clone().map_err(|message| PluginError::Compile {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Times what loading the component at `path` costs without any cache: a
    /// compile, then loading the compiled code back from its serialized
    /// form. The result then serves this host's later loads, as if
    /// [`component`](Self::component) had compiled it.
    pub fn compile_costs(&self, path: &Path) -> Result<CompileCosts, PluginError> {
        let compile_err = |e: wasmtime::Error| PluginError::Compile {
            path: path.to_path_buf(),
            message: one_line(&e),
        };
        let bytes = read(path)?;
        let t0 = std::time::Instant::now();
        let component = Component::new(engine(), &bytes).map_err(compile_err)?;
        let compile_s = t0.elapsed().as_secs_f64();
        let serialized = component.serialize().map_err(compile_err)?;
        let t0 = std::time::Instant::now();
        // SAFETY: the bytes were made just above by `Component::serialize`
        // of this engine, and never left this process.
        unsafe { Component::deserialize(engine(), &serialized) }.map_err(compile_err)?;
        let cached_load_s = t0.elapsed().as_secs_f64();
        let key = cache_key(&bytes);
        self.store(&key, &serialized);
        let _ = memo_cell(&key).set(Ok(component));
        Ok(CompileCosts {
            compile_s,
            cached_load_s,
        })
    }

    /// Where the compiled form of the component with `key` is cached.
    fn cache_file(&self, key: &[u8; 32]) -> Option<PathBuf> {
        self.cache_dir.as_ref().map(|d| {
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            d.join(format!("{hex}.cwasm"))
        })
    }

    /// Writes the compiled form to the disk cache (a cache that cannot be
    /// written only costs time next run).
    fn store(&self, key: &[u8; 32], serialized: &[u8]) {
        if let Some(file) = self.cache_file(key) {
            let _ = file
                .parent()
                .map(std::fs::create_dir_all)
                .transpose()
                .and_then(|_| crate::fsutil::write_atomic(&file, serialized));
        }
    }

    fn compile_cached(&self, bytes: &[u8], key: &[u8; 32]) -> Result<Component, String> {
        let engine = engine();
        if let Some(file) = self.cache_file(key).filter(|f| f.exists()) {
            // SAFETY: the file is named by the hash of the component and of
            // this engine's compatibility settings, and was written by
            // `Component::serialize` (`store`, atomically).
            if let Ok(c) = unsafe { Component::deserialize_file(engine, &file) } {
                tracing::debug!("component from the cache: {}", file.display());
                return Ok(c);
            }
        }
        let start = std::time::Instant::now();
        let component = Component::new(engine, bytes).map_err(|e| one_line(&e))?;
        tracing::debug!(
            "compiled a component ({} bytes) in {:.2} s",
            bytes.len(),
            start.elapsed().as_secs_f64()
        );
        if let Ok(serialized) = component.serialize() {
            self.store(key, &serialized);
        }
        Ok(component)
    }

    /// Which world the component at `path` implements.
    pub(crate) fn world_of(
        &self,
        path: &Path,
        component: &Component,
    ) -> Result<World, PluginError> {
        let exports: Vec<String> = component
            .component_type()
            .exports(engine())
            .map(|(name, _)| name.to_string())
            .collect();
        for w in World::ALL {
            if exports.iter().any(|e| *e == w.export_name()) {
                return Ok(w);
            }
        }
        for w in World::ALL {
            if let Some(found) = exports
                .iter()
                .find(|e| e.starts_with(&format!("{}@", w.interface())))
            {
                return Err(PluginError::VersionMismatch {
                    path: path.to_path_buf(),
                    found: found.clone(),
                });
            }
        }
        Err(PluginError::NoWorld {
            path: path.to_path_buf(),
            exports: if exports.is_empty() {
                "nothing".into()
            } else {
                exports.join(", ")
            },
        })
    }
}

/// What loading a component costs, measured without any cache.
#[derive(Debug, Clone, Copy)]
pub struct CompileCosts {
    /// Compiling the bytes to machine code (the first load on a machine).
    pub compile_s: f64,
    /// Loading the compiled code back from a cache file (later loads).
    pub cached_load_s: f64,
}

/// The bytes of the component at `path`; a file that is not WebAssembly at
/// all (no `\0asm` magic) is said so here, in words, rather than by the
/// parser.
fn read(path: &Path) -> Result<Vec<u8>, PluginError> {
    let bytes = std::fs::read(path).map_err(|source| PluginError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !bytes.starts_with(b"\0asm") {
        let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        return Err(PluginError::Compile {
            path: path.to_path_buf(),
            message: if head.is_empty() {
                "the file is empty".into()
            } else {
                format!(
                    "it starts with bytes {} (a .wasm file starts with \"\\0asm\")",
                    head.join(" ")
                )
            },
        });
    }
    Ok(bytes)
}

/// The cache key of component bytes: their hash and this engine's
/// compatibility settings.
fn cache_key(bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(bytes);
    let mut compat = std::hash::DefaultHasher::new();
    engine().precompile_compatibility_hash().hash(&mut compat);
    h.update(compat.finish().to_le_bytes());
    h.finalize().into()
}

/// The process-wide compiled component of `key` (filled once).
fn memo_cell(key: &[u8; 32]) -> Arc<OnceLock<Result<Component, String>>> {
    static MEMO: OnceLock<Memo> = OnceLock::new();
    MEMO.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(*key)
        .or_default()
        .clone()
}

/// Stops memory growth past the cap (over all memories of the instance)
/// and remembers that it did.
pub(crate) struct Limiter {
    pub(crate) memory_cap: u64,
    pub(crate) memory_used: u64,
    pub(crate) memory_denied: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grow = (desired - current) as u64;
        if self.memory_used + grow > self.memory_cap {
            self.memory_denied = true;
            return Ok(false);
        }
        self.memory_used += grow;
        Ok(true)
    }
    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
    fn instances(&self) -> usize {
        1000
    }
    fn tables(&self) -> usize {
        1000
    }
    fn memories(&self) -> usize {
        1000
    }
}

/// What one instance's store holds.
pub(crate) struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    /// Its plugin's HTTP policy (allow list, limits).
    http_hooks: HttpHooks,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) stderr: StderrTail,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

/// A fresh sandboxed store for one instance of `spec`'s plugin; `http` is
/// the plugin's HTTP policy, shared by its instances.
pub(crate) fn new_store(
    spec: &PluginSpec,
    http: &Arc<HttpGate>,
) -> Result<Store<HostState>, PluginError> {
    let stderr = StderrTail::new(4096);
    let mut b = WasiCtxBuilder::new();
    b.stderr(stderr.clone())
        // Plain blocking file reads on the calling thread (we are sync).
        .allow_blocking_current_thread(true)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        // Raw sockets stay closed; HTTP goes through `http_hooks` only.
        .socket_addr_check(|_, _| Box::pin(async { false }));
    if let Some(dir) = &spec.readonly_dir {
        let grant = |message: String| PluginError::Grant {
            path: spec.path.clone(),
            dir: dir.clone(),
            message,
        };
        if !dir.is_dir() {
            return Err(grant("not a directory".into()));
        }
        b.preopened_dir(dir, GUEST_DATA_DIR, FsPerms::ReadOnly)
            .map_err(|e| grant(one_line(&e)))?;
    }
    let state = HostState {
        wasi: b.build(),
        http: WasiHttpCtx::new(),
        http_hooks: HttpHooks(http.clone()),
        table: ResourceTable::new(),
        limiter: Limiter {
            memory_cap: spec.limits.memory_bytes,
            memory_used: 0,
            memory_denied: false,
        },
        stderr,
    };
    let mut store = Store::new(engine(), state);
    store.limiter(|s| &mut s.limiter);
    // Nothing runs before a call sets its own deadline; be safe anyway.
    store.set_epoch_deadline(1);
    Ok(store)
}

/// Deadline in epoch ticks for a time limit.
pub(crate) fn ticks(limit: std::time::Duration) -> u64 {
    (limit.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64 + 1
}

/// The first line of an error chain, without wasm backtraces.
pub(crate) fn one_line(e: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = vec![];
    for cause in e.chain() {
        let s = cause.to_string();
        let first = s.lines().next().unwrap_or("").trim().to_string();
        if !first.is_empty()
            && !first.starts_with("error while executing at wasm backtrace")
            && !parts.contains(&first)
        {
            parts.push(first);
        }
    }
    parts.join(": ")
}

/// Turns a failed guest call into the right [`PluginError`].
pub(crate) fn classify(
    plugin: &str,
    call: &'static str,
    limits: &SandboxLimits,
    limit: std::time::Duration,
    store: &Store<HostState>,
    e: wasmtime::Error,
) -> PluginError {
    let plugin = plugin.to_string();
    let trap = e.downcast_ref::<Trap>().copied();
    if trap == Some(Trap::Interrupt) {
        return PluginError::Timeout {
            plugin,
            call,
            limit_ms: limit.as_millis(),
        };
    }
    if store.data().limiter.memory_denied {
        return PluginError::MemoryLimit {
            plugin,
            call,
            limit_bytes: limits.memory_bytes,
        };
    }
    let mut message = one_line(&e);
    if let Some(bt) = e.downcast_ref::<wasmtime::WasmBacktrace>() {
        if let Some(name) = bt.frames().iter().find_map(|f| f.func_name()) {
            message.push_str(&format!(" (in {name})"));
        }
    }
    let tail = store.data().stderr.take();
    if let Some(advice) = super::guest_hints::advice(call, &tail) {
        message = format!("{advice} ({message})");
    }
    if !tail.is_empty() {
        message.push_str(&format!("; stderr: {tail}"));
    }
    PluginError::Trap {
        plugin,
        call,
        message,
    }
}

/// What `igpo plugin check/describe` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginDescription {
    pub world: World,
    /// The export that says so, e.g. `igpo:plugins/tool-api@0.1.0`.
    pub export: String,
    pub name: String,
    pub version: String,
    pub description: String,
    /// JSON Schema of the config (parsed when it is JSON, else the text).
    pub config_schema: serde_json::Value,
    /// Tools only: JSON Schema of the call arguments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters_schema: Option<serde_json::Value>,
}

/// Loads the component at `path`, finds its world and calls its `describe`
/// (no `init`, no directory, default limits).
pub fn inspect(host: &PluginHost, path: &Path) -> Result<PluginDescription, PluginError> {
    super::kinds::describe(host, &PluginSpec::new(path))
}
