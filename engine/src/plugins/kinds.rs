//! The three plugin kinds: generated bindings, their public wrappers and
//! the plain Rust records the rest of the engine uses.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use wasmtime::component::{HasSelf, InstancePre, Linker};
use wasmtime::Store;

use super::host::{engine, HostState, PluginDescription, PluginHost, World};
use super::pool::{prepare, Kind, Pool};
use super::schema::Schema;
use super::{truncate_output, PluginError, PluginSpec, ToolError};

mod tool_wit {
    wasmtime::component::bindgen!({ world: "tool", path: "../wit" });
}
mod reward_wit {
    wasmtime::component::bindgen!({ world: "reward", path: "../wit" });
}
mod dataset_wit {
    wasmtime::component::bindgen!({ world: "dataset", path: "../wit" });
}

impl tool_wit::igpo::plugins::types::Host for HostState {}
impl reward_wit::igpo::plugins::types::Host for HostState {}
impl dataset_wit::igpo::plugins::types::Host for HostState {}

/// One world's linker: WASI, plus `wasi:http` for tools (`http`).
macro_rules! linker {
    ($world:ty, $http:expr) => {{
        static LINKER: OnceLock<Linker<HostState>> = OnceLock::new();
        LINKER.get_or_init(|| {
            let mut l = Linker::new(engine());
            wasmtime_wasi::p2::add_to_linker_sync(&mut l).expect("WASI links");
            if $http {
                // Requests go through the plugin's gate (`http.rs`).
                wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut l)
                    .expect("wasi:http links");
            }
            <$world>::add_to_linker::<_, HasSelf<_>>(&mut l, |s| s).expect("world links");
            l
        })
    }};
}

/// What every plugin says about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    /// JSON Schema (text) of the `init` config.
    pub config_schema: String,
}

macro_rules! info_from {
    ($m:path) => {
        impl From<$m> for PluginInfo {
            fn from(i: $m) -> PluginInfo {
                PluginInfo {
                    name: i.name,
                    version: i.version,
                    description: i.description,
                    config_schema: i.config_schema,
                }
            }
        }
    };
}
info_from!(tool_wit::igpo::plugins::types::PluginInfo);
info_from!(reward_wit::igpo::plugins::types::PluginInfo);
info_from!(dataset_wit::igpo::plugins::types::PluginInfo);

/// A plugin's `describe`, whatever its world.
#[derive(Debug, Clone, Default)]
pub(crate) struct Described {
    pub(crate) info: PluginInfo,
    /// A tool's JSON Schema (text) of its call arguments.
    pub(crate) parameters_schema: Option<String>,
}

impl Described {
    /// Compiles the config schema and the arguments schema (tools); a
    /// schema that is not valid JSON Schema is a [`PluginError::Schema`].
    pub(crate) fn schemas(&self, label: &str) -> Result<(Schema, Option<Schema>), PluginError> {
        let compile = |field: &'static str, text: &str| {
            Schema::compile(text).map_err(|message| PluginError::Schema {
                plugin: label.to_string(),
                field,
                message,
            })
        };
        let config = compile("config_schema", &self.info.config_schema)?;
        let arguments = match &self.parameters_schema {
            Some(text) => Some(compile("parameters_schema", text)?),
            None => None,
        };
        Ok((config, arguments))
    }
}

// ---------------------------------------------------------------- tools

impl Kind for tool_wit::Tool {
    const WORLD: World = World::Tool;
    type Pre = tool_wit::ToolPre<HostState>;
    fn linker() -> &'static Linker<HostState> {
        linker!(tool_wit::Tool, true)
    }
    fn pre(ip: InstancePre<HostState>) -> wasmtime::Result<Self::Pre> {
        tool_wit::ToolPre::new(ip)
    }
    fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> wasmtime::Result<Self> {
        pre.instantiate(store)
    }
    fn describe(&self, store: &mut Store<HostState>) -> wasmtime::Result<Described> {
        let d = self.igpo_plugins_tool_api().call_describe(store)?;
        Ok(Described {
            info: d.info.into(),
            parameters_schema: Some(d.parameters_schema),
        })
    }
    fn init(
        &self,
        store: &mut Store<HostState>,
        config: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        self.igpo_plugins_tool_api().call_init(store, config)
    }
}

/// A tool's self-description: what the agent prompt presents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolInfo {
    /// The name the agent calls (the plugin's own, or the run's rename).
    pub name: String,
    pub plugin: PluginInfo,
    /// JSON Schema (text) of the call arguments.
    pub parameters_schema: String,
}

/// One tool plugin with its pool of sandboxed instances.
pub struct ToolPlugin {
    info: ToolInfo,
    pool: Pool<tool_wit::Tool>,
}

impl ToolPlugin {
    /// Loads, links and `init`s one instance (errors here are load errors).
    pub fn load(host: &PluginHost, spec: &PluginSpec) -> Result<ToolPlugin, PluginError> {
        let label = spec.path.display().to_string();
        let mut pool = Pool::<tool_wit::Tool>::load(host, spec, label)?;
        let mut plugin = pool.described.info.clone();
        if let Some(text) = &spec.description {
            plugin.description = text.clone();
        }
        let name = spec.name.clone().unwrap_or_else(|| plugin.name.clone());
        let file = spec
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        pool.label = format!("{name} ({file})");
        let info = ToolInfo {
            name,
            plugin,
            parameters_schema: pool.described.parameters_schema.clone().unwrap_or_default(),
        };
        Ok(ToolPlugin { info, pool })
    }

    pub fn info(&self) -> &ToolInfo {
        &self.info
    }

    /// Makes instances until `n` are alive (at most the limit): what a
    /// measurement does first, so it times calls and not `init`s.
    pub fn fill(&self, n: usize) -> Result<(), PluginError> {
        self.pool.fill(n)
    }

    /// Instances alive now, idle or busy (at most `SandboxLimits::instances`).
    pub fn live_instances(&self) -> usize {
        self.pool.live()
    }

    /// Linear memory of an instance, in bytes (the largest idle one).
    pub fn instance_memory_bytes(&self) -> u64 {
        self.pool.memory_bytes()
    }

    /// Calls the tool with a JSON arguments text. Arguments that are not
    /// JSON or break the tool's `parameters_schema` are an
    /// [`ToolError::InvalidArguments`] and the guest is not entered. Output
    /// longer than the limit is cut and ends with a note.
    pub fn call(&self, arguments: &str) -> Result<String, ToolError> {
        let max = self.pool.spec.limits.max_output_bytes;
        let tool = &self.info.name;
        if let Some(schema) = &self.pool.arguments_schema {
            schema
                .check_arguments(arguments)
                .map_err(|message| ToolError::InvalidArguments {
                    tool: tool.clone(),
                    message: truncate_output(message, max),
                })?;
        }
        match self.pool.call("call", |g, s| {
            g.igpo_plugins_tool_api().call_call(s, arguments)
        })? {
            Ok(out) => Ok(truncate_output(out, max)),
            Err(tool_wit::exports::igpo::plugins::tool_api::ToolError::InvalidArguments(m)) => {
                Err(ToolError::InvalidArguments {
                    tool: tool.clone(),
                    message: truncate_output(m, max),
                })
            }
            Err(tool_wit::exports::igpo::plugins::tool_api::ToolError::Failed(m)) => {
                Err(ToolError::Failed {
                    tool: tool.clone(),
                    message: truncate_output(m, max),
                })
            }
        }
    }

    /// Like [`call`](Self::call) for raw bytes (e.g. decoded model output):
    /// invalid UTF-8 is an error naming the offset, and no guest runs.
    pub fn call_bytes(&self, arguments: &[u8]) -> Result<String, ToolError> {
        match std::str::from_utf8(arguments) {
            Ok(s) => self.call(s),
            Err(e) => Err(ToolError::Plugin(PluginError::InvalidUtf8 {
                plugin: self.pool.label.clone(),
                offset: e.valid_up_to(),
            })),
        }
    }
}

/// The run's tools by name; `call` is safe from many threads at once.
#[derive(Clone, Default)]
pub struct ToolPool {
    tools: BTreeMap<String, Arc<ToolPlugin>>,
}

impl ToolPool {
    /// Loads every tool; two tools with one name is an error.
    pub fn load(host: &PluginHost, specs: &[PluginSpec]) -> Result<ToolPool, PluginError> {
        let mut pool = ToolPool::default();
        for spec in specs {
            let tool = ToolPlugin::load(host, spec)?;
            let name = tool.info().name.clone();
            if pool.tools.contains_key(&name) {
                return Err(PluginError::Config {
                    plugin: spec.path.display().to_string(),
                    message: format!(
                        "a tool named `{name}` is already loaded; give one a different `name`"
                    ),
                });
            }
            pool.tools.insert(name, Arc::new(tool));
        }
        Ok(pool)
    }

    pub fn insert(&mut self, tool: ToolPlugin) {
        self.tools.insert(tool.info().name.clone(), Arc::new(tool));
    }

    /// The tools' descriptions, by name (for the agent prompt).
    pub fn infos(&self) -> Vec<&ToolInfo> {
        self.tools.values().map(|t| t.info()).collect()
    }

    pub fn get(&self, name: &str) -> Option<&ToolPlugin> {
        self.tools.get(name).map(|t| t.as_ref())
    }

    fn find(&self, name: &str) -> Result<&ToolPlugin, ToolError> {
        self.get(name).ok_or_else(|| ToolError::UnknownTool {
            name: name.to_string(),
            known: self.tools.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// Calls tool `name` with a JSON arguments text.
    pub fn call(&self, name: &str, arguments: &str) -> Result<String, ToolError> {
        self.find(name)?.call(arguments)
    }

    /// Calls tool `name` with raw argument bytes (checked for UTF-8).
    pub fn call_bytes(&self, name: &str, arguments: &[u8]) -> Result<String, ToolError> {
        self.find(name)?.call_bytes(arguments)
    }
}

// -------------------------------------------------------------- rewards

impl Kind for reward_wit::Reward {
    const WORLD: World = World::Reward;
    type Pre = reward_wit::RewardPre<HostState>;
    fn linker() -> &'static Linker<HostState> {
        linker!(reward_wit::Reward, false)
    }
    fn pre(ip: InstancePre<HostState>) -> wasmtime::Result<Self::Pre> {
        reward_wit::RewardPre::new(ip)
    }
    fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> wasmtime::Result<Self> {
        pre.instantiate(store)
    }
    fn describe(&self, store: &mut Store<HostState>) -> wasmtime::Result<Described> {
        Ok(Described {
            info: self.igpo_plugins_reward_api().call_describe(store)?.into(),
            parameters_schema: None,
        })
    }
    fn init(
        &self,
        store: &mut Store<HostState>,
        config: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        self.igpo_plugins_reward_api().call_init(store, config)
    }
}

/// One agent turn as the reward plugin sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TurnRecord {
    pub text: String,
    #[serde(default)]
    pub tool_name: Option<String>,
    #[serde(default)]
    pub tool_arguments: Option<String>,
    #[serde(default)]
    pub tool_result: Option<String>,
    /// The engine's ground-truth probability after this turn.
    #[serde(default)]
    pub gt_probability: Option<f64>,
}

/// A finished trajectory to score.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrajectoryRecord {
    pub question: String,
    pub references: Vec<String>,
    #[serde(default)]
    pub final_answer: Option<String>,
    #[serde(default)]
    pub initial_gt_probability: Option<f64>,
    #[serde(default)]
    pub turns: Vec<TurnRecord>,
}

/// A reward plugin's verdict on one trajectory (already checked: finite,
/// one turn reward per turn, `details` a JSON object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardOutput {
    pub outcome: f64,
    pub turn_rewards: Option<Vec<f64>>,
    pub details: Option<serde_json::Value>,
}

/// One reward plugin with its pool of instances.
pub struct RewardPlugin {
    info: PluginInfo,
    pool: Pool<reward_wit::Reward>,
}

impl RewardPlugin {
    pub fn load(host: &PluginHost, spec: &PluginSpec) -> Result<RewardPlugin, PluginError> {
        let pool = Pool::<reward_wit::Reward>::load(host, spec, spec.path.display().to_string())?;
        let info = pool.described.info.clone();
        Ok(RewardPlugin { info, pool })
    }

    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Scores one trajectory. Safe from many threads at once.
    pub fn score(&self, t: &TrajectoryRecord) -> Result<RewardOutput, PluginError> {
        use reward_wit::exports::igpo::plugins::reward_api as api;
        let traj = api::Trajectory {
            question: t.question.clone(),
            references: t.references.clone(),
            final_answer: t.final_answer.clone(),
            initial_gt_probability: t.initial_gt_probability,
            turns: t
                .turns
                .iter()
                .map(|u| api::Turn {
                    text: u.text.clone(),
                    tool_name: u.tool_name.clone(),
                    tool_arguments: u.tool_arguments.clone(),
                    tool_result: u.tool_result.clone(),
                    gt_probability: u.gt_probability,
                })
                .collect(),
        };
        let plugin = &self.pool.label;
        let out = self
            .pool
            .call("score", |g, s| {
                g.igpo_plugins_reward_api().call_score(s, &traj)
            })?
            .map_err(|message| PluginError::Failed {
                plugin: plugin.clone(),
                message,
            })?;
        check_reward_output(
            plugin,
            out.outcome,
            out.turn_rewards,
            out.details,
            t.turns.len(),
        )
    }
}

/// What the host accepts of a reward plugin's output: a finite outcome,
/// finite turn rewards (one per turn) and details that are a JSON object.
/// Anything else is [`PluginError::InvalidOutput`].
pub(crate) fn check_reward_output(
    plugin: &str,
    outcome: f64,
    turn_rewards: Option<Vec<f64>>,
    details: Option<String>,
    n_turns: usize,
) -> Result<RewardOutput, PluginError> {
    let bad = |message: String| PluginError::InvalidOutput {
        plugin: plugin.to_string(),
        message,
    };
    if !outcome.is_finite() {
        return Err(bad(format!("outcome is {outcome}")));
    }
    if let Some(r) = &turn_rewards {
        if r.len() != n_turns {
            return Err(bad(format!("{} turn rewards for {n_turns} turns", r.len())));
        }
        if let Some(i) = r.iter().position(|x| !x.is_finite()) {
            return Err(bad(format!("turn reward {i} is {}", r[i])));
        }
    }
    let details = match details {
        None => None,
        Some(d) => match serde_json::from_str::<serde_json::Value>(&d) {
            Ok(v @ serde_json::Value::Object(_)) => Some(v),
            _ => {
                return Err(bad(format!(
                    "details is not a JSON object: {}",
                    truncate_output(d, 200)
                )))
            }
        },
    };
    Ok(RewardOutput {
        outcome,
        turn_rewards,
        details,
    })
}

// ------------------------------------------------------------- datasets

impl Kind for dataset_wit::Dataset {
    const WORLD: World = World::Dataset;
    type Pre = dataset_wit::DatasetPre<HostState>;
    fn linker() -> &'static Linker<HostState> {
        linker!(dataset_wit::Dataset, false)
    }
    fn pre(ip: InstancePre<HostState>) -> wasmtime::Result<Self::Pre> {
        dataset_wit::DatasetPre::new(ip)
    }
    fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> wasmtime::Result<Self> {
        pre.instantiate(store)
    }
    fn describe(&self, store: &mut Store<HostState>) -> wasmtime::Result<Described> {
        Ok(Described {
            info: self.igpo_plugins_dataset_api().call_describe(store)?.into(),
            parameters_schema: None,
        })
    }
    fn init(
        &self,
        store: &mut Store<HostState>,
        config: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        self.igpo_plugins_dataset_api().call_init(store, config)
    }
}

/// One question with its reference answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub id: String,
    pub question: String,
    pub answers: Vec<String>,
    /// A JSON object (title, context, ...), as the plugin gave it.
    pub metadata: serde_json::Value,
}

/// One dataset plugin (a single instance: datasets are read, not hammered).
pub struct DatasetPlugin {
    info: PluginInfo,
    splits: Vec<String>,
    pool: Pool<dataset_wit::Dataset>,
}

impl DatasetPlugin {
    pub fn load(host: &PluginHost, spec: &PluginSpec) -> Result<DatasetPlugin, PluginError> {
        let mut spec = spec.clone();
        spec.limits.instances = 1;
        let pool =
            Pool::<dataset_wit::Dataset>::load(host, &spec, spec.path.display().to_string())?;
        let info = pool.described.info.clone();
        let splits = pool.call("splits", |g, s| g.igpo_plugins_dataset_api().call_splits(s))?;
        Ok(DatasetPlugin { info, splits, pool })
    }

    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Named splits (empty when the dataset has none).
    pub fn splits(&self) -> &[String] {
        &self.splits
    }

    fn failed(&self, message: String) -> PluginError {
        PluginError::Failed {
            plugin: self.pool.label.clone(),
            message,
        }
    }

    /// Examples in `split` (`None` = all).
    pub fn len(&self, split: Option<&str>) -> Result<u64, PluginError> {
        let split = split.map(str::to_string);
        self.pool
            .call("len", |g, s| {
                g.igpo_plugins_dataset_api().call_len(s, split.as_deref())
            })?
            .map_err(|m| self.failed(m))
    }

    pub fn is_empty(&self, split: Option<&str>) -> Result<bool, PluginError> {
        Ok(self.len(split)? == 0)
    }

    /// Example `index` of `split` (`None` = all).
    pub fn get(&self, split: Option<&str>, index: u64) -> Result<Example, PluginError> {
        let e = self
            .pool
            .call("get", |g, s| {
                g.igpo_plugins_dataset_api().call_get(s, split, index)
            })?
            .map_err(|m| self.failed(m))?;
        let metadata = example_metadata(&self.pool.label, index, &e.metadata_json)?;
        Ok(Example {
            id: e.id,
            question: e.question,
            answers: e.answers,
            metadata,
        })
    }

    /// Every example of `split`, in order.
    pub fn examples(&self, split: Option<&str>) -> Result<Vec<Example>, PluginError> {
        (0..self.len(split)?).map(|i| self.get(split, i)).collect()
    }
}

/// A dataset example's `metadata-json`: empty is `{}`, else it must be JSON.
pub(crate) fn example_metadata(
    plugin: &str,
    index: u64,
    text: &str,
) -> Result<serde_json::Value, PluginError> {
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    serde_json::from_str(text).map_err(|err| PluginError::InvalidOutput {
        plugin: plugin.to_string(),
        message: format!("example {index}: metadata-json: {err}"),
    })
}

// --------------------------------------------------------- inspection

fn json_or_text(s: String) -> serde_json::Value {
    serde_json::from_str(&s).unwrap_or(serde_json::Value::String(s))
}

/// Finds the world and calls `describe` on a fresh instance (no `init`);
/// a declared schema that is not valid JSON Schema is an error.
pub(crate) fn describe(
    host: &PluginHost,
    spec: &PluginSpec,
) -> Result<PluginDescription, PluginError> {
    let component = host.component(&spec.path)?;
    let world = host.world_of(&spec.path, &component)?;
    let label = spec.path.display().to_string();
    let limits = &spec.limits;
    let http = super::pool::http_gate(spec, world)?;
    fn run<K: Kind>(
        host: &PluginHost,
        spec: &PluginSpec,
        store: &mut Store<HostState>,
    ) -> Result<wasmtime::Result<Described>, PluginError> {
        let pre = prepare::<K>(host, spec)?;
        Ok(K::instantiate(&pre, store).and_then(|g| g.describe(store)))
    }
    let mut store = super::host::new_store(spec, &http)?;
    store.set_epoch_deadline(super::host::ticks(limits.init_timeout));
    let described = match world {
        World::Tool => run::<tool_wit::Tool>(host, spec, &mut store)?,
        World::Reward => run::<reward_wit::Reward>(host, spec, &mut store)?,
        World::Dataset => run::<dataset_wit::Dataset>(host, spec, &mut store)?,
    }
    .map_err(|e| {
        super::host::classify(&label, "describe", limits, limits.init_timeout, &store, e)
    })?;
    described.schemas(&label)?;
    let Described {
        info,
        parameters_schema: params,
    } = described;
    Ok(PluginDescription {
        world,
        export: world.export_name(),
        name: info.name,
        version: info.version,
        description: info.description,
        config_schema: json_or_text(info.config_schema),
        parameters_schema: params.map(json_or_text),
    })
}
