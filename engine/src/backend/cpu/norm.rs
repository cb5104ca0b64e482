//! RMSNorm over groups of a row: the whole row (`rms_norm`) or each head of
//! `[rows, heads * head_dim]` with one shared weight (`head_rms_norm`,
//! Qwen3's q_norm / k_norm). The group width is the weight's length.
//!
//! forward:  `y = x * r * w`, `r = 1 / sqrt(mean(x^2) + eps)` per group
//! backward: `dx = r * w * dy - (r^3 / d) * x * sum(x * dy * w)`,
//!           `dw += sum over groups of dy * x * r` (in row order)

use rayon::prelude::*;

use super::isa::simd_fn;
use crate::tensor::Tensor;

simd_fn! {
    /// `1 / sqrt(mean(x^2) + eps)`, the squares summed in 16 fixed lanes
    /// (then a fixed tree): vectorized, the same bits on every instruction set.
    fn inv_rms [inv_rms_on] (x: &[f32], eps: f32) -> f32 {
        // Element i goes to lane i % 16 (blocks, then the tail).
        let mut lanes = [0.0f32; 16];
        let blocks = x.chunks_exact(16);
        let tail = blocks.remainder();
        for block in blocks {
            for l in 0..16 {
                lanes[l] += block[l] * block[l];
            }
        }
        for (l, v) in tail.iter().enumerate() {
            lanes[l] += v * v;
        }
        1.0 / (super::softmax::tree_sum(lanes) / x.len() as f32 + eps).sqrt()
    }
}

simd_fn! {
    /// `o = x * inv * w`, elementwise.
    fn scale_row [scale_row_on] (o: &mut [f32], x: &[f32], inv: f32, w: &[f32]) {
        for ((o, x), w) in o.iter_mut().zip(x).zip(w) {
            *o = x * inv * w;
        }
    }
}

/// Normalizes every `w.numel()`-wide group of `x`'s rows.
pub(super) fn forward(x: &Tensor, w: &Tensor, eps: f32) -> Tensor {
    let d = w.numel();
    assert!(
        d > 0 && x.cols().is_multiple_of(d),
        "rms_norm: weight of {d} does not split rows of {}",
        x.cols()
    );
    let mut out = Tensor::zeros(x.shape());
    let row = |(o, xr): (&mut [f32], &[f32])| scale_row(o, xr, inv_rms(xr, eps), w.data());
    if super::elementwise::parallel(x.numel()) {
        out.data_mut()
            .par_chunks_mut(d)
            .zip(x.data().par_chunks(d))
            .for_each(row);
    } else {
        out.data_mut()
            .chunks_mut(d)
            .zip(x.data().chunks(d))
            .for_each(row);
    }
    out
}

/// Backward of [`forward`]: returns `dx`, adds into `dw`.
pub(super) fn backward(x: &Tensor, w: &Tensor, dy: &Tensor, eps: f32, dw: &mut Tensor) -> Tensor {
    let d = w.numel();
    assert_eq!(dy.shape(), x.shape(), "rms_norm_backward: dy shape");
    assert_eq!(dw.numel(), d, "rms_norm_backward: dw length");
    let mut dx = Tensor::zeros(x.shape());
    let inv: Vec<f32> = x.data().par_chunks(d).map(|r| inv_rms(r, eps)).collect();
    dx.data_mut()
        .par_chunks_mut(d)
        .zip(x.data().par_chunks(d))
        .zip(dy.data().par_chunks(d))
        .zip(inv.par_iter())
        .for_each(|(((o, xr), gr), &r)| {
            let dot: f32 = xr
                .iter()
                .zip(gr)
                .zip(w.data())
                .map(|((x, g), w)| x * g * w)
                .sum();
            let c = r * r * r * dot / d as f32;
            for (((o, x), g), w) in o.iter_mut().zip(xr).zip(gr).zip(w.data()) {
                *o = r * w * g - c * x;
            }
        });
    for ((xr, gr), r) in x.data().chunks(d).zip(dy.data().chunks(d)).zip(&inv) {
        dw.data_mut()
            .iter_mut()
            .zip(xr.iter().zip(gr))
            .for_each(|(dw, (x, g))| *dw += g * x * r);
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::super::isa::Isa;
    use super::*;

    /// The norm's kernels give the same bits on every instruction set this
    /// CPU runs, and the lanes' sum of squares is right.
    #[test]
    fn kernels_agree_across_instruction_sets() {
        for n in [1, 15, 16, 17, 576, 1000] {
            let x = super::super::test_values(n, 6);
            let w = super::super::test_values(n, 7);
            let want =
                1.0 / ((x.iter().map(|v| (v * v) as f64).sum::<f64>() / n as f64) + 1e-6).sqrt();
            let inv = inv_rms_on(Isa::Portable, &x, 1e-6);
            assert!(
                (inv as f64 - want).abs() < 1e-5 * want,
                "{n}: {inv} vs {want}"
            );
            let mut row = vec![0.0; n];
            scale_row_on(Isa::Portable, &mut row, &x, inv, &w);
            for isa in Isa::available() {
                assert_eq!(
                    inv_rms_on(isa, &x, 1e-6).to_bits(),
                    inv.to_bits(),
                    "{isa:?} {n}"
                );
                let mut other = vec![0.0; n];
                scale_row_on(isa, &mut other, &x, inv, &w);
                assert!(other == row, "{isa:?} {n}");
            }
        }
    }
}
