//! Tasks through the agent and the reward plugin: what training
//! (`train::rl`) and evaluation (`eval`) both do — load a dataset plugin's
//! examples as tasks, roll a batch of them out, score the answers — so
//! neither reaches into the other.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::model::Model;
use crate::plugins::{
    DatasetPlugin, PluginError, PluginHost, PluginSpec, RewardOutput, RewardPlugin, ToolPool,
    TrajectoryRecord, TurnRecord,
};
use crate::rollout::{run_agent, AgentConfig, RolloutError, RolloutStats, Task, Trajectory};
use crate::tokenizer::Tokenizer;

/// Where a run's tasks come from: a dataset plugin and one of its splits.
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

/// Loads the dataset plugin's examples as agent tasks.
pub fn load_tasks(host: &PluginHost, cfg: &DatasetConfig) -> Result<Vec<Task>, PluginError> {
    let ds = DatasetPlugin::load(host, &cfg.plugin)?;
    let split = cfg.split.as_deref();
    let n = ds.len(split)? as usize;
    let n = if cfg.limit > 0 { n.min(cfg.limit) } else { n };
    (0..n)
        .map(|i| {
            let e = ds.get(split, i as u64)?;
            Ok(Task {
                id: e.id,
                question: e.question,
                answers: e.answers,
            })
        })
        .collect()
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
) -> Result<(Vec<Trajectory>, RolloutStats), RolloutError> {
    let mut all = Vec::with_capacity(tasks.len());
    let mut stats = RolloutStats::default();
    for (c, chunk) in tasks.chunks(batch.max(1)).enumerate() {
        let seed = seed.wrapping_add((c * batch) as u64);
        let (t, s) = run_agent(model, tok, tools.clone(), agent, chunk, seed)?;
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
    /// Standard error of `f1` (the questions' sample standard deviation over
    /// sqrt(n); NaN, written null, below two questions): how far another
    /// draw of as many questions could move it.
    pub f1_se: f64,
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
    // Each question's F1 (0 when the reward plugin failed, as in the mean).
    let mut f1s = Vec::with_capacity(trajs.len());
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
                f1s.push(f1);
                r.f1 += f1 / n;
                r.em += em / n;
                if t.final_answer.is_none() {
                    rec.final_answer = t.turns.last().map(|m| m.text.clone());
                    r.lenient_f1 += f1_of(&rec).map(|x| x.0).unwrap_or(0.0) / n;
                } else {
                    r.lenient_f1 += f1 / n;
                }
            }
            None => {
                f1s.push(0.0);
                r.reward_failures += 1
            }
        }
    }
    r.f1_se = standard_error(&f1s);
    r
}

/// `sd / sqrt(n)` with the sample standard deviation; NaN below two values.
pub fn standard_error(values: &[f64]) -> f64 {
    let n = values.len();
    if n < 2 {
        return f64::NAN;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (var / n as f64).sqrt()
}

/// F1 and EM of a reward plugin's verdict: its `details` when it reports
/// them, else the outcome as F1.
pub fn f1_em(out: &RewardOutput) -> (f64, f64) {
    let d = out.details.clone().unwrap_or_default();
    let f1 = d.get("f1").and_then(|v| v.as_f64()).unwrap_or(out.outcome);
    (f1, d.get("em").and_then(|v| v.as_f64()).unwrap_or(0.0))
}

#[cfg(test)]
mod tests {
    use super::standard_error;

    #[test]
    fn standard_error_of_a_mean() {
        // 0, 1, 0, 1: sample var 1/3, se sqrt(1/12).
        let se = standard_error(&[0.0, 1.0, 0.0, 1.0]);
        assert!((se - (1.0f64 / 12.0).sqrt()).abs() < 1e-12);
        assert_eq!(standard_error(&[0.5, 0.5, 0.5]), 0.0);
        assert!(standard_error(&[1.0]).is_nan() && standard_error(&[]).is_nan());
    }
}
