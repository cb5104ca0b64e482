//! How an RL step splits over data-parallel ranks (`dist`). Rank `r` of
//! `N` rolls out, scores and trains on the `r`-th of `N` consecutive blocks
//! of the step's groups: group statistics stay on one rank, batch-wide
//! sums (REINFORCE++'s whitening, a mini-batch's token counts, the loss
//! statistics, the gradients) are all-reduced, and every rank ends the step
//! with the same weights. Rollout `i` of the step samples from the stream
//! `seed + i` on whichever rank it runs, so the rollouts are one process's.
//!
//! After the update the ranks exchange what the step's metrics and samples
//! read (the rollouts without their token arrays, `p`, rewards,
//! advantages) and rebuild the whole step's [`StepData`] in the one
//! process's order, so the metrics are computed as one process computes
//! them.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::step::{LogprobDelta, Rewards, StepData, Timings};
use crate::dist::{all_gather_values, Collective};
use crate::rl::Advantages;
use crate::rollout::{RolloutStats, Trajectory};
use crate::train::run::TrainError;

/// `train.prompts_per_step` must split into whole groups over the ranks.
pub(crate) fn check_split(prompts_per_step: usize, ranks: usize) -> Result<(), TrainError> {
    if prompts_per_step.is_multiple_of(ranks) {
        return Ok(());
    }
    Err(TrainError::Config {
        path: "rl.prompts_per_step".into(),
        msg: format!(
            "{prompts_per_step} prompts a step do not split over {ranks} ranks: \
             use a multiple of {ranks}"
        ),
    })
}

/// The step's rollouts (of `n` in groups of `group_size`) this rank runs: a
/// block of whole groups.
pub(crate) fn rollout_block(n: usize, group_size: usize, comm: &dyn Collective) -> Range<usize> {
    let groups = n / group_size.max(1);
    let per = groups / comm.size();
    let first = comm.rank() * per * group_size;
    first..first + per * group_size
}

/// The `r`-th of `N` consecutive, nearly equal blocks of `n` items (a dev
/// split need not divide).
pub(crate) fn even_block(n: usize, comm: &dyn Collective) -> Range<usize> {
    let (r, size) = (comm.rank(), comm.size());
    n * r / size..n * (r + 1) / size
}

/// Rollouts with what the logs read, as JSON (a tool call's arguments are
/// free-form JSON, which only a self-describing format carries): their
/// token arrays, which only the update reads, left behind.
fn light(trajs: &[Trajectory]) -> String {
    let light: Vec<Trajectory> = trajs
        .iter()
        .map(|t| Trajectory {
            tokens: vec![],
            loss_mask: vec![],
            sample_logprobs: vec![],
            ..t.clone()
        })
        .collect();
    serde_json::to_string(&light).expect("rollouts serialize")
}

fn from_light(json: &str) -> Result<Vec<Trajectory>, TrainError> {
    serde_json::from_str(json)
        .map_err(|e| TrainError::Collective(crate::dist::CommError(format!("rollouts: {e}"))))
}

/// Every rank's rollouts (light, see [`light`]) in rank order, and their
/// stats added: a dev evaluation's, before its report.
pub(crate) fn gather_rollouts(
    comm: &dyn Collective,
    trajs: Vec<Trajectory>,
    stats: RolloutStats,
) -> Result<(Vec<Trajectory>, RolloutStats), TrainError> {
    if comm.size() == 1 {
        return Ok((trajs, stats));
    }
    let all = all_gather_values(comm, &(light(&trajs), stats)).map_err(TrainError::Collective)?;
    let mut out = (vec![], RolloutStats::default());
    for (t, s) in all {
        out.0.extend(from_light(&t)?);
        out.1.add(&s);
    }
    Ok(out)
}

/// What one rank's share of a step sends the others.
#[derive(Serialize, Deserialize)]
struct StepShare {
    /// See [`light`].
    trajs: String,
    rollout: RolloutStats,
    p: Vec<Vec<f64>>,
    rewards: Rewards,
    adv: Advantages,
    logprob_delta: LogprobDelta,
    timings: Timings,
}

/// The whole step's data from every rank's share: rollouts, `p`, rewards
/// and advantages in rank order (the one process's order), counts and sums
/// added, each stage's time the slowest rank's. One process keeps its own.
pub(crate) fn whole_step(comm: &dyn Collective, d: StepData) -> Result<StepData, TrainError> {
    if comm.size() == 1 {
        return Ok(d);
    }
    let mine = StepShare {
        trajs: light(&d.trajs),
        rollout: d.rollout,
        p: d.p,
        rewards: d.rewards,
        adv: d.adv,
        logprob_delta: d.logprob_delta,
        timings: d.timings,
    };
    let shares = all_gather_values(comm, &mine).map_err(TrainError::Collective)?;
    let mut out = StepData {
        step: d.step,
        trajs: vec![],
        rollout: RolloutStats::default(),
        p: vec![],
        rewards: Rewards::default(),
        adv: Advantages::default(),
        logprob_delta: LogprobDelta::default(),
        timings: Timings::default(),
    };
    for s in shares {
        let at = out.trajs.len();
        out.trajs.extend(from_light(&s.trajs)?);
        out.rollout.add(&s.rollout);
        out.p.extend(s.p);
        let r = &mut out.rewards;
        r.groups.extend(s.rewards.groups);
        r.kept.extend(s.rewards.kept.iter().map(|&i| at + i));
        r.f1_of.extend(s.rewards.f1_of);
        r.f1_sum += s.rewards.f1_sum;
        r.outcome_sum += s.rewards.outcome_sum;
        r.failures += s.rewards.failures;
        out.adv.turns.extend(s.adv.turns);
        out.adv.zero_groups += s.adv.zero_groups;
        out.adv.groups += s.adv.groups;
        out.logprob_delta.sum += s.logprob_delta.sum;
        out.logprob_delta.tokens += s.logprob_delta.tokens;
        let t = &mut out.timings;
        t.rollout_s = t.rollout_s.max(s.timings.rollout_s);
        t.scoring_s = t.scoring_s.max(s.timings.scoring_s);
        t.update_s = t.update_s.max(s.timings.update_s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_hold_consecutive_whole_groups_and_dev_blocks_cover_the_split() {
        // 6 prompts x 4 rollouts over 3 ranks: 2 groups (8 rollouts) each.
        let seats = crate::dist::threads::Threads::job(3);
        let blocks: Vec<Range<usize>> = seats.iter().map(|r| rollout_block(24, 4, r)).collect();
        assert_eq!(blocks, vec![0..8, 8..16, 16..24]);
        let dev: Vec<Range<usize>> = seats.iter().map(|r| even_block(10, r)).collect();
        assert_eq!(dev, vec![0..3, 3..6, 6..10]);
        assert!(check_split(6, 3).is_ok());
        let e = check_split(6, 4).unwrap_err().to_string();
        assert!(
            e.contains("rl.prompts_per_step") && e.contains("multiple of 4"),
            "{e}"
        );
    }
}
