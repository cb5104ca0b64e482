//! CPU reference backend: f32, rayon for data parallelism, `gemm` for GEMMs.

mod attention;
pub mod gemm;

pub use gemm::matmul_nt;

use std::ops::Range;

use rayon::prelude::*;

use super::{AttnMask, AttnShape, Backend, Rope};
use crate::tensor::Tensor;

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

impl Backend for Cpu {
    type Tensor = Tensor;

    fn name(&self) -> String {
        format!("cpu (f32, {} threads)", rayon::current_num_threads())
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
        let mut out = Tensor::zeros(&[m, n]);
        matmul_nt(x.data(), w.data(), out.data_mut(), m, n, k);
        if let Some(b) = bias {
            assert_eq!(b.numel(), n, "linear: bias length");
            out.data_mut()
                .par_chunks_mut(n)
                .for_each(|row| row.iter_mut().zip(b.data()).for_each(|(o, b)| *o += b));
        }
        out
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f32) -> Tensor {
        let d = x.cols();
        assert_eq!(w.numel(), d, "rms_norm: weight length");
        let mut out = Tensor::zeros(x.shape());
        out.data_mut()
            .par_chunks_mut(d)
            .zip(x.data().par_chunks(d))
            .for_each(|(o, xr)| {
                let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
                let inv = 1.0 / (ms + eps).sqrt();
                for ((o, x), w) in o.iter_mut().zip(xr).zip(w.data()) {
                    *o = x * inv * w;
                }
            });
        out
    }

    fn rope(&self, x: &mut Tensor, positions: &[usize], rope: &Rope) {
        let cols = x.cols();
        let d = rope.head_dim;
        let half = d / 2;
        assert_eq!(positions.len(), x.rows(), "rope: one position per row");
        assert_eq!(cols % d, 0, "rope: row not a multiple of head_dim");
        x.data_mut()
            .par_chunks_mut(cols)
            .zip(positions.par_iter())
            .for_each(|(row, &pos)| {
                for (i, f) in rope.inv_freq.iter().enumerate() {
                    let angle = pos as f32 * f;
                    let (sin, cos) = angle.sin_cos();
                    for head in row.chunks_mut(d) {
                        let (a, b) = (head[i], head[i + half]);
                        head[i] = a * cos - b * sin;
                        head[i + half] = b * cos + a * sin;
                    }
                }
            });
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
        let mut out = Tensor::zeros(gate.shape());
        out.data_mut()
            .par_iter_mut()
            .zip(gate.data().par_iter().zip(up.data().par_iter()))
            .for_each(|(o, (g, u))| *o = g / (1.0 + (-g).exp()) * u);
        out
    }

    fn embedding(&self, table: &Tensor, ids: &[u32]) -> Tensor {
        let d = table.cols();
        let mut out = Tensor::zeros(&[ids.len(), d]);
        out.data_mut()
            .par_chunks_mut(d)
            .zip(ids.par_iter())
            .for_each(|(o, &id)| o.copy_from_slice(table.row(id as usize)));
        out
    }

    fn add_assign(&self, x: &mut Tensor, y: &Tensor) {
        assert_eq!(x.shape(), y.shape(), "add_assign: shapes");
        x.data_mut()
            .par_iter_mut()
            .zip(y.data().par_iter())
            .for_each(|(a, b)| *a += b);
    }

    fn append_rows(&self, dst: &mut Tensor, new: &Tensor) {
        dst.append_rows(new);
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
            matmul_nt(&x, &w, &mut got, m, n, k);
            let want = naive_matmul_nt(&x, &w, m, n, k);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-4, "({m},{n},{k}): {g} vs {w}");
            }
        }
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
