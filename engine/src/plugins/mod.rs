//! Plugins: tools, rewards and datasets as sandboxed WebAssembly components.
//!
//! The contract is the WIT package `igpo:plugins@0.1.0` in `wit/` (see
//! `wit/README.md` for plugin authors). A component exports exactly one of
//! `tool-api`, `reward-api`, `dataset-api`; [`inspect`] says which.
//!
//! How the host runs them:
//! - One process-wide wasmtime [`Engine`](wasmtime::Engine) with epoch
//!   interruption; a background thread bumps the epoch every
//!   [`EPOCH_TICK`], and every call into a guest gets a deadline from
//!   [`SandboxLimits::call_timeout`] (`init` from `init_timeout`). A guest
//!   past its deadline traps with [`PluginError::Timeout`].
//! - Components are compiled once per content hash: in memory for the
//!   process and on disk as precompiled `.cwasm` under the cache directory
//!   ([`PluginHost::new`]), so a Python component's ~15 s compile is paid
//!   once per machine.
//! - Each instance gets its own store: a memory cap over all its linear
//!   memories ([`SandboxLimits::memory_bytes`]), no environment variables, no
//!   arguments, no sockets (TCP, UDP and name lookup denied), HTTP only to
//!   the origins a tool's [`PluginSpec::allow_http`] lists (`http.rs`), stdio discarded
//!   except a bounded stderr tail quoted in trap errors, and no files except
//!   the run's read-only grant ([`PluginSpec::readonly_dir`]), mounted at
//!   [`GUEST_DATA_DIR`] inside the guest.
//! - Instances are pooled ([`ToolPlugin`], [`RewardPlugin`]): `call`/`score`
//!   take `&self` and run on up to `SandboxLimits::instances` instances at
//!   once from any number of threads. An instance that traps, times out or
//!   hits its memory cap is thrown away and a fresh one is made (and
//!   `init`ed) for the next call, so one bad call never poisons the next.
//! - The schemas a plugin declares are enforced (`schema.rs`): its config
//!   is checked against `config_schema` before `init` (a violation fails the
//!   load), a tool's arguments against `parameters_schema` before `call` (a
//!   violation is an `invalid-arguments` error and the guest is not entered).
//! - Tool output longer than `max_output_bytes` is cut at a character
//!   boundary and ends with a note saying so.

mod guest_hints;
mod host;
mod http;
pub(crate) mod kinds;
mod pool;
pub mod scaffold;
pub(crate) mod schema;
mod stderr;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use host::{inspect, CompileCosts, PluginDescription, PluginHost, World};
pub use http::Origin;
pub use kinds::{
    DatasetPlugin, Example, PluginInfo, RewardOutput, RewardPlugin, ToolInfo, ToolPlugin, ToolPool,
    TrajectoryRecord, TurnRecord,
};

/// The contract version this host speaks (the `wit/` package version).
pub const WIT_VERSION: &str = "0.1.0";
/// Where a plugin's granted directory appears inside the guest.
pub const GUEST_DATA_DIR: &str = "/data";
/// Granularity of call time limits.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Resource limits of one plugin instance. Every field has a safe default;
/// the run config may override any of them (`[tools.search.limits]`...).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxLimits {
    /// Cap on all linear memories of one instance together, in bytes.
    pub memory_bytes: u64,
    /// Time limit of one call (`call`, `score`, `get`, ...).
    #[serde(with = "millis", rename = "call_timeout_ms")]
    pub call_timeout: Duration,
    /// Time limit of `init` (building an index may take a while).
    #[serde(with = "millis", rename = "init_timeout_ms")]
    pub init_timeout: Duration,
    /// Longest tool output (or tool error message) passed on, in bytes;
    /// longer ones are cut and end with a note.
    pub max_output_bytes: usize,
    /// Most instances of this plugin alive at once (parallel calls).
    pub instances: usize,
    /// Cap on every timeout of one outgoing HTTP request (connect, first
    /// byte, between bytes); the guest may ask for shorter ones. A guest
    /// waiting on HTTP is not interrupted by `call_timeout` until the wait
    /// ends, so keep this below it.
    #[serde(with = "millis", rename = "http_timeout_ms")]
    pub http_timeout: Duration,
    /// Longest HTTP response body a guest receives, in bytes; past it the
    /// body stream fails (`HTTP-response-body-size`).
    pub http_max_response_bytes: u64,
    /// Most HTTP requests of this plugin (all instances) in flight at once;
    /// more wait up to `http_timeout` for a slot.
    pub http_max_concurrent: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            memory_bytes: 256 << 20,
            call_timeout: Duration::from_secs(10),
            init_timeout: Duration::from_secs(120),
            max_output_bytes: 64 << 10,
            instances: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            // Below `call_timeout`, so a slow server is a clean tool error
            // rather than a stopped call.
            http_timeout: Duration::from_secs(5),
            http_max_response_bytes: 1 << 20,
            http_max_concurrent: 16,
        }
    }
}

mod millis {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// One plugin as the run config names it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    /// The component file (`.wasm`).
    pub path: PathBuf,
    /// Rename a tool (two `search` tools over different corpora).
    #[serde(default)]
    pub name: Option<String>,
    /// Tools only: the description the agent prompt shows instead of the
    /// plugin's own (say what the corpus behind a search tool is; two tools
    /// over the same corpus can present the same text).
    #[serde(default)]
    pub description: Option<String>,
    /// JSON config handed to the plugin's `init` (`{}` when absent).
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// The only directory the plugin may read (read-only, at `/data`).
    #[serde(default)]
    pub readonly_dir: Option<PathBuf>,
    /// Tools only: the origins (`http://host:port`) the plugin may send
    /// `wasi:http` requests to; empty (the default) = no network.
    #[serde(default)]
    pub allow_http: Vec<String>,
    #[serde(default)]
    pub limits: SandboxLimits,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

impl PluginSpec {
    /// A spec with the default limits, config `{}` and no directory.
    pub fn new(path: impl Into<PathBuf>) -> PluginSpec {
        PluginSpec {
            path: path.into(),
            name: None,
            description: None,
            config: empty_object(),
            readonly_dir: None,
            allow_http: vec![],
            limits: SandboxLimits::default(),
        }
    }
    pub fn config(mut self, config: serde_json::Value) -> Self {
        self.config = config;
        self
    }
    pub fn readonly_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.readonly_dir = Some(dir.into());
        self
    }
    /// The origins the plugin may reach over HTTP (`http://127.0.0.1:8000`).
    pub fn allow_http<S: Into<String>>(mut self, origins: impl IntoIterator<Item = S>) -> Self {
        self.allow_http = origins.into_iter().map(Into::into).collect();
        self
    }
    pub fn limits(mut self, limits: SandboxLimits) -> Self {
        self.limits = limits;
        self
    }
    /// The description the agent prompt shows for this tool.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// Everything that can go wrong with a plugin. Each message names the
/// plugin (its file, or its tool name) first.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid WebAssembly component: {message}")]
    Compile { path: PathBuf, message: String },
    #[error("{path}: implements none of the igpo:plugins@{WIT_VERSION} worlds: missing export `igpo:plugins/tool-api@{WIT_VERSION}`, `igpo:plugins/reward-api@{WIT_VERSION}` or `igpo:plugins/dataset-api@{WIT_VERSION}` (it exports: {exports})")]
    NoWorld { path: PathBuf, exports: String },
    #[error("{path}: exports `{found}`, but this host speaks igpo:plugins@{WIT_VERSION}; rebuild the plugin against this engine's wit/")]
    VersionMismatch { path: PathBuf, found: String },
    #[error("{path}: is a {found} plugin, but a {expected} plugin is needed here")]
    WrongWorld {
        path: PathBuf,
        found: World,
        expected: World,
    },
    #[error("{path}: cannot link: {message}")]
    Link { path: PathBuf, message: String },
    #[error("{path}: readonly_dir {dir}: {message}")]
    Grant {
        path: PathBuf,
        dir: PathBuf,
        message: String,
    },
    #[error("{plugin}: init failed: {message}")]
    Init { plugin: String, message: String },
    #[error("{plugin}: {call} exceeded the time limit of {limit_ms} ms and was stopped")]
    Timeout {
        plugin: String,
        call: &'static str,
        limit_ms: u128,
    },
    #[error("{plugin}: {call} exceeded the memory cap of {limit_bytes} bytes and was stopped")]
    MemoryLimit {
        plugin: String,
        call: &'static str,
        limit_bytes: u64,
    },
    #[error("{plugin}: {call} trapped: {message}")]
    Trap {
        plugin: String,
        call: &'static str,
        message: String,
    },
    #[error("{plugin}: {message}")]
    Failed { plugin: String, message: String },
    #[error("{plugin}: arguments are not valid UTF-8 (invalid byte at offset {offset})")]
    InvalidUtf8 { plugin: String, offset: usize },
    #[error("{plugin}: invalid result: {message}")]
    InvalidOutput { plugin: String, message: String },
    #[error("{plugin}: invalid JSON config: {message}")]
    Config { plugin: String, message: String },
    /// The config breaks the plugin's own `config_schema` (checked by the
    /// host before `init`).
    #[error("{plugin}: the config does not match the plugin's config_schema: {message}")]
    ConfigSchema { plugin: String, message: String },
    /// A schema the plugin declares in `describe` is not a JSON Schema.
    #[error("{plugin}: its {field} is not a valid JSON Schema: {message}")]
    Schema {
        plugin: String,
        field: &'static str,
        message: String,
    },
    /// A run-file setting the plugin cannot have (a bad `allow_http` entry,
    /// `allow_http` on a reward or dataset).
    #[error("{plugin}: {message}")]
    Spec { plugin: String, message: String },
}

/// A failed tool call. [`ToolError::agent_message`] is the text the agent
/// sees in its trajectory; `Display` is the log line.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("tool `{tool}`: invalid arguments: {message}")]
    InvalidArguments { tool: String, message: String },
    #[error("tool `{tool}` failed: {message}")]
    Failed { tool: String, message: String },
    #[error("no tool named `{name}` (tools: {known})")]
    UnknownTool { name: String, known: String },
    #[error(transparent)]
    Plugin(#[from] PluginError),
}

impl ToolError {
    /// What the agent reads in place of a tool result.
    pub fn agent_message(&self) -> String {
        match self {
            ToolError::InvalidArguments { message, .. } => {
                format!("Error: invalid arguments: {message}")
            }
            ToolError::Failed { message, .. } => format!("Error: {message}"),
            ToolError::UnknownTool { name, known } => {
                format!("Error: there is no tool named `{name}` (available: {known})")
            }
            ToolError::Plugin(PluginError::Timeout { limit_ms, .. }) => {
                format!("Error: the tool timed out after {limit_ms} ms")
            }
            ToolError::Plugin(PluginError::InvalidUtf8 { .. }) => {
                "Error: the tool arguments are not valid UTF-8".into()
            }
            ToolError::Plugin(_) => "Error: the tool crashed".into(),
        }
    }
}

/// Cuts `s` to at most `max` bytes (at a character boundary) and appends a
/// note; returns `s` unchanged when it fits.
pub fn truncate_output(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let total = s.len();
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push_str(&format!(
        "\n[output truncated: {total} bytes, limit {max} bytes]"
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_deserialize_with_defaults() {
        let l: SandboxLimits =
            serde_json::from_str(r#"{"call_timeout_ms": 250, "memory_bytes": 1048576}"#).unwrap();
        assert_eq!(l.call_timeout, Duration::from_millis(250));
        assert_eq!(l.memory_bytes, 1 << 20);
        assert_eq!(
            l.max_output_bytes,
            SandboxLimits::default().max_output_bytes
        );
        let e = serde_json::from_str::<SandboxLimits>(r#"{"timeout": 1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `timeout`"), "{e}");
    }

    #[test]
    fn plugins_can_be_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<ToolPool>();
        shared::<ToolPlugin>();
        shared::<RewardPlugin>();
        shared::<DatasetPlugin>();
        shared::<PluginHost>();
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_output("abc".into(), 3), "abc");
        let t = truncate_output("aé".repeat(10), 4);
        assert!(
            t.starts_with("aéa\n[output truncated: 30 bytes, limit 4 bytes]"),
            "{t}"
        );
    }
}
