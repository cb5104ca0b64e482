//! Shared prompt prefixes: the G rollouts of one prompt prefill it once.
//!
//! Equal prompts (token for token) form a group; each group's prompt runs
//! through the decoder once, in one batched forward with the other
//! groups', and its sequence in the paged cache is forked for every other
//! member (`PagedKv::fork`: the prompt's blocks are shared, the partial
//! last one copied on its first write). Each member samples its first token
//! from the group's last-position logits with its own draw, so a rollout's
//! tokens and log-probabilities are those of prefilling it alone: the
//! decoder rows are batch-invariant and attention gathers the same keys in
//! the same order (test: `engine/tests/paged_kv.rs`).

use std::collections::HashMap;

use crate::backend::Backend;
use crate::kv::{KvError, PagedKv, SeqId};
use crate::model::{LogitRows, Model, PagedStep};

/// Prompts after [`prefill_prompts`].
pub struct Prefilled<T> {
    /// The sequence of each prompt in the cache.
    pub seqs: Vec<SeqId>,
    /// `[prompts, vocab]`: the logits after each prompt's last token.
    pub logits: T,
    /// Prompt tokens the decoder ran (each distinct prompt once).
    pub prefilled_tokens: usize,
}

/// Prefills every prompt of `prompts` (none empty) into a new sequence of
/// `kv`. With `share`, each distinct prompt runs once and its sequence is
/// forked for the repeats; without, every prompt runs (in one batch).
pub fn prefill_prompts<B: Backend>(
    model: &Model<B>,
    kv: &mut PagedKv<B>,
    prompts: &[&[u32]],
    share: bool,
) -> Result<Prefilled<B::Tensor>, KvError> {
    let mut first: HashMap<&[u32], usize> = HashMap::new();
    let mut distinct: Vec<usize> = vec![];
    let group: Vec<usize> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut new_group = || {
                distinct.push(i);
                distinct.len() - 1
            };
            if share {
                *first.entry(p).or_insert_with(new_group)
            } else {
                new_group()
            }
        })
        .collect();
    let leaders: Vec<SeqId> = distinct.iter().map(|_| kv.new_seq()).collect();
    let steps: Vec<PagedStep<'_>> = distinct
        .iter()
        .zip(&leaders)
        .map(|(&i, &seq)| PagedStep {
            tokens: prompts[i],
            seq,
        })
        .collect();
    let logits = match model.forward_paged(kv, &steps, LogitRows::Last) {
        Ok(l) => l,
        Err(e) => {
            for s in leaders {
                kv.free(s)?;
            }
            return Err(e);
        }
    };
    let mut seqs = Vec::with_capacity(prompts.len());
    for (i, &g) in group.iter().enumerate() {
        seqs.push(if distinct[g] == i {
            leaders[g]
        } else {
            kv.fork(leaders[g])?
        });
    }
    let b = model.backend();
    let logits = if distinct.len() == prompts.len() {
        logits
    } else {
        b.gather_rows(&logits, &group)
    };
    Ok(Prefilled {
        seqs,
        logits,
        prefilled_tokens: distinct.iter().map(|&i| prompts[i].len()).sum(),
    })
}
