//! The CPU reference of `Backend::sample_rows` (kernels/src/cu/sampling.cu
//! mirrors it): greedy, or temperature / top-k / top-p with one uniform draw
//! that the caller supplies from its seeded `Rng`.

use crate::backend::SamplingParams;

/// log p(id) under softmax(logits / temperature) over the whole row (greedy
/// counts as temperature 1): the log-probability a rollout records for a
/// sampled token (`SampledToken::logprob`). Summed in f64.
pub fn sampled_logprob(logits: &[f32], id: u32, params: &SamplingParams) -> f32 {
    let t = if params.temperature > 0.0 {
        params.temperature
    } else {
        1.0
    };
    // NaN logits count as -inf (as in the CUDA kernel).
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let log_sum: f64 = logits
        .iter()
        .filter(|v| !v.is_nan())
        .map(|v| (((v - max) / t) as f64).exp())
        .sum::<f64>()
        .ln();
    let z = logits[id as usize];
    if z.is_nan() {
        return f32::NEG_INFINITY;
    }
    ((((z - max) / t) as f64 - log_sum) as f32).min(0.0)
}

/// Index of the largest logit (the lowest index wins ties, so greedy decoding
/// is deterministic).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// One token id from `logits` under `params`; `uniform` in [0, 1) picks it
/// (unused when greedy).
pub fn sample_with_uniform(logits: &[f32], params: &SamplingParams, uniform: f64) -> u32 {
    if params.temperature <= 0.0 {
        return argmax(logits);
    }
    let t = params.temperature;
    // Candidates sorted by logit, highest first (ties by id for determinism).
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, v / t))
        .collect();
    let keep = if params.top_k > 0 {
        params.top_k.min(cand.len())
    } else {
        cand.len()
    };
    if keep < cand.len() {
        cand.select_nth_unstable_by(keep - 1, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        cand.truncate(keep);
    }
    cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let max = cand[0].1;
    let mut probs: Vec<f64> = cand.iter().map(|c| ((c.1 - max) as f64).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if params.top_p < 1.0 {
        let mut acc = 0.0;
        let mut cut = probs.len();
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= params.top_p as f64 {
                cut = i + 1;
                break;
            }
        }
        probs.truncate(cut);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let u = uniform;
    let mut acc = 0.0;
    for (i, p) in probs.iter().enumerate() {
        acc += p;
        if u < acc {
            return cand[i].0;
        }
    }
    cand[probs.len() - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_logprob_is_log_softmax_at_the_temperature() {
        let logits = [1.0f32, 2.0, 3.5, -1.0];
        for temperature in [0.0f32, 0.5, 1.0, 2.0] {
            let p = SamplingParams {
                temperature,
                top_k: 2, // the cut does not enter the recorded probability
                top_p: 1.0,
            };
            let t = if temperature > 0.0 { temperature } else { 1.0 } as f64;
            let norm: f64 = logits.iter().map(|&v| (v as f64 / t).exp()).sum();
            for id in 0..4u32 {
                let want = (logits[id as usize] as f64 / t) - norm.ln();
                let got = sampled_logprob(&logits, id, &p) as f64;
                assert!(
                    (got - want).abs() < 1e-6,
                    "T {temperature} id {id}: {got} vs {want}"
                );
            }
        }
        // A NaN logit counts as -inf, as on the GPU.
        let with_nan = [0.0f32, f32::NAN, 0.0];
        let p = SamplingParams::default();
        assert!((sampled_logprob(&with_nan, 0, &p) - 0.5f32.ln()).abs() < 1e-6);
        assert_eq!(sampled_logprob(&with_nan, 1, &p), f32::NEG_INFINITY);
    }
}
