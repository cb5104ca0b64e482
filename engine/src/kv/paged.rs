//! The paged pool of every layer, the block tables of live sequences, and
//! the reservation of slots for a forward step.

use super::{BlockAllocator, BlockTable, KvError};
use crate::backend::Backend;

/// Handle of one sequence in a [`PagedKv`].
pub type SeqId = usize;

/// Geometry and limits of a paged cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvConfig {
    /// Positions per block.
    pub block_size: usize,
    /// Blocks allocated up front.
    pub initial_blocks: usize,
    /// The pool grows (doubling) up to this many blocks; a reservation past
    /// it is [`KvError::Exhausted`].
    pub max_blocks: usize,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            block_size: 16,
            initial_blocks: 64,
            max_blocks: usize::MAX,
        }
    }
}

/// What the cache did since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvStats {
    /// Positions whose keys and values a forward wrote (the tokens the
    /// decoder ran).
    pub written: usize,
    /// Sequences made by [`PagedKv::fork`].
    pub forks: usize,
    /// Shared partial blocks copied before a write (copy-on-write).
    pub cow_copies: usize,
    /// Most blocks in use at once.
    pub peak_blocks: usize,
}

/// Keys and values of many sequences in fixed-size blocks: per layer one
/// K and one V pool `[blocks * block_size, KV*d]` on the backend.
pub struct PagedKv<B: Backend> {
    backend: B,
    cfg: KvConfig,
    cols: usize,
    alloc: BlockAllocator,
    pools: Vec<(B::Tensor, B::Tensor)>,
    seqs: Vec<Option<BlockTable>>,
    stats: KvStats,
}

impl<B: Backend> PagedKv<B> {
    /// An empty cache of `layers` layers with `cols` (= KV heads x head
    /// size) columns per row.
    pub fn new(backend: B, layers: usize, cols: usize, cfg: KvConfig) -> PagedKv<B> {
        assert!(cfg.block_size > 0, "KV cache: block_size must be > 0");
        let blocks = cfg.initial_blocks.min(cfg.max_blocks);
        let rows = blocks * cfg.block_size;
        // Pools are made as KV caches are (`empty_rows`, then grown): in
        // the backend's cache dtype.
        let zeros = backend.zeros(&[rows, cols]);
        let pool = || {
            let mut p = backend.empty_rows(cols);
            backend.append_rows(&mut p, &zeros);
            p
        };
        let pools = (0..layers).map(|_| (pool(), pool())).collect();
        PagedKv {
            backend,
            cfg,
            cols,
            alloc: BlockAllocator::new(blocks),
            pools,
            seqs: vec![],
            stats: KvStats::default(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.cfg.block_size
    }

    pub fn stats(&self) -> KvStats {
        self.stats
    }

    pub fn allocator(&self) -> &BlockAllocator {
        &self.alloc
    }

    /// A new, empty sequence.
    pub fn new_seq(&mut self) -> SeqId {
        self.seqs.push(Some(BlockTable::default()));
        self.seqs.len() - 1
    }

    pub fn table(&self, seq: SeqId) -> Result<&BlockTable, KvError> {
        self.seqs
            .get(seq)
            .and_then(Option::as_ref)
            .ok_or(KvError::NoSequence(seq))
    }

    /// Cached positions of `seq`.
    pub fn len(&self, seq: SeqId) -> Result<usize, KvError> {
        Ok(self.table(seq)?.len)
    }

    /// A new sequence that shares every block of `seq` (its cached
    /// positions are the new one's too); the first write into a shared
    /// partial block copies it.
    pub fn fork(&mut self, seq: SeqId) -> Result<SeqId, KvError> {
        let t = self.table(seq)?.clone();
        for &b in &t.blocks {
            self.alloc.retain(b);
        }
        self.stats.forks += 1;
        self.seqs.push(Some(t));
        Ok(self.seqs.len() - 1)
    }

    /// Drops `seq`; its blocks go back to the free list when no other
    /// sequence holds them.
    pub fn free(&mut self, seq: SeqId) -> Result<(), KvError> {
        let t = self
            .seqs
            .get_mut(seq)
            .and_then(Option::take)
            .ok_or(KvError::NoSequence(seq))?;
        for b in t.blocks {
            self.alloc.release(b);
        }
        Ok(())
    }

    /// Blocks `seq` lacks to take `add` more positions, counting the copy
    /// of a shared partial last block.
    fn blocks_needed(&self, t: &BlockTable, add: usize) -> usize {
        let bs = self.cfg.block_size;
        let grow = (t.len + add).div_ceil(bs).saturating_sub(t.blocks.len());
        grow + usize::from(add > 0 && self.shared_partial_last(t))
    }

    fn shared_partial_last(&self, t: &BlockTable) -> bool {
        !t.len.is_multiple_of(self.cfg.block_size)
            && t.blocks
                .get(t.len / self.cfg.block_size)
                .is_some_and(|&b| self.alloc.refs(b) > 1)
    }

    /// Makes room for `adds[i]` more positions of `seqs[i]` (distinct
    /// sequences): all or nothing. Grows the pool when allowed; a shared
    /// partial last block is copied into a private one. Returns each
    /// sequence's pool rows for its new positions; lengths advance by
    /// [`PagedKv::commit`] once they are written.
    pub(crate) fn reserve(
        &mut self,
        seqs: &[SeqId],
        adds: &[usize],
    ) -> Result<Vec<Vec<usize>>, KvError> {
        assert_eq!(seqs.len(), adds.len(), "KV cache: one count per sequence");
        let mut needed = 0;
        for (i, (&s, &add)) in seqs.iter().zip(adds).enumerate() {
            assert!(
                !seqs[..i].contains(&s),
                "KV cache: sequence {s} twice in a step"
            );
            needed += self.blocks_needed(self.table(s)?, add);
        }
        self.ensure_free(needed)?;
        let bs = self.cfg.block_size;
        let mut out = Vec::with_capacity(seqs.len());
        for (&s, &add) in seqs.iter().zip(adds) {
            let mut t = self.seqs[s].take().expect("checked above");
            if add > 0 && self.shared_partial_last(&t) {
                self.copy_on_write(&mut t);
            }
            while t.blocks.len() * bs < t.len + add {
                t.blocks.push(self.alloc.allocate().expect("ensured free"));
            }
            out.push(t.slots(t.len..t.len + add, bs));
            self.seqs[s] = Some(t);
        }
        self.stats.peak_blocks = self.stats.peak_blocks.max(self.alloc.used_blocks());
        Ok(out)
    }

    /// Records `adds[i]` written positions of `seqs[i]` (after
    /// [`PagedKv::reserve`]).
    pub(crate) fn commit(&mut self, seqs: &[SeqId], adds: &[usize]) {
        for (&s, &add) in seqs.iter().zip(adds) {
            let t = self.seqs[s].as_mut().expect("reserved");
            assert!(
                t.len + add <= t.blocks.len() * self.cfg.block_size,
                "KV cache: commit past the reserved blocks"
            );
            t.len += add;
            self.stats.written += add;
        }
    }

    /// At least `needed` free blocks, growing the pool (doubling, up to
    /// `max_blocks`) when short.
    fn ensure_free(&mut self, needed: usize) -> Result<(), KvError> {
        let free = self.alloc.free_blocks();
        if needed <= free {
            return Ok(());
        }
        let have = self.alloc.num_blocks();
        let want = have + (needed - free);
        if want > self.cfg.max_blocks {
            return Err(KvError::Exhausted {
                needed,
                free,
                max_blocks: self.cfg.max_blocks,
                block_size: self.cfg.block_size,
            });
        }
        let extra = want.max(have * 2).min(self.cfg.max_blocks) - have;
        let zeros = self
            .backend
            .zeros(&[extra * self.cfg.block_size, self.cols]);
        for (k, v) in &mut self.pools {
            self.backend.append_rows(k, &zeros);
            self.backend.append_rows(v, &zeros);
        }
        self.alloc.grow(extra);
        Ok(())
    }

    /// Replaces `t`'s shared partial last block by a private copy of its
    /// filled rows, in every layer.
    fn copy_on_write(&mut self, t: &mut BlockTable) {
        let bs = self.cfg.block_size;
        let i = t.len / bs;
        let old = t.blocks[i];
        let new = self.alloc.allocate().expect("ensured free");
        let filled = t.len % bs;
        let src: Vec<usize> = (0..filled).map(|r| old as usize * bs + r).collect();
        let dst: Vec<usize> = (0..filled).map(|r| new as usize * bs + r).collect();
        for (k, v) in &mut self.pools {
            let (ks, vs) = (
                self.backend.gather_rows(k, &src),
                self.backend.gather_rows(v, &src),
            );
            self.backend.write_kv(k, v, &dst, &ks, &vs);
        }
        self.alloc.release(old);
        t.blocks[i] = new;
        self.stats.cow_copies += 1;
    }

    /// Layer `l`'s K and V pools.
    pub(crate) fn pools_mut(&mut self, l: usize) -> (&mut B::Tensor, &mut B::Tensor) {
        let (k, v) = &mut self.pools[l];
        (k, v)
    }

    /// Pool rows of positions `0..len` of `seq` (every cached key, oldest
    /// first).
    pub(crate) fn key_slots(&self, seq: SeqId, len: usize) -> Vec<usize> {
        let t = self.seqs[seq].as_ref().expect("live sequence");
        t.slots(0..len, self.cfg.block_size)
    }

    /// Every live sequence's table (tests and diagnostics).
    pub fn live(&self) -> impl Iterator<Item = (SeqId, &BlockTable)> {
        self.seqs
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.as_ref().map(|t| (i, t)))
    }
}
