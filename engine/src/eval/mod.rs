//! Agent runs over a dataset plugin: `igpo rollout` (trajectories to JSONL)
//! and `igpo eval` (EM / F1 through the reward plugin, turns, tool calls,
//! truncation rate).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::model::Model;
use crate::plugins::{
    DatasetPlugin, PluginHost, PluginSpec, RewardOutput, RewardPlugin, ToolPool, TrajectoryRecord,
    TurnRecord,
};
use crate::rollout::{run_agent, AgentConfig, RolloutStats, Task, Trajectory};
use crate::runfile::{RunFile, RunFileError};
use crate::tokenizer::Tokenizer;

/// A rollout / eval run file (TOML). Relative paths are relative to it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRunConfig {
    /// Hugging Face model folder.
    pub model: PathBuf,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub agent: AgentConfig,
    /// Tool plugins the agent may call (none = closed book).
    #[serde(default)]
    pub tools: Vec<PluginSpec>,
    pub dataset: DatasetConfig,
    /// Scores answers (`igpo eval`).
    pub reward: Option<PluginSpec>,
    /// Rollouts decoding together.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Rollouts of each question, one after the other (the G of a training
    /// group; they share the prompt's prefill, see
    /// `agent.share_prompt_prefixes`).
    #[serde(default = "default_rollouts_per_task")]
    pub rollouts_per_task: usize,
}

fn default_rollouts_per_task() -> usize {
    1
}

fn default_batch() -> usize {
    16
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    pub plugin: PluginSpec,
    /// Named split (e.g. "dev"); none = the whole dataset.
    pub split: Option<String>,
    /// Use the first `limit` examples; 0 = all.
    #[serde(default)]
    pub limit: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{path}: {msg}")]
    Config { path: String, msg: String },
    #[error("{0}")]
    Other(String),
}

impl From<RunFileError> for RunError {
    fn from(e: RunFileError) -> RunError {
        RunError::Config {
            path: e.path,
            msg: e.msg,
        }
    }
}

fn other<E: std::fmt::Display>(e: E) -> RunError {
    RunError::Other(e.to_string())
}

/// Makes a plugin's paths relative to the run file's folder `base`.
pub(crate) fn rebase(base: &Path, spec: &mut PluginSpec) {
    if spec.path.is_relative() {
        spec.path = base.join(&spec.path);
    }
    if let Some(d) = spec.readonly_dir.as_mut().filter(|d| d.is_relative()) {
        *d = base.join(&*d);
    }
}

impl AgentRunConfig {
    pub fn load(path: &Path) -> Result<AgentRunConfig, RunError> {
        AgentRunConfig::from_run_file(&RunFile::read(path, &[])?)
    }

    /// The config of a run file (with its `--set` overrides applied).
    pub fn from_run_file(file: &RunFile) -> Result<AgentRunConfig, RunError> {
        let p = file.path.display().to_string();
        let mut cfg: AgentRunConfig = file.parse()?;
        let base = file.base();
        if cfg.model.is_relative() {
            cfg.model = base.join(&cfg.model);
        }
        cfg.tools.iter_mut().for_each(|t| rebase(base, t));
        rebase(base, &mut cfg.dataset.plugin);
        if let Some(r) = cfg.reward.as_mut() {
            rebase(base, r);
        }
        if cfg.batch == 0 || cfg.rollouts_per_task == 0 {
            return Err(RunError::Config {
                path: p,
                msg: "batch and rollouts_per_task must be >= 1".into(),
            });
        }
        Ok(cfg)
    }
}

/// Loads the dataset plugin's examples as agent tasks.
pub fn load_tasks(host: &PluginHost, cfg: &DatasetConfig) -> Result<Vec<Task>, RunError> {
    let ds = DatasetPlugin::load(host, &cfg.plugin).map_err(other)?;
    let split = cfg.split.as_deref();
    let n = ds.len(split).map_err(other)? as usize;
    let n = if cfg.limit > 0 { n.min(cfg.limit) } else { n };
    (0..n)
        .map(|i| {
            let e = ds.get(split, i as u64).map_err(other)?;
            Ok(Task {
                id: e.id,
                question: e.question,
                answers: e.answers,
            })
        })
        .collect()
}

/// Runs the agent over the configured dataset on `backend`, `batch`
/// rollouts at a time.
pub fn rollout<B: Backend>(
    backend: B,
    cfg: &AgentRunConfig,
    host: &PluginHost,
) -> Result<(Vec<Trajectory>, RolloutStats), RunError> {
    let model = crate::model::load(&cfg.model, backend).map_err(other)?;
    let tok = Tokenizer::load_dir(&cfg.model).map_err(other)?;
    let tools = if cfg.tools.is_empty() {
        None
    } else {
        Some(Arc::new(ToolPool::load(host, &cfg.tools).map_err(other)?))
    };
    let tasks: Vec<Task> = load_tasks(host, &cfg.dataset)?
        .into_iter()
        .flat_map(|t| std::iter::repeat_n(t, cfg.rollouts_per_task))
        .collect();
    rollout_tasks(&model, &tok, tools, &cfg.agent, &tasks, cfg.batch, cfg.seed)
}

/// Runs the agent on `tasks` with a model in memory, `batch` rollouts
/// decoding together; chunk `c` is seeded with `seed + c * batch`.
pub fn rollout_tasks<B: Backend>(
    model: &Model<B>,
    tok: &Tokenizer,
    tools: Option<Arc<ToolPool>>,
    agent: &AgentConfig,
    tasks: &[Task],
    batch: usize,
    seed: u64,
) -> Result<(Vec<Trajectory>, RolloutStats), RunError> {
    let mut all = Vec::with_capacity(tasks.len());
    let mut stats = RolloutStats::default();
    for (c, chunk) in tasks.chunks(batch.max(1)).enumerate() {
        let seed = seed.wrapping_add((c * batch) as u64);
        let (t, s) = run_agent(model, tok, tools.clone(), agent, chunk, seed).map_err(other)?;
        all.extend(t);
        stats.add(&s);
    }
    Ok((all, stats))
}

/// The record a reward plugin scores.
pub fn reward_record(t: &Trajectory) -> TrajectoryRecord {
    TrajectoryRecord {
        question: t.question.clone(),
        references: t.answers.clone(),
        final_answer: t.final_answer.clone(),
        initial_gt_probability: None,
        turns: t
            .turns
            .iter()
            .map(|m| TurnRecord {
                text: m.text.clone(),
                tool_name: m.tool.clone(),
                tool_arguments: m.arguments.as_ref().map(|a| a.to_string()),
                tool_result: m.result.clone(),
                gt_probability: None,
            })
            .collect(),
    }
}

/// What `igpo eval` reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EvalReport {
    pub examples: usize,
    pub f1: f64,
    pub em: f64,
    /// F1 when a rollout without an `<answer>` is scored on its last turn's
    /// text instead (an untrained model rarely uses the answer format).
    pub lenient_f1: f64,
    pub answered: f64,
    pub mean_turns: f64,
    pub tool_calls: usize,
    pub truncation_rate: f64,
    pub reward_failures: usize,
    pub generated_tokens: usize,
    pub wall_s: f64,
}

/// Rolls out the dataset on `backend` and scores every answer with the
/// reward plugin.
pub fn eval<B: Backend>(
    backend: B,
    cfg: &AgentRunConfig,
    host: &PluginHost,
) -> Result<(EvalReport, Vec<Trajectory>), RunError> {
    let reward_spec = cfg
        .reward
        .as_ref()
        .ok_or_else(|| RunError::Other("eval needs a [reward] plugin".into()))?;
    let reward = RewardPlugin::load(host, reward_spec).map_err(other)?;
    let (trajs, stats) = rollout(backend, cfg, host)?;
    Ok((score_report(&trajs, &stats, &reward), trajs))
}

/// EM / F1 (through the reward plugin's `details`, falling back to its
/// outcome), turns, tool calls and truncation of finished rollouts.
pub fn score_report(
    trajs: &[Trajectory],
    stats: &RolloutStats,
    reward: &RewardPlugin,
) -> EvalReport {
    let n = trajs.len().max(1) as f64;
    let mut r = EvalReport {
        examples: trajs.len(),
        tool_calls: stats.tool_calls,
        generated_tokens: stats.generated_tokens,
        wall_s: stats.wall_s,
        ..Default::default()
    };
    for t in trajs {
        r.mean_turns += t.turns.len() as f64 / n;
        r.truncation_rate += t.truncated as u8 as f64 / n;
        r.answered += t.final_answer.is_some() as u8 as f64 / n;
        let f1_of = |rec: &TrajectoryRecord| -> Option<(f64, f64)> {
            match reward.score(rec) {
                Ok(out) => Some(f1_em(&out)),
                Err(e) => {
                    tracing::warn!("reward plugin failed on `{}`: {e}", t.id);
                    None
                }
            }
        };
        let mut rec = reward_record(t);
        match f1_of(&rec) {
            Some((f1, em)) => {
                r.f1 += f1 / n;
                r.em += em / n;
                if t.final_answer.is_none() {
                    rec.final_answer = t.turns.last().map(|m| m.text.clone());
                    r.lenient_f1 += f1_of(&rec).map(|x| x.0).unwrap_or(0.0) / n;
                } else {
                    r.lenient_f1 += f1 / n;
                }
            }
            None => r.reward_failures += 1,
        }
    }
    r
}

/// F1 and EM of a reward plugin's verdict: its `details` when it reports
/// them, else the outcome as F1.
pub fn f1_em(out: &RewardOutput) -> (f64, f64) {
    let d = out.details.clone().unwrap_or_default();
    let f1 = d.get("f1").and_then(|v| v.as_f64()).unwrap_or(out.outcome);
    (f1, d.get("em").and_then(|v| v.as_f64()).unwrap_or(0.0))
}
