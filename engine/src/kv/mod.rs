//! The paged KV cache: keys and values of every sequence live in
//! fixed-size blocks of one pool per layer, found through a block table per
//! sequence (vLLM's PagedAttention layout).
//!
//! Rules the tests check:
//! - a block is in exactly one of: the free list, or one or more block
//!   tables (its reference count); released blocks are reused, most
//!   recently freed first (`allocator.rs`);
//! - running out of blocks is one clear error ([`KvError::Exhausted`]) that
//!   changes nothing: no table, count or pool row is touched by a failed
//!   reservation, for a single sequence or a batch (`paged.rs`);
//! - a sequence never copies its rows when it grows: new positions go into
//!   its last block or fresh ones; the only copy is copy-on-write of a
//!   *shared, partly filled* last block, before the first write into it;
//! - [`PagedKv::fork`] shares every block of a sequence (a prompt prefilled
//!   once for the G rollouts that continue it); what one fork writes is
//!   never seen by another.

mod allocator;
mod paged;
mod table;

pub use allocator::{BlockAllocator, BlockId, KvError};
pub use paged::{KvConfig, KvStats, PagedKv, SeqId};
pub use table::BlockTable;

#[cfg(test)]
mod tests;
