//! Turn rewards to advantages: IGPO and the baselines it is compared with.
//!
//! A rollout with `T` turns has `T - 1` information-gain rewards (one per
//! tool-calling turn, `p_t - p_{t-1}`) and one outcome reward on its last
//! turn. Estimators turn a batch of groups (the `G` rollouts of one prompt)
//! into one advantage per turn; [`spread_over_tokens`] puts each turn's
//! advantage on every token the policy generated in that turn.

use serde::{Deserialize, Serialize};

use crate::rollout::{SpanKind, Trajectory};

/// How advantages are estimated (`rl.estimator`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Estimator {
    /// Information gain + outcome, z-normalized per group over all turn
    /// rewards, discounted sum over turns (the paper).
    #[default]
    Igpo,
    /// Information gain only: the answer turn's reward is left out.
    IgOnly,
    /// The paper's "F1 only" arm on IGPO's own path: the information gain is
    /// left out, the outcome z-scored over the group (population std, as
    /// the reference's IGPO code) and discounted back over the turns, so the
    /// ablation changes one thing. With `gamma = 1` it is GRPO up to the std
    /// convention.
    F1Only,
    /// Outcome only, z-normalized per group, one advantage per sequence.
    Grpo,
    /// Outcome minus the mean of the other rollouts of the group.
    Rloo,
    /// REINFORCE++: outcome returns whitened over the whole batch.
    ReinforcePp,
    /// GRPO advantages with a sequence-level importance ratio (the loss
    /// side, see [`crate::rl::loss`]).
    Gspo,
}

impl Estimator {
    /// Whether the estimator needs ground-truth scoring (probes).
    pub fn uses_information_gain(self) -> bool {
        matches!(self, Estimator::Igpo | Estimator::IgOnly)
    }
}

/// How IGPO pools a group's turn rewards before z-scoring them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    /// Information gain and outcome rewards z-scored together (code default).
    #[default]
    Joint,
    /// Each kind z-scored on its own (the reference's training script).
    Separate,
}

/// The rewards of one rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutRewards {
    /// Reward of each tool-calling turn (every turn but the last).
    pub ig: Vec<f64>,
    /// Reward of the last turn (F1, or the format penalty).
    pub outcome: f64,
}

impl RolloutRewards {
    pub fn turns(&self) -> usize {
        self.ig.len() + 1
    }
}

/// Advantages of a batch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Advantages {
    /// Per rollout (groups flattened in order), per turn.
    pub turns: Vec<Vec<f64>>,
    /// Groups in which every advantage is zero: they teach nothing.
    pub zero_groups: usize,
    pub groups: usize,
}

impl Advantages {
    pub fn zero_ratio(&self) -> f64 {
        self.zero_groups as f64 / self.groups.max(1) as f64
    }
}

/// The reference's z-score: population std, `(r - mean) / (sqrt(var + 1e-8) + 1e-6)`.
#[derive(Clone, Copy)]
struct ZScore {
    mean: f64,
    denom: f64,
}

impl ZScore {
    fn of(values: &[f64]) -> ZScore {
        let n = values.len().max(1) as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        ZScore {
            mean,
            denom: (var + 1e-8).sqrt() + 1e-6,
        }
    }

    fn z(self, r: f64) -> f64 {
        (r - self.mean) / self.denom
    }
}

/// `A~_k = a_k + gamma * A~_{k+1}`.
fn discounted(a: &[f64], gamma: f64) -> Vec<f64> {
    let mut out = a.to_vec();
    for k in (0..out.len().saturating_sub(1)).rev() {
        out[k] += gamma * out[k + 1];
    }
    out
}

/// Which rewards of a rollout the IGPO family keeps (the paper's ablation).
#[derive(Clone, Copy, PartialEq)]
enum TurnRewards {
    /// Information gain and outcome (IGPO).
    Both,
    IgOnly,
    OutcomeOnly,
}

/// The IGPO family: per-turn rewards, pooled z-normalization per group,
/// discounted sum over turns.
fn igpo_group(
    group: &[RolloutRewards],
    norm: Normalization,
    kept: TurnRewards,
    gamma: f64,
) -> Vec<Vec<f64>> {
    let igs: Vec<f64> = group.iter().flat_map(|r| r.ig.iter().copied()).collect();
    let outcomes: Vec<f64> = group.iter().map(|r| r.outcome).collect();
    // `None`: that kind of reward is left out.
    let (z_ig, z_out) = match (norm, kept) {
        (_, TurnRewards::IgOnly) => (Some(ZScore::of(&igs)), None),
        (_, TurnRewards::OutcomeOnly) => (None, Some(ZScore::of(&outcomes))),
        (Normalization::Joint, TurnRewards::Both) => {
            let all: Vec<f64> = igs.iter().chain(&outcomes).copied().collect();
            (Some(ZScore::of(&all)), Some(ZScore::of(&all)))
        }
        (Normalization::Separate, TurnRewards::Both) => {
            (Some(ZScore::of(&igs)), Some(ZScore::of(&outcomes)))
        }
    };
    group
        .iter()
        .map(|r| {
            let a: Vec<f64> =
                r.ig.iter()
                    .map(|&v| z_ig.map_or(0.0, |z| z.z(v)))
                    .chain([z_out.map_or(0.0, |z| z.z(r.outcome))])
                    .collect();
            discounted(&a, gamma)
        })
        .collect()
}

/// GRPO: `(r - mean) / (std + 1e-6)` with the unbiased std, as verl does.
fn grpo_group(group: &[RolloutRewards]) -> Vec<f64> {
    let n = group.len() as f64;
    let mean = group.iter().map(|r| r.outcome).sum::<f64>() / n;
    let var = if group.len() > 1 {
        group
            .iter()
            .map(|r| (r.outcome - mean).powi(2))
            .sum::<f64>()
            / (n - 1.0)
    } else {
        0.0
    };
    group
        .iter()
        .map(|r| (r.outcome - mean) / (var.sqrt() + 1e-6))
        .collect()
}

/// RLOO: `r_i - mean_{j != i} r_j`.
fn rloo_group(group: &[RolloutRewards]) -> Vec<f64> {
    let n = group.len();
    let sum: f64 = group.iter().map(|r| r.outcome).sum();
    group
        .iter()
        .map(|r| {
            if n < 2 {
                0.0
            } else {
                r.outcome - (sum - r.outcome) / (n - 1) as f64
            }
        })
        .collect()
}

/// Advantages of every turn of every rollout. `tokens[i][k]` is the number
/// of tokens rollout `i` generated in turn `k` (REINFORCE++ whitens over
/// tokens); `groups` are the rollouts of one prompt each.
pub fn advantages(
    estimator: Estimator,
    norm: Normalization,
    gamma: f64,
    groups: &[Vec<RolloutRewards>],
    tokens: &[Vec<usize>],
) -> Advantages {
    let alone = |_: &mut [f64]| Ok::<(), std::convert::Infallible>(());
    match advantages_over(estimator, norm, gamma, groups, tokens, alone) {
        Ok(a) => a,
        Err(never) => match never {},
    }
}

/// [`advantages`] of one share of a batch whose other shares live
/// elsewhere (data-parallel ranks): groups stay whole, so only the
/// batch-wide sums (REINFORCE++'s whitening) go through `sum_over_shares`,
/// which adds the same vector of every share in place.
pub fn advantages_over<E>(
    estimator: Estimator,
    norm: Normalization,
    gamma: f64,
    groups: &[Vec<RolloutRewards>],
    tokens: &[Vec<usize>],
    mut sum_over_shares: impl FnMut(&mut [f64]) -> Result<(), E>,
) -> Result<Advantages, E> {
    let mut turns: Vec<Vec<f64>> = vec![];
    for group in groups {
        let per_rollout: Vec<Vec<f64>> = match estimator {
            Estimator::Igpo => igpo_group(group, norm, TurnRewards::Both, gamma),
            Estimator::IgOnly => igpo_group(group, norm, TurnRewards::IgOnly, gamma),
            Estimator::F1Only => igpo_group(group, norm, TurnRewards::OutcomeOnly, gamma),
            Estimator::Grpo | Estimator::Gspo | Estimator::Rloo => {
                let seq = if estimator == Estimator::Rloo {
                    rloo_group(group)
                } else {
                    grpo_group(group)
                };
                group
                    .iter()
                    .zip(seq)
                    .map(|(r, a)| vec![a; r.turns()])
                    .collect()
            }
            // Returns first; whitened over the batch below.
            Estimator::ReinforcePp => group
                .iter()
                .map(|r| {
                    let t = r.turns();
                    (0..t)
                        .map(|k| gamma.powi((t - 1 - k) as i32) * r.outcome)
                        .collect()
                })
                .collect(),
        };
        turns.extend(per_rollout);
    }
    if estimator == Estimator::ReinforcePp {
        whiten_over_tokens(&mut turns, tokens, &mut sum_over_shares)?;
    }
    let mut zero_groups = 0;
    let mut at = 0;
    for group in groups {
        let span = &turns[at..at + group.len()];
        if span.iter().flatten().all(|a| a.abs() < 1e-9) {
            zero_groups += 1;
        }
        at += group.len();
    }
    Ok(Advantages {
        turns,
        zero_groups,
        groups: groups.len(),
    })
}

/// Token-weighted whitening over the batch, `(x - mean) / sqrt(var + 1e-8)`
/// with the unbiased variance (verl's `masked_whiten`).
fn whiten_over_tokens<E>(
    turns: &mut [Vec<f64>],
    tokens: &[Vec<usize>],
    sum_over_shares: &mut impl FnMut(&mut [f64]) -> Result<(), E>,
) -> Result<(), E> {
    let weight =
        |i: usize, k: usize| tokens.get(i).and_then(|t| t.get(k)).copied().unwrap_or(0) as f64;
    let mut n_sum = [0.0, 0.0];
    for (i, t) in turns.iter().enumerate() {
        for (k, &a) in t.iter().enumerate() {
            n_sum[0] += weight(i, k);
            n_sum[1] += weight(i, k) * a;
        }
    }
    sum_over_shares(&mut n_sum)?;
    let [n, sum] = n_sum;
    if n < 2.0 {
        return Ok(());
    }
    let mean = sum / n;
    let mut var = [0.0];
    for (i, t) in turns.iter().enumerate() {
        for (k, &a) in t.iter().enumerate() {
            var[0] += weight(i, k) * (a - mean).powi(2);
        }
    }
    sum_over_shares(&mut var)?;
    let denom = (var[0] / (n - 1.0) + 1e-8).sqrt();
    for t in turns.iter_mut() {
        for a in t.iter_mut() {
            *a = (*a - mean) / denom;
        }
    }
    Ok(())
}

/// Generated tokens per turn of a trajectory.
pub fn tokens_per_turn(traj: &Trajectory) -> Vec<usize> {
    let mut out = vec![0; traj.turns.len().max(1)];
    for s in &traj.segments {
        if let SpanKind::Generated { turn } = s.kind {
            if turn >= out.len() {
                out.resize(turn + 1, 0);
            }
            out[turn] += traj.loss_mask[s.start..s.end]
                .iter()
                .filter(|&&m| m == 1)
                .count();
        }
    }
    out
}

/// One advantage per token: turn `k`'s on every token the policy generated
/// in turn `k`, 0 on prompt and tool-result tokens.
pub fn spread_over_tokens(traj: &Trajectory, turn_adv: &[f64]) -> Vec<f32> {
    let mut out = vec![0.0f32; traj.tokens.len()];
    for s in &traj.segments {
        if let SpanKind::Generated { turn } = s.kind {
            let a = turn_adv.get(turn).copied().unwrap_or(0.0) as f32;
            for (o, &m) in out[s.start..s.end]
                .iter_mut()
                .zip(&traj.loss_mask[s.start..s.end])
            {
                if m == 1 {
                    *o = a;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{Segment, TurnMeta};

    fn rr(ig: &[f64], outcome: f64) -> RolloutRewards {
        RolloutRewards {
            ig: ig.to_vec(),
            outcome,
        }
    }

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    /// A group written out by hand: rollout 1 searched twice (IG 0.2, then
    /// 0.4) and got F1 1; rollout 2 searched once (IG 0.0) and got F1 0.
    /// Pool R = {0.2, 0.4, 1.0, 0.0, 0.0}: mean 0.32, population var
    /// (0.0144 + 0.0064 + 0.4624 + 0.1024 + 0.1024) / 5 = 0.1376.
    #[test]
    fn igpo_joint_matches_the_paper_by_hand() {
        let group = vec![rr(&[0.2, 0.4], 1.0), rr(&[0.0], 0.0)];
        let d = (0.1376f64 + 1e-8).sqrt() + 1e-6;
        let z = |r: f64| (r - 0.32) / d;
        // gamma = 1: suffix sums.
        let a = advantages(
            Estimator::Igpo,
            Normalization::Joint,
            1.0,
            std::slice::from_ref(&group),
            &[],
        );
        close(
            &a.turns[0],
            &[z(0.2) + z(0.4) + z(1.0), z(0.4) + z(1.0), z(1.0)],
        );
        close(&a.turns[1], &[z(0.0) + z(0.0), z(0.0)]);
        assert_eq!(a.zero_groups, 0);
        // gamma = 0.5: A_k = a_k + 0.5 A_{k+1}.
        let a = advantages(
            Estimator::Igpo,
            Normalization::Joint,
            0.5,
            std::slice::from_ref(&group),
            &[],
        );
        let last = z(1.0);
        let mid = z(0.4) + 0.5 * last;
        close(&a.turns[0], &[z(0.2) + 0.5 * mid, mid, last]);
        close(&a.turns[1], &[z(0.0) + 0.5 * z(0.0), z(0.0)]);
    }

    /// Separate: IG pool {0.2, 0.4, 0.0} (mean 0.2, var 0.08/3) and outcome
    /// pool {1, 0} (mean 0.5, var 0.25), each z-scored on its own.
    #[test]
    fn igpo_separate_normalizes_each_kind_alone() {
        let group = vec![rr(&[0.2, 0.4], 1.0), rr(&[0.0], 0.0)];
        let a = advantages(Estimator::Igpo, Normalization::Separate, 1.0, &[group], &[]);
        let dig = (0.08f64 / 3.0 + 1e-8).sqrt() + 1e-6;
        let dout = (0.25f64 + 1e-8).sqrt() + 1e-6;
        let (i1, i2, i3) = (0.0, 0.2 / dig, -0.2 / dig);
        let (o1, o2) = (0.5 / dout, -0.5 / dout);
        close(&a.turns[0], &[i1 + i2 + o1, i2 + o1, o1]);
        close(&a.turns[1], &[i3 + o2, o2]);
    }

    #[test]
    fn equal_outcomes_collapse_grpo_but_not_igpo() {
        // Every rollout failed (F1 0), but their searches helped differently.
        let group = vec![rr(&[0.3], 0.0), rr(&[-0.1], 0.0), rr(&[0.0, 0.1], 0.0)];
        let g = advantages(
            Estimator::Grpo,
            Normalization::Joint,
            1.0,
            std::slice::from_ref(&group),
            &[],
        );
        assert!(g.turns.iter().flatten().all(|a| *a == 0.0), "{:?}", g.turns);
        assert_eq!((g.zero_groups, g.zero_ratio()), (1, 1.0));
        let i = advantages(
            Estimator::Igpo,
            Normalization::Joint,
            1.0,
            std::slice::from_ref(&group),
            &[],
        );
        assert_eq!(i.zero_groups, 0);
        assert!(i.turns.iter().flatten().all(|a| a.is_finite()));
        // The rollout whose search helped most gets the largest first-turn advantage.
        assert!(i.turns[0][0] > i.turns[1][0] && i.turns[0][0] > i.turns[2][0]);
        // A group with no reward variance at all: zero, never NaN, for every estimator.
        let flat = vec![rr(&[0.5], 0.5), rr(&[0.5], 0.5)];
        for e in [
            Estimator::Igpo,
            Estimator::IgOnly,
            Estimator::F1Only,
            Estimator::Grpo,
            Estimator::Rloo,
            Estimator::Gspo,
            Estimator::ReinforcePp,
        ] {
            let a = advantages(
                e,
                Normalization::Joint,
                1.0,
                std::slice::from_ref(&flat),
                &[vec![3, 2], vec![4, 1]],
            );
            assert!(
                a.turns.iter().flatten().all(|x| x.abs() < 1e-6),
                "{e:?}: {:?}",
                a.turns
            );
            assert_eq!(a.zero_groups, 1, "{e:?}");
        }
    }

    /// F1 only: outcomes {1, 0} z-scored alone (mean 0.5, population var
    /// 0.25); information gain left out; gamma 0.5 discounts the outcome
    /// back over the earlier turns.
    #[test]
    fn f1_only_ignores_information_gain() {
        let group = vec![rr(&[0.2, 0.4], 1.0), rr(&[0.9], 0.0)];
        let d = (0.25f64 + 1e-8).sqrt() + 1e-6;
        let a = advantages(
            Estimator::F1Only,
            Normalization::Joint,
            0.5,
            std::slice::from_ref(&group),
            &[],
        );
        let (hi, lo) = (0.5 / d, -0.5 / d);
        close(&a.turns[0], &[0.25 * hi, 0.5 * hi, hi]);
        close(&a.turns[1], &[0.5 * lo, lo]);
        // Same outcomes, different gains: nothing to learn from.
        let same = vec![rr(&[0.3], 1.0), rr(&[-0.2], 1.0)];
        assert_eq!(
            advantages(Estimator::F1Only, Normalization::Joint, 1.0, &[same], &[]).zero_groups,
            1
        );
        assert!(!Estimator::F1Only.uses_information_gain());
    }

    #[test]
    fn baselines_by_hand() {
        let group = vec![rr(&[0.5], 1.0), rr(&[], 0.0), rr(&[0.1, 0.2], 0.5)];
        // GRPO: mean 0.5, unbiased std 0.5.
        let g = advantages(
            Estimator::Grpo,
            Normalization::Joint,
            1.0,
            std::slice::from_ref(&group),
            &[],
        );
        let s = 0.5 + 1e-6;
        close(
            &g.turns.concat(),
            &[0.5 / s, 0.5 / s, -0.5 / s, 0.0, 0.0, 0.0],
        );
        // RLOO: r_i - mean of the others.
        let r = advantages(
            Estimator::Rloo,
            Normalization::Joint,
            1.0,
            std::slice::from_ref(&group),
            &[],
        );
        close(&r.turns.concat(), &[0.75, 0.75, -0.75, 0.0, 0.0, 0.0]);
        // IG only: the answer turn's reward is left out; pool {0.5, 0.1, 0.2}.
        let i = advantages(
            Estimator::IgOnly,
            Normalization::Joint,
            1.0,
            std::slice::from_ref(&group),
            &[],
        );
        let m: f64 = 0.8 / 3.0;
        let var = ((0.5 - m).powi(2) + (0.1 - m).powi(2) + (0.2 - m).powi(2)) / 3.0;
        let d = (var + 1e-8).sqrt() + 1e-6;
        close(
            &i.turns.concat(),
            &[
                (0.5 - m) / d,
                0.0,
                0.0,
                (0.1 - m) / d + (0.2 - m) / d,
                (0.2 - m) / d,
                0.0,
            ],
        );
        // REINFORCE++ over two groups, gamma 1: returns = outcome on every
        // turn, whitened over tokens. Tokens: [2,1], [4], [1,1,1] and [3].
        let groups = vec![group.clone(), vec![rr(&[], 1.0)]];
        let toks = vec![vec![2, 1], vec![4], vec![1, 1, 1], vec![3]];
        let p = advantages(
            Estimator::ReinforcePp,
            Normalization::Joint,
            1.0,
            &groups,
            &toks,
        );
        let vals = [(1.0, 3.0), (0.0, 4.0), (0.5, 3.0), (1.0, 3.0)];
        let n: f64 = vals.iter().map(|v| v.1).sum();
        let mean = vals.iter().map(|v| v.0 * v.1).sum::<f64>() / n;
        let var = vals.iter().map(|v| v.1 * (v.0 - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let w = |x: f64| (x - mean) / (var + 1e-8).sqrt();
        close(
            &p.turns.concat(),
            &[w(1.0), w(1.0), w(0.0), w(0.5), w(0.5), w(0.5), w(1.0)],
        );
        assert_eq!(p.groups, 2);
    }

    fn traj() -> Trajectory {
        let seg = |kind, start, end| Segment { kind, start, end };
        let meta = TurnMeta {
            text: String::new(),
            tool: None,
            arguments: None,
            result: None,
            tool_error: false,
            latency_ms: 0.0,
        };
        Trajectory {
            id: "x".into(),
            question: "q".into(),
            answers: vec!["a".into()],
            tokens: (0..12).collect(),
            segments: vec![
                seg(SpanKind::Prompt, 0, 3),
                seg(SpanKind::Generated { turn: 0 }, 3, 6),
                seg(SpanKind::ToolResult { turn: 0 }, 6, 9),
                seg(SpanKind::Generated { turn: 1 }, 9, 12),
            ],
            loss_mask: vec![0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1],
            sample_logprobs: vec![0.0; 12],
            turns: vec![meta.clone(), meta],
            final_answer: Some("a".into()),
            truncated: false,
            text: String::new(),
        }
    }

    #[test]
    fn each_turns_advantage_lands_on_its_generated_tokens_only() {
        let t = traj();
        let a = spread_over_tokens(&t, &[1.5, -0.5]);
        assert_eq!(
            a,
            vec![0.0, 0.0, 0.0, 1.5, 1.5, 1.5, 0.0, 0.0, 0.0, -0.5, -0.5, -0.5]
        );
        assert_eq!(tokens_per_turn(&t), vec![3, 3]);
        assert_eq!(crate::rl::scoring::turn_boundaries(&t), vec![3, 9]);
    }

    /// Two shares of a batch (whole groups each, as data-parallel ranks
    /// hold them), their sums added through a rendezvous of two threads,
    /// get the advantages the whole batch gets: REINFORCE++'s whitening is
    /// batch-wide, the other estimators' statistics stay in a group.
    #[test]
    fn shares_of_a_batch_summed_together_get_the_whole_batchs_advantages() {
        use std::sync::{Arc, Barrier, Mutex};
        let groups = vec![
            vec![rr(&[0.2], 1.0), rr(&[-0.1, 0.4], 0.0)],
            vec![rr(&[], 0.5), rr(&[0.3], 0.25)],
            vec![rr(&[0.7, 0.1], 1.0), rr(&[], 0.0)],
        ];
        let tokens = vec![
            vec![3, 5],
            vec![2, 2, 7],
            vec![4],
            vec![6, 1],
            vec![2, 3, 4],
            vec![9],
        ];
        for e in [Estimator::ReinforcePp, Estimator::Igpo, Estimator::Grpo] {
            let whole = advantages(e, Normalization::Joint, 0.9, &groups, &tokens);
            let sums = Arc::new(Mutex::new(vec![]));
            let meet = Arc::new(Barrier::new(2));
            let share = |g: std::ops::Range<usize>, t: std::ops::Range<usize>| {
                let (groups, tokens) = (groups[g].to_vec(), tokens[t].to_vec());
                let (sums, meet) = (sums.clone(), meet.clone());
                std::thread::spawn(move || {
                    let add = |v: &mut [f64]| {
                        sums.lock().unwrap().push(v.to_vec());
                        meet.wait();
                        let total: Vec<f64> = (0..v.len())
                            .map(|i| sums.lock().unwrap().iter().map(|s| s[i]).sum())
                            .collect();
                        meet.wait();
                        sums.lock().unwrap().clear();
                        meet.wait();
                        v.copy_from_slice(&total);
                        Ok::<(), ()>(())
                    };
                    advantages_over(e, Normalization::Joint, 0.9, &groups, &tokens, add).unwrap()
                })
            };
            let first = share(0..1, 0..2);
            let rest = share(1..3, 2..6);
            let (first, rest) = (first.join().unwrap(), rest.join().unwrap());
            let joined: Vec<Vec<f64>> = first.turns.into_iter().chain(rest.turns).collect();
            assert_eq!(joined.len(), whole.turns.len());
            for (a, b) in joined.iter().flatten().zip(whole.turns.iter().flatten()) {
                assert!((a - b).abs() < 1e-12, "{e:?}: {a} vs {b}");
            }
            assert_eq!(first.zero_groups + rest.zero_groups, whole.zero_groups);
        }
    }
}
