//! The RL run file: `RlRunConfig` and its sections, read and checked before
//! any work (every error names the file and field).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::plugins::PluginSpec;
use crate::rl::{
    Estimator, IgForm, LossConfig, Normalization, ProbeAnswers, ProbeTemplate,
    DEFAULT_PROBE_TEMPLATE,
};
use crate::rollout::AgentConfig;
use crate::runfile::RunFile;
use crate::tasks::DatasetConfig;
use crate::train::checkpoint::CheckpointDType;
use crate::train::optim::{OptimConfig, ScheduleConfig};
use crate::train::run::{LoopConfig, RunOptions, TrainError};

/// A whole RL run file (TOML). Unknown keys are errors; relative paths are
/// relative to the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlRunConfig {
    /// Hugging Face model folder: the initial policy (and the KL reference).
    pub model: PathBuf,
    #[serde(default)]
    pub agent: AgentConfig,
    /// Tool plugins the agent may call.
    #[serde(default)]
    pub tools: Vec<PluginSpec>,
    /// Training prompts.
    pub dataset: DatasetConfig,
    /// Scores final answers (the outcome reward).
    pub reward: PluginSpec,
    /// Dev evaluation (greedy by default) before, during and after training.
    pub eval: Option<RlEvalConfig>,
    #[serde(default)]
    pub rl: RlConfig,
    #[serde(default)]
    pub loss: LossConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub train: RlTrainConfig,
}

/// `[rl]`: rollouts, rewards and advantages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlConfig {
    pub estimator: Estimator,
    /// Rollouts per prompt (G).
    pub group_size: usize,
    pub prompts_per_step: usize,
    /// Discount over turns, in (0, 1].
    pub gamma: f64,
    pub normalization: Normalization,
    pub ig_form: IgForm,
    /// What follows a turn boundary when the ground truth is scored;
    /// `{answer}` marks the scored answer.
    pub probe_template: String,
    pub probe_answers: ProbeAnswers,
    /// Score p_t for estimators that do not reward with it too (for the
    /// ground-truth entropy figure and the samples; never a reward there).
    pub score_baselines: bool,
    /// Outcome reward of a rollout that never answered or broke its tags.
    pub format_penalty: f64,
    /// Rollouts decoding together.
    pub rollout_batch: usize,
}

impl Default for RlConfig {
    fn default() -> Self {
        RlConfig {
            estimator: Estimator::Igpo,
            group_size: 4,
            prompts_per_step: 4,
            gamma: 1.0,
            normalization: Normalization::Joint,
            ig_form: IgForm::ProbDiff,
            probe_template: DEFAULT_PROBE_TEMPLATE.to_string(),
            probe_answers: ProbeAnswers::First,
            score_baselines: true,
            format_penalty: -2.0,
            rollout_batch: 16,
        }
    }
}

/// `[eval]`: the dev split run through the agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlEvalConfig {
    /// Split of the training dataset plugin.
    pub split: Option<String>,
    /// First `limit` examples; 0 = all.
    pub limit: usize,
    /// Evaluate every this many steps (and before the first and after the
    /// last); 0 = only before and after.
    pub every: u64,
    /// 0 = greedy.
    pub temperature: f32,
    pub batch: usize,
}

impl Default for RlEvalConfig {
    fn default() -> Self {
        RlEvalConfig {
            split: Some("dev".into()),
            limit: 0,
            every: 0,
            temperature: 0.0,
            batch: 16,
        }
    }
}

/// `[train]`: the step loop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlTrainConfig {
    /// Output folder: config copy, metrics.jsonl, eval.jsonl, samples/, checkpoints/, tb/.
    pub run_dir: PathBuf,
    pub steps: u64,
    /// Passes over a step's rollouts.
    pub ppo_epochs: usize,
    /// Optimizer updates per epoch (the rollouts split evenly).
    pub mini_batches: usize,
    /// Rollouts per forward/backward (memory, not math).
    pub micro_batch: usize,
    pub seed: u64,
    /// Checkpoint every this many steps (and at the end); 0 = only at the end.
    pub checkpoint_every: u64,
    pub keep_last: usize,
    /// Dtype of each checkpoint's `model/` folder (its `state/` keeps f32).
    pub checkpoint_dtype: CheckpointDType,
    pub logprob_chunk: usize,
    pub recompute_activations: bool,
    /// Trajectories written to `samples/step-N.jsonl` per step.
    pub samples_per_step: usize,
}

impl Default for RlTrainConfig {
    fn default() -> Self {
        RlTrainConfig {
            run_dir: PathBuf::from("runs/igpo"),
            steps: 50,
            ppo_epochs: 1,
            mini_batches: 1,
            micro_batch: 8,
            seed: 0,
            checkpoint_every: 25,
            keep_last: 2,
            checkpoint_dtype: CheckpointDType::Bf16,
            logprob_chunk: 8192,
            recompute_activations: false,
            samples_per_step: 4,
        }
    }
}

impl RlRunConfig {
    /// Reads and checks a run file: every error here comes before any work.
    pub fn load(path: &Path) -> Result<RlRunConfig, TrainError> {
        let file = RunFile::read(path, &[]).map_err(TrainError::from)?;
        RlRunConfig::from_run_file(&file)
    }

    /// The config of a run file (with its `--set` overrides applied).
    pub fn from_run_file(file: &RunFile) -> Result<RlRunConfig, TrainError> {
        let p = file.path.display().to_string();
        let bad = |msg: String| TrainError::Config {
            path: p.clone(),
            msg,
        };
        let mut cfg: RlRunConfig = file.parse()?;
        file.rebase([&mut cfg.model, &mut cfg.train.run_dir]);
        cfg.tools.iter_mut().for_each(|t| file.rebase_plugin(t));
        file.rebase_plugin(&mut cfg.dataset.plugin);
        file.rebase_plugin(&mut cfg.reward);
        let r = &cfg.rl;
        if r.group_size < 2 {
            return Err(bad(format!(
                "rl.group_size must be >= 2 (got {}): advantages compare the rollouts of one prompt",
                r.group_size
            )));
        }
        if !(r.gamma > 0.0 && r.gamma <= 1.0) {
            return Err(bad(format!("rl.gamma must be in (0, 1] (got {})", r.gamma)));
        }
        if r.prompts_per_step == 0 || r.rollout_batch == 0 {
            return Err(bad(
                "rl.prompts_per_step and rl.rollout_batch must be >= 1".into()
            ));
        }
        ProbeTemplate::parse(&r.probe_template)
            .map_err(|e| bad(format!("rl.probe_template: {e}")))?;
        if !r.format_penalty.is_finite() {
            return Err(bad("rl.format_penalty must be finite".into()));
        }
        let l = &cfg.loss;
        if !(l.clip_low >= 0.0 && l.clip_low < 1.0 && l.clip_high >= 0.0) {
            return Err(bad(
                "loss.clip_low must be in [0, 1) and loss.clip_high >= 0".into(),
            ));
        }
        if !(l.kl_beta >= 0.0 && l.entropy_coef >= 0.0)
            || (l.dual_clip != 0.0 && l.dual_clip <= 1.0)
        {
            return Err(bad(
                "loss.kl_beta and loss.entropy_coef must be >= 0, loss.dual_clip 0 (off) or > 1"
                    .into(),
            ));
        }
        let t = &cfg.train;
        let rollouts = r.group_size * r.prompts_per_step;
        if t.ppo_epochs == 0 || t.micro_batch == 0 || t.logprob_chunk == 0 {
            return Err(bad(
                "train.ppo_epochs, train.micro_batch and train.logprob_chunk must be >= 1".into(),
            ));
        }
        if t.mini_batches == 0 || t.mini_batches > rollouts {
            return Err(bad(format!(
                "train.mini_batches must be in 1..={rollouts} (the rollouts of a step)"
            )));
        }
        cfg.optim.check().map_err(bad)?;
        let plugins = cfg
            .tools
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("tools[{i}].path"), s))
            .chain([
                ("dataset.plugin.path".to_string(), &cfg.dataset.plugin),
                ("reward.path".to_string(), &cfg.reward),
            ]);
        for (field, spec) in plugins {
            if !spec.path.is_file() {
                return Err(bad(format!(
                    "{field}: plugin file {} not found",
                    spec.path.display()
                )));
            }
        }
        if !crate::model::hf_dir(&cfg.model)
            .join("config.json")
            .is_file()
        {
            return Err(bad(format!(
                "model: {} is not a model folder (no config.json)",
                cfg.model.display()
            )));
        }
        Ok(cfg)
    }

    /// What the shared run loop reads from this file.
    pub(crate) fn loop_config(&self, options: &RunOptions) -> LoopConfig {
        let t = &self.train;
        LoopConfig {
            run_dir: t.run_dir.clone(),
            model: self.model.clone(),
            optim: self.optim.clone(),
            seed: t.seed,
            steps: t.steps,
            checkpoint_every: t.checkpoint_every,
            keep_last: t.keep_last,
            checkpoint_dtype: t.checkpoint_dtype,
            tb_prefix: "train/",
            options: options.clone(),
        }
    }
}
