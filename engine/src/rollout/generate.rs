//! Plain (single-turn) generation: batched decoding with a KV cache per
//! sequence. The multi-turn agent loop builds on the same pieces.

use super::sampler::{draws, SamplingParams};
use crate::backend::Backend;
use crate::model::{LogitRows, Model, SeqStep};
use crate::rng::Rng;

/// Why a sequence stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Produced one of the stop tokens (included in the output).
    StopToken,
    /// Reached the new-token limit.
    MaxTokens,
}

/// The generated continuation of one prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub stop: StopReason,
}

/// Decoding limits and sampling.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub stop_tokens: Vec<u32>,
    pub seed: u64,
}

/// Generates a continuation for every prompt in one batch: one prefill,
/// then one decode step per token for all unfinished sequences together.
/// `on_token(i, id)` sees each new token of sequence `i` as it is drawn.
/// Sequence `i` samples from its own RNG stream (`seed`, `i`), so its output
/// does not depend on what else is in the batch.
pub fn generate<B: Backend>(
    model: &Model<B>,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(usize, u32),
) -> Vec<Generation> {
    let b = model.backend();
    let n = prompts.len();
    let mut caches: Vec<_> = (0..n).map(|_| model.new_cache()).collect();
    let mut rngs: Vec<Rng> = (0..n)
        .map(|i| Rng::new(opts.seed.wrapping_add(i as u64)))
        .collect();
    let mut outs: Vec<Generation> = (0..n)
        .map(|_| Generation {
            tokens: vec![],
            stop: StopReason::MaxTokens,
        })
        .collect();
    if opts.max_new_tokens == 0 {
        return outs;
    }
    let mut active: Vec<usize> = (0..n).filter(|&i| !prompts[i].is_empty()).collect();
    let mut inputs: Vec<Vec<u32>> = prompts.to_vec();
    while !active.is_empty() {
        let logits = {
            let mut steps: Vec<SeqStep<'_, B>> = Vec::with_capacity(active.len());
            let mut cache_refs: Vec<Option<&mut _>> = caches.iter_mut().map(Some).collect();
            for &i in &active {
                steps.push(SeqStep {
                    tokens: &inputs[i],
                    positions: None,
                    cache: cache_refs[i].take().expect("each sequence once"),
                });
            }
            model.forward(&mut steps, LogitRows::Last)
        };
        // Sampled where the logits are: only the ids come back from a GPU.
        let uniforms: Vec<f64> = active
            .iter()
            .map(|&i| {
                if draws(&opts.sampling) {
                    rngs[i].uniform()
                } else {
                    0.0
                }
            })
            .collect();
        let ids = b.sample_rows(&logits, &opts.sampling, &uniforms);
        let mut still = Vec::with_capacity(active.len());
        for (&i, id) in active.iter().zip(ids.iter().map(|s| s.id)) {
            outs[i].tokens.push(id);
            on_token(i, id);
            if opts.stop_tokens.contains(&id) {
                outs[i].stop = StopReason::StopToken;
            } else if outs[i].tokens.len() < opts.max_new_tokens {
                inputs[i] = vec![id];
                still.push(i);
            }
        }
        active = still;
    }
    outs
}
