//! The policy loss: clipped surrogate (optionally dual-clip, or GSPO's
//! sequence-level ratio), KL to a frozen reference policy, entropy bonus,
//! and how token losses are aggregated. Works on per-token log-probs and
//! returns the gradient with respect to them; the model's backward does the
//! rest.

use serde::{Deserialize, Serialize};

/// KL estimator of `KL(pi || pi_ref)` per token, with `x = log pi_ref - log pi`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// `-x`.
    K1,
    /// `exp(x) - x - 1` (unbiased, always >= 0).
    K3,
    /// k3 clamped to [-10, 10] (the reference's "low_var_kl").
    #[default]
    LowVarKl,
}

/// How token losses become one number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Mean over every loss token of the mini-batch.
    #[default]
    TokenMean,
    /// Mean over sequences of each sequence's token sum (the reference's).
    SeqMeanTokenSum,
    /// Mean over sequences of each sequence's token mean.
    SeqMeanTokenMean,
}

/// Loss settings (`[loss]` in a run file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    pub clip_low: f64,
    pub clip_high: f64,
    /// Dual-clip constant `c` (> 1) bounding the loss of negative-advantage
    /// tokens at `-A * c`; 0 disables it.
    pub dual_clip: f64,
    /// KL coefficient; 0 disables the reference policy (and saves its memory).
    pub kl_beta: f64,
    pub kl_estimator: KlEstimator,
    /// Entropy bonus coefficient (the loss subtracts `coef * entropy`).
    pub entropy_coef: f64,
    pub aggregation: Aggregation,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            clip_low: 0.2,
            clip_high: 0.2,
            dual_clip: 3.0,
            kl_beta: 0.001,
            kl_estimator: KlEstimator::LowVarKl,
            entropy_coef: 0.0,
            aggregation: Aggregation::TokenMean,
        }
    }
}

/// Per-token inputs of one mini-batch (only loss tokens: prompt and
/// tool-result tokens are never listed).
pub struct LossInputs<'a> {
    pub logp: &'a [f32],
    pub old_logp: &'a [f32],
    pub ref_logp: Option<&'a [f32]>,
    pub entropy: Option<&'a [f32]>,
    pub advantage: &'a [f32],
    /// Index of each token's sequence (0-based, in order). Sequences are
    /// whole: a sequence-level ratio is computed over the tokens listed.
    pub seq: &'a [usize],
    /// Each token's share of the aggregate, from [`token_weights`] over the
    /// whole mini-batch (a micro-batch passes its slice).
    pub weight: &'a [f64],
}

/// What the loss did. `loss`, `pg_loss`, `kl` and `entropy` are weighted
/// like the loss, so the stats of a mini-batch's micro-batches add up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LossStats {
    pub loss: f64,
    pub pg_loss: f64,
    pub kl: f64,
    pub entropy: f64,
    /// Tokens whose surrogate was clipped (no policy gradient).
    pub clipped: usize,
    pub ratio_sum: f64,
    pub tokens: usize,
}

impl LossStats {
    pub fn add(&mut self, o: &LossStats) {
        self.loss += o.loss;
        self.pg_loss += o.pg_loss;
        self.kl += o.kl;
        self.entropy += o.entropy;
        self.clipped += o.clipped;
        self.ratio_sum += o.ratio_sum;
        self.tokens += o.tokens;
    }

    pub fn clip_frac(&self) -> f64 {
        self.clipped as f64 / self.tokens.max(1) as f64
    }

    pub fn ratio_mean(&self) -> f64 {
        self.ratio_sum / self.tokens.max(1) as f64
    }
}

/// Loss value and its gradient with respect to each token's log-prob (and
/// entropy, when the bonus is on).
pub struct LossOutput {
    pub stats: LossStats,
    pub dlogp: Vec<f32>,
    pub dentropy: Option<Vec<f32>>,
}

/// Weight of each token in the aggregate (they sum to 1 over the mini-batch).
pub fn token_weights(agg: Aggregation, seq: &[usize]) -> Vec<f64> {
    token_weights_in(agg, seq, MiniBatchCounts::of(seq))
}

/// A mini-batch's loss tokens and the sequences that have any: what the
/// aggregate divides by. A data-parallel rank holds part of a mini-batch
/// and sums these over the ranks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MiniBatchCounts {
    pub tokens: usize,
    pub sequences: usize,
}

impl MiniBatchCounts {
    /// The counts of the tokens' sequence indices `seq`.
    pub fn of(seq: &[usize]) -> MiniBatchCounts {
        let mut seen: Vec<usize> = seq.to_vec();
        seen.sort_unstable();
        seen.dedup();
        MiniBatchCounts {
            tokens: seq.len(),
            sequences: seen.len(),
        }
    }
}

/// [`token_weights`] of part of a mini-batch whose whole counts are `all`.
pub fn token_weights_in(agg: Aggregation, seq: &[usize], all: MiniBatchCounts) -> Vec<f64> {
    let n_seq = seq.iter().copied().max().map_or(0, |m| m + 1);
    let mut len = vec![0usize; n_seq];
    for &s in seq {
        len[s] += 1;
    }
    let present = all.sequences.max(1) as f64;
    seq.iter()
        .map(|&s| match agg {
            Aggregation::TokenMean => 1.0 / all.tokens as f64,
            Aggregation::SeqMeanTokenSum => 1.0 / present,
            Aggregation::SeqMeanTokenMean => 1.0 / (present * len[s] as f64),
        })
        .collect()
}

/// The loss of one mini-batch. With `sequence_ratio` (GSPO) every token of
/// a sequence uses the sequence's ratio `exp(mean_t (logp - old_logp))`,
/// clipped as a whole.
pub fn policy_loss(cfg: &LossConfig, sequence_ratio: bool, x: &LossInputs<'_>) -> LossOutput {
    let n = x.logp.len();
    assert!(
        [
            x.old_logp.len(),
            x.advantage.len(),
            x.seq.len(),
            x.weight.len()
        ]
        .iter()
        .all(|&l| l == n),
        "policy_loss: inputs of different lengths"
    );
    let w = x.weight;
    // GSPO: per-sequence mean log-ratio.
    let seq_ratio: Vec<f64> = if sequence_ratio {
        let n_seq = x.seq.iter().copied().max().map_or(0, |m| m + 1);
        let (mut sum, mut len) = (vec![0.0f64; n_seq], vec![0usize; n_seq]);
        for t in 0..n {
            sum[x.seq[t]] += (x.logp[t] - x.old_logp[t]) as f64;
            len[x.seq[t]] += 1;
        }
        sum.iter()
            .zip(&len)
            .map(|(s, &l)| (s / l.max(1) as f64).exp())
            .collect()
    } else {
        vec![]
    };
    let mut seq_len = vec![0usize; seq_ratio.len()];
    for &s in x.seq.iter().filter(|_| sequence_ratio) {
        seq_len[s] += 1;
    }
    let mut seq_grad = vec![0.0f64; seq_ratio.len()];
    let mut stats = LossStats {
        tokens: n,
        ..Default::default()
    };
    let mut dlogp = vec![0.0f32; n];
    let mut dentropy = x.entropy.map(|_| vec![0.0f32; n]);
    for t in 0..n {
        let a = x.advantage[t] as f64;
        let ratio = if sequence_ratio {
            seq_ratio[x.seq[t]]
        } else {
            ((x.logp[t] - x.old_logp[t]) as f64).exp()
        };
        let unclipped = -a * ratio;
        let clipped = -a * ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high);
        let (mut pg, mut live) = if clipped > unclipped {
            (clipped, false)
        } else {
            (unclipped, true)
        };
        if cfg.dual_clip > 1.0 && a < 0.0 && pg > -a * cfg.dual_clip {
            pg = -a * cfg.dual_clip;
            live = false;
        }
        // d(-a * ratio)/dlogp. A sequence ratio depends on every token of
        // its sequence: collect the sequence's total, spread it below.
        let mut g = 0.0;
        if live && sequence_ratio {
            seq_grad[x.seq[t]] += w[t] * -a * ratio;
        } else if live {
            g = -a * ratio;
        }
        let mut loss = pg;
        if cfg.kl_beta > 0.0 {
            let r = x.ref_logp.expect("policy_loss: kl_beta > 0 needs ref_logp")[t] as f64;
            let lx = r - x.logp[t] as f64;
            let (kl, dkl) = match cfg.kl_estimator {
                KlEstimator::K1 => (-lx, 1.0),
                KlEstimator::K3 => (lx.exp() - lx - 1.0, 1.0 - lx.exp()),
                KlEstimator::LowVarKl => {
                    let k = lx.exp() - lx - 1.0;
                    if k.abs() > 10.0 {
                        (k.clamp(-10.0, 10.0), 0.0)
                    } else {
                        (k, 1.0 - lx.exp())
                    }
                }
            };
            loss += cfg.kl_beta * kl;
            g += cfg.kl_beta * dkl;
            stats.kl += w[t] * kl;
        }
        if let (Some(h), Some(dh)) = (x.entropy, dentropy.as_mut()) {
            loss -= cfg.entropy_coef * h[t] as f64;
            dh[t] = (-cfg.entropy_coef * w[t]) as f32;
            stats.entropy += w[t] * h[t] as f64;
        }
        dlogp[t] = (g * w[t]) as f32;
        stats.loss += w[t] * loss;
        stats.pg_loss += w[t] * pg;
        stats.clipped += !live as usize;
        stats.ratio_sum += ratio;
    }
    if sequence_ratio {
        // d ratio_i / d logp_u = ratio_i / |seq i| for every token u of seq i.
        for (d, &s) in dlogp.iter_mut().zip(x.seq) {
            *d += (seq_grad[s] / seq_len[s] as f64) as f32;
        }
    }
    LossOutput {
        stats,
        dlogp,
        dentropy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Case {
        logp: Vec<f32>,
        old: Vec<f32>,
        reference: Vec<f32>,
        entropy: Vec<f32>,
        adv: Vec<f32>,
        seq: Vec<usize>,
    }

    fn case() -> Case {
        // Ratios spread over both clip regions and the dual-clip region,
        // away from the kinks (finite differences need smooth points).
        Case {
            logp: vec![-1.0, -0.5, -2.0, -0.1, -3.0, -0.7, -1.2, -0.4],
            old: vec![-1.1, -0.9, -1.5, -0.1, -4.5, -0.6, -1.25, -0.2],
            reference: vec![-1.3, -0.4, -2.2, -0.3, -2.0, -0.9, -1.0, -0.5],
            entropy: vec![1.2, 0.4, 2.0, 0.9, 1.1, 0.3, 0.8, 1.5],
            adv: vec![1.0, -0.5, 2.0, -1.5, -1.0, 0.7, 0.3, -0.8],
            seq: vec![0, 0, 0, 1, 1, 2, 2, 2],
        }
    }

    fn run(cfg: &LossConfig, seqr: bool, c: &Case) -> LossOutput {
        let w = token_weights(cfg.aggregation, &c.seq);
        policy_loss(
            cfg,
            seqr,
            &LossInputs {
                logp: &c.logp,
                old_logp: &c.old,
                ref_logp: Some(&c.reference),
                entropy: Some(&c.entropy),
                advantage: &c.adv,
                seq: &c.seq,
                weight: &w,
            },
        )
    }

    #[test]
    fn gradient_matches_finite_differences() {
        for agg in [
            Aggregation::TokenMean,
            Aggregation::SeqMeanTokenSum,
            Aggregation::SeqMeanTokenMean,
        ] {
            for kl in [KlEstimator::K1, KlEstimator::K3, KlEstimator::LowVarKl] {
                for seqr in [false, true] {
                    let cfg = LossConfig {
                        kl_beta: 0.1,
                        kl_estimator: kl,
                        entropy_coef: 0.05,
                        aggregation: agg,
                        ..Default::default()
                    };
                    let c = case();
                    let out = run(&cfg, seqr, &c);
                    if !seqr {
                        // Some tokens clipped, some live: both branches covered.
                        assert!(out.stats.clip_frac() > 0.0 && out.stats.clip_frac() < 1.0);
                    }
                    let h = 1e-3f32;
                    for t in 0..c.logp.len() {
                        let mut up = case();
                        up.logp[t] += h;
                        let mut dn = case();
                        dn.logp[t] -= h;
                        let fd = (run(&cfg, seqr, &up).stats.loss
                            - run(&cfg, seqr, &dn).stats.loss)
                            / (2.0 * h as f64);
                        let an = out.dlogp[t] as f64;
                        assert!(
                            (fd - an).abs() < 1e-4 * (1.0 + fd.abs()),
                            "{agg:?} {kl:?} seq-ratio {seqr} token {t}: fd {fd} vs analytic {an}"
                        );
                        let mut up = case();
                        up.entropy[t] += h;
                        let mut dn = case();
                        dn.entropy[t] -= h;
                        let fd = (run(&cfg, seqr, &up).stats.loss
                            - run(&cfg, seqr, &dn).stats.loss)
                            / (2.0 * h as f64);
                        let an = out.dentropy.as_ref().unwrap()[t] as f64;
                        assert!((fd - an).abs() < 1e-5, "entropy token {t}: {fd} vs {an}");
                    }
                }
            }
        }
    }

    #[test]
    fn on_policy_ratio_is_one_and_nothing_is_clipped() {
        let c = case();
        let cfg = LossConfig {
            kl_beta: 0.0,
            ..Default::default()
        };
        let w = token_weights(Aggregation::TokenMean, &c.seq);
        let x = LossInputs {
            logp: &c.logp,
            old_logp: &c.logp,
            ref_logp: None,
            entropy: None,
            advantage: &c.adv,
            seq: &c.seq,
            weight: &w,
        };
        for seqr in [false, true] {
            let out = policy_loss(&cfg, seqr, &x);
            assert_eq!(out.stats.ratio_mean(), 1.0);
            assert_eq!(out.stats.clipped, 0);
            // The gradient is -A / N per token (token mean), the policy gradient.
            if !seqr {
                for (g, a) in out.dlogp.iter().zip(&c.adv) {
                    assert!((*g as f64 + *a as f64 / 8.0).abs() < 1e-7);
                }
            }
        }
    }

    #[test]
    fn dual_clip_bounds_negative_advantage_losses() {
        // Ratio e^1.5 ~ 4.48 with A = -1: unclipped loss 4.48, dual clip caps at 3.
        let (lp, old, a, s) = ([-1.0f32], [-2.5f32], [-1.0f32], [0usize]);
        let x = LossInputs {
            logp: &lp,
            old_logp: &old,
            ref_logp: None,
            entropy: None,
            advantage: &a,
            seq: &s,
            weight: &[1.0],
        };
        let mut cfg = LossConfig {
            kl_beta: 0.0,
            ..Default::default()
        };
        let out = policy_loss(&cfg, false, &x);
        assert!((out.stats.pg_loss - 3.0).abs() < 1e-12);
        assert_eq!(out.dlogp[0], 0.0);
        cfg.dual_clip = 0.0;
        let out = policy_loss(&cfg, false, &x);
        assert!((out.stats.pg_loss - 1.5f64.exp()).abs() < 1e-6);
    }

    #[test]
    fn weights_follow_the_aggregation() {
        let seq = [0, 0, 0, 1];
        assert_eq!(token_weights(Aggregation::TokenMean, &seq), vec![0.25; 4]);
        assert_eq!(
            token_weights(Aggregation::SeqMeanTokenSum, &seq),
            vec![0.5; 4]
        );
        let w = token_weights(Aggregation::SeqMeanTokenMean, &seq);
        assert!((w[0] - 1.0 / 6.0).abs() < 1e-12 && (w[3] - 0.5).abs() < 1e-12);
    }
}
