//! `igpo train`: the RL step loop. Dataset plugin -> G rollouts per prompt ->
//! ground-truth scoring -> rewards -> advantages -> clipped-surrogate
//! updates -> periodic dev evaluation -> checkpoints (resumable).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::checkpoint::{
    load_checkpoint_state, resume_point, save_checkpoint, CheckpointDType, DataPosition,
    TrainerState,
};
use super::optim::{AdamW, OptimConfig, ScheduleConfig};
use super::sft::{shuffled, TrainError};
use super::tensorboard::{json_lines, EventWriter};
use crate::backend::Backend;
use crate::eval::{
    f1_em, load_tasks, rebase, reward_record, rollout_tasks, score_report, DatasetConfig,
    EvalReport,
};
use crate::model::{Model, TrainSeq};
use crate::plugins::{PluginHost, PluginSpec, RewardPlugin, ToolPool};
use crate::rl::{
    advantages, gt_probabilities, outcome_reward, policy_loss, rollout_rewards, score,
    spread_over_tokens, token_weights, tokens_per_turn, turn_boundaries, Estimator, IgForm,
    LossConfig, LossInputs, LossStats, Normalization, Probe, ProbeAnswers, ProbeTemplate,
    RolloutRewards, ScoreRequest, DEFAULT_PROBE_TEMPLATE,
};
use crate::rng::Rng;
use crate::rollout::protocol::tags_balanced;
use crate::rollout::{AgentConfig, Task, Trajectory};
use crate::runfile::RunFile;
use crate::tensor::Tensor;
use crate::tokenizer::Tokenizer;

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
        let base = file.base();
        for p in [&mut cfg.model, &mut cfg.train.run_dir] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.tools.iter_mut().for_each(|t| rebase(base, t));
        rebase(base, &mut cfg.dataset.plugin);
        rebase(base, &mut cfg.reward);
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
        if cfg.optim.lr.is_nan() || cfg.optim.lr < 0.0 {
            return Err(bad("optim.lr must be >= 0".into()));
        }
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
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RlMetrics {
    pub step: u64,
    /// Mean outcome reward (after the format penalty).
    pub outcome_reward: f64,
    /// Mean F1 of the training rollouts' answers.
    pub f1: f64,
    pub answer_rate: f64,
    pub mean_turns: f64,
    /// Information gain per turn index: mean and std over the step's rollouts.
    pub ig_mean: Vec<f64>,
    pub ig_std: Vec<f64>,
    /// Mean of `-ln p_0 - (-ln p_{T-1})`: how much the turns lowered the
    /// ground truth's surprisal (0 without scoring).
    pub gt_entropy_drop: f64,
    pub zero_adv_ratio: f64,
    pub kl: f64,
    pub entropy: f64,
    pub clip_frac: f64,
    /// Mean importance ratio `pi / pi_old` over the loss tokens (1 on policy).
    pub ratio_mean: f64,
    pub pg_loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    /// Tokens that produced gradients this step (every epoch counted).
    pub grad_tokens: usize,
    pub cum_grad_tokens: usize,
    /// Mean |sampled log-prob - recomputed old log-prob| over generated tokens.
    pub logprob_delta: f64,
    pub reward_failures: usize,
    pub generated_tokens: usize,
    pub rollout_s: f64,
    pub scoring_s: f64,
    pub update_s: f64,
    /// Dev F1 when the step ended with an evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_f1: Option<f64>,
}

/// One line of `eval.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DevEval {
    pub step: u64,
    pub cum_grad_tokens: usize,
    pub f1: f64,
    pub em: f64,
    pub answered: f64,
    pub mean_turns: f64,
    pub tool_calls: usize,
    pub examples: usize,
}

/// Options of one invocation (not part of the run file).
#[derive(Clone, Debug, Default)]
pub struct RlRunOptions {
    pub resume: bool,
    /// Stop after this step (its checkpoint is written), as if killed.
    pub stop_after: Option<u64>,
}

pub struct RlOutcome {
    pub metrics: Vec<RlMetrics>,
    pub evals: Vec<DevEval>,
    pub final_checkpoint: Option<PathBuf>,
}

/// A scored rollout ready for the update.
pub(crate) struct Sample {
    pub(crate) traj: Trajectory,
    /// Per-token advantage (0 off the loss mask).
    pub(crate) adv: Vec<f32>,
    /// Old (and reference) log-prob of token `j` at index `j` (0 off the mask).
    pub(crate) old: Vec<f32>,
    pub(crate) reference: Vec<f32>,
}

fn other<E: std::fmt::Display>(e: E) -> TrainError {
    TrainError::Other(e.to_string())
}

/// Causal sequences of the trajectories, and per row the next token.
fn causal_rows(trajs: &[&Trajectory]) -> (Vec<Vec<usize>>, Vec<u32>) {
    let positions: Vec<Vec<usize>> = trajs
        .iter()
        .map(|t| (0..t.tokens.len()).collect())
        .collect();
    let mut targets = vec![];
    for t in trajs {
        targets.extend(t.tokens[1..].iter().copied());
        targets.push(0);
    }
    (positions, targets)
}

/// Log-prob of every loss token `j` of each trajectory under `model` (no
/// gradient), indexed by `j` (0 elsewhere).
pub fn sequence_logprobs<B: Backend>(
    model: &Model<B>,
    trajs: &[&Trajectory],
    chunk: usize,
) -> Vec<Vec<f32>> {
    let (positions, targets) = causal_rows(trajs);
    let seqs: Vec<TrainSeq<'_>> = trajs
        .iter()
        .zip(&positions)
        .map(|(t, p)| TrainSeq::causal(&t.tokens, p))
        .collect();
    let acts = model.forward_train_with(&seqs, true);
    let rows = loss_rows(trajs);
    let b = model.backend();
    let hidden = b.gather_rows(&acts.hidden, &rows);
    let picked: Vec<u32> = rows.iter().map(|&r| targets[r]).collect();
    let logp = b.download(&model.token_logprobs(&hidden, &picked, chunk, false).logp);
    let mut out: Vec<Vec<f32>> = trajs.iter().map(|t| vec![0.0f32; t.tokens.len()]).collect();
    let mut it = logp.data().iter();
    for (t, o) in trajs.iter().zip(out.iter_mut()) {
        // Row 0 has no log-prob (nothing predicts the first token).
        for (o, &mask) in o.iter_mut().zip(&t.loss_mask).skip(1) {
            if mask == 1 {
                *o = *it.next().expect("one log-prob per loss row");
            }
        }
    }
    out
}

/// Packed row `r` predicts loss token `r + 1` of its sequence: the rows of
/// every loss token, in order.
fn loss_rows(trajs: &[&Trajectory]) -> Vec<usize> {
    let mut rows = vec![];
    let mut row0 = 0;
    for t in trajs {
        for j in 1..t.tokens.len() {
            if t.loss_mask[j] == 1 {
                rows.push(row0 + j - 1);
            }
        }
        row0 += t.tokens.len();
    }
    rows
}

/// One optimizer update on a mini-batch of samples; adds into `stats`.
#[allow(clippy::too_many_arguments)]
fn update_mini_batch<B: Backend>(
    model: &mut Model<B>,
    opt: &mut AdamW<B>,
    batch: &[&Sample],
    loss_cfg: &LossConfig,
    sequence_ratio: bool,
    micro: usize,
    chunk: usize,
    recompute: bool,
    lr: f64,
    stats: &mut LossStats,
) -> f64 {
    let grads = mini_batch_grads(
        model,
        batch,
        loss_cfg,
        sequence_ratio,
        micro,
        chunk,
        recompute,
        stats,
    );
    let b = model.backend().clone();
    let params = model.params_mut();
    opt.update(&b, params, &grads, lr, 1).grad_norm
}

/// The policy-loss gradient of a mini-batch (summed over its micro-batches
/// of `micro` samples); adds into `stats`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mini_batch_grads<B: Backend>(
    model: &Model<B>,
    batch: &[&Sample],
    loss_cfg: &LossConfig,
    sequence_ratio: bool,
    micro: usize,
    chunk: usize,
    recompute: bool,
    stats: &mut LossStats,
) -> Vec<B::Tensor> {
    let b = model.backend().clone();
    // Aggregation weights over the whole mini-batch.
    let seq_of: Vec<usize> = batch
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            std::iter::repeat_n(i, s.traj.loss_mask.iter().filter(|&&m| m == 1).count())
        })
        .collect();
    let weights = token_weights(loss_cfg.aggregation, &seq_of);
    let mut grads = model.zero_grads();
    let mut w_at = 0;
    for (mi, part) in batch.chunks(micro).enumerate() {
        let trajs: Vec<&Trajectory> = part.iter().map(|s| &s.traj).collect();
        let (positions, targets) = causal_rows(&trajs);
        let seqs: Vec<TrainSeq<'_>> = trajs
            .iter()
            .zip(&positions)
            .map(|(t, p)| TrainSeq::causal(&t.tokens, p))
            .collect();
        let rows = loss_rows(&trajs);
        if rows.is_empty() {
            continue;
        }
        let acts = model.forward_train_with(&seqs, recompute);
        let hidden = b.gather_rows(&acts.hidden, &rows);
        let picked: Vec<u32> = rows.iter().map(|&r| targets[r]).collect();
        let out = model.token_logprobs(&hidden, &picked, chunk, true);
        let logp = b.download(&out.logp).into_data();
        let ent = b
            .download(out.entropy.as_ref().expect("entropy asked for"))
            .into_data();
        let (mut old, mut reference, mut adv, mut seq) = (vec![], vec![], vec![], vec![]);
        for (k, s) in part.iter().enumerate() {
            for j in 1..s.traj.tokens.len() {
                if s.traj.loss_mask[j] == 1 {
                    old.push(s.old[j]);
                    reference.push(s.reference[j]);
                    adv.push(s.adv[j]);
                    seq.push(mi * micro + k);
                }
            }
        }
        let first_seq = seq[0];
        let local_seq: Vec<usize> = seq.iter().map(|s| s - first_seq).collect();
        let w = &weights[w_at..w_at + rows.len()];
        w_at += rows.len();
        let lo = policy_loss(
            loss_cfg,
            sequence_ratio,
            &LossInputs {
                logp: &logp,
                old_logp: &old,
                ref_logp: (loss_cfg.kl_beta > 0.0).then_some(&reference[..]),
                entropy: Some(&ent),
                advantage: &adv,
                seq: &local_seq,
                weight: w,
            },
        );
        stats.add(&lo.stats);
        let n = rows.len();
        let dlogp = b.upload(&Tensor::from_vec(&[n], lo.dlogp));
        let dent = (loss_cfg.entropy_coef > 0.0)
            .then(|| b.upload(&Tensor::from_vec(&[n], lo.dentropy.expect("entropy given"))));
        let d_picked = model.token_logprobs_backward(
            &hidden,
            &picked,
            &out,
            &dlogp,
            dent.as_ref(),
            chunk,
            &mut grads,
        );
        let d_hidden = crate::backend::scatter_rows(&b, &d_picked, &rows, targets.len());
        model.backward(&acts, &d_hidden, &mut grads);
    }
    grads
}

/// A sample line of `samples/step-N.jsonl`.
#[derive(Serialize)]
struct SampleRecord<'a> {
    id: &'a str,
    question: &'a str,
    answers: &'a [String],
    final_answer: Option<&'a str>,
    f1: f64,
    outcome_reward: f64,
    /// `p_0..p_{T-1}`.
    gt_probability: &'a [f64],
    turn_rewards: Vec<f64>,
    turn_advantages: &'a [f64],
    text: &'a str,
}

/// Appends `v` as one line to `path` and its scalars, tagged `tag_prefix` +
/// key, to the TensorBoard events.
fn append_line<T: Serialize>(
    file: &mut std::fs::File,
    path: &Path,
    v: &T,
    tb: &mut EventWriter,
    tag_prefix: &str,
) -> Result<(), TrainError> {
    let line = serde_json::to_string(v).expect("json") + "\n";
    file.write_all(line.as_bytes())
        .map_err(|e| TrainError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
    tb.write_json_line(tag_prefix, &line)
}

/// Keeps the lines of `path` up to `step` (a resumed run rewrites what came
/// after its checkpoint) and opens it for appending.
fn reopen_log<T: Serialize + for<'de> Deserialize<'de>>(
    path: &Path,
    keep_to: Option<u64>,
    step_of: impl Fn(&T) -> u64,
) -> Result<(Vec<T>, std::fs::File), TrainError> {
    let io = |e| TrainError::Io {
        path: path.display().to_string(),
        source: e,
    };
    let kept: Vec<T> = match keep_to {
        Some(s) => std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<T>(l).ok())
            .filter(|m| step_of(m) <= s)
            .collect(),
        None => vec![],
    };
    let text: String = kept
        .iter()
        .map(|m| serde_json::to_string(m).expect("json") + "\n")
        .collect();
    crate::fsutil::write_atomic(path, text.as_bytes()).map_err(io)?;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io)?;
    Ok((kept, file))
}

/// Runs (or resumes) an RL job on `backend` (the policy, its reference
/// copy, AdamW state and every rollout live there).
pub fn run_train<B: Backend>(
    backend: B,
    cfg: &RlRunConfig,
    config_text: &str,
    opts: &RlRunOptions,
) -> Result<RlOutcome, TrainError> {
    let run_dir = &cfg.train.run_dir;
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |e| TrainError::Io { path, source: e }
    };
    // Everything that can fail on input loads before the first rollout.
    let host = PluginHost::default();
    let tools = if cfg.tools.is_empty() {
        None
    } else {
        Some(Arc::new(ToolPool::load(&host, &cfg.tools).map_err(other)?))
    };
    let reward = RewardPlugin::load(&host, &cfg.reward).map_err(other)?;
    let train_tasks = load_tasks(&host, &cfg.dataset).map_err(other)?;
    if train_tasks.is_empty() {
        return Err(other(format!(
            "{}: the training split has no examples",
            cfg.dataset.plugin.path.display()
        )));
    }
    let dev_tasks = match &cfg.eval {
        Some(e) => load_tasks(
            &host,
            &DatasetConfig {
                plugin: cfg.dataset.plugin.clone(),
                split: e.split.clone(),
                limit: e.limit,
            },
        )
        .map_err(other)?,
        None => vec![],
    };
    let tok = Tokenizer::load_dir(&cfg.model)?;
    let template = ProbeTemplate::parse(&cfg.rl.probe_template).map_err(other)?;
    std::fs::create_dir_all(run_dir.join("samples")).map_err(io(run_dir))?;

    let resume_from = if opts.resume {
        resume_point(run_dir)?
    } else {
        None
    };
    let weights_dir = resume_from
        .as_ref()
        .map(|(_, d)| d.clone())
        .unwrap_or_else(|| cfg.model.clone());
    let mut model = crate::model::load(&weights_dir, backend.clone())?;
    let reference = if cfg.loss.kl_beta > 0.0 {
        Some(crate::model::load(&cfg.model, backend.clone())?)
    } else {
        None
    };
    let mut opt = AdamW::new(
        &backend,
        cfg.optim.clone(),
        model.param_names(),
        model.params(),
    );
    let mut rng = Rng::new(cfg.train.seed);
    let mut state = TrainerState {
        step: 0,
        rng: [0; 4],
        data: DataPosition::default(),
        order: shuffled(train_tasks.len(), &mut rng),
    };
    state.rng = rng.state();
    if let Some((step, dir)) = &resume_from {
        state = load_checkpoint_state(dir, &model, &mut opt)?;
        rng = Rng::from_state(state.rng);
        tracing::info!("resuming from {} (step {step})", dir.display());
    }
    let keep_to = resume_from.as_ref().map(|(s, _)| *s);
    crate::fsutil::write_atomic(&run_dir.join("config.toml"), config_text.as_bytes())
        .map_err(io(run_dir))?;
    let metrics_path = run_dir.join("metrics.jsonl");
    let (mut history, mut metrics_file) =
        reopen_log::<RlMetrics>(&metrics_path, keep_to, |m| m.step)?;
    let eval_path = run_dir.join("eval.jsonl");
    let (mut evals, mut eval_file) = reopen_log::<DevEval>(&eval_path, keep_to, |m| m.step)?;
    let mut tb = EventWriter::restart(run_dir)?;
    tb.write_history(&[
        ("eval/", &json_lines(&evals)),
        ("train/", &json_lines(&history)),
    ])?;
    let mut cum_tokens = history.last().map_or(0, |m| m.cum_grad_tokens);

    let dev_eval = |model: &Model<B>, step: u64, cum: usize| -> Result<DevEval, TrainError> {
        let e = cfg.eval.as_ref().expect("eval configured");
        let agent = AgentConfig {
            temperature: e.temperature,
            ..cfg.agent.clone()
        };
        let (trajs, stats) = rollout_tasks(
            model,
            &tok,
            tools.clone(),
            &agent,
            &dev_tasks,
            e.batch,
            cfg.train.seed,
        )
        .map_err(other)?;
        let r: EvalReport = score_report(&trajs, &stats, &reward);
        Ok(DevEval {
            step,
            cum_grad_tokens: cum,
            f1: r.f1,
            em: r.em,
            answered: r.answered,
            mean_turns: r.mean_turns,
            tool_calls: r.tool_calls,
            examples: r.examples,
        })
    };
    let has_eval = cfg.eval.is_some() && !dev_tasks.is_empty();
    if has_eval && resume_from.is_none() {
        let e = dev_eval(&model, 0, 0)?;
        tracing::info!(
            "step 0: dev F1 {:.3}, EM {:.3} ({} examples)",
            e.f1,
            e.em,
            e.examples
        );
        append_line(&mut eval_file, &eval_path, &e, &mut tb, "eval/")?;
        evals.push(e);
    }

    let total = cfg.train.steps;
    let g = cfg.rl.group_size;
    // Baselines (GRPO, ...) ignore p_t in their advantages; scoring it anyway
    // lets a report compare how much each run's turns inform the policy.
    let score_gt = cfg.rl.estimator.uses_information_gain() || cfg.rl.score_baselines;
    let chunk = cfg.train.logprob_chunk;
    let mut final_checkpoint = None;
    // On a terminal: a live bar with ETA and the step line above it; in a
    // log: the step line alone.
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps, eta {eta} | {msg}")
            .expect("template"),
    );
    bar.set_position(state.step);
    while state.step < total {
        let step = state.step + 1;
        // Prompts of this step, each G times.
        let mut tasks: Vec<Task> = vec![];
        for _ in 0..cfg.rl.prompts_per_step {
            if state.data.index as usize >= train_tasks.len() {
                state.data = DataPosition {
                    epoch: state.data.epoch + 1,
                    index: 0,
                };
                state.order = shuffled(train_tasks.len(), &mut rng);
            }
            let t = &train_tasks[state.order[state.data.index as usize] as usize];
            state.data.index += 1;
            tasks.extend((0..g).map(|k| Task {
                id: format!("{}#{k}", t.id),
                ..t.clone()
            }));
        }
        let t0 = Instant::now();
        let (trajs, rstats) = rollout_tasks(
            &model,
            &tok,
            tools.clone(),
            &cfg.agent,
            &tasks,
            cfg.rl.rollout_batch,
            rng.next_u64(),
        )
        .map_err(other)?;
        let rollout_s = t0.elapsed().as_secs_f64();

        // Ground-truth probabilities after every turn boundary.
        let t1 = Instant::now();
        let mut p: Vec<Vec<f64>> = vec![vec![]; trajs.len()];
        if score_gt {
            let bounds: Vec<Vec<usize>> = trajs.iter().map(turn_boundaries).collect();
            let probes: Vec<Vec<Probe>> = trajs
                .iter()
                .map(|t| {
                    let answers = match cfg.rl.probe_answers {
                        ProbeAnswers::First => &t.answers[..t.answers.len().min(1)],
                        ProbeAnswers::Max => &t.answers[..],
                    };
                    answers
                        .iter()
                        .map(|a| template.probe(&tok, a))
                        .filter(|p| p.as_ref().map_or(true, |p| !p.answer.is_empty()))
                        .collect::<Result<Vec<_>, _>>()
                })
                .collect::<Result<_, _>>()?;
            let idx: Vec<usize> = (0..trajs.len())
                .filter(|&i| !probes[i].is_empty())
                .collect();
            for part in idx.chunks(cfg.train.micro_batch) {
                let reqs: Vec<ScoreRequest<'_>> = part
                    .iter()
                    .map(|&i| ScoreRequest {
                        tokens: &trajs[i].tokens,
                        boundaries: &bounds[i],
                        probes: &probes[i],
                    })
                    .collect();
                for (&i, s) in part.iter().zip(score(&model, &reqs, chunk)) {
                    p[i] = gt_probabilities(&s);
                }
            }
        }
        let scoring_s = t1.elapsed().as_secs_f64();

        // Rewards; a rollout whose reward failed is dropped, never scored 0.
        let t2 = Instant::now();
        let mut groups: Vec<Vec<RolloutRewards>> = vec![];
        let mut kept: Vec<Vec<usize>> = vec![];
        let (mut failures, mut f1_sum, mut outcome_sum) = (0usize, 0.0, 0.0);
        let mut f1_of = vec![0.0; trajs.len()];
        for (gi, block) in trajs.chunks(g).enumerate() {
            let (mut rs, mut ks) = (vec![], vec![]);
            for (k, t) in block.iter().enumerate() {
                let i = gi * g + k;
                let mut rec = reward_record(t);
                rec.initial_gt_probability = p[i].first().copied();
                for (turn, r) in rec.turns.iter_mut().enumerate() {
                    r.gt_probability = p[i].get(turn + 1).copied();
                }
                match reward.score(&rec) {
                    Ok(out) => {
                        let well_formed = t.final_answer.is_some()
                            && t.turns.iter().all(|m| tags_balanced(&m.text));
                        let outcome =
                            outcome_reward(out.outcome, well_formed, cfg.rl.format_penalty);
                        f1_of[i] = f1_em(&out).0;
                        f1_sum += f1_of[i];
                        outcome_sum += outcome;
                        rs.push(rollout_rewards(
                            cfg.rl.ig_form,
                            &p[i],
                            t.turns.len(),
                            outcome,
                            out.turn_rewards.as_deref(),
                        ));
                        ks.push(i);
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(
                            "reward plugin failed on `{}` (dropped from the update): {e}",
                            t.id
                        );
                    }
                }
            }
            if !rs.is_empty() {
                groups.push(rs);
                kept.push(ks);
            }
        }
        let flat: Vec<usize> = kept.concat();
        let tokens: Vec<Vec<usize>> = flat.iter().map(|&i| tokens_per_turn(&trajs[i])).collect();
        let adv = advantages(
            cfg.rl.estimator,
            cfg.rl.normalization,
            cfg.rl.gamma,
            &groups,
            &tokens,
        );
        let rewards_flat: Vec<&RolloutRewards> = groups.iter().flatten().collect();

        // Old (and reference) log-probs under the weights that sampled.
        let refs: Vec<&Trajectory> = flat.iter().map(|&i| &trajs[i]).collect();
        let mut old = vec![];
        let mut reference_lp = vec![];
        for part in refs.chunks(cfg.train.micro_batch) {
            old.extend(sequence_logprobs(&model, part, chunk));
            if let Some(r) = &reference {
                reference_lp.extend(sequence_logprobs(r, part, chunk));
            }
        }
        let (mut delta, mut delta_n) = (0.0, 0usize);
        for (t, o) in refs.iter().zip(&old) {
            for ((&mask, &sampled), &recomputed) in
                t.loss_mask.iter().zip(&t.sample_logprobs).zip(o)
            {
                if mask == 1 {
                    delta += (sampled - recomputed).abs() as f64;
                    delta_n += 1;
                }
            }
        }
        let samples: Vec<Sample> = flat
            .iter()
            .enumerate()
            .map(|(k, &i)| Sample {
                adv: spread_over_tokens(&trajs[i], &adv.turns[k]),
                old: old[k].clone(),
                reference: reference_lp
                    .get(k)
                    .cloned()
                    .unwrap_or_else(|| vec![0.0; trajs[i].tokens.len()]),
                traj: trajs[i].clone(),
            })
            .collect();

        // PPO epochs over mini-batches.
        let lr = cfg.schedule.lr(cfg.optim.lr, step, total);
        let mut stats = LossStats::default();
        let (mut grad_norm, mut updates) = (0.0, 0usize);
        let sequence_ratio = cfg.rl.estimator == Estimator::Gspo;
        for _ in 0..cfg.train.ppo_epochs {
            let order = shuffled(samples.len(), &mut rng);
            let per = samples.len().div_ceil(cfg.train.mini_batches).max(1);
            for mb in order.chunks(per) {
                let batch: Vec<&Sample> = mb.iter().map(|&i| &samples[i as usize]).collect();
                grad_norm = update_mini_batch(
                    &mut model,
                    &mut opt,
                    &batch,
                    &cfg.loss,
                    sequence_ratio,
                    cfg.train.micro_batch,
                    chunk,
                    cfg.train.recompute_activations,
                    lr,
                    &mut stats,
                );
                updates += 1;
            }
        }
        let updates = updates.max(1) as f64;
        let update_s = t2.elapsed().as_secs_f64();
        cum_tokens += stats.tokens;

        // Metrics.
        let n = trajs.len().max(1) as f64;
        let kept_n = flat.len().max(1) as f64;
        let max_t = rewards_flat.iter().map(|r| r.ig.len()).max().unwrap_or(0);
        let (mut ig_mean, mut ig_std) = (vec![], vec![]);
        for k in 0..max_t {
            let v: Vec<f64> = rewards_flat
                .iter()
                .filter_map(|r| r.ig.get(k).copied())
                .collect();
            let m = v.iter().sum::<f64>() / v.len().max(1) as f64;
            ig_mean.push(m);
            ig_std.push(
                (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len().max(1) as f64).sqrt(),
            );
        }
        let drops: Vec<f64> = p
            .iter()
            .filter(|v| !v.is_empty())
            .map(|v| v[v.len() - 1].max(1e-30).ln() - v[0].max(1e-30).ln())
            .collect();
        let mut m = RlMetrics {
            step,
            outcome_reward: outcome_sum / kept_n,
            f1: f1_sum / kept_n,
            answer_rate: trajs.iter().filter(|t| t.final_answer.is_some()).count() as f64 / n,
            mean_turns: trajs.iter().map(|t| t.turns.len()).sum::<usize>() as f64 / n,
            ig_mean,
            ig_std,
            gt_entropy_drop: drops.iter().sum::<f64>() / drops.len().max(1) as f64,
            zero_adv_ratio: adv.zero_ratio(),
            kl: stats.kl / updates,
            entropy: stats.entropy / updates,
            clip_frac: stats.clip_frac(),
            ratio_mean: stats.ratio_mean(),
            pg_loss: stats.pg_loss / updates,
            grad_norm,
            lr,
            grad_tokens: stats.tokens,
            cum_grad_tokens: cum_tokens,
            logprob_delta: delta / delta_n.max(1) as f64,
            reward_failures: failures,
            generated_tokens: rstats.generated_tokens,
            rollout_s,
            scoring_s,
            update_s,
            dev_f1: None,
        };
        state.step = step;
        state.rng = rng.state();

        // Samples with their per-turn numbers.
        let mut sample_lines = String::new();
        for (k, &i) in flat.iter().enumerate().take(cfg.train.samples_per_step) {
            let t = &trajs[i];
            let r = rewards_flat[k];
            let rec = SampleRecord {
                id: &t.id,
                question: &t.question,
                answers: &t.answers,
                final_answer: t.final_answer.as_deref(),
                f1: f1_of[i],
                outcome_reward: r.outcome,
                gt_probability: &p[i],
                turn_rewards: r.ig.iter().copied().chain([r.outcome]).collect(),
                turn_advantages: &adv.turns[k],
                text: &t.text,
            };
            sample_lines.push_str(&(serde_json::to_string(&rec).expect("json") + "\n"));
        }
        let sp = run_dir.join("samples").join(format!("step-{step}.jsonl"));
        crate::fsutil::write_atomic(&sp, sample_lines.as_bytes()).map_err(io(&sp))?;

        let every = cfg.eval.as_ref().map_or(0, |e| e.every);
        if has_eval && (step == total || (every > 0 && step.is_multiple_of(every))) {
            let e = dev_eval(&model, step, cum_tokens)?;
            m.dev_f1 = Some(e.f1);
            append_line(&mut eval_file, &eval_path, &e, &mut tb, "eval/")?;
            evals.push(e);
        }
        append_line(&mut metrics_file, &metrics_path, &m, &mut tb, "train/")?;
        let gen_tok_s = m.generated_tokens as f64 / m.rollout_s.max(1e-9);
        let line = format!(
            "step {step}/{total}: reward {:.3}  f1 {:.3}  answered {:.0}%  turns {:.2}  zero-adv {:.2}  kl {:.4}  clip {:.3}  |g| {:.3}  {}rollout {:.1}s ({gen_tok_s:.0} tok/s) scoring {:.1}s update {:.1}s",
            m.outcome_reward,
            m.f1,
            100.0 * m.answer_rate,
            m.mean_turns,
            m.zero_adv_ratio,
            m.kl,
            m.clip_frac,
            m.grad_norm,
            m.dev_f1.map(|f| format!("dev F1 {f:.3}  ")).unwrap_or_default(),
            m.rollout_s,
            m.scoring_s,
            m.update_s,
        );
        if bar.is_hidden() {
            tracing::info!("{line}");
        } else if tracing::enabled!(tracing::Level::INFO) {
            bar.println(line);
        }
        bar.set_position(step);
        bar.set_message(format!(
            "reward {:.3}, F1 {:.3}, zero-adv {:.2}, {gen_tok_s:.0} tok/s",
            m.outcome_reward, m.f1, m.zero_adv_ratio
        ));
        history.push(m);

        let ck_every = cfg.train.checkpoint_every;
        let stop_here = opts.stop_after == Some(step);
        if step == total || stop_here || (ck_every > 0 && step.is_multiple_of(ck_every)) {
            final_checkpoint = Some(save_checkpoint(
                run_dir,
                &model,
                &opt,
                &state,
                &cfg.model,
                cfg.train.checkpoint_dtype,
                cfg.train.keep_last,
            )?);
        }
        if stop_here {
            break;
        }
    }
    bar.finish_and_clear();
    Ok(RlOutcome {
        metrics: history,
        evals,
        final_checkpoint,
    })
}
