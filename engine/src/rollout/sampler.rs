//! Next-token sampling: greedy, or temperature / top-k / top-p from a seeded
//! RNG. The algorithm is the CPU backend's reference op
//! (`backend::cpu::sampling`, mirrored by the CUDA kernel); this draws its
//! uniform.

use crate::rng::Rng;

pub use crate::backend::cpu::sampling::{argmax, sample_with_uniform};
pub use crate::backend::SamplingParams;

/// Whether `params` draws at all (greedy uses no random number).
pub fn draws(params: &SamplingParams) -> bool {
    params.temperature > 0.0
}

/// The uniform a sequence hands [`crate::backend::Backend::sample_rows`]
/// for its next token: one draw of its own `rng`, or 0 (no draw) when greedy.
pub fn uniform_for(params: &SamplingParams, rng: &mut Rng) -> f64 {
    if draws(params) {
        rng.uniform()
    } else {
        0.0
    }
}

/// Draws one token id from `logits` under `params` (one uniform from `rng`
/// unless greedy).
pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut Rng) -> u32 {
    let u = if draws(params) { rng.uniform() } else { 0.0 };
    sample_with_uniform(logits, params, u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_first_max() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
        let p = SamplingParams::default();
        assert_eq!(sample(&[0.0, 5.0, 1.0], &p, &mut Rng::new(1)), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_cuts_the_tail() {
        let logits = [1.0, 2.0, 0.5, 1.9];
        let mut rng = Rng::new(3);
        let k1 = SamplingParams {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
        };
        assert!((0..50).all(|_| sample(&logits, &k1, &mut rng) == 1));
        // Probabilities ~ [0.17, 0.46, 0.10, 0.42]*: top_p 0.5 keeps ids 1 and 3 only.
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
        };
        let seen: std::collections::BTreeSet<u32> =
            (0..300).map(|_| sample(&logits, &p, &mut rng)).collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn sampling_frequencies_follow_softmax() {
        let logits = [0.0f32, (2.0f32).ln(), (3.0f32).ln()]; // probs 1/6, 2/6, 3/6
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        };
        let mut rng = Rng::new(11);
        let n = 30_000;
        let mut counts = [0usize; 3];
        (0..n).for_each(|_| counts[sample(&logits, &p, &mut rng) as usize] += 1);
        for (c, want) in counts.iter().zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]) {
            assert!((*c as f64 / n as f64 - want).abs() < 0.015, "{counts:?}");
        }
    }
}
