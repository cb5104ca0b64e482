//! Launch wrappers of `cu/paged_attention.cu`: split-K decode attention over
//! the paged KV cache ([`Kernels::paged_attention`]: a split launch and a
//! merge launch, whatever the batch) and the row scatter behind
//! `Backend::write_kv` ([`Kernels::scatter_rows`]).
//!
//! The host describes a call in one int32 array ([`PagedMeta`], the layout
//! the top of the `.cu` file documents): per query row its output row,
//! sequence, visible key count and first split; per split block its row and
//! split; per sequence the offset of its block table; the block tables
//! themselves. It goes to the device in one upload, reused while equal (every
//! layer of a step sends the same one).
//!
//! Splits: split `s` of a row covers keys `s * split_keys ..` (at most
//! `split_keys` of them; [`SPLIT_KEYS`] = 256 unless a test asks for another
//! multiple of 64), so a row's splits depend on its own key count only and
//! its output bits never on the rest of the batch.

use std::collections::HashSet;
use std::ops::Range;

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use half::bf16;

use super::{check_len, cuda, elem_cfg, Kernels, NULL};
use crate::host::to_i32;
use crate::{Error, Result};

/// Keys per split of the engine's calls.
pub const SPLIT_KEYS: usize = 256;
/// paged_attention.cu: threads per split block, keys per tile, query heads
/// per block.
const PA_THREADS: u32 = 128;
const PA_TILE: usize = 64;
const PA_GMAX: usize = 8;

/// One sequence of a paged attention call.
#[derive(Clone, Debug)]
pub struct PagedSeq<'a> {
    /// Its block ids, in position order (at least `ceil(keys / block_size)`).
    pub table: &'a [i32],
    /// Its query rows in `q` and `out`: its newest positions, so row `j` of
    /// the range sees keys `0 ..= keys - rows.len() + j`.
    pub rows: Range<usize>,
    /// Keys in its cache, the new rows' included.
    pub keys: usize,
}

/// The pools, the batch and the head geometry of one call.
#[derive(Clone, Copy)]
pub struct PagedAttnArgs<'a> {
    /// `[rows, H*D]` bf16.
    pub q: &'a CudaSlice<bf16>,
    /// `[pool_rows, KV*D]` bf16 each.
    pub k_pool: &'a CudaSlice<bf16>,
    pub v_pool: &'a CudaSlice<bf16>,
    pub pool_rows: usize,
    /// Positions per block of the tables (1: a table lists pool rows).
    pub block_size: usize,
    pub seqs: &'a [PagedSeq<'a>],
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Keys per split: [`SPLIT_KEYS`], or another multiple of 64 (tests).
    pub split_keys: usize,
}

/// The int32 description of a call (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PagedMeta {
    pub ints: Vec<i32>,
    /// Query rows (merge blocks).
    pub items: usize,
    /// Split blocks.
    pub work: usize,
    pub off_work: usize,
    pub off_tstart: usize,
    pub off_tables: usize,
    /// One past the highest output row.
    pub rows_end: usize,
}

impl PagedMeta {
    /// Checks the batch against the pools and lays it out. Errors name the
    /// sequence at fault.
    pub fn new(
        seqs: &[PagedSeq<'_>],
        block_size: usize,
        pool_rows: usize,
        split_keys: usize,
    ) -> Result<PagedMeta> {
        if block_size == 0 {
            return Err(Error::Invalid("paged_attention: block_size 0".into()));
        }
        if split_keys == 0 || !split_keys.is_multiple_of(PA_TILE) {
            return Err(Error::Invalid(format!(
                "paged_attention: {split_keys} keys per split is not a multiple of {PA_TILE}"
            )));
        }
        let pool_blocks = pool_rows / block_size;
        let (mut items, mut work, mut tstart, mut tables) = (vec![], vec![], vec![0i32], vec![]);
        let mut splits_total = 0usize;
        let mut rows_end = 0;
        for (b, s) in seqs.iter().enumerate() {
            let m = s.rows.len();
            if m > s.keys {
                return Err(Error::Invalid(format!(
                    "paged_attention: sequence {b} has {m} query rows but {} keys",
                    s.keys
                )));
            }
            let used = s.keys.div_ceil(block_size);
            if s.table.len() < used {
                return Err(Error::Invalid(format!(
                    "paged_attention: sequence {b} has {} keys but {} blocks of {block_size}",
                    s.keys,
                    s.table.len()
                )));
            }
            if let Some(bad) = s.table[..used]
                .iter()
                .find(|&&id| id < 0 || id as usize >= pool_blocks)
            {
                return Err(Error::Invalid(format!(
                    "paged_attention: sequence {b}: block {bad} is outside the pool \
                     ({pool_blocks} blocks of {block_size})"
                )));
            }
            tables.extend_from_slice(&s.table[..used]);
            tstart.push(to_i32(tables.len())?);
            for j in 0..m {
                let n = s.keys - m + j + 1;
                let item = items.len() / 4;
                items.extend([
                    to_i32(s.rows.start + j)?,
                    to_i32(b)?,
                    to_i32(n)?,
                    to_i32(splits_total)?,
                ]);
                for split in 0..n.div_ceil(split_keys) {
                    work.extend([to_i32(item)?, to_i32(split)?]);
                }
                splits_total += n.div_ceil(split_keys);
            }
            if m > 0 {
                rows_end = rows_end.max(s.rows.end);
            }
        }
        let (n_items, n_work) = (items.len() / 4, work.len() / 2);
        let off_work = items.len();
        let off_tstart = off_work + work.len();
        let off_tables = off_tstart + tstart.len();
        let mut ints = items;
        ints.extend(work);
        ints.extend(tstart);
        ints.extend(tables);
        to_i32(ints.len())?;
        Ok(PagedMeta {
            ints,
            items: n_items,
            work: n_work,
            off_work,
            off_tstart,
            off_tables,
            rows_end,
        })
    }
}

impl Kernels {
    /// Causal attention of every sequence's query rows over its keys in the
    /// paged pools, split-K: `out[row, H*D]` (bf16) for every row of
    /// `args.seqs`; other rows of `out` are not written. Two launches (split,
    /// merge) and at most one upload.
    pub fn paged_attention(
        &self,
        out: &mut CudaSlice<bf16>,
        args: &PagedAttnArgs<'_>,
    ) -> Result<()> {
        let (h, kv, d) = (args.n_heads, args.n_kv_heads, args.head_dim);
        if !(d == 64 || d == 128) {
            return Err(Error::Invalid(format!(
                "paged_attention: head_dim {d} has no kernel (64 or 128)"
            )));
        }
        if kv == 0 || !h.is_multiple_of(kv) {
            return Err(Error::Invalid(format!(
                "paged_attention: {h} query heads do not group over {kv} KV heads"
            )));
        }
        let meta = PagedMeta::new(args.seqs, args.block_size, args.pool_rows, args.split_keys)?;
        if meta.items == 0 {
            return Ok(());
        }
        check_len("paged_attention q", args.q, meta.rows_end * h * d)?;
        check_len("paged_attention out", out, meta.rows_end * h * d)?;
        check_len(
            "paged_attention k_pool",
            args.k_pool,
            args.pool_rows * kv * d,
        )?;
        check_len(
            "paged_attention v_pool",
            args.v_pool,
            args.pool_rows * kv * d,
        )?;
        let chunks = (h / kv).div_ceil(PA_GMAX);
        if kv * chunks > 65535 || h > 65535 {
            return Err(Error::Invalid(format!(
                "paged_attention: {h} heads over {kv} KV heads exceed the grid"
            )));
        }
        let meta_d = self.paged_meta.get(self, &meta.ints)?;
        // Every (split, head) and (split, head, dim) the merge reads is
        // written by the split launch: no zero fill.
        let (mut ml, mut acc) = (
            self.alloc_f32(meta.work * h * 2)?,
            self.alloc_f32(meta.work * h * d)?,
        );
        let ints = [
            to_i32(meta.off_work)?,
            to_i32(meta.off_tstart)?,
            to_i32(meta.off_tables)?,
            to_i32(h)?,
            to_i32(kv)?,
            to_i32(args.block_size)?,
            to_i32(args.split_keys)?,
        ];
        let f = self.f(&format!("paged_attn_split_d{d}"))?;
        let mut b = self.stream().launch_builder(f);
        b.arg(&mut ml)
            .arg(&mut acc)
            .arg(args.q)
            .arg(args.k_pool)
            .arg(args.v_pool);
        b.arg(&*meta_d);
        for i in &ints {
            b.arg(i);
        }
        let cfg = LaunchConfig {
            grid_dim: (to_i32(meta.work)? as u32, (kv * chunks) as u32, 1),
            block_dim: (PA_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: lengths checked above; every block id of the tables was
        // checked against the pool, every row against q.
        self.count_launch();
        unsafe { b.launch(cfg) }.map_err(cuda)?;

        let (h_i, d_i, sk) = (ints[3], to_i32(d)?, ints[6]);
        let f = self.f("paged_attn_merge")?;
        let mut b = self.stream().launch_builder(f);
        b.arg(out).arg(&ml).arg(&acc).arg(&*meta_d);
        b.arg(&h_i).arg(&d_i).arg(&sk);
        let cfg = LaunchConfig {
            grid_dim: (to_i32(meta.items)? as u32, h as u32, 1),
            block_dim: (d as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: as above; the scratch holds meta.work splits.
        self.count_launch();
        unsafe { b.launch(cfg) }.map_err(cuda)?;
        Ok(())
    }

    /// Row `i` of `src0` (and of `src1`) into row `rows[i]` of `dst0`
    /// (`dst1`), `[dst_rows, cols]` bf16 matrices, in one launch: a forward's
    /// new keys and values into their pool rows. Rows must be distinct.
    pub fn scatter_rows(
        &self,
        dst0: &mut CudaSlice<bf16>,
        dst1: Option<&mut CudaSlice<bf16>>,
        rows: &[usize],
        src0: &CudaSlice<bf16>,
        src1: Option<&CudaSlice<bf16>>,
        (dst_rows, cols): (usize, usize),
    ) -> Result<()> {
        if dst1.is_some() != src1.is_some() {
            return Err(Error::Invalid(
                "scatter_rows: a second destination needs a second source".into(),
            ));
        }
        if rows.is_empty() {
            return Ok(());
        }
        if let Some(r) = rows.iter().find(|&&r| r >= dst_rows) {
            return Err(Error::Invalid(format!(
                "scatter_rows: row {r} of a {dst_rows}-row matrix"
            )));
        }
        let mut seen = HashSet::with_capacity(rows.len());
        if let Some(r) = rows.iter().find(|&&r| !seen.insert(r)) {
            return Err(Error::Invalid(format!("scatter_rows: row {r} twice")));
        }
        let n = rows.len();
        check_len("scatter_rows dst", dst0, dst_rows * cols)?;
        check_len("scatter_rows src", src0, n * cols)?;
        if let (Some(d1), Some(s1)) = (&dst1, src1) {
            check_len("scatter_rows dst", d1, dst_rows * cols)?;
            check_len("scatter_rows src", s1, n * cols)?;
        }
        let idx: Vec<i32> = rows.iter().map(|&r| to_i32(r)).collect::<Result<_>>()?;
        let idx_d = self.upload(&idx)?;
        let (n_i, c_i) = (to_i32(n)?, to_i32(cols)?);
        let f = self.f("scatter_rows_bf16")?;
        let mut b = self.stream().launch_builder(f);
        b.arg(dst0);
        match dst1 {
            Some(d1) => b.arg(d1),
            None => b.arg(&NULL),
        };
        b.arg(&idx_d).arg(src0);
        match src1 {
            Some(s1) => b.arg(s1),
            None => b.arg(&NULL),
        };
        b.arg(&n_i).arg(&c_i);
        let units = if cols.is_multiple_of(8) {
            n * cols / 8
        } else {
            n * cols
        };
        // SAFETY: rows checked against dst_rows, lengths above.
        self.count_launch();
        unsafe { b.launch(elem_cfg(units)) }.map_err(cuda)?;
        Ok(())
    }

    /// An f32 device buffer whose contents are undefined (a scratch the next
    /// launch writes in full).
    fn alloc_f32(&self, n: usize) -> Result<CudaSlice<f32>> {
        self.count_allocation();
        // SAFETY: callers write every element before any read.
        unsafe { self.stream().alloc::<f32>(n.max(1)) }.map_err(cuda)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_lays_out_rows_splits_and_tables() {
        let (t0, t1) = ([3, 0], [1, 2, 4]);
        let seqs = [
            PagedSeq {
                table: &t0,
                rows: 0..1,
                keys: 20,
            },
            PagedSeq {
                table: &t1,
                rows: 1..3,
                keys: 33,
            },
        ];
        let m = PagedMeta::new(&seqs, 16, 5 * 16, 64).unwrap();
        assert_eq!((m.items, m.work, m.rows_end), (3, 3, 3));
        // rows: (row, seq, keys, first split)
        assert_eq!(&m.ints[..12], &[0, 0, 20, 0, 1, 1, 32, 1, 2, 1, 33, 2]);
        assert_eq!(&m.ints[m.off_work..m.off_tstart], &[0, 0, 1, 0, 2, 0]);
        assert_eq!(&m.ints[m.off_tstart..m.off_tables], &[0, 2, 5]);
        assert_eq!(&m.ints[m.off_tables..], &[3, 0, 1, 2, 4]);
        // 300 keys at 256 per split: 2 splits, whatever else is in the batch.
        let t = [
            0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18,
        ];
        let one = [PagedSeq {
            table: &t,
            rows: 0..1,
            keys: 300,
        }];
        let m = PagedMeta::new(&one, 16, 19 * 16, SPLIT_KEYS).unwrap();
        assert_eq!(m.work, 2);
    }

    #[test]
    fn meta_rejects_what_the_pools_cannot_hold() {
        let t = [0, 7];
        let s = |keys, rows| PagedSeq {
            table: &t,
            rows,
            keys,
        };
        let e = PagedMeta::new(&[s(20, 0..1)], 16, 4 * 16, 256).unwrap_err();
        assert!(e.to_string().contains("block 7 is outside"), "{e}");
        let e = PagedMeta::new(&[s(40, 0..1)], 16, 8 * 16, 256).unwrap_err();
        assert!(e.to_string().contains("40 keys but 2 blocks"), "{e}");
        let e = PagedMeta::new(&[s(2, 0..3)], 16, 8 * 16, 256).unwrap_err();
        assert!(e.to_string().contains("3 query rows but 2 keys"), "{e}");
        let e = PagedMeta::new(&[s(2, 0..1)], 16, 8 * 16, 100).unwrap_err();
        assert!(e.to_string().contains("multiple of 64"), "{e}");
    }
}
