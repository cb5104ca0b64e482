//! `dst[m, n] = x[m, k] @ w[n, k]^T` (the `nn.Linear` product) as one dot
//! product per output, each summed in an order that depends on `k` alone:
//! one lane of fused multiply-adds per `k mod L` (L = 16 with AVX-512, 8
//! otherwise), the lanes added in a fixed tree, then the `k % L` tail. So an
//! output's bits never depend on `m`, `n`, the tiling or the threads (batch
//! invariance: a row decoded alone, decoded in a batch of 64, prefilled or
//! scored gets the same logits), and the skinny products of decode stream
//! the weights at full speed on every thread (the `gemm` crate runs them at
//! half the machine's bandwidth: docs/benchmarks.md).
//!
//! Register tiles of MR rows of `x` by 4 rows of `w` (AVX-512: 4 x 4 of 16
//! lanes, AVX2 + FMA: 3 x 4 of 8 lanes — enough accumulator chains to hide
//! the FMA latency); both operands are contiguous along `k`, so no packing.
//! The instruction set is chosen once per process at run time; the portable
//! loop keeps the 8-lane structure (other bits than the SIMD kernels, the
//! same invariance).
//!
//! Opt-in (`IGPO_CPU_MATMUL=dot`, see `MatmulKernel`): the dot-product form
//! loads one vector per 1-2 FMAs where an outer-product GEMM loads one per
//! ~2-3, so large products run 10-30 % slower than the `gemm` crate, and an
//! RL step on CPU spends more time in scoring and training than in decode.

use rayon::prelude::*;

use super::isa::Isa;

/// Rows of `w` per register tile.
const NR: usize = 4;
/// Lanes of the per-output accumulator (AVX2 and portable; AVX-512 has 16).
const LANES: usize = 8;

/// Rows of `x` per register tile.
fn mr(isa: Isa) -> usize {
    if isa == Isa::Avx512 {
        4
    } else {
        3
    }
}

/// `dst[m, n] = x[m, k] @ w[n, k]^T`, all row-major and dense.
pub fn matmul_nt(x: &[f32], w: &[f32], dst: &mut [f32], m: usize, n: usize, k: usize) {
    assert_eq!(x.len(), m * k, "matmul_nt: x is not [{m}, {k}]");
    assert_eq!(w.len(), n * k, "matmul_nt: w is not [{n}, {k}]");
    assert_eq!(dst.len(), m * n, "matmul_nt: dst is not [{m}, {n}]");
    if m == 0 || n == 0 {
        return;
    }
    let isa = Isa::detect();
    // Blocks of x rows x w rows small enough to stay in L2 (~256 KiB each
    // side); every block is one rayon task.
    let rows_per_block = |total: usize, tile: usize| {
        let fit = ((256 * 1024) / (4 * k.max(1))).clamp(tile, 256);
        let fit = fit / tile * tile;
        fit.min(total.div_ceil(tile) * tile)
    };
    let (mb, nb) = (rows_per_block(m, mr(isa)), rows_per_block(n, NR));
    let blocks: Vec<(usize, usize)> = (0..m)
        .step_by(mb)
        .flat_map(|i| (0..n).step_by(nb).map(move |j| (i, j)))
        .collect();
    let out = DstPtr(dst.as_mut_ptr());
    let run = |&(i0, j0): &(usize, usize)| {
        let (rows, cols) = ((i0, (i0 + mb).min(m)), (j0, (j0 + nb).min(n)));
        // SAFETY: block rows x cols writes only its own outputs
        // dst[i * n + j], disjoint from every other block's, all < m * n.
        unsafe {
            match isa {
                Isa::Avx512 => block::<4>(x, w, out, (rows, cols), (n, k), isa),
                _ => block::<3>(x, w, out, (rows, cols), (n, k), isa),
            }
        }
    };
    if blocks.len() > 1 && m * n * k >= 1 << 16 {
        blocks.par_iter().for_each(run);
    } else {
        blocks.iter().for_each(run);
    }
}

/// `dst`'s base pointer, shared by the blocks that write disjoint outputs.
#[derive(Clone, Copy)]
struct DstPtr(*mut f32);
// SAFETY: blocks write disjoint elements (see `matmul_nt`).
unsafe impl Send for DstPtr {}
unsafe impl Sync for DstPtr {}

/// # Safety
/// `i1 <= m`, `j1 <= n` of a `[m, n]` `out`, and no other thread writes
/// this block's outputs.
unsafe fn block<const MR: usize>(
    x: &[f32],
    w: &[f32],
    out: DstPtr,
    ((i0, i1), (j0, j1)): ((usize, usize), (usize, usize)),
    (n, k): (usize, usize),
    isa: Isa,
) {
    let xr = |i: usize| &x[i * k..(i + 1) * k];
    let wr = |j: usize| &w[j * k..(j + 1) * k];
    // w rows outer: a group of NR rows stays in L1 while the block's x rows
    // stream past it from L2.
    let mut j = j0;
    while j < j1 {
        let cols = (j1 - j).min(NR);
        let mut i = i0;
        while i < i1 {
            let rows = (i1 - i).min(MR);
            let mut tile = [[0.0f32; NR]; MR];
            if cols == NR {
                let ws = [wr(j), wr(j + 1), wr(j + 2), wr(j + 3)];
                if rows == MR {
                    let xs: [&[f32]; MR] = std::array::from_fn(|r| xr(i + r));
                    tile = dots::<MR, NR>(&xs, &ws, k, isa);
                } else {
                    // Decode (one row) and the last rows: 1 x 4 tiles.
                    for (r, row) in tile.iter_mut().enumerate().take(rows) {
                        *row = dots::<1, NR>(&[xr(i + r)], &ws, k, isa)[0];
                    }
                }
            } else {
                // Edges: one output at a time, the same per-output order.
                for (r, row) in tile.iter_mut().enumerate().take(rows) {
                    for (c, v) in row.iter_mut().enumerate().take(cols) {
                        *v = dots::<1, 1>(&[xr(i + r)], &[wr(j + c)], k, isa)[0][0];
                    }
                }
            }
            for (r, row) in tile.iter().enumerate().take(rows) {
                for (c, v) in row.iter().enumerate().take(cols) {
                    *out.0.add((i + r) * n + j + c) = *v;
                }
            }
            i += rows;
        }
        j += cols;
    }
}

/// All `R x C` dot products of `xs` with `ws` (each `k` long).
fn dots<const R: usize, const C: usize>(
    xs: &[&[f32]; R],
    ws: &[&[f32]; C],
    k: usize,
    isa: Isa,
) -> [[f32; C]; R] {
    match isa {
        // SAFETY: `Isa::detect` found the instruction set on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::dots::<R, C>(xs, ws, k) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::dots::<R, C>(xs, ws, k) },
        _ => portable_dots::<R, C>(xs, ws, k),
    }
}

/// The 8-lane tree: (l, l + 4), then (l, l + 2), then (0, 1).
fn reduce_lanes(a: [f32; LANES]) -> f32 {
    let b = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    let c = [b[0] + b[2], b[1] + b[3]];
    c[0] + c[1]
}

fn portable_dots<const R: usize, const C: usize>(
    xs: &[&[f32]; R],
    ws: &[&[f32]; C],
    k: usize,
) -> [[f32; C]; R] {
    let body = k / LANES * LANES;
    let mut out = [[0.0f32; C]; R];
    for (r, x) in xs.iter().enumerate() {
        for (c, w) in ws.iter().enumerate() {
            let mut acc = [0.0f32; LANES];
            for (xc, wc) in x[..body]
                .chunks_exact(LANES)
                .zip(w[..body].chunks_exact(LANES))
            {
                for l in 0..LANES {
                    acc[l] += xc[l] * wc[l];
                }
            }
            let mut s = reduce_lanes(acc);
            for t in body..k {
                s += x[t] * w[t];
            }
            out[r][c] = s;
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{reduce_lanes, LANES};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must have AVX2 and FMA; every slice is at least `k` long.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dots<const R: usize, const C: usize>(
        xs: &[&[f32]; R],
        ws: &[&[f32]; C],
        k: usize,
    ) -> [[f32; C]; R] {
        let body = k / LANES * LANES;
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut t = 0;
        while t < body {
            let mut xv = [_mm256_setzero_ps(); R];
            for r in 0..R {
                xv[r] = _mm256_loadu_ps(xs[r].as_ptr().add(t));
            }
            for c in 0..C {
                let wv = _mm256_loadu_ps(ws[c].as_ptr().add(t));
                for r in 0..R {
                    acc[r][c] = _mm256_fmadd_ps(xv[r], wv, acc[r][c]);
                }
            }
            t += LANES;
        }
        let mut out = [[0.0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                let mut lanes = [0.0f32; LANES];
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r][c]);
                let mut s = reduce_lanes(lanes);
                for t in body..k {
                    s = xs[r][t].mul_add(ws[c][t], s);
                }
                out[r][c] = s;
            }
        }
        out
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{reduce_lanes, LANES};
    use std::arch::x86_64::*;

    const L: usize = 16;

    /// # Safety
    /// The CPU must have AVX-512F; every slice is at least `k` long.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dots<const R: usize, const C: usize>(
        xs: &[&[f32]; R],
        ws: &[&[f32]; C],
        k: usize,
    ) -> [[f32; C]; R] {
        let body = k / L * L;
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut t = 0;
        while t < body {
            let mut xv = [_mm512_setzero_ps(); R];
            for r in 0..R {
                xv[r] = _mm512_loadu_ps(xs[r].as_ptr().add(t));
            }
            for c in 0..C {
                let wv = _mm512_loadu_ps(ws[c].as_ptr().add(t));
                for r in 0..R {
                    acc[r][c] = _mm512_fmadd_ps(xv[r], wv, acc[r][c]);
                }
            }
            t += L;
        }
        let mut out = [[0.0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                let mut lanes = [0.0f32; L];
                _mm512_storeu_ps(lanes.as_mut_ptr(), acc[r][c]);
                // (l, l + 8) first, then the 8-lane tree.
                let half: [f32; LANES] = std::array::from_fn(|l| lanes[l] + lanes[l + LANES]);
                let mut s = reduce_lanes(half);
                for t in body..k {
                    s = xs[r][t].mul_add(ws[c][t], s);
                }
                out[r][c] = s;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::test_values as data;

    /// Every output equals the f64 dot product within f32 rounding, on
    /// shapes with edge tiles, a `k` tail and blocks split over threads.
    #[test]
    fn matches_f64_dot_products() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 7),
            (2, 4, 8),
            (5, 9, 29),
            (17, 300, 96),
            (64, 70, 520),
        ] {
            let (x, w) = (data(m * k, 1), data(n * k, 2));
            let mut got = vec![f32::NAN; m * n];
            matmul_nt(&x, &w, &mut got, m, n, k);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                        .sum();
                    let g = got[i * n + j] as f64;
                    assert!(
                        (g - want).abs() <= 1e-5 * (1.0 + want.abs()) * (k as f64).sqrt(),
                        "[{m}x{n}x{k}] ({i},{j}): {g} vs {want}"
                    );
                }
            }
        }
    }

    /// A row's bits do not depend on how many rows share the call, where it
    /// sits in the batch, or how many outputs the call computes.
    #[test]
    fn outputs_are_bitwise_independent_of_the_batch_and_the_width() {
        let (n, k) = (300, 577);
        let (x, w) = (data(40 * k, 3), data(n * k, 4));
        let run = |rows: &[usize], cols: usize| {
            let xs: Vec<f32> = rows
                .iter()
                .flat_map(|&r| x[r * k..(r + 1) * k].to_vec())
                .collect();
            let mut d = vec![0.0; rows.len() * cols];
            matmul_nt(&xs, &w[..cols * k], &mut d, rows.len(), cols, k);
            d
        };
        let alone = run(&[7], n);
        for rows in [vec![7, 1], vec![0, 1, 2, 7], (0..40).collect::<Vec<_>>()] {
            let at = rows.iter().position(|&r| r == 7).unwrap();
            assert!(
                run(&rows, n)[at * n..(at + 1) * n] == alone[..],
                "row 7 in {rows:?}"
            );
        }
        assert!(run(&[7], 37)[..] == alone[..37], "narrower call");
    }

    /// The portable loop and every SIMD kernel this CPU can run agree
    /// within rounding (the AVX2 one is tested on AVX-512 machines too).
    #[test]
    fn portable_and_simd_kernels_agree() {
        let k = 203;
        let (x, w) = (data(3 * k, 5), data(4 * k, 6));
        let xs = [&x[..k], &x[k..2 * k], &x[2 * k..]];
        let ws = [&w[..k], &w[k..2 * k], &w[2 * k..3 * k], &w[3 * k..]];
        let a = dots::<3, 4>(&xs, &ws, k, Isa::Portable);
        let isas = Isa::available();
        eprintln!("this CPU runs {:?}; testing {isas:?}", Isa::detect());
        for isa in isas {
            let b = dots::<3, 4>(&xs, &ws, k, isa);
            for r in 0..3 {
                for c in 0..4 {
                    assert!(
                        (a[r][c] - b[r][c]).abs() < 1e-4,
                        "{isa:?} {r},{c}: {} vs {}",
                        a[r][c],
                        b[r][c]
                    );
                }
            }
        }
    }
}
