//! `dst[m, n] = x[m, k] @ w[n, k]^T` (the `nn.Linear` product) over weights
//! packed once into column panels: an outer-product micro-kernel that is
//! batch invariant by construction.
//!
//! Every output is ONE chain of fused multiply-adds over `t = 0..k` in order,
//! started from zero: no `k` blocking, no lane tree, no split of the sum
//! between threads. So an output's bits never depend on `m`, on which rows
//! share a register tile, on the column range asked for or on the threads
//! (rollout decode, prefill and the fused log-prob scoring agree bit for bit,
//! as with the `gemm` crate's path in `gemm.rs`, which needs a trick for one
//! row).
//!
//! Layout ([`PackedWeights`]): panels of `NR` consecutive rows of `w`
//! (`NR` = 48 with AVX-512, 16 otherwise), each stored `k`-major: element
//! `(t, c)` of panel `p` is `w[p * NR + c, t]`, the last panel zero-padded.
//! A register tile holds `MR` rows of `x` by one panel (AVX-512 8 x 48 in 24
//! zmm accumulators, AVX2 + FMA 6 x 16 in 12 ymm): per `t` it loads the
//! panel's `NR` contiguous weights once and broadcasts one `x` value per row
//! (an outer product), so large products reuse every load for `MR` or `NR`
//! FMAs, and decode streams each panel as one contiguous block — what the
//! `gemm` crate (skinny products) and `dot.rs` (strided rows, one load per
//! 1-2 FMAs) each miss. See docs/benchmarks.md for the measurements.

use std::ops::Range;

use rayon::prelude::*;

use super::isa::Isa;

/// A weight matrix `w[n, k]` in column panels for [`matmul_nt`].
pub struct PackedWeights {
    n: usize,
    k: usize,
    isa: Isa,
    data: Vec<f32>,
}

impl std::fmt::Debug for PackedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeights[{}, {}] {:?}", self.n, self.k, self.isa)
    }
}

/// Panel width (rows of `w` per panel) and register tile height for `isa`.
fn nr(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 48,
        Isa::Avx2 | Isa::Portable => 16,
    }
}
fn mr(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 8,
        Isa::Avx2 => 6,
        Isa::Portable => 4,
    }
}

impl PackedWeights {
    /// Packs row-major `w[n, k]` for this CPU's kernel.
    pub fn pack(w: &[f32], n: usize, k: usize) -> PackedWeights {
        Self::pack_for(w, n, k, Isa::detect())
    }

    fn pack_for(w: &[f32], n: usize, k: usize, isa: Isa) -> PackedWeights {
        assert_eq!(w.len(), n * k, "pack: w is not [{n}, {k}]");
        let nr = nr(isa);
        let mut data = vec![0.0f32; n.div_ceil(nr) * nr * k];
        if k > 0 {
            data.par_chunks_mut(nr * k)
                .enumerate()
                .for_each(|(p, panel)| {
                    let rows = (n - p * nr).min(nr);
                    for c in 0..rows {
                        let row = &w[(p * nr + c) * k..(p * nr + c + 1) * k];
                        for (t, &v) in row.iter().enumerate() {
                            panel[t * nr + c] = v;
                        }
                    }
                });
        }
        PackedWeights { n, k, isa, data }
    }

    /// Rows of `w` per panel: a column range given to [`matmul_nt`] starts
    /// at a multiple of this.
    pub fn panel_width(&self) -> usize {
        nr(self.isa)
    }
}

/// `dst[m, cols.len()] = x[m, k] @ w[cols, k]^T`: the outputs of the rows
/// `cols` of the packed `w` (the fused log-prob asks for one vocabulary
/// chunk at a time; a range that starts inside a panel computes that whole
/// panel and keeps its part).
pub fn matmul_nt(x: &[f32], m: usize, w: &PackedWeights, cols: Range<usize>, dst: &mut [f32]) {
    let (k, isa) = (w.k, w.isa);
    let (nr, width) = (nr(isa), cols.len());
    assert_eq!(x.len(), m * k, "packed matmul_nt: x is not [{m}, {k}]");
    assert!(
        cols.start <= cols.end && cols.end <= w.n,
        "packed matmul_nt: columns {cols:?} of {}",
        w.n
    );
    assert_eq!(
        dst.len(),
        m * width,
        "packed matmul_nt: dst is not [{m}, {width}]"
    );
    if m == 0 || width == 0 {
        return;
    }
    let panels = (cols.start / nr)..cols.end.div_ceil(nr);
    // Tasks of (row block, panel group): row blocks of a few register tiles
    // (their x rows stay in L2 while a panel is reused across them), panel
    // groups sized so both threads of a decode step get work.
    let threads = rayon::current_num_threads().max(1);
    let rb = (mr(isa) * 8).min(m);
    let row_blocks = m.div_ceil(rb);
    let want_groups = (4 * threads).div_ceil(row_blocks).max(1);
    let pg = panels.len().div_ceil(want_groups).clamp(1, 16);
    let tasks: Vec<(usize, usize)> = (0..m)
        .step_by(rb)
        .flat_map(|i| panels.clone().step_by(pg).map(move |p| (i, p)))
        .collect();
    let out = DstPtr(dst.as_mut_ptr());
    let run = |&(i0, p0): &(usize, usize)| {
        let rows = i0..(i0 + rb).min(m);
        for p in p0..(p0 + pg).min(panels.end) {
            // This panel's columns inside the call's range.
            let (c0, c1) = ((p * nr).max(cols.start), ((p + 1) * nr).min(cols.end));
            let panel = &w.data[p * nr * k..(p + 1) * nr * k];
            let mut i = rows.start;
            while i < rows.end {
                let r = (rows.end - i).min(mr(isa));
                // SAFETY: the tile writes dst[(i..i + r) * width + (c0..c1) -
                // cols.start], inside dst and disjoint from every other tile's
                // (tasks split rows and panels).
                unsafe {
                    tile(
                        isa,
                        r,
                        &x[i * k..(i + r) * k],
                        k,
                        panel,
                        (out.at(i * width + c0 - cols.start), width),
                        (c0 - p * nr)..(c1 - p * nr),
                    );
                }
                i += r;
            }
        }
    };
    if tasks.len() > 1 && m * width * k >= 1 << 16 {
        tasks.par_iter().for_each(run);
    } else {
        tasks.iter().for_each(run);
    }
}

/// `dst`'s base pointer, shared by tasks that write disjoint outputs.
#[derive(Clone, Copy)]
struct DstPtr(*mut f32);
// SAFETY: tasks write disjoint elements (see `matmul_nt`).
unsafe impl Send for DstPtr {}
unsafe impl Sync for DstPtr {}
impl DstPtr {
    /// A method, not `.0`: closures then capture the whole (Sync) wrapper.
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY (of the caller): `offset` lies inside `dst`.
        self.0.wrapping_add(offset)
    }
}

/// One register tile: `rows` rows of `x` (`rows * k` values) times one
/// panel, its outputs `keep` (of `NR`) stored at `out + r * ld + (c - keep.start)`.
///
/// # Safety
/// `out` is valid for those writes; `panel` holds `NR * k` values.
unsafe fn tile(
    isa: Isa,
    rows: usize,
    x: &[f32],
    k: usize,
    panel: &[f32],
    (out, ld): (*mut f32, usize),
    keep: Range<usize>,
) {
    debug_assert!(rows >= 1 && rows <= mr(isa) && x.len() == rows * k);
    debug_assert!(panel.len() == nr(isa) * k && keep.end <= nr(isa));
    macro_rules! by_rows {
        ($kernel:ident, $($r:literal)*) => {
            match rows {
                $($r => $kernel::tile::<$r>(x, k, panel, (out, ld), keep.clone()),)*
                _ => unreachable!("tile of {rows} rows"),
            }
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => by_rows!(avx512, 1 2 3 4 5 6 7 8),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => by_rows!(avx2, 1 2 3 4 5 6),
        _ => by_rows!(portable, 1 2 3 4),
    }
}

/// Stores the columns `keep` of an `R x NR` tile.
///
/// # Safety
/// As [`tile`].
unsafe fn store<const R: usize, const NR: usize>(
    acc: &[[f32; NR]; R],
    (out, ld): (*mut f32, usize),
    keep: Range<usize>,
) {
    for (r, row) in acc.iter().enumerate() {
        let part = &row[keep.clone()];
        std::ptr::copy_nonoverlapping(part.as_ptr(), out.add(r * ld), part.len());
    }
}

mod portable {
    /// # Safety
    /// As [`super::tile`].
    pub(super) unsafe fn tile<const R: usize>(
        x: &[f32],
        k: usize,
        panel: &[f32],
        (out, ld): (*mut f32, usize),
        keep: std::ops::Range<usize>,
    ) {
        const NR: usize = 16;
        let mut acc = [[0.0f32; NR]; R];
        for (t, w) in panel.chunks_exact(NR).enumerate() {
            for r in 0..R {
                let xv = x[r * k + t];
                for c in 0..NR {
                    acc[r][c] += xv * w[c];
                }
            }
        }
        super::store(&acc, (out, ld), keep);
    }
}

/// The x86 register tiles: `NV` vectors of `LANES` f32 per row, `R` rows,
/// one FMA chain per output over `t` (so every output's sum has one order on
/// every instruction set); the panel is prefetched `PREFETCH_T` steps ahead,
/// one 64-byte line at a time, ahead of the hardware prefetcher (decode is
/// bound by this stream; measured).
#[cfg(target_arch = "x86_64")]
macro_rules! x86_tile {
    (
        $feature:literal, $vec:ty, lanes: $lanes:literal, nv: $nv:literal,
        prefetch_t: $prefetch_t:literal,
        $zero:ident, $load:ident, $splat:ident, $fma:ident, $store:ident
    ) => {
        use std::arch::x86_64::*;

        const NV: usize = $nv;
        const NR: usize = $lanes * NV;
        const PREFETCH_T: usize = $prefetch_t;

        /// # Safety
        /// The CPU has the module's instruction set; otherwise as
        /// [`super::tile`].
        #[target_feature(enable = $feature)]
        #[allow(clippy::needless_range_loop)] // register tiles, indexed on purpose
        pub(super) unsafe fn tile<const R: usize>(
            x: &[f32],
            k: usize,
            panel: &[f32],
            (out, ld): (*mut f32, usize),
            keep: std::ops::Range<usize>,
        ) {
            let mut acc = [[$zero(); NV]; R];
            let (xp, wp) = (x.as_ptr(), panel.as_ptr());
            for t in 0..k {
                for line in 0..NR / 16 {
                    let ahead = wp.wrapping_add((t + PREFETCH_T) * NR + 16 * line);
                    _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                }
                let w: [$vec; NV] = std::array::from_fn(|v| $load(wp.add(t * NR + $lanes * v)));
                for r in 0..R {
                    let xv = $splat(*xp.add(r * k + t));
                    for v in 0..NV {
                        acc[r][v] = $fma(xv, w[v], acc[r][v]);
                    }
                }
            }
            if keep == (0..NR) {
                // The whole panel: straight from the registers.
                for r in 0..R {
                    for v in 0..NV {
                        $store(out.add(r * ld + $lanes * v), acc[r][v]);
                    }
                }
                return;
            }
            let mut tile = [[0.0f32; NR]; R];
            for r in 0..R {
                for v in 0..NV {
                    $store(tile[r].as_mut_ptr().add($lanes * v), acc[r][v]);
                }
            }
            super::store(&tile, (out, ld), keep);
        }
    };
}

/// AVX2 + FMA: 2 x 8 lanes (NR 16, one cache line per step), 64 steps (4 KiB)
/// ahead.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    x86_tile!(
        "avx2,fma", __m256, lanes: 8, nv: 2, prefetch_t: 64,
        _mm256_setzero_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_storeu_ps
    );
}

/// AVX-512F: 3 x 16 lanes (NR 48, three lines per step), 32 steps (6 KiB)
/// ahead.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    x86_tile!(
        "avx512f", __m512, lanes: 16, nv: 3, prefetch_t: 32,
        _mm512_setzero_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_storeu_ps
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::test_values as data;

    fn run(isa: Isa, x: &[f32], m: usize, w: &[f32], n: usize, cols: Range<usize>) -> Vec<f32> {
        let k = x.len() / m.max(1);
        let p = PackedWeights::pack_for(w, n, k, isa);
        let mut out = vec![f32::NAN; m * cols.len()];
        matmul_nt(x, m, &p, cols, &mut out);
        out
    }

    /// Every output equals the f64 dot product within f32 rounding, for every
    /// kernel this CPU runs, on shapes with partial panels, partial row tiles,
    /// `k` of 1 and tasks split over threads.
    #[test]
    fn matches_f64_dot_products_on_every_kernel() {
        let isas = Isa::available();
        eprintln!("this CPU runs {:?}; testing {isas:?}", Isa::detect());
        for isa in isas {
            for &(m, n, k) in &[
                (1, 1, 1),
                (3, 5, 7),
                (2, 48, 8),
                (9, 49, 29),
                (17, 300, 96),
                (70, 97, 520),
            ] {
                let (x, w) = (data(m * k, 1), data(n * k, 2));
                let got = run(isa, &x, m, &w, n, 0..n);
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                            .sum();
                        let g = got[i * n + j] as f64;
                        assert!(
                            (g - want).abs() <= 1e-5 * (1.0 + want.abs()) * (k as f64).sqrt(),
                            "{isa:?} [{m}x{n}x{k}] ({i},{j}): {g} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// A row's bits do not depend on how many rows share the call, where the
    /// row sits in the batch (which register tile, which edge tile), or
    /// which range of columns is asked for, aligned to a panel or not.
    #[test]
    fn outputs_are_bitwise_independent_of_the_batch_and_the_columns() {
        let (n, k) = (300, 577);
        let (x, w) = (data(40 * k, 3), data(n * k, 4));
        for isa in Isa::available() {
            let rows_of = |rows: &[usize], cols: Range<usize>| {
                let xs: Vec<f32> = rows
                    .iter()
                    .flat_map(|&r| x[r * k..(r + 1) * k].to_vec())
                    .collect();
                run(isa, &xs, rows.len(), &w, n, cols)
            };
            let alone = rows_of(&[7], 0..n);
            for rows in [vec![7, 1], vec![0, 1, 2, 7], (0..40).collect::<Vec<_>>()] {
                let at = rows.iter().position(|&r| r == 7).unwrap();
                assert!(
                    rows_of(&rows, 0..n)[at * n..(at + 1) * n] == alone[..],
                    "{isa:?}: row 7 in {rows:?}"
                );
            }
            for cols in [0..37, 48..96, 50..300, 299..300] {
                assert!(
                    rows_of(&[3, 7], cols.clone())[cols.len()..] == alone[cols.clone()],
                    "{isa:?}: columns {cols:?}"
                );
            }
        }
    }

    /// Packing keeps every weight and pads the last panel with zeros.
    #[test]
    fn packing_places_each_weight_once() {
        let (n, k) = (20, 3);
        let w = data(n * k, 5);
        let p = PackedWeights::pack_for(&w, n, k, Isa::Portable);
        let nr = p.panel_width();
        assert_eq!(p.data.len(), n.div_ceil(nr) * nr * k);
        for j in 0..n {
            for t in 0..k {
                assert_eq!(p.data[(j / nr) * nr * k + t * nr + j % nr], w[j * k + t]);
            }
        }
        let padding = p.data.iter().filter(|v| **v == 0.0).count();
        assert_eq!(
            padding,
            (n.div_ceil(nr) * nr - n) * k + w.iter().filter(|v| **v == 0.0).count()
        );
    }
}
