//! Reinforcement learning from rollouts: ground-truth scoring (`p_t` after
//! every turn), turn rewards, advantage estimators and the policy loss.
//! Pure functions over trajectories and per-token numbers; the training loop
//! that drives them lives in `train::rl`.

pub mod advantage;
pub mod loss;
pub mod reward;
pub mod scoring;

pub use advantage::{
    advantages, advantages_over, spread_over_tokens, tokens_per_turn, Advantages, Estimator,
    Normalization, RolloutRewards,
};
pub use loss::{
    policy_loss, token_weights, token_weights_in, Aggregation, KlEstimator, LossConfig, LossInputs,
    LossStats, MiniBatchCounts,
};
pub use reward::{
    gt_probabilities, information_gain, outcome_reward, rollout_rewards, IgForm, ProbeAnswers,
};
pub use scoring::{
    score, turn_boundaries, Probe, ProbeTemplate, ScoreRequest, DEFAULT_PROBE_TEMPLATE,
};
