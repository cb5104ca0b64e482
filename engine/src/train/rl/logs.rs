//! What an RL run writes: `metrics.jsonl` (one [`RlMetrics`] per step),
//! `eval.jsonl` ([`DevEval`]), `samples/step-N.jsonl`, and the step line.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::step::StepData;
use super::update::Update;
use crate::train::guard::nan_as_null;
use crate::train::run::{io_err, LogLine, TrainError};

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
    /// The last update's; NaN (`null`) when that update was skipped.
    #[serde(with = "nan_as_null")]
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
    /// Updates skipped as not finite since the run began (`train::guard`).
    #[serde(default)]
    pub skipped_updates: u64,
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
    /// Standard error of `f1` over the dev questions (null below two).
    #[serde(with = "nan_as_null", default = "not_logged")]
    pub f1_se: f64,
    pub em: f64,
    pub answered: f64,
    pub mean_turns: f64,
    pub tool_calls: usize,
    pub examples: usize,
}

impl LogLine for RlMetrics {
    fn step(&self) -> u64 {
        self.step
    }
}

/// A field older logs do not have.
fn not_logged() -> f64 {
    f64::NAN
}

impl LogLine for DevEval {
    fn step(&self) -> u64 {
        self.step
    }
}

/// Mean and population std of each turn's information gain over the
/// rollouts that have that turn.
fn ig_by_turn(ig: &[&[f64]]) -> (Vec<f64>, Vec<f64>) {
    let max_t = ig.iter().map(|r| r.len()).max().unwrap_or(0);
    let (mut mean, mut std) = (vec![], vec![]);
    for k in 0..max_t {
        let v: Vec<f64> = ig.iter().filter_map(|r| r.get(k).copied()).collect();
        let m = v.iter().sum::<f64>() / v.len().max(1) as f64;
        mean.push(m);
        std.push((v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len().max(1) as f64).sqrt());
    }
    (mean, std)
}

/// Phase 8: the step's line of `metrics.jsonl` (`dev_f1` is the eval's).
pub(crate) fn step_metrics(d: &StepData, u: &Update, lr: f64, cum_grad_tokens: usize) -> RlMetrics {
    let trajs = &d.trajs;
    let n = trajs.len().max(1) as f64;
    let kept_n = d.rewards.kept.len().max(1) as f64;
    let ig: Vec<&[f64]> = d.rewards.flat().iter().map(|r| &r.ig[..]).collect();
    let (ig_mean, ig_std) = ig_by_turn(&ig);
    let drops: Vec<f64> =
        d.p.iter()
            .filter(|v| !v.is_empty())
            .map(|v| v[v.len() - 1].max(1e-30).ln() - v[0].max(1e-30).ln())
            .collect();
    let updates = u.updates.max(1) as f64;
    let s = &u.stats;
    RlMetrics {
        step: d.step,
        outcome_reward: d.rewards.outcome_sum / kept_n,
        f1: d.rewards.f1_sum / kept_n,
        answer_rate: trajs.iter().filter(|t| t.final_answer.is_some()).count() as f64 / n,
        mean_turns: trajs.iter().map(|t| t.turns.len()).sum::<usize>() as f64 / n,
        ig_mean,
        ig_std,
        gt_entropy_drop: drops.iter().sum::<f64>() / drops.len().max(1) as f64,
        zero_adv_ratio: d.adv.zero_ratio(),
        kl: s.kl / updates,
        entropy: s.entropy / updates,
        clip_frac: s.clip_frac(),
        ratio_mean: s.ratio_mean(),
        pg_loss: s.pg_loss / updates,
        grad_norm: u.grad_norm,
        lr,
        grad_tokens: s.tokens,
        cum_grad_tokens,
        logprob_delta: d.logprob_delta.mean(),
        reward_failures: d.rewards.failures,
        generated_tokens: d.rollout.generated_tokens,
        rollout_s: d.timings.rollout_s,
        scoring_s: d.timings.scoring_s,
        update_s: d.timings.update_s,
        skipped_updates: 0,
        dev_f1: None,
    }
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

/// The first `n` kept rollouts with their per-turn numbers, one JSON line each.
pub(crate) fn sample_lines(d: &StepData, n: usize) -> String {
    let rewards = d.rewards.flat();
    let mut out = String::new();
    for (k, &i) in d.rewards.kept.iter().enumerate().take(n) {
        let t = &d.trajs[i];
        let r = rewards[k];
        let rec = SampleRecord {
            id: &t.id,
            question: &t.question,
            answers: &t.answers,
            final_answer: t.final_answer.as_deref(),
            f1: d.rewards.f1_of[i],
            outcome_reward: r.outcome,
            gt_probability: &d.p[i],
            turn_rewards: r.ig.iter().copied().chain([r.outcome]).collect(),
            turn_advantages: &d.adv.turns[k],
            text: &t.text,
        };
        out.push_str(&(serde_json::to_string(&rec).expect("json") + "\n"));
    }
    out
}

/// Phase 9: `samples/step-N.jsonl` of the run folder (see [`sample_lines`]).
pub(crate) fn write_samples(run_dir: &Path, d: &StepData, n: usize) -> Result<(), TrainError> {
    let path = run_dir
        .join("samples")
        .join(format!("step-{}.jsonl", d.step));
    crate::fsutil::write_atomic(&path, sample_lines(d, n).as_bytes()).map_err(io_err(&path))
}

/// The step's line of the log (or above the progress bar).
pub(crate) fn step_line(m: &RlMetrics, total: u64) -> String {
    let gen_tok_s = m.generated_tokens as f64 / m.rollout_s.max(1e-9);
    format!(
        "step {}/{total}: reward {:.3}  f1 {:.3}  answered {:.0}%  turns {:.2}  zero-adv {:.2}  kl {:.4}  clip {:.3}  |g| {:.3}  {}rollout {:.1}s ({gen_tok_s:.0} tok/s) scoring {:.1}s update {:.1}s",
        m.step,
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
    )
}

/// The progress bar's message after a step.
pub(crate) fn bar_message(m: &RlMetrics) -> String {
    let gen_tok_s = m.generated_tokens as f64 / m.rollout_s.max(1e-9);
    format!(
        "reward {:.3}, F1 {:.3}, zero-adv {:.2}, {gen_tok_s:.0} tok/s",
        m.outcome_reward, m.f1, m.zero_adv_ratio
    )
}
