//! One decode step of a batch on the paged KV cache, what `generate` and the
//! agent loop both run: the next-token logits of every active sequence, then
//! one token each sampled where the logits are (only ids and
//! log-probabilities come back from a GPU).

use super::sampler::SamplingParams;
use crate::backend::{Backend, SampledToken};
use crate::kv::{KvError, PagedKv};
use crate::model::{LogitRows, Model, PagedStep};

/// Samples the next token of every sequence of `steps`. The logits are the
/// prefill's when `prefill_logits` still holds them (taken: the first step
/// after the prefill, its rows in the order of `steps`), else those of a
/// forward of each sequence's new tokens. `uniforms[i]` is sequence `i`'s
/// draw ([`super::sampler::uniform_for`] on its own RNG stream).
pub(crate) fn next_tokens<B: Backend>(
    model: &Model<B>,
    kv: &mut PagedKv<B>,
    prefill_logits: &mut Option<B::Tensor>,
    steps: &[PagedStep<'_>],
    sampling: &SamplingParams,
    uniforms: &[f64],
) -> Result<Vec<SampledToken>, KvError> {
    let logits = match prefill_logits.take() {
        Some(l) => l,
        None => model.forward_paged(kv, steps, LogitRows::Last)?,
    };
    Ok(model.backend().sample_rows(&logits, sampling, uniforms))
}
