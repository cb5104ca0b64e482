//! The CUDA backend: [`Backend`] on an NVIDIA GPU over `igpo-kernels`.
//!
//! Checked by `tests` below, which skip without a driver: the backend
//! conformance suite (every op against the float64 reference, at bf16
//! tolerances) and whole training steps against the CPU backend. Those ran on
//! an NVIDIA H200 on 2026-11-30 (docs/benchmarks.md, docs/gpu/); the paged
//! KV ops (`paged.rs`) and the conformance suite itself have not yet run on
//! a GPU.
//!
//! Storage ([`CudaTensor`]): activations and KV caches are bf16; gradients,
//! optimizer moments and log-prob outputs are f32 (`zeros` makes f32);
//! everything `upload`ed (weights, and the few host tensors the engine sends
//! over) keeps an f32 master copy and a bf16 working copy, so AdamW updates
//! the master and refreshes the copy in one pass. Ops read whatever variant
//! they get, converting on the fly (bf16 for kernels and GEMMs, f32 for
//! reductions). The trait is infallible: a CUDA error after start-up panics
//! with the failing op's message; [`Cuda::new`] is where a missing GPU, driver
//! or NVRTC becomes a clear error.
//!
//! Attention (prefill, training forward and backward, scoring with span
//! masks, decode through `cached_attention`) runs the tensor-core kernels of
//! `kernels/src/cu/attention_tc.cu` (bf16 `mma.sync`, FlashAttention-2
//! style). `IGPO_ATTENTION=scalar` selects the scalar f32 kernels of
//! `attention.cu` instead (the reference on the GPU); any other value than
//! `scalar` / `tensor-core` is an error at start-up. Decode, prefill and
//! scoring share one tiling either way, so a row's bits do not depend on
//! how it was batched.
//!
//! Over the paged KV cache (`paged.rs`): `write_kv` is one scatter launch;
//! `paged_attention` runs split-K flash-decoding over the pools
//! (`paged_attention.cu`) for sequences of at most [`SPLIT_K_MAX_ROWS`] query
//! rows and gathers + the varlen forward for longer ones (each sequence by
//! its own row count: its bits never depend on the batch). Split-K decode is
//! within bf16 rounding of the forward, not bitwise equal to it;
//! `IGPO_PAGED_ATTENTION=gather` sends every sequence the gather path.

use std::ops::{Deref, Range};
use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use half::bf16;
use igpo_kernels::gemm::Blas;
use igpo_kernels::host::MaskArgs;
use igpo_kernels::launch::{
    AdamW, AdamWState, AttnArgs, AttnDims, DeviceMask, Kernels, Reused, RopeArgs, SampleArgs,
    SwigluInput, VarlenSeqs,
};
use igpo_kernels::PtxCache;

use super::{
    AdamWStep, AttnMask, AttnShape, Backend, LogProbs, MemoryUsage, Rope, SampledToken,
    SamplingParams,
};
use crate::tensor::Tensor;

/// What a [`CudaTensor`] holds.
#[derive(Clone)]
pub enum Data {
    Bf16(CudaSlice<bf16>),
    F32(CudaSlice<f32>),
    /// Uploaded tensors: f32 master and bf16 working copy.
    Param {
        master: CudaSlice<f32>,
        work: CudaSlice<bf16>,
    },
}

/// A device tensor: row-major `shape`, bf16 or f32 storage (see the module
/// documentation). A bf16 buffer may be longer than the shape (spare rows of
/// a growing KV cache).
#[derive(Clone)]
pub struct CudaTensor {
    shape: Vec<usize>,
    data: Data,
}

impl CudaTensor {
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }
    fn rows(&self) -> usize {
        if self.shape.is_empty() {
            1
        } else {
            self.numel() / self.cols().max(1)
        }
    }
    pub fn data(&self) -> &Data {
        &self.data
    }
}

/// A borrowed or converted buffer.
enum View<'a, T> {
    Borrowed(&'a CudaSlice<T>),
    Owned(CudaSlice<T>),
}

impl<T> Deref for View<'_, T> {
    type Target = CudaSlice<T>;
    fn deref(&self) -> &CudaSlice<T> {
        match self {
            View::Borrowed(s) => s,
            View::Owned(s) => s,
        }
    }
}

/// The CUDA backend of one device.
#[derive(Clone)]
pub struct Cuda {
    k: Arc<Kernels>,
    blas: Arc<Blas>,
    ordinal: usize,
    /// RoPE positions and inverse frequencies: every layer's q and k of a
    /// forward send the same ones (4 uploads per layer otherwise).
    rope_positions: Arc<Reused<i32>>,
    rope_freqs: Arc<Reused<f32>>,
    /// How `paged_attention` runs (`IGPO_PAGED_ATTENTION`).
    paged_mode: PagedMode,
    /// The NCCL group of a data-parallel job, once joined.
    #[cfg(feature = "nccl")]
    group: Arc<std::sync::Mutex<Option<nccl::Group>>>,
}

/// Profiling marks are CUDA events recorded on the stream (timing enabled):
/// an op's interval is device time, and recording one does not stop the host.
impl super::profile::Timeline for Cuda {
    type Mark = CudaEvent;
    fn mark(&self) -> CudaEvent {
        let timed = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let event = self.k.stream().record_event(timed);
        ok("record event", event.map_err(driver_error))
    }
    fn seconds_between(&self, start: &CudaEvent, end: &CudaEvent) -> f64 {
        let ms = start.elapsed_ms(end).map_err(driver_error);
        ok("event time", ms) as f64 * 1e-3
    }
}

fn driver_error(e: cudarc::driver::DriverError) -> igpo_kernels::Error {
    igpo_kernels::Error::Cuda(format!("{e:?}"))
}

/// The kernel's AdamW hyper-parameters of `st`, with `grad_scale`.
fn adamw_hyper(st: &AdamWStep, grad_scale: f32) -> AdamW {
    AdamW {
        lr: st.lr,
        beta1: st.beta1,
        beta2: st.beta2,
        eps: st.eps,
        weight_decay: st.weight_decay,
        bias_correction1: st.bias_correction1,
        bias_correction2: st.bias_correction2,
        grad_scale,
    }
}

/// The sequences of a varlen attention call: `rows[b]` query rows of
/// sequence `b` over `keys[b]` keys, with `s`'s heads.
fn varlen_seqs<'a>(rows: &'a [usize], keys: &'a [usize], s: AttnShape) -> VarlenSeqs<'a> {
    VarlenSeqs {
        rows,
        keys,
        n_heads: s.n_heads,
        n_kv_heads: s.n_kv_heads,
        head_dim: s.head_dim,
    }
}

/// Dense attention's input: the bf16 views of `q`, `k`, `v`, their
/// geometry and the device mask.
fn attn_args<'a>(
    (q, k, v): (
        &'a CudaSlice<bf16>,
        &'a CudaSlice<bf16>,
        &'a CudaSlice<bf16>,
    ),
    dims: AttnDims,
    mask: &'a DeviceMask,
) -> AttnArgs<'a> {
    AttnArgs {
        q,
        k,
        v,
        dims,
        mask,
    }
}

/// The SwiGLU kernels' input: `gate` and `up` (bf16 views of tensors shaped
/// like `shape`).
fn swiglu_input<'a>(
    gate: &'a CudaSlice<bf16>,
    up: &'a CudaSlice<bf16>,
    shape: &CudaTensor,
) -> SwigluInput<'a> {
    SwigluInput {
        gate,
        up,
        rows: shape.rows(),
        cols: shape.cols(),
    }
}

/// Panics with the op's name: the trait has no error path once running.
fn ok<T>(op: &str, r: igpo_kernels::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("cuda {op}: {e}"))
}

impl Cuda {
    /// Device `ordinal`: loads the driver, compiles (or takes from the PTX
    /// cache) every kernel for its compute capability. Without a GPU this is
    /// a clear error, never a panic.
    pub fn new(ordinal: usize) -> igpo_kernels::Result<Cuda> {
        let k = Kernels::new(ordinal, &PtxCache::default_location())?;
        let blas = Blas::new(k.stream().clone())?;
        Ok(Cuda {
            k: Arc::new(k),
            blas: Arc::new(blas),
            ordinal,
            rope_positions: Arc::default(),
            rope_freqs: Arc::default(),
            paged_mode: PagedMode::from_env()?,
            #[cfg(feature = "nccl")]
            group: Arc::default(),
        })
    }

    fn stream(&self) -> &Arc<CudaStream> {
        self.k.stream()
    }

    fn bf<'a>(&self, t: &'a CudaTensor) -> View<'a, bf16> {
        match &t.data {
            Data::Bf16(s) => View::Borrowed(s),
            Data::Param { work, .. } => View::Borrowed(work),
            Data::F32(s) => View::Owned(ok("to bf16", self.k.to_bf16(s, t.numel()))),
        }
    }

    /// One AdamW launch on `param`'s f32 master (and its bf16 copy);
    /// `scale_dev` multiplies `hp.grad_scale` on the device.
    fn adamw_scaled(
        &self,
        param: &mut CudaTensor,
        grad: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        scale_dev: Option<&CudaSlice<f32>>,
        hp: &AdamW,
    ) {
        let n = param.numel();
        let (master, param_bf16) = match &mut param.data {
            Data::Param { master, work } => (master, Some(work)),
            Data::F32(p) => (p, None),
            Data::Bf16(_) => panic!("adamw: a bf16 parameter has no f32 master copy"),
        };
        let state = AdamWState {
            master,
            param_bf16,
            m,
            v,
        };
        ok("adamw", self.k.adamw(state, grad, scale_dev, n, hp));
    }

    fn f32v<'a>(&self, t: &'a CudaTensor) -> View<'a, f32> {
        match &t.data {
            Data::F32(s) => View::Borrowed(s),
            Data::Param { master, .. } => View::Borrowed(master),
            Data::Bf16(s) => View::Owned(ok("to f32", self.k.to_f32(s, t.numel()))),
        }
    }

    /// The parts' elements end to end in one new buffer of `total`, each
    /// part read through `view` (its own storage, or a converted copy).
    fn concat_slices<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        parts: &[CudaTensor],
        total: usize,
        view: for<'a> fn(&Cuda, &'a CudaTensor) -> View<'a, T>,
    ) -> CudaSlice<T> {
        let mut out = ok("concat_rows", self.k.zeros::<T>(total));
        let mut at = 0;
        for p in parts {
            let n = p.numel();
            let src = view(self, p);
            ok(
                "concat_rows",
                self.stream()
                    .memcpy_dtod(&src.slice(..n), &mut out.slice_mut(at..at + n))
                    .map_err(|e| igpo_kernels::Error::Cuda(format!("{e:?}"))),
            );
            at += n;
        }
        out
    }

    fn new_bf16(&self, shape: &[usize]) -> CudaTensor {
        let n: usize = shape.iter().product();
        CudaTensor {
            shape: shape.to_vec(),
            data: Data::Bf16(ok("alloc", self.k.zeros::<bf16>(n))),
        }
    }

    /// Makes `t` a bf16 tensor (in place), for ops that rewrite bf16 data.
    fn make_bf16(&self, t: &mut CudaTensor) {
        if let Data::Bf16(_) = t.data {
            return;
        }
        let b = match &t.data {
            Data::F32(s) => ok("to bf16", self.k.to_bf16(s, t.numel())),
            Data::Param { work, .. } => work.clone(),
            Data::Bf16(_) => unreachable!(),
        };
        t.data = Data::Bf16(b);
    }

    /// Room for `extra` more rows in `dst` (made bf16: a KV cache) without
    /// moving it again, growing by doubling: decode appends one row at a time.
    fn reserve_rows(&self, dst: &mut CudaTensor, extra: usize) {
        self.make_bf16(dst);
        let cols = dst.cols();
        let (old, need) = (dst.numel(), dst.numel() + extra * cols);
        if let Data::Bf16(buf) = &mut dst.data {
            if buf.len() < need {
                let cap = need.max(2 * buf.len()).max(16 * cols);
                let mut bigger = ok("reserve rows", self.k.zeros::<bf16>(cap));
                if old > 0 {
                    ok(
                        "reserve rows",
                        self.stream()
                            .memcpy_dtod(&buf.slice(..old), &mut bigger.slice_mut(..old))
                            .map_err(|e| igpo_kernels::Error::Cuda(format!("{e:?}"))),
                    );
                }
                *buf = bigger;
            }
        }
    }

    fn ids(&self, ids: &[u32]) -> CudaSlice<i32> {
        let v: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        ok(
            "upload ids",
            self.k.upload(if v.is_empty() { &[0] } else { &v }),
        )
    }

    fn mask(&self, mask: &AttnMask, m: usize, n: usize) -> DeviceMask {
        let args = match mask {
            AttnMask::Causal { offset } => MaskArgs::Causal {
                offset: *offset as i32,
            },
            AttnMask::Spans(spans) => {
                assert_eq!(spans.len(), m, "attention: one span list per query row");
                ok("attention mask", MaskArgs::from_spans(spans, n))
            }
        };
        ok("attention mask", self.k.mask(&args))
    }

    fn dims(q: &CudaTensor, k: &CudaTensor, s: AttnShape) -> AttnDims {
        AttnDims {
            m: q.rows(),
            n: k.rows(),
            n_heads: s.n_heads,
            n_kv_heads: s.n_kv_heads,
            head_dim: s.head_dim,
        }
    }

    fn rope_apply(&self, x: &mut CudaTensor, positions: &[usize], rope: &Rope, backward: bool) {
        self.make_bf16(x);
        let (rows, cols) = (x.rows(), x.cols());
        assert_eq!(positions.len(), rows, "rope: one position per row");
        let pos: Vec<i32> = positions.iter().map(|&p| p as i32).collect();
        let pd = ok(
            "rope positions",
            self.rope_positions
                .get(&self.k, if pos.is_empty() { &[0] } else { &pos }),
        );
        let fd = ok("rope freqs", self.rope_freqs.get(&self.k, &rope.inv_freq));
        if let Data::Bf16(s) = &mut x.data {
            ok(
                "rope",
                self.k.rope(
                    s,
                    rows,
                    cols,
                    &RopeArgs {
                        positions: &pd,
                        inv_freq: &fd,
                        head_dim: rope.head_dim,
                        scale: rope.attention_scaling,
                    },
                    backward,
                ),
            );
        }
    }

    fn f32_out(&self, v: CudaSlice<f32>, shape: &[usize]) -> CudaTensor {
        CudaTensor {
            shape: shape.to_vec(),
            data: Data::F32(v),
        }
    }

    /// `z[rows, c] = h W[lo..lo+c]^T` in f32.
    fn chunk_logits(
        &self,
        z: &mut CudaSlice<f32>,
        h: &CudaSlice<bf16>,
        w: &CudaSlice<bf16>,
        (rows, d, lo, c): (usize, usize, usize, usize),
    ) {
        let wc = w.slice(lo * d..(lo + c) * d);
        ok(
            "lm-head chunk",
            self.blas
                .gemm(z, h, &wc, (rows, c, d), (false, true), (1.0, 0.0)),
        );
    }
}

impl Backend for Cuda {
    type Tensor = CudaTensor;

    /// bf16 weights and KV caches.
    fn stored_elem_bytes(&self) -> usize {
        2
    }

    fn name(&self) -> String {
        let (a, b) = self.k.arch();
        format!(
            "cuda:{} (sm_{a}{b}, bf16 + f32 master weights)",
            self.ordinal
        )
    }

    fn memory_usage(&self) -> Option<MemoryUsage> {
        ok("memory usage", self.k.memory_usage()).map(|m| MemoryUsage {
            in_use: m.in_use,
            peak: m.peak,
        })
    }

    fn reset_peak_memory(&self) {
        ok("reset peak memory", self.k.reset_peak_memory());
    }

    fn synchronize(&self) {
        ok("synchronize", self.k.synchronize());
    }

    fn device_counters(&self) -> Option<super::profile::DeviceCounters> {
        let c = self.k.counters();
        Some(super::profile::DeviceCounters {
            launches: c.launches + self.blas.launches(),
            allocations: c.allocations,
            host_waits: c.host_waits,
        })
    }

    fn sample_rows(
        &self,
        logits: &CudaTensor,
        params: &SamplingParams,
        uniforms: &[f64],
    ) -> Vec<SampledToken> {
        let (rows, vocab) = (logits.rows(), logits.cols());
        assert_eq!(rows, uniforms.len(), "sample_rows: one uniform per row");
        if rows == 0 {
            return vec![];
        }
        let z = self.f32v(logits);
        let u = ok("sample", self.k.upload(uniforms));
        let mut ids = ok("sample", self.k.zeros::<i32>(rows));
        let mut logprobs = ok("sample", self.k.zeros::<f32>(rows));
        ok(
            "sample",
            self.k.sample(
                &mut ids,
                &mut logprobs,
                &SampleArgs {
                    logits: &z,
                    uniforms: &u,
                    rows,
                    vocab,
                    temperature: params.temperature,
                    top_k: params.top_k,
                    top_p: params.top_p,
                },
            ),
        );
        let ids = ok("sample", self.k.download(&ids));
        let logprobs = ok("sample", self.k.download(&logprobs));
        ids.into_iter()
            .zip(logprobs)
            .take(rows)
            .map(|(id, logprob)| SampledToken {
                id: id as u32,
                logprob,
            })
            .collect()
    }

    fn upload(&self, t: &Tensor) -> CudaTensor {
        let n = t.numel();
        let master = ok(
            "upload",
            self.k.upload(if n == 0 { &[0.0] } else { t.data() }),
        );
        let work = ok("upload", self.k.to_bf16(&master, n));
        CudaTensor {
            shape: t.shape().to_vec(),
            data: Data::Param { master, work },
        }
    }

    fn download(&self, t: &CudaTensor) -> Tensor {
        let n = t.numel();
        let data: Vec<f32> = match &t.data {
            Data::F32(s) | Data::Param { master: s, .. } => {
                let mut v = ok("download", self.k.download(s));
                v.truncate(n);
                v
            }
            Data::Bf16(s) => ok("download", self.k.download(s))
                .into_iter()
                .take(n)
                .map(|x| x.to_f32())
                .collect(),
        };
        Tensor::from_vec(&t.shape, data)
    }

    fn shape<'a>(&self, t: &'a CudaTensor) -> &'a [usize] {
        &t.shape
    }

    fn empty_rows(&self, cols: usize) -> CudaTensor {
        CudaTensor {
            shape: vec![0, cols],
            data: Data::Bf16(ok("alloc", self.k.zeros::<bf16>(0))),
        }
    }

    fn linear(&self, x: &CudaTensor, w: &CudaTensor, bias: Option<&CudaTensor>) -> CudaTensor {
        dense::linear(self, x, w, bias)
    }

    fn rms_norm(&self, x: &CudaTensor, w: &CudaTensor, eps: f32) -> CudaTensor {
        norm::rms_norm(self, x, w, eps)
    }

    fn head_rms_norm(&self, x: &CudaTensor, w: &CudaTensor, eps: f32) -> CudaTensor {
        norm::head_rms_norm(self, x, w, eps)
    }

    fn rope(&self, x: &mut CudaTensor, positions: &[usize], rope: &Rope) {
        self.rope_apply(x, positions, rope, false);
    }

    fn attention(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        shape: AttnShape,
        mask: &AttnMask,
    ) -> CudaTensor {
        attention::attention(self, q, k, v, shape, mask)
    }

    fn swiglu(&self, gate: &CudaTensor, up: &CudaTensor) -> CudaTensor {
        dense::swiglu(self, gate, up)
    }

    fn embedding(&self, table: &CudaTensor, ids: &[u32]) -> CudaTensor {
        let d = table.cols();
        let vocab = table.rows();
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            panic!("embedding: token id {bad} is outside the vocabulary ({vocab})");
        }
        let mut out = self.new_bf16(&[ids.len(), d]);
        let idd = self.ids(ids);
        if let Data::Bf16(o) = &mut out.data {
            ok(
                "embedding",
                self.k.embedding(o, &self.bf(table), &idd, ids.len(), d),
            );
        }
        out
    }

    fn add_assign(&self, x: &mut CudaTensor, y: &CudaTensor) {
        assert_eq!(x.shape, y.shape, "add_assign: shapes");
        let n = x.numel();
        let yb = match &x.data {
            Data::Bf16(_) => Some(self.bf(y)),
            _ => None,
        };
        match &mut x.data {
            Data::Bf16(s) => ok(
                "add_assign",
                self.k.add_assign(s, &yb.expect("bf16 view"), n),
            ),
            Data::F32(s) => ok("add_assign", self.k.add_assign_f32(s, &self.f32v(y), n)),
            Data::Param { master, work } => {
                ok(
                    "add_assign",
                    self.k.add_assign_f32(master, &self.f32v(y), n),
                );
                *work = ok("add_assign", self.k.to_bf16(master, n));
            }
        }
    }

    fn append_rows(&self, dst: &mut CudaTensor, new: &CudaTensor) {
        assert_eq!(dst.cols(), new.cols(), "append_rows: column mismatch");
        self.reserve_rows(dst, new.rows());
        let (old, add) = (dst.numel(), new.numel());
        let nb = self.bf(new);
        if let (Data::Bf16(buf), true) = (&mut dst.data, add > 0) {
            ok(
                "append_rows",
                self.stream()
                    .memcpy_dtod(&nb.slice(..add), &mut buf.slice_mut(old..old + add))
                    .map_err(|e| igpo_kernels::Error::Cuda(format!("{e:?}"))),
            );
        }
        dst.shape = vec![(old + add) / dst.cols().max(1), dst.cols()];
    }

    /// One launch: both pools' rows scattered by an int32 row index array
    /// (`paged.rs`).
    fn write_kv(
        &self,
        k_pool: &mut CudaTensor,
        v_pool: &mut CudaTensor,
        rows: &[usize],
        k: &CudaTensor,
        v: &CudaTensor,
    ) {
        self.write_kv_rows(k_pool, v_pool, rows, k, v);
    }

    /// Split-K over the pools for decode-sized sequences, gather + the
    /// varlen forward for long prefills (the rule is `paged.rs`'s).
    fn paged_attention(
        &self,
        q: &CudaTensor,
        k_pool: &CudaTensor,
        v_pool: &CudaTensor,
        keys: &[Vec<usize>],
        bounds: &[Range<usize>],
        shape: AttnShape,
    ) -> CudaTensor {
        self.paged(q, k_pool, v_pool, keys, bounds, shape)
    }

    fn cached_attention(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        caches: &mut [(&mut CudaTensor, &mut CudaTensor)],
        bounds: &[Range<usize>],
        s: AttnShape,
    ) -> CudaTensor {
        attention::cached_attention(self, q, k, v, caches, bounds, s)
    }

    fn gather_rows(&self, x: &CudaTensor, rows: &[usize]) -> CudaTensor {
        let c = x.cols();
        let data = match &x.data {
            Data::Bf16(s) => Data::Bf16(ok("gather_rows", self.k.gather_rows_bf16(s, rows, c))),
            Data::F32(s) | Data::Param { master: s, .. } => {
                Data::F32(ok("gather_rows", self.k.gather_rows_f32(s, rows, c)))
            }
        };
        CudaTensor {
            shape: vec![rows.len(), c],
            data,
        }
    }

    fn slice_rows(&self, x: &CudaTensor, range: Range<usize>) -> CudaTensor {
        let rows: Vec<usize> = range.collect();
        self.gather_rows(x, &rows)
    }

    fn concat_rows(&self, parts: &[CudaTensor]) -> CudaTensor {
        let c = parts.first().map(|p| p.cols()).unwrap_or(0);
        let total: usize = parts.iter().map(|p| p.numel()).sum();
        let all_f32 = parts.iter().all(|p| !matches!(p.data, Data::Bf16(_)));
        for p in parts {
            assert_eq!(p.cols(), c, "concat_rows: column mismatch");
        }
        let data = if all_f32 && !parts.is_empty() {
            Data::F32(self.concat_slices(parts, total, Cuda::f32v))
        } else {
            Data::Bf16(self.concat_slices(parts, total, Cuda::bf))
        };
        CudaTensor {
            shape: vec![total / c.max(1), c],
            data,
        }
    }

    fn zeros(&self, shape: &[usize]) -> CudaTensor {
        let n: usize = shape.iter().product();
        self.f32_out(ok("zeros", self.k.zeros::<f32>(n)), shape)
    }

    fn attention_train(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        s: AttnShape,
        mask: &AttnMask,
    ) -> (CudaTensor, CudaTensor) {
        attention::attention_train(self, q, k, v, s, mask)
    }

    fn attention_backward(
        &self,
        (q, k, v): (&CudaTensor, &CudaTensor, &CudaTensor),
        (out, lse): (&CudaTensor, &CudaTensor),
        dout: &CudaTensor,
        s: AttnShape,
        mask: &AttnMask,
    ) -> (CudaTensor, CudaTensor, CudaTensor) {
        attention::attention_backward(self, (q, k, v), (out, lse), dout, s, mask)
    }

    fn linear_backward(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        dy: &CudaTensor,
        dw: &mut CudaTensor,
        db: Option<&mut CudaTensor>,
    ) -> CudaTensor {
        dense::linear_backward(self, x, w, dy, dw, db)
    }

    fn rms_norm_backward(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        dy: &CudaTensor,
        eps: f32,
        dw: &mut CudaTensor,
    ) -> CudaTensor {
        norm::rms_norm_backward(self, x, w, dy, eps, dw)
    }

    fn head_rms_norm_backward(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        dy: &CudaTensor,
        eps: f32,
        dw: &mut CudaTensor,
    ) -> CudaTensor {
        norm::head_rms_norm_backward(self, x, w, dy, eps, dw)
    }

    fn rope_backward(&self, dx: &mut CudaTensor, positions: &[usize], rope: &Rope) {
        self.rope_apply(dx, positions, rope, true);
    }

    fn swiglu_backward(
        &self,
        gate: &CudaTensor,
        up: &CudaTensor,
        dy: &CudaTensor,
    ) -> (CudaTensor, CudaTensor) {
        dense::swiglu_backward(self, gate, up, dy)
    }

    fn embedding_backward(&self, ids: &[u32], dy: &CudaTensor, dtable: &mut CudaTensor) {
        let (vocab, d) = (dtable.rows(), dtable.cols());
        let dyb = self.bf(dy);
        let Data::F32(dt) = &mut dtable.data else {
            panic!("embedding_backward: the table gradient must be f32 (made by zeros)")
        };
        ok(
            "embedding_backward",
            self.k.embedding_backward(dt, &dyb, ids, vocab, d),
        );
    }

    fn token_logprobs(
        &self,
        h: &CudaTensor,
        w: &CudaTensor,
        targets: &[u32],
        chunk: usize,
        want_entropy: bool,
    ) -> LogProbs<CudaTensor> {
        logprob::token_logprobs(self, h, w, targets, chunk, want_entropy)
    }

    fn token_logprobs_backward(
        &self,
        (h, w): (&CudaTensor, &CudaTensor),
        targets: &[u32],
        out: &LogProbs<CudaTensor>,
        (dlogp, dentropy): (&CudaTensor, Option<&CudaTensor>),
        chunk: usize,
        dw: &mut CudaTensor,
    ) -> CudaTensor {
        logprob::token_logprobs_backward(self, (h, w), targets, out, (dlogp, dentropy), chunk, dw)
    }

    fn sum_squares(&self, t: &CudaTensor) -> f64 {
        optimizer::sum_squares(self, t)
    }

    fn scale(&self, x: &mut CudaTensor, s: f32) {
        optimizer::scale(self, x, s)
    }

    fn adamw(
        &self,
        param: &mut CudaTensor,
        grad: &CudaTensor,
        m: &mut CudaTensor,
        v: &mut CudaTensor,
        st: &AdamWStep,
    ) {
        optimizer::adamw(self, param, grad, m, v, st)
    }

    /// The norm and clip factor stay on the device (`Kernels::clip_scale`);
    /// every AdamW launch reads the factor there; one download of the norm at
    /// the end is the step's only wait (the default path waited once per
    /// gradient).
    fn adamw_clipped(
        &self,
        params: &mut [CudaTensor],
        grads: &[CudaTensor],
        (m, v): (&mut [CudaTensor], &mut [CudaTensor]),
        steps: &[AdamWStep],
        avg: f64,
        max_norm: f64,
    ) -> f64 {
        optimizer::adamw_clipped(self, params, grads, (m, v), steps, avg, max_norm)
    }

    #[cfg(feature = "nccl")]
    fn new_device_group_id(&self) -> Result<Option<Vec<u8>>, String> {
        nccl::new_id().map(Some)
    }

    #[cfg(feature = "nccl")]
    fn join_device_group(&self, id: &[u8], rank: usize, size: usize) -> Result<(), String> {
        let group = nccl::Group::join(self.stream().clone(), id, rank, size)?;
        *self.group.lock().unwrap_or_else(|e| e.into_inner()) = Some(group);
        Ok(())
    }

    #[cfg(feature = "nccl")]
    fn device_all_reduce(&self, tensors: &mut [CudaTensor]) -> Option<Result<(), String>> {
        let group = self.group.lock().unwrap_or_else(|e| e.into_inner());
        Some(group.as_ref()?.all_reduce(tensors))
    }

    #[cfg(feature = "nccl")]
    fn device_broadcast(
        &self,
        tensors: &mut [CudaTensor],
        root: usize,
    ) -> Option<Result<(), String>> {
        let group = self.group.lock().unwrap_or_else(|e| e.into_inner());
        Some(group.as_ref()?.broadcast(tensors, root))
    }
}

mod attention;
mod dense;
mod logprob;
#[cfg(feature = "nccl")]
mod nccl;
mod norm;
mod optimizer;
mod paged;
pub use paged::{block_tables, PagedMode, SPLIT_K_MAX_ROWS};

#[cfg(test)]
mod tests;
