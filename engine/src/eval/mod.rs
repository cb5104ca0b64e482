//! Agent runs over a dataset plugin: `igpo rollout` (trajectories to JSONL)
//! and `igpo eval` (EM / F1 through the reward plugin, turns, tool calls,
//! truncation rate).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::backend::Backend;
use crate::model::ModelError;
use crate::plugins::{PluginError, PluginHost, PluginSpec, RewardPlugin, ToolPool};
use crate::rollout::{AgentConfig, RolloutError, RolloutStats, Task, Trajectory};
use crate::runfile::{RunFile, RunFileError};
use crate::tasks::{load_tasks, rollout_tasks, score_report, DatasetConfig, EvalReport};
use crate::tokenizer::{Tokenizer, TokenizerError};

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

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{path}: {msg}")]
    Config { path: String, msg: String },
    #[error("eval needs a [reward] plugin in the run file")]
    NoReward,
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Rollout(#[from] RolloutError),
}

impl From<RunFileError> for RunError {
    fn from(e: RunFileError) -> RunError {
        RunError::Config {
            path: e.path,
            msg: e.msg,
        }
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
        file.rebase([&mut cfg.model]);
        cfg.tools.iter_mut().for_each(|t| file.rebase_plugin(t));
        file.rebase_plugin(&mut cfg.dataset.plugin);
        if let Some(r) = cfg.reward.as_mut() {
            file.rebase_plugin(r);
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

/// Runs the agent over the configured dataset on `backend`, `batch`
/// rollouts at a time.
pub fn rollout<B: Backend>(
    backend: B,
    cfg: &AgentRunConfig,
    host: &PluginHost,
) -> Result<(Vec<Trajectory>, RolloutStats), RunError> {
    let model = crate::model::load(&cfg.model, backend)?;
    let tok = Tokenizer::load_dir(&cfg.model)?;
    let tools = if cfg.tools.is_empty() {
        None
    } else {
        Some(Arc::new(ToolPool::load(host, &cfg.tools)?))
    };
    let tasks: Vec<Task> = load_tasks(host, &cfg.dataset)?
        .into_iter()
        .flat_map(|t| std::iter::repeat_n(t, cfg.rollouts_per_task))
        .collect();
    Ok(rollout_tasks(
        &model, &tok, tools, &cfg.agent, &tasks, cfg.batch, cfg.seed,
    )?)
}

/// Rolls out the dataset on `backend` and scores every answer with the
/// reward plugin.
pub fn eval<B: Backend>(
    backend: B,
    cfg: &AgentRunConfig,
    host: &PluginHost,
) -> Result<(EvalReport, Vec<Trajectory>), RunError> {
    let reward_spec = cfg.reward.as_ref().ok_or(RunError::NoReward)?;
    let reward = RewardPlugin::load(host, reward_spec)?;
    let (trajs, stats) = rollout(backend, cfg, host)?;
    Ok((score_report(&trajs, &stats, &reward), trajs))
}
