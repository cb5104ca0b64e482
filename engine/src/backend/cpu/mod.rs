//! CPU reference backend: f32, rayon for data parallelism; `packed.rs` for the
//! forward `x @ w^T`, the `gemm` crate (AVX-512 kernels chosen at run time) for
//! the other GEMMs.

mod attention;
#[cfg(test)]
mod conformance_tests;
pub mod dot;
mod elementwise;
pub mod gemm;
mod isa;
mod logprob;
mod memory;
mod norm;
pub mod packed;
pub mod sampling;
mod softmax;
pub use memory::{keep_freed_memory, CountingAllocator};

/// Which kernel computes `x @ w^T` (every forward `linear` and the fused
/// log-prob's logits), chosen once per process by `IGPO_CPU_MATMUL`:
/// `packed` (default: `packed.rs`, each weight packed once into column
/// panels; the fastest for decode, prefill and scoring alike on the machines
/// measured in docs/benchmarks.md, at the cost of a second f32 copy of every
/// weight matrix), `gemm` (the `gemm` crate on the weights as they are) or
/// `dot` (`dot.rs`). One kernel per process keeps a row's logits the same in
/// every batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MatmulKernel {
    Packed,
    Gemm,
    Dot,
}

impl MatmulKernel {
    /// The process's choice (`IGPO_CPU_MATMUL`, read once; panics on a bad
    /// value, which the binary checks first with [`check_env`]).
    pub fn current() -> MatmulKernel {
        static KERNEL: std::sync::OnceLock<MatmulKernel> = std::sync::OnceLock::new();
        *KERNEL.get_or_init(|| MatmulKernel::from_env().unwrap_or_else(|e| panic!("{e}")))
    }

    /// The kernel `IGPO_CPU_MATMUL` asks for, or one line naming the
    /// variable, its value and the accepted values.
    pub fn from_env() -> Result<MatmulKernel, String> {
        match std::env::var("IGPO_CPU_MATMUL") {
            Err(std::env::VarError::NotPresent) => Ok(MatmulKernel::Packed),
            Ok(v) if v.is_empty() || v == "packed" => Ok(MatmulKernel::Packed),
            Ok(v) if v == "gemm" => Ok(MatmulKernel::Gemm),
            Ok(v) if v == "dot" => Ok(MatmulKernel::Dot),
            other => Err(format!(
                "IGPO_CPU_MATMUL={:?}: expected packed (the default), gemm or dot",
                other.unwrap_or_else(|_| "(not UTF-8)".to_string())
            )),
        }
    }
}

/// Checks the environment variables of the CPU kernels (`IGPO_CPU_MATMUL`,
/// `IGPO_CPU_ISA`) up front: a bad value is one line naming the variable,
/// the value and the accepted values, instead of a panic at the first
/// matrix product.
pub fn check_env() -> Result<(), String> {
    MatmulKernel::from_env()?;
    isa::Isa::from_env()?;
    Ok(())
}

/// Deterministic test values in [-1, 1] (the kernels' tests share them).
#[cfg(test)]
fn test_values(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 7919 + seed * 104729) % 2001) as f32 - 1000.0) * 1e-3)
        .collect()
}

/// What the CPU backend keeps with a weight tensor (a `Tensor::derived`
/// value, dropped when the weight changes): its panels for `x @ w^T`, and,
/// from the first backward through it, the transpose's for `dy @ w`.
struct WeightPanels {
    forward: packed::PackedWeights,
    transposed: std::sync::OnceLock<packed::PackedWeights>,
}

fn panels(w: &Tensor) -> std::sync::Arc<WeightPanels> {
    w.derived(|w| WeightPanels {
        forward: packed::PackedWeights::pack(w.data(), w.rows(), w.cols()),
        transposed: std::sync::OnceLock::new(),
    })
}

/// `dst[m, cols.len()] = x[m, k] @ w[cols, k]^T`: the outputs of rows `cols`
/// of the weight `w[n, k]`, with the process's [`MatmulKernel`] (the packed
/// one packs `w` on first use and keeps it with the tensor).
pub fn matmul_nt(x: &[f32], m: usize, w: &Tensor, cols: Range<usize>, dst: &mut [f32]) {
    let k = w.cols();
    let rows = || &w.data()[cols.start * k..cols.end * k];
    match MatmulKernel::current() {
        MatmulKernel::Packed => packed::matmul_nt(x, m, &panels(w).forward, cols, dst),
        MatmulKernel::Gemm => gemm::matmul_nt(x, rows(), dst, m, cols.len(), k),
        MatmulKernel::Dot => dot::matmul_nt(x, rows(), dst, m, cols.len(), k),
    }
}

/// `x[m, k] @ w[n, k]^T` as a new `[m, n]` tensor (the packed kernel writes
/// each output once; nothing is zeroed first).
fn matmul_nt_new(x: &[f32], m: usize, w: &Tensor) -> Tensor {
    let n = w.rows();
    match MatmulKernel::current() {
        MatmulKernel::Packed => Tensor::from_vec(
            &[m, n],
            packed::matmul_nt_new(x, m, &panels(w).forward, 0..n),
        ),
        _ => {
            let mut out = Tensor::zeros(&[m, n]);
            matmul_nt(x, m, w, 0..n, out.data_mut());
            out
        }
    }
}

/// `dst[m, k] (+)= dy[m, rows] @ w[rows, k]`, the backward's product through
/// a weight: on the packed kernel over `w`'s transposed panels (each output
/// one FMA chain over `rows`, so batch invariant, and with `accumulate`
/// continued from `dst`), else the `gemm` crate.
fn matmul_nn(
    dy: &[f32],
    m: usize,
    w: &Tensor,
    rows: Range<usize>,
    dst: &mut [f32],
    accumulate: bool,
) {
    let k = w.cols();
    match MatmulKernel::current() {
        MatmulKernel::Packed => {
            // The transpose's panels: packed on first use, kept with `w`.
            let p = panels(w);
            let wt = p
                .transposed
                .get_or_init(|| packed::PackedWeights::pack_transposed(w.data(), w.rows(), k));
            let write = if accumulate {
                packed::Write::Accumulate
            } else {
                packed::Write::Overwrite
            };
            packed::matmul_nt_part(dy, m, wt, 0..k, rows, dst, write);
        }
        _ => gemm(
            (m, k, rows.len()),
            (dst, Layout::row_major(0, k)),
            (dy, Layout::row_major(0, rows.len())),
            (w.data(), Layout::row_major(rows.start * k, k)),
            1.0,
            accumulate,
            true,
        ),
    }
}

use std::ops::Range;

use rayon::prelude::*;

use super::{
    AdamWStep, AttnMask, AttnShape, Backend, LogProbs, MemoryUsage, Rope, SampledToken,
    SamplingParams,
};
use crate::tensor::Tensor;
use gemm::{gemm, Layout};

/// The f32 CPU backend. Stateless: threads come from rayon's global pool.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

/// Dot product with 8 independent partial sums, so the compiler vectorizes it
/// (a plain `sum()` must keep f32 order and stays scalar). The reduction
/// order depends only on the length: results do not change with batch size.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// RoPE rotation by `sign * position * freq` (sign -1 undoes it: the
/// backward), cos and sin times `rope.attention_scaling` (the transpose of
/// `s R` is `s R^T`, so the backward scales too).
fn rotate(x: &mut Tensor, positions: &[usize], rope: &Rope, sign: f32) {
    let cols = x.cols();
    let d = rope.head_dim;
    let half = d / 2;
    assert_eq!(positions.len(), x.rows(), "rope: one position per row");
    assert_eq!(cols % d, 0, "rope: row not a multiple of head_dim");
    let rotate_row = |(row, &pos): (&mut [f32], &usize)| {
        for (i, f) in rope.inv_freq.iter().enumerate() {
            let angle = pos as f32 * f;
            let (sin, cos) = angle.sin_cos();
            let s = rope.attention_scaling;
            let (sin, cos) = (sign * sin * s, cos * s);
            for head in row.chunks_mut(d) {
                let (a, b) = (head[i], head[i + half]);
                head[i] = a * cos - b * sin;
                head[i + half] = b * cos + a * sin;
            }
        }
    };
    if elementwise::parallel(x.numel()) {
        x.data_mut()
            .par_chunks_mut(cols)
            .zip(positions.par_iter())
            .for_each(rotate_row);
    } else {
        x.data_mut()
            .chunks_mut(cols)
            .zip(positions.iter())
            .for_each(rotate_row);
    }
}

/// Per-sequence outputs `[rows_s, cols]` stacked into one `[rows, cols]`.
fn stack(outs: Vec<Vec<f32>>, cols: usize) -> Tensor {
    let data = if outs.len() == 1 {
        outs.into_iter().next().expect("one")
    } else {
        outs.concat()
    };
    Tensor::from_vec(&[data.len() / cols.max(1), cols], data)
}

fn vec_tensor(v: Vec<f32>) -> Tensor {
    Tensor::from_vec(&[v.len()], v)
}

impl Backend for Cpu {
    type Tensor = Tensor;

    fn name(&self) -> String {
        let matmul = match MatmulKernel::current() {
            MatmulKernel::Packed => "",
            MatmulKernel::Gemm => ", gemm-crate matmul",
            MatmulKernel::Dot => ", dot-product matmul",
        };
        format!(
            "cpu (f32, {} threads{matmul})",
            rayon::current_num_threads()
        )
    }

    fn in_pool<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        rayon::scope(|_| f())
    }

    fn weight_read_bytes(&self, w: &Tensor) -> usize {
        // Matrices go through the packed kernel, which streams bf16 panels
        // of a bf16-valued weight in decode (`packed::BF16_MAX_ROWS`).
        let bf16 = MatmulKernel::current() == MatmulKernel::Packed
            && w.shape().len() == 2
            && w.rows() > 1
            && packed::is_bf16_valued(w.data());
        w.numel() * if bf16 { 2 } else { 4 }
    }

    fn memory_usage(&self) -> Option<MemoryUsage> {
        memory::process_memory()
    }

    fn reset_peak_memory(&self) {
        memory::reset_process_peak();
    }

    fn synchronize(&self) {}

    fn sample_rows(
        &self,
        logits: &Tensor,
        params: &SamplingParams,
        uniforms: &[f64],
    ) -> Vec<SampledToken> {
        assert_eq!(
            logits.rows(),
            uniforms.len(),
            "sample_rows: one uniform per row"
        );
        // Rows in parallel: each also sums its whole row for the log-prob.
        (0..logits.rows())
            .into_par_iter()
            .map(|r| {
                let row = logits.row(r);
                let id = sampling::sample_with_uniform(row, params, uniforms[r]);
                SampledToken {
                    id,
                    logprob: sampling::sampled_logprob(row, id, params),
                }
            })
            .collect()
    }

    fn upload(&self, t: &Tensor) -> Tensor {
        t.clone()
    }

    fn download(&self, t: &Tensor) -> Tensor {
        t.clone()
    }

    fn shape<'a>(&self, t: &'a Tensor) -> &'a [usize] {
        t.shape()
    }

    fn empty_rows(&self, cols: usize) -> Tensor {
        Tensor::zeros(&[0, cols])
    }

    fn linear(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Tensor {
        let (m, k) = (x.rows(), x.cols());
        let n = w.rows();
        assert_eq!(
            w.cols(),
            k,
            "linear: x has {k} columns, weight {:?}",
            w.shape()
        );
        let mut out = matmul_nt_new(x.data(), m, w);
        if let Some(b) = bias {
            assert_eq!(b.numel(), n, "linear: bias length");
            elementwise::add_bias(out.data_mut(), b.data());
        }
        out
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f32) -> Tensor {
        assert_eq!(w.numel(), x.cols(), "rms_norm: weight length");
        norm::forward(x, w, eps)
    }

    fn head_rms_norm(&self, x: &Tensor, w: &Tensor, eps: f32) -> Tensor {
        norm::forward(x, w, eps)
    }

    fn rope(&self, x: &mut Tensor, positions: &[usize], rope: &Rope) {
        rotate(x, positions, rope, 1.0);
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        s: AttnShape,
        mask: &AttnMask,
    ) -> Tensor {
        let (m, n) = (q.rows(), k.rows());
        let (out, _lse) = attention::forward(q.data(), k.data(), v.data(), m, n, s, mask);
        Tensor::from_vec(&[m, s.n_heads * s.head_dim], out)
    }

    fn swiglu(&self, gate: &Tensor, up: &Tensor) -> Tensor {
        assert_eq!(gate.shape(), up.shape(), "swiglu: shapes");
        Tensor::from_vec(gate.shape(), elementwise::swiglu(gate.data(), up.data()))
    }

    fn embedding(&self, table: &Tensor, ids: &[u32]) -> Tensor {
        let d = table.cols();
        let mut data = Vec::with_capacity(ids.len() * d);
        ids.iter()
            .for_each(|&id| data.extend_from_slice(table.row(id as usize)));
        Tensor::from_vec(&[ids.len(), d], data)
    }

    fn add_assign(&self, x: &mut Tensor, y: &Tensor) {
        assert_eq!(x.shape(), y.shape(), "add_assign: shapes");
        elementwise::add(x.data_mut(), y.data());
    }

    fn cached_attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        caches: &mut [(&mut Tensor, &mut Tensor)],
        bounds: &[Range<usize>],
        shape: AttnShape,
    ) -> Tensor {
        assert_eq!(
            caches.len(),
            bounds.len(),
            "cached_attention: one cache per sequence"
        );
        // The per-sequence default's computation, sequences in parallel (a
        // decode step's sequences are one query row each: one parallel pass
        // instead of one per sequence).
        let outs: Vec<Vec<f32>> = caches
            .par_iter_mut()
            .zip(bounds.par_iter())
            .map(|((kc, vc), range)| {
                let offset = kc.rows();
                kc.append_rows(&self.slice_rows(k, range.clone()));
                vc.append_rows(&self.slice_rows(v, range.clone()));
                let qs = &q.data()[range.start * q.cols()..range.end * q.cols()];
                let mask = AttnMask::Causal { offset };
                attention::forward(
                    qs,
                    kc.data(),
                    vc.data(),
                    range.len(),
                    kc.rows(),
                    shape,
                    &mask,
                )
                .0
            })
            .collect();
        stack(outs, shape.n_heads * shape.head_dim)
    }

    fn paged_attention(
        &self,
        q: &Tensor,
        k_pool: &Tensor,
        v_pool: &Tensor,
        keys: &[Vec<usize>],
        bounds: &[Range<usize>],
        shape: AttnShape,
    ) -> Tensor {
        assert_eq!(
            keys.len(),
            bounds.len(),
            "paged_attention: one key list per sequence"
        );
        // `paged_attention_per_sequence`'s computation (the same bits),
        // sequences in parallel.
        let outs: Vec<Vec<f32>> = keys
            .par_iter()
            .zip(bounds.par_iter())
            .map(|(slots, range)| {
                assert!(
                    range.len() <= slots.len(),
                    "paged_attention: {} queries but {} keys",
                    range.len(),
                    slots.len()
                );
                let (kc, vc) = (
                    self.gather_rows(k_pool, slots),
                    self.gather_rows(v_pool, slots),
                );
                let qs = &q.data()[range.start * q.cols()..range.end * q.cols()];
                let mask = AttnMask::Causal {
                    offset: slots.len() - range.len(),
                };
                attention::forward(
                    qs,
                    kc.data(),
                    vc.data(),
                    range.len(),
                    slots.len(),
                    shape,
                    &mask,
                )
                .0
            })
            .collect();
        stack(outs, shape.n_heads * shape.head_dim)
    }

    fn append_rows(&self, dst: &mut Tensor, new: &Tensor) {
        dst.append_rows(new);
    }

    fn write_kv(
        &self,
        k_pool: &mut Tensor,
        v_pool: &mut Tensor,
        rows: &[usize],
        k: &Tensor,
        v: &Tensor,
    ) {
        for (pool, src) in [(k_pool, k), (v_pool, v)] {
            let c = pool.cols();
            assert_eq!(src.cols(), c, "write_kv: column mismatch");
            assert_eq!(src.rows(), rows.len(), "write_kv: one row index per row");
            let n = pool.rows();
            let data = pool.data_mut();
            for (i, &r) in rows.iter().enumerate() {
                assert!(r < n, "write_kv: row {r} of a {n}-row pool");
                data[r * c..(r + 1) * c].copy_from_slice(src.row(i));
            }
        }
    }

    fn gather_rows(&self, x: &Tensor, rows: &[usize]) -> Tensor {
        let c = x.cols();
        let mut data = Vec::with_capacity(rows.len() * c);
        rows.iter().for_each(|&r| data.extend_from_slice(x.row(r)));
        Tensor::from_vec(&[rows.len(), c], data)
    }

    fn slice_rows(&self, x: &Tensor, range: Range<usize>) -> Tensor {
        let c = x.cols();
        Tensor::from_vec(
            &[range.len(), c],
            x.data()[range.start * c..range.end * c].to_vec(),
        )
    }

    fn concat_rows(&self, parts: &[Tensor]) -> Tensor {
        let c = parts.first().map(|p| p.cols()).unwrap_or(0);
        let mut data = Vec::with_capacity(parts.iter().map(|p| p.numel()).sum());
        for p in parts {
            assert_eq!(p.cols(), c, "concat_rows: column mismatch");
            data.extend_from_slice(p.data());
        }
        Tensor::from_vec(&[data.len() / c.max(1), c], data)
    }

    fn zeros(&self, shape: &[usize]) -> Tensor {
        // The callers are accumulators (gradients, AdamW moments), read
        // before written. On fresh calloc pages each first read maps the
        // shared zero page and the write after it faults again and flushes
        // every thread's TLB: 11 % of a scoring fwd+bwd (perf). Writing the
        // zeros first (where the compiler cannot prove them redundant)
        // faults each page once, without the flush.
        let mut t = Tensor::zeros(shape);
        t.data_mut()
            .par_chunks_mut(1 << 16)
            .for_each(|c| c.fill(0.0));
        t
    }

    fn attention_train(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        s: AttnShape,
        mask: &AttnMask,
    ) -> (Tensor, Tensor) {
        let (m, n) = (q.rows(), k.rows());
        let (out, lse) = attention::forward(q.data(), k.data(), v.data(), m, n, s, mask);
        (
            Tensor::from_vec(&[m, s.n_heads * s.head_dim], out),
            Tensor::from_vec(&[m, s.n_heads], lse),
        )
    }

    fn attention_backward(
        &self,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        (out, lse): (&Tensor, &Tensor),
        dout: &Tensor,
        s: AttnShape,
        mask: &AttnMask,
    ) -> (Tensor, Tensor, Tensor) {
        let (m, n) = (q.rows(), k.rows());
        let (dq, dk, dv) = attention::backward(
            (q.data(), k.data(), v.data()),
            (out.data(), lse.data()),
            dout.data(),
            (m, n),
            s,
            mask,
        );
        (
            Tensor::from_vec(q.shape(), dq),
            Tensor::from_vec(k.shape(), dk),
            Tensor::from_vec(v.shape(), dv),
        )
    }

    fn linear_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        dw: &mut Tensor,
        db: Option<&mut Tensor>,
    ) -> Tensor {
        let (m, k, n) = (x.rows(), x.cols(), w.rows());
        assert_eq!(dy.shape(), &[m, n], "linear_backward: dy shape");
        let mut dx = Tensor::zeros(&[m, k]);
        matmul_nn(dy.data(), m, w, 0..n, dx.data_mut(), false);
        // dW += dy^T x
        gemm(
            (n, k, m),
            (dw.data_mut(), Layout::row_major(0, k)),
            (dy.data(), Layout::row_major(0, n).t()),
            (x.data(), Layout::row_major(0, k)),
            1.0,
            true,
            true,
        );
        if let Some(db) = db {
            for row in dy.data().chunks(n) {
                db.data_mut().iter_mut().zip(row).for_each(|(b, g)| *b += g);
            }
        }
        dx
    }

    fn rms_norm_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        eps: f32,
        dw: &mut Tensor,
    ) -> Tensor {
        assert_eq!(w.numel(), x.cols(), "rms_norm_backward: weight length");
        norm::backward(x, w, dy, eps, dw)
    }

    fn head_rms_norm_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        eps: f32,
        dw: &mut Tensor,
    ) -> Tensor {
        norm::backward(x, w, dy, eps, dw)
    }

    fn rope_backward(&self, dx: &mut Tensor, positions: &[usize], rope: &Rope) {
        rotate(dx, positions, rope, -1.0);
    }

    fn swiglu_backward(&self, gate: &Tensor, up: &Tensor, dy: &Tensor) -> (Tensor, Tensor) {
        let (dg, du) = elementwise::swiglu_backward(gate.data(), up.data(), dy.data());
        (
            Tensor::from_vec(gate.shape(), dg),
            Tensor::from_vec(up.shape(), du),
        )
    }

    fn embedding_backward(&self, ids: &[u32], dy: &Tensor, dtable: &mut Tensor) {
        let d = dtable.cols();
        for (&id, row) in ids.iter().zip(dy.data().chunks(d)) {
            let at = id as usize * d;
            dtable.data_mut()[at..at + d]
                .iter_mut()
                .zip(row)
                .for_each(|(a, b)| *a += b);
        }
    }

    fn token_logprobs(
        &self,
        h: &Tensor,
        w: &Tensor,
        targets: &[u32],
        chunk: usize,
        want_entropy: bool,
    ) -> LogProbs<Tensor> {
        let out = logprob::forward(h.data(), w, targets, h.cols(), chunk, want_entropy);
        debug_assert!(
            out.logp.iter().all(|l| l.is_finite() && *l <= 0.0),
            "log-probs must be finite and <= 0"
        );
        LogProbs {
            logp: vec_tensor(out.logp),
            lse: vec_tensor(out.lse),
            entropy: out.entropy.map(vec_tensor),
        }
    }

    fn token_logprobs_backward(
        &self,
        (h, w): (&Tensor, &Tensor),
        targets: &[u32],
        out: &LogProbs<Tensor>,
        (dlogp, dentropy): (&Tensor, Option<&Tensor>),
        chunk: usize,
        dw: &mut Tensor,
    ) -> Tensor {
        let ent = dentropy.map(|de| {
            let e = out
                .entropy
                .as_ref()
                .expect("token_logprobs_backward: dentropy needs the forward's entropy");
            (e.data(), de.data())
        });
        let dh = logprob::backward(
            h.data(),
            w,
            targets,
            (out.lse.data(), dlogp.data()),
            ent,
            (h.cols(), chunk),
            dw.data_mut(),
        );
        Tensor::from_vec(h.shape(), dh)
    }

    fn sum_squares(&self, t: &Tensor) -> f64 {
        t.data()
            .par_chunks(4096)
            .map(|c| c.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>())
            .collect::<Vec<_>>()
            .iter()
            .sum()
    }

    fn scale(&self, x: &mut Tensor, s: f32) {
        elementwise::scale(x.data_mut(), s);
    }

    fn adamw(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        st: &AdamWStep,
    ) {
        assert_eq!(param.shape(), grad.shape(), "adamw: grad shape");
        elementwise::adamw(
            param.data_mut(),
            grad.data(),
            m.data_mut(),
            v.data_mut(),
            st,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_matmul_nt(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum();
            }
        }
        out
    }

    #[test]
    fn gemm_matches_naive_on_odd_shapes() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 7),
            (17, 33, 65),
            (64, 130, 96),
            (1, 300, 257),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.1)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.2)
                .collect();
            let mut got = vec![0.0; m * n];
            let want = naive_matmul_nt(&x, &w, m, n, k);
            let w = Tensor::from_vec(&[n, k], w);
            matmul_nt(&x, m, &w, 0..n, &mut got);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-4, "({m},{n},{k}): {g} vs {w}");
            }
            // A range of w's rows: the same bits as those columns of the whole.
            let cols = n / 3..n - n / 4;
            let mut part = vec![0.0; m * cols.len()];
            matmul_nt(&x, m, &w, cols.clone(), &mut part);
            for i in 0..m {
                assert!(
                    part[i * cols.len()..(i + 1) * cols.len()]
                        == got[i * n + cols.start..i * n + cols.end],
                    "({m},{n},{k}) row {i}, columns {cols:?}"
                );
            }
        }
    }

    /// A decode step reads a bf16-valued matrix at 2 bytes per value (its
    /// bf16 panels), any other weight at 4.
    #[test]
    fn weight_read_bytes_count_the_panels_decode_streams() {
        let bf16 = Tensor::from_vec(&[3, 2], vec![1.0, -2.5, 0.5, 0.0, 3.0, 0.25]);
        let f32s = Tensor::from_vec(&[3, 2], vec![1.0, -2.5, 0.1, 0.0, 3.0, 0.25]);
        let norm = Tensor::from_vec(&[2], vec![1.0, 0.5]);
        let packed = MatmulKernel::current() == MatmulKernel::Packed;
        assert_eq!(Cpu.weight_read_bytes(&bf16), if packed { 12 } else { 24 });
        assert_eq!(Cpu.weight_read_bytes(&f32s), 24);
        assert_eq!(Cpu.weight_read_bytes(&norm), 8);
    }

    /// `linear` never computes with a stale packed copy of a weight: changing
    /// the weight in place (as AdamW does) changes the output.
    #[test]
    fn linear_sees_a_weight_changed_in_place() {
        let cpu = Cpu;
        let x = Tensor::from_vec(&[2, 3], vec![1.0, 2.0, 3.0, -1.0, 0.5, 0.25]);
        let mut w = Tensor::from_vec(&[2, 3], vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6]);
        let close = |got: &Tensor, w: &Tensor| {
            let want = naive_matmul_nt(x.data(), w.data(), 2, 2, 3);
            got.data()
                .iter()
                .zip(&want)
                .all(|(g, e)| (g - e).abs() < 1e-6)
        };
        let before = cpu.linear(&x, &w, None);
        assert!(close(&before, &w), "{:?}", before.data());
        w.data_mut()[4] = -2.0;
        let after = cpu.linear(&x, &w, None);
        assert!(close(&after, &w), "stale weights: {:?}", after.data());
    }

    #[test]
    fn attention_single_key_returns_its_value() {
        let cpu = Cpu;
        let s = AttnShape {
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 2,
        };
        let q = Tensor::from_vec(&[1, 4], vec![1.0, 0.0, 0.0, 1.0]);
        let k = Tensor::from_vec(&[1, 2], vec![0.3, 0.4]);
        let v = Tensor::from_vec(&[1, 2], vec![5.0, -6.0]);
        let o = cpu.attention(&q, &k, &v, s, &AttnMask::Causal { offset: 0 });
        assert_eq!(o.data(), &[5.0, -6.0, 5.0, -6.0]);
    }

    #[test]
    fn span_mask_equals_causal_mask_when_spans_are_prefixes() {
        let cpu = Cpu;
        let s = AttnShape {
            n_heads: 2,
            n_kv_heads: 2,
            head_dim: 4,
        };
        let q = Tensor::from_vec(&[3, 8], (0..24).map(|i| (i as f32 * 0.37).sin()).collect());
        let k = Tensor::from_vec(&[3, 8], (0..24).map(|i| (i as f32 * 0.11).cos()).collect());
        let v = Tensor::from_vec(&[3, 8], (0..24).map(|i| (i as f32 * 0.7).sin()).collect());
        let causal = cpu.attention(&q, &k, &v, s, &AttnMask::Causal { offset: 0 });
        let spans = AttnMask::Spans(vec![vec![0..1], vec![0..2], vec![0..1, 1..3]]);
        let spanned = cpu.attention(&q, &k, &v, s, &spans);
        for (a, b) in causal.data().iter().zip(spanned.data()) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
