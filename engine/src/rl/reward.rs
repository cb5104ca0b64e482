//! Turn rewards from ground-truth scores: information gain of each
//! tool-calling turn, and the outcome of the answer turn.

use serde::{Deserialize, Serialize};

use super::advantage::RolloutRewards;

/// What "information gain" measures (`rl.ig_form`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IgForm {
    /// `p_t - p_{t-1}` with `p = exp(mean log-prob)` (the paper's formula).
    #[default]
    ProbDiff,
    /// The difference of the mean log-probs themselves.
    LogProbDiff,
}

/// Which reference answers the probes use (`rl.probe_answers`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeAnswers {
    /// The first reference (the reference code's choice).
    #[default]
    First,
    /// Every reference; each boundary takes the most probable one.
    Max,
}

/// `p_t` for each boundary from the mean answer log-probs of each probe
/// (`mean_logp[probe][boundary]`), the max over probes.
pub fn gt_probabilities(mean_logp: &[Vec<f64>]) -> Vec<f64> {
    let n = mean_logp.first().map_or(0, |p| p.len());
    (0..n)
        .map(|t| {
            mean_logp
                .iter()
                .map(|p| p[t].exp())
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect()
}

/// Information gain of turn `t` (`0..T-1`): the change of the score from
/// boundary `t` to boundary `t + 1`.
pub fn information_gain(form: IgForm, p: &[f64]) -> Vec<f64> {
    let value = |v: f64| match form {
        IgForm::ProbDiff => v,
        IgForm::LogProbDiff => v.max(f64::MIN_POSITIVE).ln(),
    };
    p.windows(2).map(|w| value(w[1]) - value(w[0])).collect()
}

/// The answer turn's reward: the reward plugin's outcome, or
/// `format_penalty` when the rollout never answered or broke its tags.
pub fn outcome_reward(outcome: f64, well_formed: bool, format_penalty: f64) -> f64 {
    if well_formed {
        outcome
    } else {
        format_penalty
    }
}

/// The rewards of one rollout with `turns` turns. `p` holds `p_0..p_{T-1}`;
/// `plugin_turns`, when the reward plugin returned per-turn rewards, replaces
/// the information gain (its entry for the answer turn is added to the outcome).
pub fn rollout_rewards(
    form: IgForm,
    p: &[f64],
    turns: usize,
    outcome: f64,
    plugin_turns: Option<&[f64]>,
) -> RolloutRewards {
    let tool_turns = turns.saturating_sub(1);
    match plugin_turns {
        Some(v) => RolloutRewards {
            ig: (0..tool_turns)
                .map(|k| v.get(k).copied().unwrap_or(0.0))
                .collect(),
            outcome: outcome + v.get(tool_turns).copied().unwrap_or(0.0),
        },
        None => {
            let mut ig = information_gain(form, p);
            ig.resize(tool_turns, 0.0);
            RolloutRewards { ig, outcome }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn information_gain_is_the_change_per_turn() {
        let p = [0.1, 0.3, 0.25];
        let ig = information_gain(IgForm::ProbDiff, &p);
        assert!((ig[0] - 0.2).abs() < 1e-12 && (ig[1] + 0.05).abs() < 1e-12);
        let lg = information_gain(IgForm::LogProbDiff, &p);
        assert!((lg[0] - 3f64.ln()).abs() < 1e-12);
        // Three turns: two tool turns earn IG, the answer turn the outcome.
        let r = rollout_rewards(IgForm::ProbDiff, &p, 3, 0.8, None);
        assert_eq!(r.ig.len(), 2);
        assert_eq!(r.outcome, 0.8);
        let r = rollout_rewards(IgForm::ProbDiff, &p, 3, 0.8, Some(&[0.0, 0.0, 0.1]));
        assert_eq!(r.ig, vec![0.0, 0.0]);
        assert!((r.outcome - 0.9).abs() < 1e-12);
        assert_eq!(outcome_reward(0.7, false, -2.0), -2.0);
        assert_eq!(outcome_reward(0.7, true, -2.0), 0.7);
    }

    #[test]
    fn max_over_references_takes_the_likelier_probe() {
        let p = gt_probabilities(&[vec![-2.0, -0.5], vec![-1.0, -3.0]]);
        assert!((p[0] - (-1f64).exp()).abs() < 1e-12);
        assert!((p[1] - (-0.5f64).exp()).abs() < 1e-12);
    }
}
