//! Fused log-probability of chosen tokens: hidden states -> lm-head ->
//! log-softmax -> gather, one vocabulary chunk at a time, so the
//! `[tokens x vocab]` logits never exist at once. Optionally the entropy of
//! each row's distribution. Backward recomputes each chunk's logits.

use rayon::prelude::*;

use super::gemm::{gemm, Layout};
use super::{matmul_nn, matmul_nt, softmax};
use crate::tensor::Tensor;

/// Running softmax statistics of one row over the chunks seen so far.
#[derive(Clone, Copy)]
struct RowStats {
    max: f32,
    /// sum exp(z - max)
    sum: f64,
    /// sum exp(z - max) * z  (for the entropy)
    zsum: f64,
    target: f32,
}

/// Logits of rows `h[rows, d]` against vocabulary rows `lo..hi` of `w[vocab, d]`
/// (the kernel `linear` uses, so scoring and decode agree bit for bit), in
/// the front of `buf`, which one call reuses for all its chunks: a fresh
/// buffer per chunk cost ~10 % of the pass in page faults and unmaps.
fn chunk_logits<'a>(
    h: &[f32],
    w: &Tensor,
    rows: usize,
    (lo, hi): (usize, usize),
    buf: &'a mut Vec<f32>,
) -> &'a mut [f32] {
    let len = rows * (hi - lo);
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let z = &mut buf[..len];
    matmul_nt(h, rows, w, lo..hi, z);
    z
}

/// Result of [`forward`]: per row log p(target), log-sum-exp, entropy.
pub struct TokenLogProbs {
    pub logp: Vec<f32>,
    pub lse: Vec<f32>,
    pub entropy: Option<Vec<f32>>,
}

/// `log softmax(h W^T)[target]` per row, vocabulary processed `chunk` rows
/// of `w` at a time. Extra memory: `rows x chunk` floats.
pub fn forward(
    h: &[f32],
    w: &Tensor,
    targets: &[u32],
    d: usize,
    chunk: usize,
    want_entropy: bool,
) -> TokenLogProbs {
    let rows = targets.len();
    assert_eq!(h.len(), rows * d, "logprob: hidden shape");
    assert_eq!(w.cols(), d, "logprob: lm-head shape");
    let vocab = w.rows();
    assert!(chunk > 0, "logprob: chunk must be positive");
    if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
        panic!("logprob: target id {t} is outside the vocabulary ({vocab})");
    }
    let mut stats = vec![
        RowStats {
            max: f32::NEG_INFINITY,
            sum: 0.0,
            zsum: 0.0,
            target: 0.0
        };
        rows
    ];
    let mut buf = Vec::new();
    for lo in (0..vocab).step_by(chunk) {
        let hi = (lo + chunk).min(vocab);
        let c = hi - lo;
        let z = chunk_logits(h, w, rows, (lo, hi), &mut buf);
        stats
            .par_iter_mut()
            .zip(z.par_chunks(c))
            .zip(targets.par_iter())
            .for_each(|((st, zr), &t)| {
                let cmax = softmax::max(zr);
                let new_max = st.max.max(cmax);
                let rescale = if st.max == f32::NEG_INFINITY {
                    0.0
                } else {
                    ((st.max - new_max) as f64).exp()
                };
                let (s, zs) = softmax::exp_sums(zr, new_max);
                st.sum = st.sum * rescale + s;
                st.zsum = st.zsum * rescale + zs;
                st.max = new_max;
                let t = t as usize;
                if (lo..hi).contains(&t) {
                    st.target = zr[t - lo];
                }
            });
    }
    let lse: Vec<f32> = stats.iter().map(|s| s.max + s.sum.ln() as f32).collect();
    let logp = stats
        .iter()
        .zip(&lse)
        .map(|(s, l)| (s.target - l).min(0.0))
        .collect();
    let entropy = want_entropy.then(|| {
        stats
            .iter()
            .zip(&lse)
            .map(|(s, l)| (*l as f64 - s.zsum / s.sum).max(0.0) as f32)
            .collect()
    });
    TokenLogProbs { logp, lse, entropy }
}

/// Backward of [`forward`]: with upstream gradients `dlogp` (and, with the
/// forward's `entropy`, its gradient), returns `dh[rows, d]` and adds the
/// lm-head gradient into `dw[vocab, d]` (`chunk` vocabulary rows at a time).
pub fn backward(
    h: &[f32],
    w: &Tensor,
    targets: &[u32],
    (lse, dlogp): (&[f32], &[f32]),
    entropy_and_grad: Option<(&[f32], &[f32])>,
    (d, chunk): (usize, usize),
    dw: &mut [f32],
) -> Vec<f32> {
    let rows = targets.len();
    let vocab = w.rows();
    assert_eq!(dw.len(), w.numel(), "logprob backward: dw shape");
    let mut dh = vec![0.0f32; rows * d];
    let mut buf = Vec::new();
    for lo in (0..vocab).step_by(chunk) {
        let hi = (lo + chunk).min(vocab);
        let c = hi - lo;
        let z = chunk_logits(h, w, rows, (lo, hi), &mut buf);
        // z becomes dz in place: dlogp * (onehot - p) + dH * (-p (log p + H)).
        z.par_chunks_mut(c).enumerate().for_each(|(r, zr)| {
            let t = targets[r] as usize;
            let ent = entropy_and_grad.map(|(e, ge)| (e[r], ge[r]));
            let target = (lo..hi).contains(&t).then(|| t - lo);
            softmax::softmax_grad(zr, lse[r], dlogp[r], ent, target);
        });
        // dh += dz W_c (one FMA chain per output over the whole vocabulary
        // on the packed kernel); dW_c += dz^T h
        matmul_nn(z, rows, w, lo..hi, &mut dh, true);
        gemm(
            (c, d, rows),
            (dw, Layout::row_major(lo * d, d)),
            (z, Layout::row_major(0, c).t()),
            (h, Layout::row_major(0, d)),
            1.0,
            true,
            true,
        );
    }
    dh
}
