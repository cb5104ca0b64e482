//! The compute backends behind one trait.
//!
//! [`Backend`] names the few ops a decoder needs. The model code is written
//! once against it; `cpu` is the f32 reference (rayon + the `gemm` crate), and
//! a CUDA backend plugs in behind the same trait.

pub mod cpu;

use std::ops::Range;

use crate::tensor::Tensor;

pub use cpu::Cpu;

/// Which keys each query row of an attention call may see.
///
/// Keys are the rows of the K/V matrices handed to [`Backend::attention`]
/// (for a sequence with a KV cache: every cached position, oldest first).
#[derive(Clone, Debug, PartialEq)]
pub enum AttnMask {
    /// Query row `j` sees keys `0..=offset + j` (prefill or decode after
    /// `offset` cached positions).
    Causal { offset: usize },
    /// Query row `j` sees exactly the union of `spans[j]`: the block mask that
    /// packs several probes after one shared prefix.
    Spans(Vec<Vec<Range<usize>>>),
}

impl AttnMask {
    /// Key ranges visible to query row `j`.
    pub fn visible(&self, j: usize) -> Vec<Range<usize>> {
        match self {
            AttnMask::Causal { offset } => vec![0..offset + j + 1],
            AttnMask::Spans(spans) => spans[j].clone(),
        }
    }
}

/// Shape of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// Precomputed RoPE inverse frequencies (`theta^(-2i/d)`, i < d/2).
#[derive(Clone, Debug)]
pub struct Rope {
    pub head_dim: usize,
    pub inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f64) -> Rope {
        let half = head_dim / 2;
        let inv_freq = (0..half)
            .map(|i| (1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)) as f32)
            .collect();
        Rope { head_dim, inv_freq }
    }
}

/// The ops a decoder-only transformer needs, forward direction.
///
/// Matrices are row-major; "rows" are tokens. Weights follow the Hugging Face
/// `nn.Linear` layout `[out_features, in_features]`.
pub trait Backend: Send + Sync {
    /// Device-resident tensor.
    type Tensor: Clone + Send + Sync;

    fn name(&self) -> String;
    fn upload(&self, t: &Tensor) -> Self::Tensor;
    fn download(&self, t: &Self::Tensor) -> Tensor;
    fn shape<'a>(&self, t: &'a Self::Tensor) -> &'a [usize];
    /// An empty `[0, cols]` matrix (e.g. a fresh KV cache).
    fn empty_rows(&self, cols: usize) -> Self::Tensor;

    /// `x[m, k] @ w[n, k]^T (+ bias[n])` -> `[m, n]`.
    fn linear(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        bias: Option<&Self::Tensor>,
    ) -> Self::Tensor;
    /// Row-wise RMSNorm with weight `w[cols]`.
    fn rms_norm(&self, x: &Self::Tensor, w: &Self::Tensor, eps: f32) -> Self::Tensor;
    /// Rotates `x[rows, heads*head_dim]` in place, row `r` at position `positions[r]`
    /// (Hugging Face "rotate half" layout).
    fn rope(&self, x: &mut Self::Tensor, positions: &[usize], rope: &Rope);
    /// Softmax attention of `q[m, H*d]` over `k, v[n, KV*d]` with grouped
    /// query heads; returns `[m, H*d]`.
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        shape: AttnShape,
        mask: &AttnMask,
    ) -> Self::Tensor;
    /// `silu(gate) * up`, elementwise.
    fn swiglu(&self, gate: &Self::Tensor, up: &Self::Tensor) -> Self::Tensor;
    /// Rows of `table[vocab, d]` picked by `ids`.
    fn embedding(&self, table: &Self::Tensor, ids: &[u32]) -> Self::Tensor;
    /// `x += y`.
    fn add_assign(&self, x: &mut Self::Tensor, y: &Self::Tensor);
    /// Appends the rows of `new` to `dst` (KV cache growth).
    fn append_rows(&self, dst: &mut Self::Tensor, new: &Self::Tensor);
    /// Rows `rows` of `x` gathered into a new matrix.
    fn gather_rows(&self, x: &Self::Tensor, rows: &[usize]) -> Self::Tensor;
    /// Row range `range` of `x` as a new matrix.
    fn slice_rows(&self, x: &Self::Tensor, range: Range<usize>) -> Self::Tensor;
    /// Stacks matrices with equal column counts.
    fn concat_rows(&self, parts: &[Self::Tensor]) -> Self::Tensor;
}
