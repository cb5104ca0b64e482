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

/// Calls with at most this many rows of `x` (decode of up to 16 sequences)
/// stream the bf16 panels when a weight has them.
pub const BF16_MAX_ROWS: usize = 16;

/// The most depth one pass of a tile covers (see `run`): 768 f32 of each x
/// row and a 48-wide panel's 144 KiB slice. Deeper products run in equal
/// blocks (the model's 576- and 1536-deep products in one and two).
const KC: usize = 768;

/// A weight matrix `w[n, k]` in column panels for [`matmul_nt`]; when every
/// weight is a bf16 value (a bf16 checkpoint before any optimizer step), a
/// second copy of the panels in bf16 for the skinny products of decode
/// (half the bytes to stream; the values, so the outputs' bits, are the same).
pub struct PackedWeights {
    n: usize,
    k: usize,
    isa: Isa,
    data: Vec<f32>,
    bf16: Option<Vec<u16>>,
}

impl std::fmt::Debug for PackedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bf16 = if self.bf16.is_some() { " + bf16" } else { "" };
        write!(
            f,
            "PackedWeights[{}, {}] {:?}{bf16}",
            self.n, self.k, self.isa
        )
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

/// The bf16 panels: width, tile height, and f32 lanes per vector (see
/// [`bf16_slot`]).
fn nr_bf16(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 64,
        Isa::Avx2 | Isa::Portable => 16,
    }
}
fn mr_bf16(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 | Isa::Avx2 => 6,
        Isa::Portable => 4,
    }
}
fn lanes(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 16,
        Isa::Avx2 | Isa::Portable => 8,
    }
}

/// Where column `c` of a bf16 panel's row `t` sits in that row: columns
/// come in groups of `2 * lanes`, and 32-bit word `j` of a group holds column
/// `j` in its low half and column `j + lanes` in its high half. One vector
/// load then gives two vectors of f32 with one shift (low halves) and one
/// mask (high halves): the conversion costs an instruction per vector.
fn bf16_slot(c: usize, lanes: usize) -> usize {
    let (g, within) = (c / (2 * lanes), c % (2 * lanes));
    g * 2 * lanes + 2 * (within % lanes) + within / lanes
}

/// `v` is exactly a bf16 value (its low 16 bits are zero).
fn is_bf16(v: f32) -> bool {
    v.to_bits() & 0xffff == 0
}

/// Whether every value of `w` is a bf16 value: [`PackedWeights::pack`]
/// then also keeps bf16 panels.
pub fn is_bf16_valued(w: &[f32]) -> bool {
    w.par_iter().all(|&v| is_bf16(v))
}

impl PackedWeights {
    /// Packs row-major `w[n, k]` for this CPU's kernel.
    pub fn pack(w: &[f32], n: usize, k: usize) -> PackedWeights {
        Self::pack_for(w, n, k, Isa::detect())
    }

    /// Packs the transpose of row-major `w[n, k]` (a `[k, n]` weight), so
    /// `x[m, n] @ w[n, k]` (a backward's `dy W`) is [`matmul_nt`] on it.
    /// Panel rows are then contiguous runs of `w`'s rows: a copy per row.
    pub fn pack_transposed(w: &[f32], n: usize, k: usize) -> PackedWeights {
        Self::pack_transposed_for(w, n, k, Isa::detect())
    }

    fn pack_transposed_for(w: &[f32], n: usize, k: usize, isa: Isa) -> PackedWeights {
        assert_eq!(w.len(), n * k, "pack_transposed: w is not [{n}, {k}]");
        let nr = nr(isa);
        let mut data = vec![0.0f32; k.div_ceil(nr) * nr * n];
        if n > 0 {
            data.par_chunks_mut(nr * n)
                .enumerate()
                .for_each(|(p, panel)| {
                    let cols = p * nr..((p + 1) * nr).min(k);
                    for (t, row) in w.chunks_exact(k).enumerate() {
                        panel[t * nr..t * nr + cols.len()].copy_from_slice(&row[cols.clone()]);
                    }
                });
        }
        PackedWeights {
            n: k,
            k: n,
            isa,
            data,
            bf16: None,
        }
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
        let bf16 = is_bf16_valued(w).then(|| {
            let (nr, lanes) = (nr_bf16(isa), lanes(isa));
            let mut data = vec![0u16; n.div_ceil(nr) * nr * k];
            if k > 0 {
                data.par_chunks_mut(nr * k)
                    .enumerate()
                    .for_each(|(p, panel)| {
                        for c in 0..(n - p * nr).min(nr) {
                            let row = &w[(p * nr + c) * k..(p * nr + c + 1) * k];
                            let slot = bf16_slot(c, lanes);
                            for (t, &v) in row.iter().enumerate() {
                                panel[t * nr + slot] = (v.to_bits() >> 16) as u16;
                            }
                        }
                    });
            }
            data
        });
        PackedWeights {
            n,
            k,
            isa,
            data,
            bf16,
        }
    }

    /// Rows of `w` per panel: a column range given to [`matmul_nt`] starts
    /// at a multiple of this.
    pub fn panel_width(&self) -> usize {
        nr(self.isa)
    }

    /// Whether decode-sized products stream bf16 panels.
    pub fn has_bf16(&self) -> bool {
        self.bf16.is_some()
    }

    /// Bytes the panels hold.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4 + self.bf16.as_ref().map_or(0, |b| b.len() * 2)
    }
}

/// Whether a product replaces its outputs or continues their sums.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Write {
    /// `dst = x @ w^T`
    Overwrite,
    /// `dst += x @ w^T`, each output's FMA chain continued from `dst`'s
    /// value: products over consecutive `inner` ranges give the bits of one
    /// product over their union (the fused log-prob's `dh`, a vocabulary
    /// chunk at a time, is one chain over the whole vocabulary).
    Accumulate,
}

/// `dst[m, cols.len()] = x[m, k] @ w[cols, k]^T`: the outputs of the rows
/// `cols` of the packed `w` (the fused log-prob asks for one vocabulary
/// chunk at a time; a range that starts inside a panel computes that whole
/// panel and keeps its part).
pub fn matmul_nt(x: &[f32], m: usize, w: &PackedWeights, cols: Range<usize>, dst: &mut [f32]) {
    matmul_nt_part(x, m, w, cols, 0..w.k, dst, Write::Overwrite)
}

/// [`matmul_nt`] into a new vector: the outputs are written once, never
/// zeroed first.
pub fn matmul_nt_new(x: &[f32], m: usize, w: &PackedWeights, cols: Range<usize>) -> Vec<f32> {
    let len = m * cols.len();
    let mut out = Vec::<f32>::with_capacity(len);
    check(x, m, w, &cols, &(0..w.k), len);
    run(
        x,
        m,
        w,
        cols,
        0..w.k,
        DstPtr(out.as_mut_ptr()),
        Write::Overwrite,
    );
    // SAFETY: `run` wrote every one of the `len` outputs (its tiles cover
    // every row and every column of the range).
    unsafe { out.set_len(len) };
    out
}

/// `dst[m, cols.len()] (+)= x[m, inner.len()] @ w[cols, inner]^T`: the
/// product over the `inner` slice of `w`'s columns (`x` holds just those).
pub fn matmul_nt_part(
    x: &[f32],
    m: usize,
    w: &PackedWeights,
    cols: Range<usize>,
    inner: Range<usize>,
    dst: &mut [f32],
    write: Write,
) {
    check(x, m, w, &cols, &inner, dst.len());
    run(x, m, w, cols, inner, DstPtr(dst.as_mut_ptr()), write)
}

fn check(
    x: &[f32],
    m: usize,
    w: &PackedWeights,
    cols: &Range<usize>,
    inner: &Range<usize>,
    dst: usize,
) {
    let k = inner.len();
    assert!(
        inner.start <= inner.end && inner.end <= w.k,
        "packed matmul_nt: inner range {inner:?} of {}",
        w.k
    );
    assert_eq!(x.len(), m * k, "packed matmul_nt: x is not [{m}, {k}]");
    assert!(
        cols.start <= cols.end && cols.end <= w.n,
        "packed matmul_nt: columns {cols:?} of {}",
        w.n
    );
    let width = cols.len();
    assert_eq!(
        dst,
        m * width,
        "packed matmul_nt: dst is not [{m}, {width}]"
    );
}

/// The product, its arguments checked: tasks of (row block, panel group)
/// over rayon's pool, each a run of register tiles.
fn run(
    x: &[f32],
    m: usize,
    w: &PackedWeights,
    cols: Range<usize>,
    inner: Range<usize>,
    out: DstPtr,
    write: Write,
) {
    let (isa, width, k) = (w.isa, cols.len(), inner.len());
    if m == 0 || width == 0 {
        return;
    }
    if k == 0 {
        if write == Write::Overwrite {
            // SAFETY: `check` proved `out` holds m * width values.
            unsafe { std::ptr::write_bytes(out.0, 0, m * width) };
        }
        return;
    }
    let bf16 = w.bf16.as_deref().filter(|_| m <= BF16_MAX_ROWS);
    let (nr, mr) = match bf16 {
        Some(_) => (nr_bf16(isa), mr_bf16(isa)),
        None => (nr(isa), mr(isa)),
    };
    let panels = (cols.start / nr)..cols.end.div_ceil(nr);
    // Tasks of (row block, panel group): row blocks of a few register tiles
    // (their x rows stay in L2 while a panel is reused across them), panel
    // groups sized so both threads of a decode step get work.
    let threads = rayon::current_num_threads().max(1);
    let rb = (mr * 32).min(m);
    let row_blocks = m.div_ceil(rb);
    let want_groups = (4 * threads).div_ceil(row_blocks).max(1);
    let pg = panels.len().div_ceil(want_groups).clamp(1, 16);
    let tasks: Vec<(usize, usize)> = (0..m)
        .step_by(rb)
        .flat_map(|i| panels.clone().step_by(pg).map(move |p| (i, p)))
        .collect();
    let task = |&(i0, p0): &(usize, usize)| {
        let rows = i0..(i0 + rb).min(m);
        // Depth blocks of at most KC: a tile's slice of the panel and of its
        // x rows stay in L1/L2 however deep the product (the scoring
        // backward's `dz W` runs over a whole vocabulary chunk). Each later
        // block continues the outputs' FMA chains: the bits of one pass.
        let kc = k.div_ceil(k.div_ceil(KC));
        for (b, t0) in (0..k).step_by(kc).enumerate() {
            let depth = t0..(t0 + kc).min(k);
            let write = if b == 0 { write } else { Write::Accumulate };
            for p in p0..(p0 + pg).min(panels.end) {
                // This panel's columns inside the call's range.
                let (c0, c1) = ((p * nr).max(cols.start), ((p + 1) * nr).min(cols.end));
                let keep = (c0 - p * nr)..(c1 - p * nr);
                let base = w.k * nr * p + (inner.start + depth.start) * nr;
                let panel = base..base + depth.len() * nr;
                let mut i = rows.start;
                while i < rows.end {
                    let r = (rows.end - i).min(mr);
                    let xs = (&x[i * k + depth.start..(i + r - 1) * k + depth.end], k);
                    let at = (out.at(i * width + c0 - cols.start), width);
                    // SAFETY: the tile writes dst[(i..i + r) * width + (c0..c1)
                    // - cols.start], inside dst and disjoint from every other
                    // task's (tasks split rows and panels); the panel slice
                    // holds nr * depth values.
                    unsafe {
                        match bf16 {
                            Some(b) => {
                                tile_bf16(isa, r, xs, &b[panel.clone()], at, keep.clone(), write)
                            }
                            None => {
                                tile(isa, r, xs, &w.data[panel.clone()], at, keep.clone(), write)
                            }
                        }
                    }
                    i += r;
                }
            }
        }
    };
    if tasks.len() > 1 && m * width * k >= 1 << 16 {
        tasks.par_iter().for_each(task);
    } else {
        tasks.iter().for_each(task);
    }
}

/// `dst`'s base pointer, shared by tasks that write disjoint outputs.
#[derive(Clone, Copy)]
struct DstPtr(*mut f32);
// SAFETY: tasks write disjoint elements (see `run`).
unsafe impl Send for DstPtr {}
unsafe impl Sync for DstPtr {}
impl DstPtr {
    /// A method, not `.0`: closures then capture the whole (Sync) wrapper.
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY (of the caller): `offset` lies inside `dst`.
        self.0.wrapping_add(offset)
    }
}

/// One register tile: `rows` rows of `x` (`ldx` apart) times one f32
/// panel, its outputs `keep` (of `NR`) stored at `out + r * ld + (c - keep.start)`.
///
/// # Safety
/// `out` is valid for those reads and writes; `panel` holds `NR * k` values.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    isa: Isa,
    rows: usize,
    (x, ldx): (&[f32], usize),
    panel: &[f32],
    out: (*mut f32, usize),
    keep: Range<usize>,
    write: Write,
) {
    let k = panel.len() / nr(isa);
    debug_assert!(rows >= 1 && rows <= mr(isa) && x.len() == (rows - 1) * ldx + k);
    debug_assert!(panel.len() == nr(isa) * k && keep.end <= nr(isa));
    let acc = write == Write::Accumulate;
    macro_rules! by_rows {
        ($kernel:ident, $nv:literal, $($r:literal)*) => {
            match rows {
                $($r => $kernel::tile::<$r, $nv, false>((x, ldx), k, panel.as_ptr().cast(), out, keep, acc),)*
                _ => unreachable!("tile of {rows} rows"),
            }
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => by_rows!(avx512, 3, 1 2 3 4 5 6 7 8),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => by_rows!(avx2, 2, 1 2 3 4 5 6),
        _ => by_rows!(portable, 2, 1 2 3 4),
    }
}

/// [`tile`] over a bf16 panel (`nr_bf16` wide, [`bf16_slot`] order).
///
/// # Safety
/// As [`tile`]; `panel` holds `nr_bf16 * k` values.
#[allow(clippy::too_many_arguments)]
unsafe fn tile_bf16(
    isa: Isa,
    rows: usize,
    (x, ldx): (&[f32], usize),
    panel: &[u16],
    out: (*mut f32, usize),
    keep: Range<usize>,
    write: Write,
) {
    let k = panel.len() / nr_bf16(isa);
    debug_assert!(rows >= 1 && rows <= mr_bf16(isa) && x.len() == (rows - 1) * ldx + k);
    debug_assert!(panel.len() == nr_bf16(isa) * k && keep.end <= nr_bf16(isa));
    let acc = write == Write::Accumulate;
    macro_rules! by_rows {
        ($kernel:ident, $nv:literal, $($r:literal)*) => {
            match rows {
                $($r => $kernel::tile::<$r, $nv, true>((x, ldx), k, panel.as_ptr().cast(), out, keep, acc),)*
                _ => unreachable!("tile of {rows} rows"),
            }
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => by_rows!(avx512, 4, 1 2 3 4 5 6),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => by_rows!(avx2, 2, 1 2 3 4 5 6),
        _ => by_rows!(portable, 2, 1 2 3 4),
    }
}

/// Reads the columns `keep` of an `R x NR` tile's outputs into `acc` (the
/// others stay zero) / stores them.
///
/// # Safety
/// As [`tile`].
unsafe fn load_part<const R: usize, const NR: usize>(
    acc: &mut [[f32; NR]; R],
    (out, ld): (*mut f32, usize),
    keep: Range<usize>,
) {
    for (r, row) in acc.iter_mut().enumerate() {
        let part = &mut row[keep.clone()];
        std::ptr::copy_nonoverlapping(out.add(r * ld), part.as_mut_ptr(), part.len());
    }
}
unsafe fn store_part<const R: usize, const NR: usize>(
    acc: &[[f32; NR]; R],
    (out, ld): (*mut f32, usize),
    keep: Range<usize>,
) {
    for (r, row) in acc.iter().enumerate() {
        let part = &row[keep.clone()];
        std::ptr::copy_nonoverlapping(part.as_ptr(), out.add(r * ld), part.len());
    }
}

/// Plain loops (8 lanes per "vector", `NV` of them): `acc += x * w`
/// rounded twice, as before there was a fused multiply-add.
mod portable {
    const LANES: usize = 8;

    /// # Safety
    /// As [`super::tile`]; `panel` points at `f32` (or with `BF16` `u16`)
    /// values, `LANES * NV * k` of them.
    pub(super) unsafe fn tile<const R: usize, const NV: usize, const BF16: bool>(
        (x, ldx): (&[f32], usize),
        k: usize,
        panel: *const u8,
        out: (*mut f32, usize),
        keep: std::ops::Range<usize>,
        accumulate: bool,
    ) {
        // NV is 2 here: a 16-wide panel.
        const NR: usize = 16;
        debug_assert_eq!(LANES * NV, NR);
        let mut acc = [[0.0f32; NR]; R];
        if accumulate {
            super::load_part(&mut acc, out, keep.clone());
        }
        for t in 0..k {
            let w: [f32; NR] = if BF16 {
                let row = panel.cast::<u16>().add(t * NR);
                std::array::from_fn(|c| {
                    f32::from_bits((*row.add(super::bf16_slot(c, LANES)) as u32) << 16)
                })
            } else {
                *panel.cast::<[f32; NR]>().add(t)
            };
            for r in 0..R {
                let xv = x[r * ldx + t];
                for c in 0..NR {
                    acc[r][c] += xv * w[c];
                }
            }
        }
        super::store_part(&acc, out, keep);
    }
}

/// The x86 register tiles: `NV` vectors of `LANES` f32 per row, `R` rows,
/// one FMA chain per output over `t` (so every output's sum has one order on
/// every x86 instruction set, f32 or bf16 panel); the panel is prefetched
/// `PREFETCH_BYTES` ahead, one 64-byte line at a time, ahead of the hardware
/// prefetcher (decode is bound by this stream; measured). A bf16 panel's
/// vector load gives two vectors of f32: low halves shifted up, high halves
/// masked ([`super::bf16_slot`]).
#[cfg(target_arch = "x86_64")]
macro_rules! x86_tile {
    (
        $feature:literal, $vec:ty, $ivec:ty, lanes: $lanes:literal,
        prefetch_bytes: $prefetch:literal,
        $zero:ident, $load:ident, $loadi:ident, $splat:ident, $fma:ident, $store:ident,
        $shift:ident, $and:ident, $splati:ident, $cast:ident
    ) => {
        use std::arch::x86_64::*;

        const LANES: usize = $lanes;

        /// # Safety
        /// The CPU has the module's instruction set; otherwise as
        /// [`super::tile`]; `panel` points at `f32` (or with `BF16` `u16`)
        /// values, `LANES * NV * k` of them.
        #[target_feature(enable = $feature)]
        #[allow(clippy::needless_range_loop)] // register tiles, indexed on purpose
        pub(super) unsafe fn tile<const R: usize, const NV: usize, const BF16: bool>(
            (x, ldx): (&[f32], usize),
            k: usize,
            panel: *const u8,
            (out, ld): (*mut f32, usize),
            keep: std::ops::Range<usize>,
            accumulate: bool,
        ) {
            let nr = LANES * NV;
            let whole = keep == (0..nr);
            let mut acc = [[$zero(); NV]; R];
            if accumulate {
                if whole {
                    for r in 0..R {
                        for v in 0..NV {
                            acc[r][v] = $load(out.add(r * ld + LANES * v));
                        }
                    }
                } else {
                    let mut part = [[[0.0f32; LANES]; NV]; R];
                    for r in 0..R {
                        for c in keep.clone() {
                            part[r][c / LANES][c % LANES] = *out.add(r * ld + c - keep.start);
                        }
                        for v in 0..NV {
                            acc[r][v] = $load(part[r][v].as_ptr());
                        }
                    }
                }
            }
            let row_bytes = nr * if BF16 { 2 } else { 4 };
            let xp = x.as_ptr();
            let high = $splati(0xffff_0000_u32 as i32);
            for t in 0..k {
                for line in 0..row_bytes.div_ceil(64) {
                    let ahead = panel.wrapping_add((t * row_bytes + $prefetch) + 64 * line);
                    _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                }
                let mut w = [$zero(); NV];
                if BF16 {
                    let row = panel.add(t * row_bytes);
                    for pair in 0..NV / 2 {
                        let bits = $loadi(row.add(pair * 4 * LANES) as *const _);
                        w[2 * pair] = $cast($shift::<16>(bits));
                        w[2 * pair + 1] = $cast($and(bits, high));
                    }
                } else {
                    let row = panel.add(t * row_bytes).cast::<f32>();
                    for v in 0..NV {
                        w[v] = $load(row.add(LANES * v));
                    }
                }
                for r in 0..R {
                    let xv = $splat(*xp.add(r * ldx + t));
                    for v in 0..NV {
                        acc[r][v] = $fma(xv, w[v], acc[r][v]);
                    }
                }
            }
            if whole {
                // The whole panel: straight from the registers.
                for r in 0..R {
                    for v in 0..NV {
                        $store(out.add(r * ld + LANES * v), acc[r][v]);
                    }
                }
                return;
            }
            let mut part = [[[0.0f32; LANES]; NV]; R];
            for r in 0..R {
                for v in 0..NV {
                    $store(part[r][v].as_mut_ptr(), acc[r][v]);
                }
                for c in keep.clone() {
                    *out.add(r * ld + c - keep.start) = part[r][c / LANES][c % LANES];
                }
            }
        }
    };
}

/// AVX2 + FMA: 2 x 8 lanes (NR 16, one cache line of f32 per step), 4 KiB
/// ahead.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    x86_tile!(
        "avx2,fma", __m256, __m256i, lanes: 8, prefetch_bytes: 4096,
        _mm256_setzero_ps, _mm256_loadu_ps, _mm256_loadu_si256, _mm256_set1_ps,
        _mm256_fmadd_ps, _mm256_storeu_ps,
        _mm256_slli_epi32, _mm256_and_si256, _mm256_set1_epi32, _mm256_castsi256_ps
    );
}

/// AVX-512F: 3 x 16 lanes for f32 (NR 48, three lines per step), 4 x 16
/// for bf16 (NR 64, two lines per step), 6 KiB ahead.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    x86_tile!(
        "avx512f", __m512, __m512i, lanes: 16, prefetch_bytes: 6144,
        _mm512_setzero_ps, _mm512_loadu_ps, _mm512_loadu_si512, _mm512_set1_ps,
        _mm512_fmadd_ps, _mm512_storeu_ps,
        _mm512_slli_epi32, _mm512_and_si512, _mm512_set1_epi32, _mm512_castsi512_ps
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

    /// Every output is one chain over the whole depth in order (fused
    /// multiply-adds on x86, multiply then add on the portable kernel),
    /// however many `KC` depth blocks the product runs in.
    #[test]
    fn depth_blocks_continue_one_chain_per_output() {
        let (m, n, k) = (11, 53, 2 * KC + 77);
        let (x, w) = (data(m * k, 8), data(n * k, 9));
        for isa in Isa::available() {
            let got = run(isa, &x, m, &w, n, 0..n);
            for i in 0..m {
                for j in 0..n {
                    let pairs = x[i * k..(i + 1) * k].iter().zip(&w[j * k..(j + 1) * k]);
                    let want = match isa {
                        Isa::Portable => pairs.fold(0.0f32, |a, (x, w)| a + x * w),
                        _ => pairs.fold(0.0f32, |a, (x, w)| x.mul_add(*w, a)),
                    };
                    assert!(
                        got[i * n + j].to_bits() == want.to_bits(),
                        "{isa:?} ({i},{j}): {} vs {want}",
                        got[i * n + j]
                    );
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

    /// `w` rounded to bf16 values (as loaded from a bf16 checkpoint).
    fn bf16_values(len: usize, seed: usize) -> Vec<f32> {
        data(len, seed)
            .iter()
            .map(|v| f32::from_bits(v.to_bits() & 0xffff_0000))
            .collect()
    }

    /// Decode-sized calls stream the bf16 panels; every row's bits equal the
    /// f32 panels' (a call of more than `BF16_MAX_ROWS` rows), for every
    /// row count and column range, and the products are right.
    #[test]
    fn bf16_panels_give_the_bits_of_the_f32_panels() {
        let (n, k) = (203, 131);
        let (x, w) = (data(20 * k, 6), bf16_values(n * k, 7));
        for isa in Isa::available() {
            let p = PackedWeights::pack_for(&w, n, k, isa);
            assert!(p.has_bf16(), "{isa:?}");
            let product = |rows: usize, cols: Range<usize>| {
                let mut out = vec![f32::NAN; rows * cols.len()];
                matmul_nt(&x[..rows * k], rows, &p, cols, &mut out);
                out
            };
            let f32_panels = product(BF16_MAX_ROWS + 4, 0..n);
            for rows in [1, 2, 5, 6, 7, 13, BF16_MAX_ROWS] {
                assert!(
                    product(rows, 0..n) == f32_panels[..rows * n],
                    "{isa:?}: {rows} rows"
                );
            }
            for cols in [0..1, 5..70, 64..128, 150..203] {
                let got = product(3, cols.clone());
                for r in 0..3 {
                    assert!(
                        got[r * cols.len()..(r + 1) * cols.len()]
                            == f32_panels[r * n + cols.start..r * n + cols.end],
                        "{isa:?}: columns {cols:?}"
                    );
                }
            }
            for (j, &g) in product(1, 0..n).iter().enumerate() {
                let want: f64 = (0..k).map(|t| x[t] as f64 * w[j * k + t] as f64).sum();
                assert!((g as f64 - want).abs() < 1e-4, "{isa:?} column {j}");
            }
        }
        let mut w = bf16_values(n * k, 7);
        w[17] += 1e-3;
        assert!(!PackedWeights::pack(&w, n, k).has_bf16(), "not all bf16");
    }

    /// The transposed panels compute `x @ w` (the backward's `dy W`); a
    /// product accumulated over consecutive ranges of the inner dimension
    /// has the bits of the whole one (one FMA chain per output); a new
    /// output vector equals the written slice.
    #[test]
    fn transposed_panels_and_accumulated_ranges() {
        let (m, n, k) = (19, 300, 97);
        let (x, w) = (data(m * n, 8), data(n * k, 9));
        for isa in Isa::available() {
            let wt = PackedWeights::pack_transposed_for(&w, n, k, isa);
            let mut whole = vec![f32::NAN; m * k];
            matmul_nt(&x, m, &wt, 0..k, &mut whole);
            for i in 0..m {
                for j in 0..k {
                    let want: f64 = (0..n)
                        .map(|t| x[i * n + t] as f64 * w[t * k + j] as f64)
                        .sum();
                    let g = whole[i * k + j] as f64;
                    assert!((g - want).abs() < 1e-4, "{isa:?} ({i},{j}): {g} vs {want}");
                }
            }
            let mut chunked = vec![f32::NAN; m * k];
            for (c, inner) in [0..64, 64..100, 100..101, 101..300].into_iter().enumerate() {
                let xs: Vec<f32> = (0..m)
                    .flat_map(|i| x[i * n + inner.start..i * n + inner.end].to_vec())
                    .collect();
                let write = if c == 0 {
                    Write::Overwrite
                } else {
                    Write::Accumulate
                };
                matmul_nt_part(&xs, m, &wt, 0..k, inner, &mut chunked, write);
            }
            assert!(chunked == whole, "{isa:?}: accumulated in chunks");
            let mut part = vec![f32::NAN; m * 40];
            matmul_nt(&x, m, &wt, 50..90, &mut part);
            let mut acc = part.clone();
            matmul_nt_part(&[], m, &wt, 50..90, 0..0, &mut acc, Write::Accumulate);
            assert!(acc == part, "{isa:?}: an empty range adds nothing");
            for i in 0..m {
                assert!(
                    part[i * 40..(i + 1) * 40] == whole[i * k + 50..i * k + 90],
                    "{isa:?}"
                );
            }
        }
        let p = PackedWeights::pack(&w, n, k);
        let x = data(5 * k, 10);
        let mut out = vec![f32::NAN; 5 * n];
        matmul_nt(&x, 5, &p, 0..n, &mut out);
        assert!(matmul_nt_new(&x, 5, &p, 0..n) == out);
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
