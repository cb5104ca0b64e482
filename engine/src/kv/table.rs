//! One sequence's block table: which pool rows hold its positions.

use super::BlockId;

/// The blocks of one sequence, in position order, and how many positions
/// are filled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockTable {
    pub(super) blocks: Vec<BlockId>,
    pub(super) len: usize,
}

impl BlockTable {
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Filled positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pool row of position `pos`.
    pub fn slot(&self, pos: usize, block_size: usize) -> usize {
        self.blocks[pos / block_size] as usize * block_size + pos % block_size
    }

    /// Pool rows of positions `range`, in order.
    pub fn slots(&self, range: std::ops::Range<usize>, block_size: usize) -> Vec<usize> {
        range.map(|p| self.slot(p, block_size)).collect()
    }
}
