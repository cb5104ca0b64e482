//! Plain (single-turn) generation: batched decoding over one paged KV
//! cache, equal prompts prefilled once. The multi-turn agent loop builds on
//! the same pieces.

use super::decode::next_tokens;
use super::prefix::prefill_prompts;
use super::sampler::{uniform_for, SamplingParams};
use crate::backend::Backend;
use crate::kv::KvConfig;
use crate::model::{Model, PagedStep};
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;

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

/// The ids that end a generated turn: `config.json`'s `eos_token_id`, then
/// the tokenizer's ([`Tokenizer::stop_ids`]: `generation_config.json` and the
/// chat template's end-of-turn tokens). `igpo generate` and the agent stop on
/// the same ids.
pub fn stop_tokens<B: Backend>(model: &Model<B>, tok: &Tokenizer) -> Vec<u32> {
    let mut ids = model.config.eos_token_ids.clone();
    ids.extend(tok.stop_ids());
    ids
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
    let n = prompts.len();
    let mut rngs: Vec<Rng> = (0..n)
        .map(|i| Rng::new(opts.seed.wrapping_add(i as u64)))
        .collect();
    let mut outs: Vec<Generation> = (0..n)
        .map(|_| Generation {
            tokens: vec![],
            stop: StopReason::MaxTokens,
        })
        .collect();
    let mut active: Vec<usize> = (0..n).filter(|&i| !prompts[i].is_empty()).collect();
    if opts.max_new_tokens == 0 || active.is_empty() {
        return outs;
    }
    let bs = KvConfig::default().block_size;
    let mut kv = model.new_kv(KvConfig {
        initial_blocks: active
            .iter()
            .map(|&i| (prompts[i].len() + opts.max_new_tokens).div_ceil(bs))
            .sum(),
        ..KvConfig::default()
    });
    let refs: Vec<&[u32]> = active.iter().map(|&i| prompts[i].as_slice()).collect();
    // The cache only grows (no limit): it cannot run out.
    let pre = prefill_prompts(model, &mut kv, &refs, true).expect("an unbounded KV cache");
    let mut seqs = vec![0; n];
    for (&i, &s) in active.iter().zip(&pre.seqs) {
        seqs[i] = s;
    }
    let mut prefill_logits = Some(pre.logits);
    let mut inputs: Vec<Vec<u32>> = vec![vec![]; n];
    while !active.is_empty() {
        let steps: Vec<PagedStep<'_>> = active
            .iter()
            .map(|&i| PagedStep {
                tokens: &inputs[i],
                seq: seqs[i],
            })
            .collect();
        let uniforms: Vec<f64> = active
            .iter()
            .map(|&i| uniform_for(&opts.sampling, &mut rngs[i]))
            .collect();
        // The cache only grows (no limit): it cannot run out.
        let ids = next_tokens(
            model,
            &mut kv,
            &mut prefill_logits,
            &steps,
            &opts.sampling,
            &uniforms,
        )
        .expect("an unbounded KV cache");
        let mut still = Vec::with_capacity(active.len());
        for (&i, id) in active.iter().zip(ids.iter().map(|s| s.id)) {
            outs[i].tokens.push(id);
            on_token(i, id);
            if opts.stop_tokens.contains(&id) {
                outs[i].stop = StopReason::StopToken;
            } else if outs[i].tokens.len() < opts.max_new_tokens {
                inputs[i] = vec![id];
                still.push(i);
                continue;
            }
            kv.free(seqs[i]).expect("a live sequence");
        }
        active = still;
    }
    outs
}
