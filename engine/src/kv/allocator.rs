//! Reference-counted fixed-size blocks with a free list.

/// Index of a block in the pool.
pub type BlockId = u32;

/// Why the paged cache refused a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error(
        "KV cache exhausted: {needed} more blocks of {block_size} positions needed, \
         {free} free of at most {max_blocks}"
    )]
    Exhausted {
        needed: usize,
        free: usize,
        max_blocks: usize,
        block_size: usize,
    },
    #[error("KV cache: sequence {0} does not exist (freed or never made)")]
    NoSequence(usize),
}

/// Hands out block ids; a block returns to the free list when its last
/// reference is released.
#[derive(Clone, Debug)]
pub struct BlockAllocator {
    refs: Vec<u32>,
    /// Free ids; the next allocation pops the last (most recently freed).
    free: Vec<BlockId>,
}

impl BlockAllocator {
    /// `blocks` free blocks, allocated in id order.
    pub fn new(blocks: usize) -> BlockAllocator {
        let mut a = BlockAllocator {
            refs: vec![],
            free: vec![],
        };
        a.grow(blocks);
        a
    }

    /// Adds `extra` free blocks (ids after the existing ones).
    pub fn grow(&mut self, extra: usize) {
        let n = self.refs.len();
        self.refs.resize(n + extra, 0);
        self.free
            .splice(0..0, (n..n + extra).rev().map(|i| i as BlockId));
    }

    /// A free block with one reference.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let id = self.free.pop()?;
        debug_assert_eq!(self.refs[id as usize], 0);
        self.refs[id as usize] = 1;
        Some(id)
    }

    /// One more reference to an allocated block.
    pub fn retain(&mut self, id: BlockId) {
        let r = &mut self.refs[id as usize];
        assert!(*r > 0, "retain of free block {id}");
        *r += 1;
    }

    /// Drops one reference; returns whether the block became free.
    pub fn release(&mut self, id: BlockId) -> bool {
        let r = &mut self.refs[id as usize];
        assert!(*r > 0, "release of free block {id} (double free)");
        *r -= 1;
        if *r == 0 {
            self.free.push(id);
        }
        *r == 0
    }

    /// References to block `id` (0: free).
    pub fn refs(&self, id: BlockId) -> u32 {
        self.refs[id as usize]
    }

    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    pub fn num_blocks(&self) -> usize {
        self.refs.len()
    }

    pub fn used_blocks(&self) -> usize {
        self.num_blocks() - self.free_blocks()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_blocks_are_reused_and_shared_ones_live_until_the_last_release() {
        let mut a = BlockAllocator::new(3);
        let (x, y, z) = (
            a.allocate().unwrap(),
            a.allocate().unwrap(),
            a.allocate().unwrap(),
        );
        assert_eq!((x, y, z), (0, 1, 2));
        assert_eq!(a.allocate(), None, "three blocks, three handed out");
        a.retain(y);
        assert!(!a.release(y), "y still has a reference");
        assert_eq!(a.free_blocks(), 0);
        assert!(a.release(y));
        assert_eq!(a.allocate(), Some(y), "the freed block is reused");
        assert_eq!(a.refs(y), 1);
        a.grow(2);
        assert_eq!((a.allocate(), a.allocate()), (Some(3), Some(4)));
        assert_eq!(a.used_blocks(), 5);
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn a_double_free_panics_instead_of_corrupting_the_free_list() {
        let mut a = BlockAllocator::new(1);
        let x = a.allocate().unwrap();
        a.release(x);
        a.release(x);
    }
}
