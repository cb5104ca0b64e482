//! Masked multi-head attention with grouped KV heads on the CPU.
//!
//! Per head: `S = scale * Q K^T` by GEMM over a block of query rows, the
//! mask and a softmax row by row, then `O = P V` by GEMM. Query blocks bound
//! the score buffer to `BLOCK x keys` per head, so long packed sequences do
//! not need a `[queries x keys]` matrix per head at once.

use rayon::prelude::*;

use super::gemm::{gemm, Layout};
use super::isa::simd_fn;
use super::softmax;
use crate::backend::{AttnMask, AttnShape};

const BLOCK: usize = 128;

/// Marks in `keep` the keys query row `j` may see (`keep.len()` = keys).
/// The one place the mask is turned into key flags, forward and backward.
fn visible_keys(mask: &AttnMask, j: usize, keep: &mut [bool]) {
    keep.fill(false);
    for span in mask.visible(j) {
        assert!(
            span.end <= keep.len(),
            "attention: mask reaches key {} of {}",
            span.end,
            keep.len()
        );
        keep[span].fill(true);
    }
}

/// How many leading keys the query rows `r0..r0 + rows` can see at all (at
/// least 1): a block computes scores against these only, so the causal
/// mask's upper triangle (and keys past a packed probe's spans) costs
/// nothing.
fn keys_seen(mask: &AttnMask, r0: usize, rows: usize, n: usize) -> usize {
    let end = match mask {
        AttnMask::Causal { offset } => offset + r0 + rows,
        AttnMask::Spans(_) => (r0..r0 + rows)
            .flat_map(|j| mask.visible(j))
            .map(|span| span.end)
            .max()
            .unwrap_or(0),
    };
    assert!(end <= n, "attention: mask reaches key {end} of {n}");
    end.max(1).min(n)
}

/// Lanes of the softmax's max and sum: one AVX-512 vector of f32.
const LANES: usize = 16;

simd_fn! {
    /// Softmax of `row` over the keys flagged in `keep` (the rest become 0).
    /// Returns the log-sum-exp of the visible scores. Max and sum run in
    /// [`LANES`] fixed lanes (then a fixed tree), `exp` is `softmax::exp`:
    /// vectorized, the same bits on every instruction set.
    fn masked_softmax [masked_softmax_on] (row: &mut [f32], keep: &[bool]) -> f32 {
        assert_eq!(row.len(), keep.len(), "masked_softmax: lengths");
        // Element i goes to lane i % LANES (blocks, then the tail).
        let mut lanes = [f32::NEG_INFINITY; LANES];
        let most = row.len() / LANES * LANES;
        for (r, k) in row[..most].chunks_exact(LANES).zip(keep.chunks_exact(LANES)) {
            for l in 0..LANES {
                let v = if k[l] { r[l] } else { f32::NEG_INFINITY };
                lanes[l] = if v > lanes[l] { v } else { lanes[l] };
            }
        }
        for (l, (v, k)) in row[most..].iter().zip(&keep[most..]).enumerate() {
            let v = if *k { *v } else { f32::NEG_INFINITY };
            lanes[l] = if v > lanes[l] { v } else { lanes[l] };
        }
        let max = lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut sums = [0.0f32; LANES];
        let (body, tail) = row.split_at_mut(most);
        for (r, k) in body.chunks_exact_mut(LANES).zip(keep.chunks_exact(LANES)) {
            for l in 0..LANES {
                let e = softmax::exp(r[l] - max);
                r[l] = if k[l] { e } else { 0.0 };
                sums[l] += r[l];
            }
        }
        for (l, (v, k)) in tail.iter_mut().zip(&keep[most..]).enumerate() {
            let e = softmax::exp(*v - max);
            *v = if *k { e } else { 0.0 };
            sums[l] += *v;
        }
        let total = softmax::tree_sum(sums);
        for (v, k) in row.iter_mut().zip(keep) {
            *v = if *k { *v / total } else { 0.0 };
        }
        max + total.ln()
    }
}

simd_fn! {
    /// `p = exp(z - lse)` where `keep`, else 0 (the backward's probabilities).
    fn probs_from_lse [probs_from_lse_on] (row: &mut [f32], keep: &[bool], lse: f32) {
        for (v, k) in row.iter_mut().zip(keep) {
            let e = softmax::exp(*v - lse);
            *v = if *k { e } else { 0.0 };
        }
    }
}

simd_fn! {
    /// [`masked_softmax`] for a row whose visible keys are its first `len`
    /// (a causal row): the same lanes, sums and bits, without a flag per key.
    fn prefix_softmax [prefix_softmax_on] (row: &mut [f32], len: usize) -> f32 {
        assert!(
            (1..=row.len()).contains(&len),
            "prefix_softmax: {len} visible keys of {}",
            row.len()
        );
        let (seen, hidden) = row.split_at_mut(len);
        hidden.fill(0.0);
        // Element i goes to lane i % LANES, as in `masked_softmax`.
        let mut lanes = [f32::NEG_INFINITY; LANES];
        let most = len / LANES * LANES;
        let (body, tail) = seen.split_at_mut(most);
        for r in body.chunks_exact(LANES) {
            for l in 0..LANES {
                lanes[l] = if r[l] > lanes[l] { r[l] } else { lanes[l] };
            }
        }
        for (l, v) in tail.iter().enumerate() {
            lanes[l] = if *v > lanes[l] { *v } else { lanes[l] };
        }
        let max = lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut sums = [0.0f32; LANES];
        for r in body.chunks_exact_mut(LANES) {
            for l in 0..LANES {
                r[l] = softmax::exp(r[l] - max);
                sums[l] += r[l];
            }
        }
        for (l, v) in tail.iter_mut().enumerate() {
            *v = softmax::exp(*v - max);
            sums[l] += *v;
        }
        let total = softmax::tree_sum(sums);
        for v in seen.iter_mut() {
            *v /= total;
        }
        max + total.ln()
    }
}

simd_fn! {
    /// [`probs_from_lse`] for a row whose visible keys are its first `len`.
    fn prefix_probs_from_lse [prefix_probs_from_lse_on] (row: &mut [f32], len: usize, lse: f32) {
        let (seen, hidden) = row.split_at_mut(len);
        for v in seen.iter_mut() {
            *v = softmax::exp(*v - lse);
        }
        hidden.fill(0.0);
    }
}

/// Softmax of query row `j`'s scores over the keys `mask` lets it see
/// (`keep`: scratch for a span mask's key flags); returns its log-sum-exp.
/// A causal row's keys are a prefix: the flag-free kernel, same bits.
fn softmax_row(mask: &AttnMask, j: usize, row: &mut [f32], keep: &mut Vec<bool>) -> f32 {
    match mask {
        AttnMask::Causal { offset } => prefix_softmax(row, offset + j + 1),
        AttnMask::Spans(_) => {
            keep.resize(row.len(), false);
            visible_keys(mask, j, keep);
            masked_softmax(row, keep)
        }
    }
}

/// Forward attention. `q[m, H*d]`, `k, v[n, KV*d]`; returns `out[m, H*d]`
/// and the log-sum-exp of every (query, head) `[m, H]` for the backward.
pub fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    m: usize,
    n: usize,
    s: AttnShape,
    mask: &AttnMask,
) -> (Vec<f32>, Vec<f32>) {
    let (h_all, d) = (s.n_heads, s.head_dim);
    let (q_cols, kv_cols) = (h_all * d, s.n_kv_heads * d);
    assert_eq!(q.len(), m * q_cols, "attention: q shape");
    assert_eq!(k.len(), n * kv_cols, "attention: k shape");
    assert_eq!(v.len(), n * kv_cols, "attention: v shape");
    let group = h_all / s.n_kv_heads;
    // One task per (head, query block); each writes its own [rows, d] tile.
    let tasks: Vec<(usize, usize)> = (0..h_all)
        .flat_map(|h| (0..m).step_by(BLOCK).map(move |r| (h, r)))
        .collect();
    let tiles: Vec<(Vec<f32>, Vec<f32>)> = tasks
        .par_iter()
        .map(|&(h, r0)| {
            let rows = BLOCK.min(m - r0);
            let g = h / group;
            let n = keys_seen(mask, r0, rows, n);
            let mut scores = scaled_scores(q, k, (h, g, r0, rows, n), s);
            let mut keep = Vec::new();
            let lse: Vec<f32> = scores
                .chunks_mut(n)
                .enumerate()
                .map(|(i, row)| softmax_row(mask, r0 + i, row, &mut keep))
                .collect();
            let mut tile = vec![0.0f32; rows * d];
            gemm(
                (rows, d, n),
                (&mut tile, Layout::row_major(0, d)),
                (&scores, Layout::row_major(0, n)),
                (
                    v,
                    Layout {
                        offset: g * d,
                        rs: kv_cols,
                        cs: 1,
                    },
                ),
                1.0,
                false,
                false,
            );
            (tile, lse)
        })
        .collect();
    let mut out = vec![0.0f32; m * q_cols];
    let mut lse = vec![0.0f32; m * h_all];
    for (&(h, r0), (tile, l)) in tasks.iter().zip(&tiles) {
        for (i, row) in tile.chunks(d).enumerate() {
            out[(r0 + i) * q_cols + h * d..][..d].copy_from_slice(row);
            lse[(r0 + i) * h_all + h] = l[i];
        }
    }
    (out, lse)
}

/// `scale * Q K^T` for query rows `r0..r0 + rows` of head `h` (KV head `g`)
/// against all `n` keys: the one score computation forward and backward share.
fn scaled_scores(
    q: &[f32],
    k: &[f32],
    (h, g, r0, rows, n): (usize, usize, usize, usize, usize),
    s: AttnShape,
) -> Vec<f32> {
    let d = s.head_dim;
    let (q_cols, kv_cols) = (s.n_heads * d, s.n_kv_heads * d);
    let mut scores = vec![0.0f32; rows * n];
    gemm(
        (rows, n, d),
        (&mut scores, Layout::row_major(0, n)),
        (
            q,
            Layout {
                offset: r0 * q_cols + h * d,
                rs: q_cols,
                cs: 1,
            },
        ),
        (
            k,
            Layout {
                offset: g * d,
                rs: kv_cols,
                cs: 1,
            }
            .t(),
        ),
        1.0 / (d as f32).sqrt(),
        false,
        false,
    );
    scores
}

/// Probabilities `P` of one block of query rows for one head, recomputed
/// from the saved log-sum-exp (0 where the mask hides a key).
fn recompute_probs(
    q: &[f32],
    k: &[f32],
    lse: &[f32],
    (h, g, r0, rows, n): (usize, usize, usize, usize, usize),
    s: AttnShape,
    mask: &AttnMask,
) -> Vec<f32> {
    let mut p = scaled_scores(q, k, (h, g, r0, rows, n), s);
    let mut keep = Vec::new();
    for (i, row) in p.chunks_mut(n).enumerate() {
        let l = lse[(r0 + i) * s.n_heads + h];
        match mask {
            AttnMask::Causal { offset } => prefix_probs_from_lse(row, offset + r0 + i + 1, l),
            AttnMask::Spans(_) => {
                keep.resize(n, false);
                visible_keys(mask, r0 + i, &mut keep);
                probs_from_lse(row, &keep, l);
            }
        }
    }
    p
}

/// Gradients of [`forward`]: given `out`, its log-sum-exp and `dout`, returns
/// `(dq[m, H*d], dk[n, KV*d], dv[n, KV*d])`. Heads run in parallel, each
/// with private dK/dV partials that are summed per KV group in head order,
/// so the result is deterministic.
pub fn backward(
    (q, k, v): (&[f32], &[f32], &[f32]),
    (out, lse): (&[f32], &[f32]),
    dout: &[f32],
    (m, n): (usize, usize),
    s: AttnShape,
    mask: &AttnMask,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (h_all, d) = (s.n_heads, s.head_dim);
    let (q_cols, kv_cols) = (h_all * d, s.n_kv_heads * d);
    let group = h_all / s.n_kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    // Per head: (dq tile [m, d], dk [n, d], dv [n, d]).
    let per_head: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..h_all)
        .into_par_iter()
        .map(|h| {
            let g = h / group;
            let (mut dq, mut dk, mut dv) = (
                vec![0.0f32; m * d],
                vec![0.0f32; n * d],
                vec![0.0f32; n * d],
            );
            for r0 in (0..m).step_by(BLOCK) {
                let rows = BLOCK.min(m - r0);
                // Keys no row of the block sees get no gradient from it.
                let n = keys_seen(mask, r0, rows, n);
                let p = recompute_probs(q, k, lse, (h, g, r0, rows, n), s, mask);
                let do_l = Layout {
                    offset: r0 * q_cols + h * d,
                    rs: q_cols,
                    cs: 1,
                };
                // dV += P^T dO
                gemm(
                    (n, d, rows),
                    (&mut dv, Layout::row_major(0, d)),
                    (&p, Layout::row_major(0, n).t()),
                    (dout, do_l),
                    1.0,
                    true,
                    false,
                );
                // dP = dO V^T
                let mut dp = vec![0.0f32; rows * n];
                gemm(
                    (rows, n, d),
                    (&mut dp, Layout::row_major(0, n)),
                    (dout, do_l),
                    (
                        v,
                        Layout {
                            offset: g * d,
                            rs: kv_cols,
                            cs: 1,
                        }
                        .t(),
                    ),
                    1.0,
                    false,
                    false,
                );
                // dS = P * (dP - rowsum(dO * O))
                softmax_backward(&mut dp, &p, (dout, out), (r0, rows, n), h, s);
                // dQ = scale * dS K ; dK += scale * dS^T Q
                gemm(
                    (rows, d, n),
                    (&mut dq, Layout::row_major(r0 * d, d)),
                    (&dp, Layout::row_major(0, n)),
                    (
                        k,
                        Layout {
                            offset: g * d,
                            rs: kv_cols,
                            cs: 1,
                        },
                    ),
                    scale,
                    false,
                    false,
                );
                gemm(
                    (n, d, rows),
                    (&mut dk, Layout::row_major(0, d)),
                    (&dp, Layout::row_major(0, n).t()),
                    (
                        q,
                        Layout {
                            offset: r0 * q_cols + h * d,
                            rs: q_cols,
                            cs: 1,
                        },
                    ),
                    scale,
                    true,
                    false,
                );
            }
            (dq, dk, dv)
        })
        .collect();
    merge_heads(&per_head, (m, n), s)
}

/// `dS = P * (dP - rowsum(dO * O))` in place of `dp`, for the `rows` query
/// rows from `r0` of head `h` against `n` keys.
fn softmax_backward(
    dp: &mut [f32],
    p: &[f32],
    (dout, out): (&[f32], &[f32]),
    (r0, rows, n): (usize, usize, usize),
    h: usize,
    s: AttnShape,
) {
    let (d, q_cols) = (s.head_dim, s.n_heads * s.head_dim);
    for i in 0..rows {
        let at = (r0 + i) * q_cols + h * d;
        let delta: f32 = dout[at..at + d]
            .iter()
            .zip(&out[at..at + d])
            .map(|(a, b)| a * b)
            .sum();
        for (ds, pv) in dp[i * n..(i + 1) * n]
            .iter_mut()
            .zip(&p[i * n..(i + 1) * n])
        {
            *ds = pv * (*ds - delta);
        }
    }
}

/// The full `(dq, dk, dv)` from each head's: dQ placed in its head's
/// columns, dK and dV summed over the heads of a KV group in head order.
fn merge_heads(
    per_head: &[(Vec<f32>, Vec<f32>, Vec<f32>)],
    (m, n): (usize, usize),
    s: AttnShape,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (d, q_cols, kv_cols) = (
        s.head_dim,
        s.n_heads * s.head_dim,
        s.n_kv_heads * s.head_dim,
    );
    let group = s.n_heads / s.n_kv_heads;
    let mut dq = vec![0.0f32; m * q_cols];
    let mut dk = vec![0.0f32; n * kv_cols];
    let mut dv = vec![0.0f32; n * kv_cols];
    for (h, (dqh, dkh, dvh)) in per_head.iter().enumerate() {
        let g = h / group;
        for i in 0..m {
            dq[i * q_cols + h * d..][..d].copy_from_slice(&dqh[i * d..(i + 1) * d]);
        }
        for j in 0..n {
            let at = j * kv_cols + g * d;
            dk[at..at + d]
                .iter_mut()
                .zip(&dkh[j * d..(j + 1) * d])
                .for_each(|(a, b)| *a += b);
            dv[at..at + d]
                .iter_mut()
                .zip(&dvh[j * d..(j + 1) * d])
                .for_each(|(a, b)| *a += b);
        }
    }
    (dq, dk, dv)
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::test_values as values;

    /// The softmax kernels give the same bits on every instruction set this
    /// CPU runs; masked keys are 0 and the visible ones sum to 1.
    #[test]
    fn softmax_kernels_agree_across_instruction_sets() {
        use super::super::isa::Isa;
        for n in [1, 15, 16, 17, 100, 515] {
            let z: Vec<f32> = values(n, 8).iter().map(|v| v * 9.0).collect();
            let keep: Vec<bool> = (0..n).map(|i| i % 3 != 1 || n == 1).collect();
            let run = |isa: Isa| {
                let mut p = z.clone();
                let lse = masked_softmax_on(isa, &mut p, &keep);
                let mut q = z.clone();
                probs_from_lse_on(isa, &mut q, &keep, lse);
                (p, lse, q)
            };
            let (p, lse, q) = run(Isa::Portable);
            let total: f64 = p.iter().map(|v| *v as f64).sum();
            assert!((total - 1.0).abs() < 1e-6, "{n}: sum {total}");
            assert!(p.iter().zip(&keep).all(|(v, k)| *k || *v == 0.0));
            for (a, b) in p.iter().zip(&q) {
                assert!((a - b).abs() < 1e-6, "{n}: probabilities from the lse");
            }
            for isa in Isa::available() {
                assert!(run(isa) == (p.clone(), lse, q.clone()), "{isa:?} {n}");
            }
        }
    }

    /// A causal row's flag-free kernels give the bits of the flagged ones
    /// with the first `len` keys visible, on every instruction set.
    #[test]
    fn prefix_kernels_give_the_flagged_kernels_bits() {
        use super::super::isa::Isa;
        for n in [1, 16, 17, 40, 515] {
            let z: Vec<f32> = values(n, 9).iter().map(|v| v * 9.0).collect();
            for len in [1, n / 2 + 1, n.saturating_sub(16).max(1), n] {
                let keep: Vec<bool> = (0..n).map(|i| i < len).collect();
                for isa in Isa::available() {
                    let (mut flagged, mut prefix) = (z.clone(), z.clone());
                    let lse = masked_softmax_on(isa, &mut flagged, &keep);
                    let lse_prefix = prefix_softmax_on(isa, &mut prefix, len);
                    assert!(lse.to_bits() == lse_prefix.to_bits(), "{isa:?} {n} {len}");
                    assert!(flagged == prefix, "{isa:?} {n} {len}: probabilities");
                    let (mut flagged, mut prefix) = (z.clone(), z.clone());
                    probs_from_lse_on(isa, &mut flagged, &keep, lse);
                    prefix_probs_from_lse_on(isa, &mut prefix, len, lse);
                    assert!(flagged == prefix, "{isa:?} {n} {len}: from the lse");
                }
            }
        }
    }

    /// Dense f64 attention and its gradients, straight from the formulas:
    /// P = softmax(scale Q K^T) over the visible keys, O = P V; dV = P^T dO,
    /// dS = P (dO V^T - rowsum(dO O)), dQ = scale dS K, dK = scale dS^T Q.
    #[allow(clippy::type_complexity)]
    fn reference(
        (q, k, v, dout): (&[f32], &[f32], &[f32], &[f32]),
        (m, n): (usize, usize),
        s: AttnShape,
        mask: &AttnMask,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (hs, d) = (s.n_heads, s.head_dim);
        let (qc, kc) = (hs * d, s.n_kv_heads * d);
        let scale = 1.0 / (d as f64).sqrt();
        let (mut out, mut dq) = (vec![0.0; m * qc], vec![0.0; m * qc]);
        let (mut dk, mut dv) = (vec![0.0; n * kc], vec![0.0; n * kc]);
        for h in 0..hs {
            let g = h / (hs / s.n_kv_heads);
            let (qa, ka) = (
                |i: usize, c: usize| q[i * qc + h * d + c] as f64,
                |j: usize, c: usize| k[j * kc + g * d + c] as f64,
            );
            let va = |j: usize, c: usize| v[j * kc + g * d + c] as f64;
            for i in 0..m {
                let keys: Vec<usize> = mask.visible(i).into_iter().flatten().collect();
                let z: Vec<f64> = keys
                    .iter()
                    .map(|&j| scale * (0..d).map(|c| qa(i, c) * ka(j, c)).sum::<f64>())
                    .collect();
                let max = z.iter().cloned().fold(f64::MIN, f64::max);
                let sum: f64 = z.iter().map(|x| (x - max).exp()).sum();
                let p: Vec<f64> = z.iter().map(|x| (x - max).exp() / sum).collect();
                let o: Vec<f64> = (0..d)
                    .map(|c| keys.iter().zip(&p).map(|(&j, pj)| pj * va(j, c)).sum())
                    .collect();
                let dov: Vec<f64> = (0..d).map(|c| dout[i * qc + h * d + c] as f64).collect();
                let delta: f64 = (0..d).map(|c| dov[c] * o[c]).sum();
                for (&j, &pj) in keys.iter().zip(&p) {
                    let dp: f64 = (0..d).map(|c| dov[c] * va(j, c)).sum();
                    let ds = pj * (dp - delta);
                    for c in 0..d {
                        dv[j * kc + g * d + c] += pj * dov[c];
                        dq[i * qc + h * d + c] += scale * ds * ka(j, c);
                        dk[j * kc + g * d + c] += scale * ds * qa(i, c);
                    }
                }
                out[i * qc + h * d..][..d].copy_from_slice(&o);
            }
        }
        (out, dq, dk, dv)
    }

    /// Several query blocks (each computing only the keys it can see) give
    /// the dense formulas' output and gradients, causal (with a cached
    /// prefix) and with packed probe spans.
    #[test]
    #[allow(clippy::single_range_in_vec_init)] // lists of key ranges
    fn query_blocks_match_dense_attention_and_gradients() {
        let s = AttnShape {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 8,
        };
        let m = 2 * BLOCK + 37;
        let probes: Vec<Vec<std::ops::Range<usize>>> = (0..m)
            .map(|j| {
                if j < 150 {
                    vec![0..j + 1]
                } else {
                    // Probes of 30 rows after a shared 150-row prefix.
                    let start = 150 + (j - 150) / 30 * 30;
                    vec![0..150, start..j + 1]
                }
            })
            .collect();
        for (mask, n) in [
            (AttnMask::Causal { offset: 0 }, m),
            (AttnMask::Causal { offset: 20 }, m + 20),
            (AttnMask::Spans(probes), m),
        ] {
            let (qc, kc) = (s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
            let (q, k, v) = (values(m * qc, 1), values(n * kc, 2), values(n * kc, 3));
            let dout = values(m * qc, 4);
            let (out, lse) = forward(&q, &k, &v, m, n, s, &mask);
            let (dq, dk, dv) = backward((&q, &k, &v), (&out, &lse), &dout, (m, n), s, &mask);
            let want = reference((&q, &k, &v, &dout), (m, n), s, &mask);
            for (what, got, want) in [
                ("out", &out, &want.0),
                ("dq", &dq, &want.1),
                ("dk", &dk, &want.2),
                ("dv", &dv, &want.3),
            ] {
                let worst = got
                    .iter()
                    .zip(want)
                    .map(|(g, w)| (*g as f64 - w).abs())
                    .fold(0.0, f64::max);
                assert!(worst < 2e-5, "{mask:?}: {what} off by {worst:e}");
            }
        }
    }
}
