//! Launch wrappers of the attention family: `cu/attention.cu` (scalar f32
//! kernels, the GPU reference and fallback) and `cu/attention_tc.cu` (bf16
//! `mma.sync`, the default), chosen by [`AttnKernels`].

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, LaunchArgs, LaunchConfig, PushKernelArg};
use half::bf16;

use super::{check_len, cuda, elem_cfg, Kernels, NULL};
use crate::host::{to_i32, MaskArgs};
use crate::{Error, Result};

/// attention.cu: 8 threads per row x 16 rows.
const ATT_ROWS: usize = 16;
const ATT_THREADS: u32 = 128;
/// attention_tc.cu: 4 warps; query rows per forward / dq block, keys per
/// tile and per dkdv block, query rows per dkdv tile.
const TC_THREADS: u32 = 128;
const TC_BQ: usize = 64;
const TC_BK: usize = 64;
const TC_BQB: usize = 32;

/// Which attention kernels the wrappers launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnKernels {
    /// attention_tc.cu: bf16 `mma.sync` (FlashAttention-2 style), the default.
    TensorCore,
    /// attention.cu: scalar f32 FMA, the reference on the GPU and fallback.
    Scalar,
}

impl AttnKernels {
    /// `IGPO_ATTENTION`: `scalar` or `tensor-core` (unset or empty: tensor-core).
    pub fn from_env() -> Result<AttnKernels> {
        match std::env::var("IGPO_ATTENTION").as_deref() {
            Err(_) | Ok("") | Ok("tensor-core") => Ok(AttnKernels::TensorCore),
            Ok("scalar") => Ok(AttnKernels::Scalar),
            Ok(other) => Err(Error::Invalid(format!(
                "IGPO_ATTENTION={other}: expected `tensor-core` or `scalar`"
            ))),
        }
    }
}

/// The three tensor-core kernel shapes and their dynamic shared memory.
#[derive(Clone, Copy)]
enum TcKernel {
    Fwd,
    Dq,
    Dkdv,
}

impl TcKernel {
    /// Bytes of dynamic shared memory (attention_tc.cu: swizzled bf16 tiles;
    /// the K / V or Q / dO tiles that stream in are double-buffered).
    fn smem(self, d: usize) -> u32 {
        let bytes = match self {
            TcKernel::Fwd => (TC_BQ + 4 * TC_BK) * d * 2,
            TcKernel::Dq => (2 * TC_BQ + 4 * TC_BK) * d * 2,
            TcKernel::Dkdv => (2 * TC_BK + 4 * TC_BQB) * d * 2 + 4 * TC_BQB * 4,
        };
        bytes as u32
    }

    /// Rows one block owns: query rows (forward, dq) or keys (dkdv).
    fn rows_per_block(self) -> usize {
        match self {
            TcKernel::Fwd | TcKernel::Dq => TC_BQ,
            TcKernel::Dkdv => TC_BK,
        }
    }

    fn config(self, blocks: usize, heads: usize, batch: usize, d: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (blocks.max(1) as u32, heads as u32, batch as u32),
            block_dim: (TC_THREADS, 1, 1),
            shared_mem_bytes: self.smem(d),
        }
    }
}

/// Past 48 KiB a kernel must opt in to its dynamic shared memory: sets the
/// limit of every tensor-core kernel to what it uses.
pub(super) fn opt_in_shared_memory(funcs: &HashMap<String, CudaFunction>) -> Result<()> {
    for d in [64, 128] {
        for (kernel, names) in [
            (TcKernel::Fwd, vec!["attn_tc_fwd", "attn_tc_fwd_varlen"]),
            (TcKernel::Dq, vec!["attn_tc_bwd_dq"]),
            (TcKernel::Dkdv, vec!["attn_tc_bwd_dkdv"]),
        ] {
            for name in names {
                let f = &funcs[&format!("{name}_d{d}")];
                f.set_attribute(
                    cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    kernel.smem(d) as i32,
                )
                .map_err(cuda)?;
            }
        }
    }
    Ok(())
}

/// Attention geometry (the engine's `AttnShape`).
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    /// Query rows.
    pub m: usize,
    /// Key rows.
    pub n: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl AttnDims {
    fn check(&self) -> Result<()> {
        if !(self.head_dim == 64 || self.head_dim == 128) {
            return Err(Error::Invalid(format!(
                "attention: head_dim {} has no kernel (64 or 128)",
                self.head_dim
            )));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(Error::Invalid(format!(
                "attention: {} query heads do not group over {} KV heads",
                self.n_heads, self.n_kv_heads
            )));
        }
        to_i32(self.m * self.n_heads * self.head_dim)?;
        to_i32(self.n * self.n_kv_heads * self.head_dim)?;
        Ok(())
    }

    /// [`AttnDims::check`], then the lengths of `q` (`m * H * D`) and of `k`
    /// (`n * KV * D`).
    fn checked_lens(&self) -> Result<(usize, usize)> {
        self.check()?;
        Ok((
            self.m * self.n_heads * self.head_dim,
            self.n * self.n_kv_heads * self.head_dim,
        ))
    }
}

/// An attention mask on the device.
pub enum DeviceMask {
    Causal {
        offset: i32,
    },
    Spans {
        span_ptr: CudaSlice<i32>,
        spans: CudaSlice<i32>,
        rows: usize,
    },
}

/// The inputs of dense attention ([`Kernels::attention`] and its backward):
/// `q[m, H*D]`, `k` and `v` `[n, KV*D]` (bf16), their geometry and the mask.
#[derive(Clone, Copy)]
pub struct AttnArgs<'a> {
    pub q: &'a CudaSlice<bf16>,
    pub k: &'a CudaSlice<bf16>,
    pub v: &'a CudaSlice<bf16>,
    pub dims: AttnDims,
    pub mask: &'a DeviceMask,
}

/// What [`Kernels::attention_backward`] writes (overwritten, bf16): `dq`
/// shaped like `q`, `dk` and `dv` like `k` and `v`.
pub struct AttnGrads<'a> {
    pub dq: &'a mut CudaSlice<bf16>,
    pub dk: &'a mut CudaSlice<bf16>,
    pub dv: &'a mut CudaSlice<bf16>,
}

/// The sequences of a varlen call ([`Kernels::attention_varlen`],
/// [`Kernels::cached_attention`]) and their head geometry: sequence `b` has
/// `rows[b]` query rows (the last positions of the sequence, packed in order
/// in `q` and `out`) over `keys[b]` keys.
#[derive(Clone, Copy, Debug)]
pub struct VarlenSeqs<'a> {
    pub rows: &'a [usize],
    pub keys: &'a [usize],
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// The new key and value rows of a [`Kernels::cached_attention`] call
/// (`[sum rows, KV*D]` bf16, packed in sequence order) and the device
/// addresses of the caches they are appended to, one per sequence.
#[derive(Clone, Copy)]
pub struct KvAppend<'a> {
    pub k_new: &'a CudaSlice<bf16>,
    pub v_new: &'a CudaSlice<bf16>,
    pub k_ptrs: &'a [u64],
    pub v_ptrs: &'a [u64],
}

/// The input of [`Kernels::attention_decode`]: one query row per sequence
/// (`q[batch, H*D]`), the device addresses of each sequence's cache
/// (`[lens[b], KV*D]` bf16), their lengths, and the head geometry.
#[derive(Clone, Copy)]
pub struct DecodeArgs<'a> {
    pub q: &'a CudaSlice<bf16>,
    pub k_ptrs: &'a CudaSlice<u64>,
    pub v_ptrs: &'a CudaSlice<u64>,
    pub lens: &'a CudaSlice<i32>,
    pub batch: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl Kernels {
    /// The attention kernels the wrappers launch (`IGPO_ATTENTION` at start).
    pub fn attention_kernels(&self) -> AttnKernels {
        self.attn
    }

    /// Switches the attention kernels (tests compare the two sets).
    pub fn set_attention_kernels(&mut self, attn: AttnKernels) {
        self.attn = attn;
    }

    /// A mask on the device for `m` query rows over `n` keys.
    pub fn mask(&self, mask: &MaskArgs) -> Result<DeviceMask> {
        Ok(match mask {
            MaskArgs::Causal { offset } => DeviceMask::Causal { offset: *offset },
            MaskArgs::Spans { span_ptr, spans } => DeviceMask::Spans {
                span_ptr: self.upload(span_ptr)?,
                spans: self.upload(if spans.is_empty() { &[0, 0] } else { spans })?,
                rows: span_ptr.len() - 1,
            },
        })
    }

    fn mask_args(mask: &DeviceMask, m: usize, n: usize) -> Result<(i32, i32)> {
        match mask {
            DeviceMask::Causal { offset } if *offset < 0 || *offset as usize + m > n => {
                Err(Error::Invalid(format!(
                    "attention: causal mask after {offset} cached keys needs {} keys, got {n}",
                    *offset as i64 + m as i64
                )))
            }
            DeviceMask::Causal { offset } => Ok((1, *offset)),
            DeviceMask::Spans { rows, .. } if *rows != m => Err(Error::Invalid(format!(
                "attention: mask has {rows} rows, the query {m}"
            ))),
            DeviceMask::Spans { .. } => Ok((0, 0)),
        }
    }

    /// Kernel `attn_tc_{stem}_d{d}`, or `attn_{stem}_d{d}` with
    /// [`AttnKernels::Scalar`].
    fn attn_kernel(&self, stem: &str, d: usize) -> Result<&CudaFunction> {
        let prefix = match self.attn {
            AttnKernels::TensorCore => "attn_tc",
            AttnKernels::Scalar => "attn",
        };
        self.f(&format!("{prefix}_{stem}_d{d}"))
    }

    /// The grid of a `kernel`-shaped launch over `rows` rows (query rows, or
    /// keys for dkdv) of `heads` heads and `batch` sequences.
    fn attn_cfg(
        &self,
        kernel: TcKernel,
        (rows, heads, batch): (usize, usize, usize),
        d: usize,
    ) -> LaunchConfig {
        match self.attn {
            AttnKernels::TensorCore => {
                kernel.config(rows.div_ceil(kernel.rows_per_block()), heads, batch, d)
            }
            AttnKernels::Scalar => LaunchConfig {
                grid_dim: (
                    rows.div_ceil(ATT_ROWS).max(1) as u32,
                    heads as u32,
                    batch as u32,
                ),
                block_dim: (ATT_THREADS, 1, 1),
                shared_mem_bytes: 0,
            },
        }
    }

    /// Forward attention: `out[m, H*D]` and `lse[m, H]`. Causal masks go
    /// through the varlen kernel (see [`Kernels::attention_varlen`]), span
    /// masks through `attn_tc_fwd_*` (`attn_fwd_*` with [`AttnKernels::Scalar`]).
    pub fn attention(
        &self,
        out: &mut CudaSlice<bf16>,
        lse: &mut CudaSlice<f32>,
        args: &AttnArgs<'_>,
    ) -> Result<()> {
        let (q, k, v, dims, mask) = (args.q, args.k, args.v, args.dims, args.mask);
        let (qn, kn) = dims.checked_lens()?;
        check_len("attention q", q, qn)?;
        check_len("attention out", out, qn)?;
        check_len("attention k", k, kn)?;
        check_len("attention v", v, kn)?;
        check_len("attention lse", lse, dims.m * dims.n_heads)?;
        let (causal, offset) = Self::mask_args(mask, dims.m, dims.n)?;
        if causal == 1 {
            // Every causal forward (prefill, training, decode) runs the one
            // varlen kernel, so a row gets the same bits in all of them.
            let (kp, _k_read) = k.device_ptr(&self.stream);
            let (vp, _v_read) = v.device_ptr(&self.stream);
            let (kd, vd) = (self.upload(&[kp])?, self.upload(&[vp])?);
            let seqs = VarlenSeqs {
                rows: &[dims.m],
                keys: &[offset as usize + dims.m],
                n_heads: dims.n_heads,
                n_kv_heads: dims.n_kv_heads,
                head_dim: dims.head_dim,
            };
            return self.attention_varlen(out, lse, q, &kd, &vd, &seqs);
        }
        let f = self.attn_kernel("fwd", dims.head_dim)?;
        let ints = attn_ints(&dims, (causal, offset))?;
        let mut b = self.stream.launch_builder(f);
        b.arg(out).arg(lse).arg(q).arg(k).arg(v);
        push_sizes_and_mask(&mut b, &ints, mask);
        let cfg = self.attn_cfg(TcKernel::Fwd, (dims.m, dims.n_heads, 1), dims.head_dim);
        // SAFETY: lengths and head size checked above.
        self.count_launch();
        unsafe { b.launch(cfg) }.map_err(cuda)?;
        Ok(())
    }

    /// Backward attention: `grads` (overwritten, bf16) from the forward's
    /// `args`, its `out` and `lse`, and the output gradient `dout`.
    pub fn attention_backward(
        &self,
        grads: AttnGrads<'_>,
        args: &AttnArgs<'_>,
        out: &CudaSlice<bf16>,
        lse: &CudaSlice<f32>,
        dout: &CudaSlice<bf16>,
    ) -> Result<()> {
        let AttnGrads { dq, dk, dv } = grads;
        let (q, k, v, dims, mask) = (args.q, args.k, args.v, args.dims, args.mask);
        let (qn, kn) = dims.checked_lens()?;
        for (what, s) in [("q", q), ("out", out), ("dout", dout)] {
            check_len(&format!("attention_backward {what}"), s, qn)?;
        }
        for (what, s) in [("k", k), ("v", v)] {
            check_len(&format!("attention_backward {what}"), s, kn)?;
        }
        check_len("attention_backward dq", dq, qn)?;
        check_len("attention_backward dk", dk, kn)?;
        check_len("attention_backward dv", dv, kn)?;
        check_len("attention_backward lse", lse, dims.m * dims.n_heads)?;
        let (causal, offset) = Self::mask_args(mask, dims.m, dims.n)?;
        let ints = attn_ints(&dims, (causal, offset))?;
        let delta = self.attn_bwd_delta(out, dout, &dims)?;
        let d = dims.head_dim;

        let f = self.attn_kernel("bwd_dkdv", d)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(dk).arg(dv);
        b.arg(q).arg(k).arg(v).arg(dout).arg(lse).arg(&delta);
        push_sizes_and_mask(&mut b, &ints, mask);
        let cfg = self.attn_cfg(TcKernel::Dkdv, (dims.n, dims.n_kv_heads, 1), d);
        // SAFETY: lengths and head size checked above.
        self.count_launch();
        unsafe { b.launch(cfg) }.map_err(cuda)?;

        let f = self.attn_kernel("bwd_dq", d)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(dq);
        b.arg(q).arg(k).arg(v).arg(dout).arg(lse).arg(&delta);
        push_sizes_and_mask(&mut b, &ints, mask);
        let cfg = self.attn_cfg(TcKernel::Dq, (dims.m, dims.n_heads, 1), d);
        // SAFETY: as above.
        self.count_launch();
        unsafe { b.launch(cfg) }.map_err(cuda)?;
        Ok(())
    }

    /// `delta[row, head]` = the dot product of `out` and `dout` over the
    /// head's `D` values (the backward's softmax correction), one warp per
    /// row and head. The caller checks the lengths.
    fn attn_bwd_delta(
        &self,
        out: &CudaSlice<bf16>,
        dout: &CudaSlice<bf16>,
        dims: &AttnDims,
    ) -> Result<CudaSlice<f32>> {
        let rows_heads = dims.m * dims.n_heads;
        let mut delta = self.zeros::<f32>(rows_heads)?;
        let (m_i, h_i, d_i) = (
            to_i32(dims.m)?,
            to_i32(dims.n_heads)?,
            to_i32(dims.head_dim)?,
        );
        let f = self.f("attn_bwd_delta")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut delta)
            .arg(out)
            .arg(dout)
            .arg(&m_i)
            .arg(&h_i)
            .arg(&d_i);
        let warps_per_block = 8usize;
        let cfg = LaunchConfig {
            grid_dim: (rows_heads.div_ceil(warps_per_block).max(1) as u32, 1, 1),
            block_dim: (32 * warps_per_block as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: one warp per (row, head); lengths checked by the caller.
        self.count_launch();
        unsafe { b.launch(cfg) }.map_err(cuda)?;
        Ok(delta)
    }

    /// Forward over several sequences at once, each with its own KV cache
    /// (`k_ptrs`, `v_ptrs`: device addresses of `[keys[b], KV*D]` bf16) and
    /// its `rows[b]` query rows packed in `q` (the last positions of the
    /// sequence: decode when 1, a prefill chunk otherwise). Each row's numbers
    /// are bit for bit those of [`Kernels::attention`] on that sequence alone.
    pub fn attention_varlen(
        &self,
        out: &mut CudaSlice<bf16>,
        lse: &mut CudaSlice<f32>,
        q: &CudaSlice<bf16>,
        k_ptrs: &CudaSlice<u64>,
        v_ptrs: &CudaSlice<u64>,
        seqs: &VarlenSeqs<'_>,
    ) -> Result<()> {
        let batch = VarlenBatch::new(self, seqs)?;
        let (rows, n_heads, head_dim) = (seqs.rows, seqs.n_heads, seqs.head_dim);
        check_len("attention_varlen q", q, batch.total * n_heads * head_dim)?;
        check_len("attention_varlen k_ptrs", k_ptrs, rows.len())?;
        check_len("attention_varlen v_ptrs", v_ptrs, rows.len())?;
        self.launch_varlen(out, lse, q, (k_ptrs, v_ptrs), &batch)
    }

    /// Decode and batched prefill of many sequences in two launches: appends
    /// sequence `b`'s `rows[b]` new key and value rows (packed in `k_new`,
    /// `v_new` `[sum rows, KV*D]`) to its cache at device addresses
    /// `k_ptrs[b]`, `v_ptrs[b]`, which hold `keys[b] - rows[b]` rows and
    /// capacity for `keys[b]`, then runs [`Kernels::attention_varlen`] over
    /// every sequence. A per-sequence loop costs ~6 launches per sequence
    /// and layer (slices, two appends, attention, concat); this costs two
    /// plus four small uploads whatever the batch.
    ///
    /// # Safety
    /// `k_ptrs[b]` and `v_ptrs[b]` must be live bf16 device buffers of this
    /// context with room for `keys[b] * KV*D` elements, holding the
    /// sequence's cached rows, and nothing else may use them until the
    /// launches are done: the kernel writes through these raw addresses.
    pub unsafe fn cached_attention(
        &self,
        out: &mut CudaSlice<bf16>,
        lse: &mut CudaSlice<f32>,
        q: &CudaSlice<bf16>,
        new: &KvAppend<'_>,
        seqs: &VarlenSeqs<'_>,
    ) -> Result<()> {
        let KvAppend {
            k_new,
            v_new,
            k_ptrs,
            v_ptrs,
        } = *new;
        let (rows, n_heads, head_dim) = (seqs.rows, seqs.n_heads, seqs.head_dim);
        let batch = VarlenBatch::new(self, seqs)?;
        if k_ptrs.len() != rows.len() || v_ptrs.len() != rows.len() {
            return Err(Error::Invalid(format!(
                "cached_attention: {} sequences but {} key and {} value caches",
                rows.len(),
                k_ptrs.len(),
                v_ptrs.len()
            )));
        }
        let kc = seqs.n_kv_heads * head_dim;
        check_len("cached_attention q", q, batch.total * n_heads * head_dim)?;
        // Every check before the first launch: a failed call leaves the
        // caches untouched.
        check_len(
            "cached_attention out",
            out,
            batch.total * n_heads * head_dim,
        )?;
        check_len("cached_attention lse", lse, batch.total * n_heads)?;
        check_len("cached_attention k_new", k_new, batch.total * kc)?;
        check_len("cached_attention v_new", v_new, batch.total * kc)?;
        let (kd, vd) = (self.upload(k_ptrs)?, self.upload(v_ptrs)?);
        let (b_count, cols) = (to_i32(rows.len())?, to_i32(kc)?);
        let f = self.f("kv_append")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&kd).arg(&vd).arg(&*batch.starts).arg(&*batch.n_keys);
        b.arg(k_new).arg(v_new).arg(&b_count).arg(&cols);
        // SAFETY: lengths checked; the caller promised `keys[b]` rows behind
        // each pointer (the kernel writes rows keys[b] - rows[b] .. keys[b]).
        self.count_launch();
        unsafe { b.launch(elem_cfg(batch.total * kc)) }.map_err(cuda)?;
        self.launch_varlen(out, lse, q, (&kd, &vd), &batch)
    }

    /// The varlen forward of `batch` over the caches at `k_ptrs`, `v_ptrs`.
    fn launch_varlen(
        &self,
        out: &mut CudaSlice<bf16>,
        lse: &mut CudaSlice<f32>,
        q: &CudaSlice<bf16>,
        (k_ptrs, v_ptrs): (&CudaSlice<u64>, &CudaSlice<u64>),
        batch: &VarlenBatch,
    ) -> Result<()> {
        let d = batch.dims;
        check_len(
            "attention_varlen out",
            out,
            batch.total * d.n_heads * d.head_dim,
        )?;
        check_len("attention_varlen lse", lse, batch.total * d.n_heads)?;
        let (h, kv) = (to_i32(d.n_heads)?, to_i32(d.n_kv_heads)?);
        let f = self.attn_kernel("fwd_varlen", d.head_dim)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(out).arg(lse).arg(q).arg(k_ptrs).arg(v_ptrs);
        b.arg(&*batch.starts).arg(&*batch.n_keys).arg(&h).arg(&kv);
        let shape = (batch.max_rows, d.n_heads, batch.count);
        let cfg = self.attn_cfg(TcKernel::Fwd, shape, d.head_dim);
        // SAFETY: lengths checked; the caller's pointers describe live caches.
        self.count_launch();
        unsafe { b.launch(cfg) }.map_err(cuda)?;
        Ok(())
    }

    /// Decode: one query per sequence over its own KV cache. `k_ptrs`,
    /// `v_ptrs` hold the device addresses of each sequence's cache
    /// (`[lens[b], KV*D]` bf16), `lens` their lengths.
    pub fn attention_decode(&self, out: &mut CudaSlice<bf16>, args: &DecodeArgs<'_>) -> Result<()> {
        let DecodeArgs {
            q,
            k_ptrs,
            v_ptrs,
            lens,
            batch,
            n_heads,
            n_kv_heads,
            head_dim,
        } = *args;
        AttnDims {
            m: batch,
            n: 0,
            n_heads,
            n_kv_heads,
            head_dim,
        }
        .check()?;
        check_len("decode q", q, batch * n_heads * head_dim)?;
        check_len("decode out", out, batch * n_heads * head_dim)?;
        for (what, s) in [("k_ptrs", k_ptrs), ("v_ptrs", v_ptrs)] {
            check_len(&format!("decode {what}"), s, batch)?;
        }
        check_len("decode lens", lens, batch)?;
        let (h, kv) = (to_i32(n_heads)?, to_i32(n_kv_heads)?);
        let name = format!("attn_decode_d{head_dim}");
        let f = self.f(&name)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(out)
            .arg(q)
            .arg(k_ptrs)
            .arg(v_ptrs)
            .arg(lens)
            .arg(&h)
            .arg(&kv);
        let cfg = LaunchConfig {
            grid_dim: (batch as u32, n_heads as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the caller's pointers and lengths describe live caches.
        self.count_launch();
        unsafe { b.launch(cfg) }.map_err(cuda)?;
        Ok(())
    }
}

/// The per-sequence geometry of a varlen launch, checked and on the device.
struct VarlenBatch {
    count: usize,
    total: usize,
    max_rows: usize,
    dims: AttnDims,
    /// q_start: `count + 1` prefix sums of the row counts.
    starts: Arc<CudaSlice<i32>>,
    n_keys: Arc<CudaSlice<i32>>,
}

impl VarlenBatch {
    fn new(k: &Kernels, seqs: &VarlenSeqs<'_>) -> Result<VarlenBatch> {
        let (rows, keys) = (seqs.rows, seqs.keys);
        if rows.len() != keys.len() || rows.is_empty() {
            return Err(Error::Invalid(format!(
                "attention_varlen: {} row counts for {} key counts",
                rows.len(),
                keys.len()
            )));
        }
        if let Some(b) = (0..rows.len()).find(|&b| rows[b] > keys[b]) {
            return Err(Error::Invalid(format!(
                "attention_varlen: sequence {b} has {} query rows but {} keys",
                rows[b], keys[b]
            )));
        }
        let total: usize = rows.iter().sum();
        let dims = AttnDims {
            m: total,
            n: keys.iter().copied().max().unwrap_or(0),
            n_heads: seqs.n_heads,
            n_kv_heads: seqs.n_kv_heads,
            head_dim: seqs.head_dim,
        };
        dims.check()?;
        let mut starts = vec![0i32];
        for &r in rows {
            starts.push(starts.last().copied().unwrap_or(0) + to_i32(r)?);
        }
        let n_keys: Vec<i32> = keys.iter().map(|&n| to_i32(n)).collect::<Result<_>>()?;
        Ok(VarlenBatch {
            count: rows.len(),
            total,
            max_rows: rows.iter().copied().max().unwrap_or(1),
            dims,
            starts: k.varlen_starts.get(k, &starts)?,
            n_keys: k.varlen_keys.get(k, &n_keys)?,
        })
    }
}

/// The sizes every dense attention kernel takes after its buffers: `m`, `n`,
/// `H`, `KV`, then the causal flag and offset of [`Kernels::mask_args`].
fn attn_ints(dims: &AttnDims, (causal, offset): (i32, i32)) -> Result<[i32; 6]> {
    Ok([
        to_i32(dims.m)?,
        to_i32(dims.n)?,
        to_i32(dims.n_heads)?,
        to_i32(dims.n_kv_heads)?,
        causal,
        offset,
    ])
}

/// Pushes the last arguments of a dense attention kernel: [`attn_ints`],
/// then the span arrays (two nulls for a causal mask).
fn push_sizes_and_mask<'a>(b: &mut LaunchArgs<'a>, ints: &'a [i32; 6], mask: &'a DeviceMask) {
    for i in ints {
        b.arg(i);
    }
    match mask {
        DeviceMask::Causal { .. } => {
            b.arg(&NULL).arg(&NULL);
        }
        DeviceMask::Spans {
            span_ptr, spans, ..
        } => {
            b.arg(span_ptr).arg(spans);
        }
    }
}
