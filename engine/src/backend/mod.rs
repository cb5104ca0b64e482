//! The compute backends behind one trait.
//!
//! [`Backend`] names the few ops a decoder needs. The model code is written
//! once against it; `cpu` is the f32 reference (rayon + the `gemm` crate), and
//! `cuda` runs it on an NVIDIA GPU over the `igpo-kernels` crate.

#[cfg(test)]
pub(crate) mod conformance;
pub mod cpu;
pub mod cuda;
mod device;
pub mod profile;

use std::ops::Range;

use crate::tensor::Tensor;

pub use cpu::Cpu;
pub use cuda::Cuda;
pub use device::{parse_meminfo, AnyBackend, Device, DeviceError, DeviceMemory, Fit};

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
    #[allow(clippy::single_range_in_vec_init)] // a list of key ranges, here of one
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

/// Precomputed RoPE inverse frequencies (`theta^(-2i/d)`, i < d/2, or a
/// scaled set: `model::rope_scaling`) and the factor cos and sin are
/// multiplied by (1 except for yarn scaling).
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub head_dim: usize,
    pub inv_freq: Vec<f32>,
    pub attention_scaling: f32,
}

impl Rope {
    /// Plain RoPE with base `theta`.
    pub fn new(head_dim: usize, theta: f64) -> Rope {
        let half = head_dim / 2;
        let inv_freq = (0..half)
            .map(|i| (1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)) as f32)
            .collect();
        Rope {
            head_dim,
            inv_freq,
            attention_scaling: 1.0,
        }
    }
}

/// Per-row outputs of the fused log-prob op (each a `[rows]` vector).
#[derive(Clone, Debug)]
pub struct LogProbs<T> {
    /// `log p(target)`, always <= 0.
    pub logp: T,
    /// Log-sum-exp of each row's logits (the backward needs it).
    pub lse: T,
    /// Entropy of each row's distribution, when asked for.
    pub entropy: Option<T>,
}

/// One AdamW update's hyper-parameters (bias corrections precomputed).
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// `1 - beta1^t`
    pub bias_correction1: f32,
    /// `1 - beta2^t`
    pub bias_correction2: f32,
    /// Gradients are multiplied by this first (clipping, accumulation).
    pub grad_scale: f32,
}

/// Sampling settings. `temperature == 0` means greedy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
        }
    }
}

/// [`Backend::cached_attention`] one sequence at a time out of the
/// backend's basic ops (the reference every backend's override must match).
pub fn cached_attention_per_sequence<B: Backend>(
    b: &B,
    q: &B::Tensor,
    k: &B::Tensor,
    v: &B::Tensor,
    caches: &mut [(&mut B::Tensor, &mut B::Tensor)],
    bounds: &[Range<usize>],
    shape: AttnShape,
) -> B::Tensor {
    assert_eq!(
        caches.len(),
        bounds.len(),
        "cached_attention: one cache per sequence"
    );
    let mut outs = Vec::with_capacity(bounds.len());
    for ((kc, vc), range) in caches.iter_mut().zip(bounds) {
        let offset = b.shape(kc)[0];
        b.append_rows(kc, &b.slice_rows(k, range.clone()));
        b.append_rows(vc, &b.slice_rows(v, range.clone()));
        let qs = b.slice_rows(q, range.clone());
        outs.push(b.attention(&qs, kc, vc, shape, &AttnMask::Causal { offset }));
    }
    stack_rows(b, outs)
}

/// The per-sequence outputs as one matrix (no copy for one sequence).
fn stack_rows<B: Backend>(b: &B, mut outs: Vec<B::Tensor>) -> B::Tensor {
    if outs.len() == 1 {
        outs.pop().expect("one")
    } else {
        b.concat_rows(&outs)
    }
}

/// [`Backend::paged_attention`] one sequence at a time: each sequence's
/// keys and values gathered out of the pools, oldest first, into the
/// contiguous matrices a per-sequence cache holds, then
/// [`Backend::attention`] (so on the CPU every sum runs in the order of
/// [`cached_attention_per_sequence`]: the same bits).
pub fn paged_attention_per_sequence<B: Backend>(
    b: &B,
    q: &B::Tensor,
    k_pool: &B::Tensor,
    v_pool: &B::Tensor,
    keys: &[Vec<usize>],
    bounds: &[Range<usize>],
    shape: AttnShape,
) -> B::Tensor {
    assert_eq!(
        keys.len(),
        bounds.len(),
        "paged_attention: one key list per sequence"
    );
    let mut outs = Vec::with_capacity(bounds.len());
    for (slots, range) in keys.iter().zip(bounds) {
        assert!(
            range.len() <= slots.len(),
            "paged_attention: {} queries but {} keys",
            range.len(),
            slots.len()
        );
        let (kc, vc) = (b.gather_rows(k_pool, slots), b.gather_rows(v_pool, slots));
        let qs = b.slice_rows(q, range.clone());
        let offset = slots.len() - range.len();
        outs.push(b.attention(&qs, &kc, &vc, shape, &AttnMask::Causal { offset }));
    }
    stack_rows(b, outs)
}

/// One token drawn by [`Backend::sample_rows`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampledToken {
    pub id: u32,
    /// log p(id) under softmax(logits / temperature) over the whole row,
    /// before the top-k / top-p cut (greedy counts as temperature 1): what a
    /// rollout records as the sampling policy's log-probability.
    pub logprob: f32,
}

/// Memory a backend holds, bytes: now, and the most at once since the last
/// [`Backend::reset_peak_memory`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MemoryUsage {
    pub in_use: u64,
    pub peak: u64,
}

/// The ops a decoder-only transformer needs, forward and backward.
///
/// Matrices are row-major; "rows" are tokens. Weights follow the Hugging Face
/// `nn.Linear` layout `[out_features, in_features]`.
pub trait Backend: Clone + Send + Sync {
    /// Device-resident tensor.
    type Tensor: Clone + Send + Sync;

    fn name(&self) -> String;
    /// Runs `f`, a model step's ops, where this backend issues them
    /// cheapest. The default runs it right here; the CPU runs it on a thread
    /// of its rayon pool, so each op's parallel split is a fork the other
    /// threads steal instead of a job injected into the pool from outside
    /// and waited for (2x decode at batch 1, measured: docs/benchmarks.md).
    fn in_pool<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R
    where
        Self: Sized,
    {
        f()
    }
    /// Bytes per element of the weights and KV caches a forward reads (a
    /// decode step's memory traffic is counted in these).
    fn stored_elem_bytes(&self) -> usize {
        4
    }
    /// Bytes a decode step reads to use weight `w` once (the CPU streams
    /// bf16 panels of a weight whose values are all bf16).
    fn weight_read_bytes(&self, w: &Self::Tensor) -> usize {
        self.shape(w).iter().product::<usize>() * self.stored_elem_bytes()
    }
    fn upload(&self, t: &Tensor) -> Self::Tensor;
    fn download(&self, t: &Self::Tensor) -> Tensor;
    fn shape<'a>(&self, t: &'a Self::Tensor) -> &'a [usize];
    /// An empty `[0, cols]` matrix (e.g. a fresh KV cache).
    fn empty_rows(&self, cols: usize) -> Self::Tensor;

    /// Memory in use now and at most since [`Backend::reset_peak_memory`]
    /// (what a benchmark reports as an op's peak); `None` where the backend
    /// cannot tell.
    fn memory_usage(&self) -> Option<MemoryUsage>;
    /// Starts a new peak from what is in use now.
    fn reset_peak_memory(&self);
    /// One token per row of `logits[rows, vocab]` (what `Model::forward`
    /// returns) under `params`, row `r` drawn with `uniforms[r]` in [0, 1)
    /// (ignored when greedy): only the ids and their log-probabilities leave
    /// the device, never the logits.
    fn sample_rows(
        &self,
        logits: &Self::Tensor,
        params: &SamplingParams,
        uniforms: &[f64],
    ) -> Vec<SampledToken>;
    /// Waits until every queued op has finished (for timing; the CPU
    /// backend runs ops to completion anyway).
    fn synchronize(&self);
    /// Per-phase op times recorded since the last call, for a backend that
    /// profiles ([`profile::Profiled`], `IGPO_PROFILE=1`); `None` otherwise.
    fn take_profile(&self) -> Option<profile::Profile> {
        None
    }
    /// Launches, allocations and host waits so far, for a backend that
    /// counts them (CUDA); `None` otherwise.
    fn device_counters(&self) -> Option<profile::DeviceCounters> {
        None
    }

    /// `x[m, k] @ w[n, k]^T (+ bias[n])` -> `[m, n]`.
    fn linear(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        bias: Option<&Self::Tensor>,
    ) -> Self::Tensor;
    /// Row-wise RMSNorm with weight `w[cols]`.
    fn rms_norm(&self, x: &Self::Tensor, w: &Self::Tensor, eps: f32) -> Self::Tensor;
    /// RMSNorm of every head of `x[rows, heads*head_dim]`, all heads sharing
    /// the weight `w[head_dim]` (Qwen3's `q_norm` / `k_norm`): [`Backend::rms_norm`]
    /// of the `[rows*heads, head_dim]` view.
    fn head_rms_norm(&self, x: &Self::Tensor, w: &Self::Tensor, eps: f32) -> Self::Tensor;
    /// Rotates `x[rows, heads*head_dim]` in place, row `r` at position `positions[r]`
    /// (Hugging Face "rotate half" layout), times `rope.attention_scaling`.
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
    /// Causal attention of several sequences against their KV caches, what
    /// a decode or prefill step of `Model::forward` runs per layer: sequence
    /// `s` owns rows `bounds[s]` of the stacked `q[rows, H*d]` and
    /// `k, v[rows, KV*d]`; its new key and value rows are first appended to
    /// `caches[s]`, then its queries attend to the whole cache (query `j` of
    /// the sequence sees cache rows `..= old_len + j`). Returns `[rows, H*d]`.
    /// The default is [`cached_attention_per_sequence`]; the CUDA backend runs
    /// the whole batch in two launches.
    fn cached_attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        caches: &mut [(&mut Self::Tensor, &mut Self::Tensor)],
        bounds: &[Range<usize>],
        shape: AttnShape,
    ) -> Self::Tensor
    where
        Self: Sized,
    {
        cached_attention_per_sequence(self, q, k, v, caches, bounds, shape)
    }
    /// Writes row `i` of `k` and `v` into row `rows[i]` of the paged pools
    /// `k_pool`, `v_pool` (distinct rows; a forward's new keys and values
    /// going into their sequences' blocks).
    fn write_kv(
        &self,
        k_pool: &mut Self::Tensor,
        v_pool: &mut Self::Tensor,
        rows: &[usize],
        k: &Self::Tensor,
        v: &Self::Tensor,
    );
    /// Causal attention of several sequences over a paged KV cache: sequence
    /// `s` owns rows `bounds[s]` of `q[rows, H*d]` (its newest positions,
    /// already written by [`Backend::write_kv`]) and its keys and values are
    /// rows `keys[s]` of the pools, oldest position first (query `j` sees
    /// keys `..= keys[s].len() - bounds[s].len() + j`). Returns `[rows, H*d]`.
    /// The default is [`paged_attention_per_sequence`].
    fn paged_attention(
        &self,
        q: &Self::Tensor,
        k_pool: &Self::Tensor,
        v_pool: &Self::Tensor,
        keys: &[Vec<usize>],
        bounds: &[Range<usize>],
        shape: AttnShape,
    ) -> Self::Tensor
    where
        Self: Sized,
    {
        paged_attention_per_sequence(self, q, k_pool, v_pool, keys, bounds, shape)
    }
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
    fn zeros(&self, shape: &[usize]) -> Self::Tensor;

    // ---- training: forward variants that keep what backward needs, and backwards.

    /// [`Backend::attention`] that also returns the log-sum-exp `[m, H]` of
    /// every (query, head), which [`Backend::attention_backward`] needs.
    fn attention_train(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        shape: AttnShape,
        mask: &AttnMask,
    ) -> (Self::Tensor, Self::Tensor);
    /// Gradients of [`Backend::attention_train`]: from its inputs `(q, k,
    /// v)`, what it returned `(out, lse)` and `dout`, returns `(dq, dk, dv)`.
    fn attention_backward(
        &self,
        qkv: (&Self::Tensor, &Self::Tensor, &Self::Tensor),
        saved: (&Self::Tensor, &Self::Tensor),
        dout: &Self::Tensor,
        shape: AttnShape,
        mask: &AttnMask,
    ) -> (Self::Tensor, Self::Tensor, Self::Tensor);
    /// Returns `dx`; adds into `dw` (and `db`).
    fn linear_backward(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        dy: &Self::Tensor,
        dw: &mut Self::Tensor,
        db: Option<&mut Self::Tensor>,
    ) -> Self::Tensor;
    /// Returns `dx`; adds into `dw`.
    fn rms_norm_backward(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        dy: &Self::Tensor,
        eps: f32,
        dw: &mut Self::Tensor,
    ) -> Self::Tensor;
    /// Backward of [`Backend::head_rms_norm`]: returns `dx`; adds into `dw[head_dim]`.
    fn head_rms_norm_backward(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        dy: &Self::Tensor,
        eps: f32,
        dw: &mut Self::Tensor,
    ) -> Self::Tensor;
    /// The gradient through [`Backend::rope`]: rotates `dx` back (and scales
    /// it by `rope.attention_scaling`), in place.
    fn rope_backward(&self, dx: &mut Self::Tensor, positions: &[usize], rope: &Rope);
    /// Returns `(dgate, dup)`.
    fn swiglu_backward(
        &self,
        gate: &Self::Tensor,
        up: &Self::Tensor,
        dy: &Self::Tensor,
    ) -> (Self::Tensor, Self::Tensor);
    /// Adds `dy` rows into `dtable` rows `ids` (deterministic order).
    fn embedding_backward(&self, ids: &[u32], dy: &Self::Tensor, dtable: &mut Self::Tensor);

    /// Fused lm-head + log-softmax + gather of `targets`, `chunk` vocabulary
    /// rows at a time: `h[rows, d]`, `w[vocab, d]`.
    fn token_logprobs(
        &self,
        h: &Self::Tensor,
        w: &Self::Tensor,
        targets: &[u32],
        chunk: usize,
        want_entropy: bool,
    ) -> LogProbs<Self::Tensor>;
    /// Backward of [`Backend::token_logprobs`] over `(h, w)` (hidden rows,
    /// lm-head) with upstream gradients `(dlogp, dentropy)`: returns `dh`,
    /// adds into `dw`. `dentropy` needs `out.entropy`.
    fn token_logprobs_backward(
        &self,
        hw: (&Self::Tensor, &Self::Tensor),
        targets: &[u32],
        out: &LogProbs<Self::Tensor>,
        upstream: (&Self::Tensor, Option<&Self::Tensor>),
        chunk: usize,
        dw: &mut Self::Tensor,
    ) -> Self::Tensor;

    /// Sum of squares (f64 accumulation), for global-norm clipping.
    fn sum_squares(&self, t: &Self::Tensor) -> f64;
    /// `x *= s`.
    fn scale(&self, x: &mut Self::Tensor, s: f32);
    /// One AdamW step on `param` with moment buffers `m`, `v` (f32 master weights).
    fn adamw(
        &self,
        param: &mut Self::Tensor,
        grad: &Self::Tensor,
        m: &mut Self::Tensor,
        v: &mut Self::Tensor,
        step: &AdamWStep,
    );

    /// One AdamW step over every parameter with global-norm clipping, what
    /// `train::optim::AdamW::update` runs: the pre-clip norm
    /// `sqrt(sum of every gradient's squares) * avg` (returned), the clip
    /// factor `max_norm / (norm + 1e-6)` when `max_norm > 0` and the norm
    /// exceeds it (else 1), then [`Backend::adamw`] on each parameter with
    /// `grad_scale = avg * clip` (the steps' own `grad_scale` is ignored).
    /// A norm that is not finite (a NaN or infinite gradient) changes
    /// nothing: no parameter, no moment (`train::guard` skips the update).
    /// The default reads each gradient's squares through the host; the CUDA
    /// backend keeps the sums and the factor on the device and reads only
    /// the norm, once.
    fn adamw_clipped(
        &self,
        params: &mut [Self::Tensor],
        grads: &[Self::Tensor],
        (m, v): (&mut [Self::Tensor], &mut [Self::Tensor]),
        steps: &[AdamWStep],
        avg: f64,
        max_norm: f64,
    ) -> f64 {
        let sq: f64 = grads.iter().map(|g| self.sum_squares(g)).sum();
        let grad_norm = sq.sqrt() * avg;
        if !grad_norm.is_finite() {
            return grad_norm;
        }
        let clip = clip_factor(grad_norm, max_norm);
        for (i, p) in params.iter_mut().enumerate() {
            let step = AdamWStep {
                grad_scale: (avg * clip) as f32,
                ..steps[i]
            };
            self.adamw(p, &grads[i], &mut m[i], &mut v[i], &step);
        }
        grad_norm
    }

    /// Data-parallel collectives on the device (NCCL on CUDA, cargo feature
    /// `nccl`), which `dist` prefers to its host round trip once the ranks
    /// joined a group: a new group's id (made by one rank, sent to the
    /// others over MPI), or `None` when this backend has no device
    /// collectives.
    fn new_device_group_id(&self) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }

    /// Joins the device group `id` as `rank` of `size`.
    fn join_device_group(&self, _id: &[u8], _rank: usize, _size: usize) -> Result<(), String> {
        Err(format!("{} has no device collectives", self.name()))
    }

    /// Sums every tensor over the device group, in place; `None` when this
    /// backend joined no group.
    fn device_all_reduce(&self, _tensors: &mut [Self::Tensor]) -> Option<Result<(), String>> {
        None
    }

    /// Every tensor becomes rank `root`'s (each of a parameter's stored
    /// copies); `None` when this backend joined no group.
    fn device_broadcast(
        &self,
        _tensors: &mut [Self::Tensor],
        _root: usize,
    ) -> Option<Result<(), String>> {
        None
    }
}

/// Global-norm clipping: `max_norm / (norm + 1e-6)` when clipping is on
/// (`max_norm > 0`) and `norm` exceeds it, else 1 (optimizer.cu's
/// `clip_factor` is the same on the device).
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

/// The inverse of [`Backend::gather_rows`] (through the host; a device op
/// when a backend needs it fast): `src` rows placed at `rows` of a zero
/// `[n, cols]` tensor.
pub fn scatter_rows<B: Backend>(b: &B, src: &B::Tensor, rows: &[usize], n: usize) -> B::Tensor {
    let host = b.download(src);
    let cols = host.cols();
    let mut out = vec![0.0f32; n * cols];
    for (i, &r) in rows.iter().enumerate() {
        out[r * cols..(r + 1) * cols].copy_from_slice(host.row(i));
    }
    b.upload(&crate::tensor::Tensor::from_vec(&[n, cols], out))
}
