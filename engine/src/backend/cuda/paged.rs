//! `Backend::paged_attention` and `write_kv` on the GPU.
//!
//! `write_kv` is one launch: both pools' new rows scattered by an int32 row
//! index array (`scatter_rows_bf16`).
//!
//! `paged_attention` sends each sequence one of two ways, decided by that
//! sequence's own query row count (so a sequence's bits never depend on the
//! rest of the batch):
//! - at most [`SPLIT_K_MAX_ROWS`] rows (decode, short chunks): split-K
//!   flash-decoding straight over the pools (`paged_attention.cu`, two
//!   launches for all such sequences): each query row reads its keys once
//!   per GQA group, in 256-key splits merged in a fixed order;
//! - more rows (a prompt prefill): its keys gathered out of the pools into
//!   one contiguous buffer, then the varlen forward (`attention_tc.cu`, or
//!   `attention.cu` with `IGPO_ATTENTION=scalar`), which reads every key once
//!   per 64-row query tile: bit for bit the numbers of the dense forward.
//!
//! `IGPO_PAGED_ATTENTION=gather` sends every sequence the second way (decode
//! then gets the training forward's bits, at the cost of the gathers);
//! `split-k` (or unset) is the rule above.
//!
//! The trait hands over every key's pool row; the split-K kernel reads block
//! tables, so the rows are turned into tables of the largest power-of-two
//! block size (at most 256) that describes every sequence's rows exactly
//! ([`block_tables`]; the paged cache's block size or a multiple of it, 1 at
//! worst: then the table is the row list). The block size only changes
//! addresses, never the arithmetic.

use std::ops::Range;

use cudarc::driver::DevicePtr;
use igpo_kernels::launch::{PagedAttnArgs, PagedSeq, SPLIT_KEYS};

use super::{ok, varlen_seqs, Cuda, CudaTensor, Data};
use crate::backend::AttnShape;

/// Query rows of a sequence up to which it takes the split-K kernel. The
/// kernel reads a sequence's keys once per query row; the gather path reads
/// them about three times (gather read + write, then once per 64-row tile).
pub const SPLIT_K_MAX_ROWS: usize = 8;

/// How `paged_attention` runs (`IGPO_PAGED_ATTENTION`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagedMode {
    /// Split-K for sequences of at most [`SPLIT_K_MAX_ROWS`] rows, gather for
    /// the others (the default).
    SplitK,
    /// Gather + the dense varlen forward for every sequence.
    Gather,
}

impl PagedMode {
    /// `IGPO_PAGED_ATTENTION`: `split-k` (unset or empty too) or `gather`.
    pub fn from_env() -> igpo_kernels::Result<PagedMode> {
        match std::env::var("IGPO_PAGED_ATTENTION").as_deref() {
            Err(_) | Ok("") | Ok("split-k") => Ok(PagedMode::SplitK),
            Ok("gather") => Ok(PagedMode::Gather),
            Ok(other) => Err(igpo_kernels::Error::Invalid(format!(
                "IGPO_PAGED_ATTENTION={other}: expected `split-k` or `gather`"
            ))),
        }
    }
}

/// Block tables (int32 block ids) of the largest power-of-two block size
/// `bs <= 256` under which every list of pool rows is whole blocks of a
/// `pool_rows`-row pool: row `p` of a list is `list[p - p % bs] + p % bs`,
/// `list[p - p % bs]` is a multiple of `bs` and its block ends inside the
/// pool. Returns `(bs, tables)`; `bs = 1` always qualifies.
pub fn block_tables(lists: &[&[usize]], pool_rows: usize) -> (usize, Vec<Vec<i32>>) {
    let fits = |bs: usize| {
        lists.iter().all(|l| {
            l.chunks(bs).all(|c| {
                c[0].is_multiple_of(bs)
                    && c[0] + bs <= pool_rows
                    && c.iter().enumerate().all(|(i, &r)| r == c[0] + i)
            })
        })
    };
    let bs = [256, 128, 64, 32, 16, 8, 4, 2]
        .into_iter()
        .find(|&bs| fits(bs))
        .unwrap_or(1);
    let tables = lists
        .iter()
        .map(|l| {
            l.iter()
                .step_by(bs)
                .map(|&r| i32::try_from(r / bs).expect("paged_attention: pool row past i32"))
                .collect()
        })
        .collect();
    (bs, tables)
}

/// One `paged_attention` call's inputs (see `Backend::paged_attention`).
#[derive(Clone, Copy)]
struct PagedBatch<'a> {
    q: &'a CudaTensor,
    k_pool: &'a CudaTensor,
    v_pool: &'a CudaTensor,
    keys: &'a [Vec<usize>],
    bounds: &'a [Range<usize>],
    s: AttnShape,
}

impl Cuda {
    pub(super) fn write_kv_rows(
        &self,
        k_pool: &mut CudaTensor,
        v_pool: &mut CudaTensor,
        rows: &[usize],
        k: &CudaTensor,
        v: &CudaTensor,
    ) {
        let c = k_pool.cols();
        assert_eq!(v_pool.cols(), c, "write_kv: the pools' columns differ");
        let n = k_pool.rows();
        assert_eq!(v_pool.rows(), n, "write_kv: the pools' rows differ");
        for new in [k, v] {
            assert_eq!(new.cols(), c, "write_kv: column mismatch");
            assert_eq!(new.rows(), rows.len(), "write_kv: one row index per row");
        }
        let (kb, vb) = (self.bf(k), self.bf(v));
        match (&mut k_pool.data, &mut v_pool.data) {
            (Data::Bf16(kp), Data::Bf16(vp)) => ok(
                "write_kv",
                self.k
                    .scatter_rows(kp, Some(vp), rows, &kb, Some(&vb), (n, c)),
            ),
            _ => panic!("write_kv: a KV pool is bf16 on the GPU"),
        }
    }

    pub(super) fn paged(
        &self,
        q: &CudaTensor,
        k_pool: &CudaTensor,
        v_pool: &CudaTensor,
        keys: &[Vec<usize>],
        bounds: &[Range<usize>],
        s: AttnShape,
    ) -> CudaTensor {
        assert_eq!(
            keys.len(),
            bounds.len(),
            "paged_attention: one key list per sequence"
        );
        let (total, qc, kc) = (q.rows(), s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
        assert_eq!(q.cols(), qc, "paged_attention: q is not [rows, {qc}]");
        assert!(
            k_pool.cols() == kc && v_pool.cols() == kc && k_pool.rows() == v_pool.rows(),
            "paged_attention: the pools are not [rows, {kc}]"
        );
        for (b, (l, r)) in keys.iter().zip(bounds).enumerate() {
            assert!(
                r.len() <= l.len() && r.end <= total,
                "paged_attention: sequence {b}: {} queries (rows {r:?} of {total}) but {} keys",
                r.len(),
                l.len()
            );
        }
        let split_k =
            |b: usize| self.paged_mode == PagedMode::SplitK && bounds[b].len() <= SPLIT_K_MAX_ROWS;
        let (short, long): (Vec<usize>, Vec<usize>) = (0..keys.len())
            .filter(|&b| !bounds[b].is_empty())
            .partition(|&b| split_k(b));
        let mut out = self.new_bf16(&[total, qc]);
        let batch = PagedBatch {
            q,
            k_pool,
            v_pool,
            keys,
            bounds,
            s,
        };
        if !short.is_empty() {
            self.paged_split_k(&mut out, &batch, &short);
        }
        if !long.is_empty() {
            self.paged_gather(&mut out, &batch, &long);
        }
        out
    }

    /// Sequences `which` through the split-K kernels.
    fn paged_split_k(&self, out: &mut CudaTensor, batch: &PagedBatch<'_>, which: &[usize]) {
        let PagedBatch {
            q,
            k_pool,
            v_pool,
            keys,
            bounds,
            s,
        } = *batch;
        let lists: Vec<&[usize]> = which.iter().map(|&b| keys[b].as_slice()).collect();
        let (bs, tables) = block_tables(&lists, k_pool.rows());
        let seqs: Vec<PagedSeq<'_>> = which
            .iter()
            .zip(&tables)
            .map(|(&b, t)| PagedSeq {
                table: t,
                rows: bounds[b].clone(),
                keys: keys[b].len(),
            })
            .collect();
        let (qb, kb, vb) = (self.bf(q), self.bf(k_pool), self.bf(v_pool));
        let pool_rows = k_pool.rows();
        let args = PagedAttnArgs {
            q: &qb,
            k_pool: &kb,
            v_pool: &vb,
            pool_rows,
            block_size: bs,
            seqs: &seqs,
            n_heads: s.n_heads,
            n_kv_heads: s.n_kv_heads,
            head_dim: s.head_dim,
            split_keys: SPLIT_KEYS,
        };
        if let Data::Bf16(o) = &mut out.data {
            ok("paged_attention", self.k.paged_attention(o, &args));
        }
    }

    /// Sequences `which` through gathers and the varlen forward.
    fn paged_gather(&self, out: &mut CudaTensor, batch: &PagedBatch<'_>, which: &[usize]) {
        let PagedBatch {
            q,
            k_pool,
            v_pool,
            keys,
            bounds,
            s,
        } = *batch;
        let (qc, kc) = (s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
        let slots: Vec<usize> = which
            .iter()
            .flat_map(|&b| keys[b].iter().copied())
            .collect();
        let (kg, vg) = (
            self.gather_rows_of(k_pool, &slots),
            self.gather_rows_of(v_pool, &slots),
        );
        let (mut k_ptrs, mut v_ptrs) = (vec![], vec![]);
        let (kbase, vbase) = (
            kg.device_ptr(self.stream()).0,
            vg.device_ptr(self.stream()).0,
        );
        let mut at = 0u64;
        for &b in which {
            k_ptrs.push(kbase + at * kc as u64 * 2);
            v_ptrs.push(vbase + at * kc as u64 * 2);
            at += keys[b].len() as u64;
        }
        let rows: Vec<usize> = which.iter().map(|&b| bounds[b].len()).collect();
        let n_keys: Vec<usize> = which.iter().map(|&b| keys[b].len()).collect();
        let q_rows: Vec<usize> = which.iter().flat_map(|&b| bounds[b].clone()).collect();
        let m = q_rows.len();
        // The rows in order from 0: q and out directly, else gathered q rows
        // and the outputs scattered back.
        let direct = q_rows.iter().enumerate().all(|(i, &r)| i == r);
        let qb = self.bf(q);
        let q_in = if direct {
            None
        } else {
            Some(ok(
                "paged_attention",
                self.k.gather_rows_bf16(&qb, &q_rows, qc),
            ))
        };
        let (kd, vd) = (
            ok("paged_attention", self.k.upload(&k_ptrs)),
            ok("paged_attention", self.k.upload(&v_ptrs)),
        );
        let mut lse = ok("paged_attention", self.k.zeros::<f32>(m * s.n_heads));
        let total = out.rows();
        let Data::Bf16(o) = &mut out.data else {
            unreachable!("new_bf16")
        };
        let mut staged = if direct {
            None
        } else {
            Some(ok("paged_attention", self.k.zeros::<half::bf16>(m * qc)))
        };
        let (dst, src) = match (&mut staged, &q_in) {
            (Some(st), Some(qi)) => (st, qi),
            _ => (&mut *o, &*qb),
        };
        // The gathered buffers stay alive until after the launch is queued
        // (one stream: freeing them after is ordered behind it).
        ok(
            "paged_attention",
            self.k.attention_varlen(
                dst,
                &mut lse,
                src,
                &kd,
                &vd,
                &varlen_seqs(&rows, &n_keys, s),
            ),
        );
        if let Some(st) = &staged {
            ok(
                "paged_attention",
                self.k.scatter_rows(o, None, &q_rows, st, None, (total, qc)),
            );
        }
        drop((kg, vg));
    }

    fn gather_rows_of(
        &self,
        pool: &CudaTensor,
        rows: &[usize],
    ) -> cudarc::driver::CudaSlice<half::bf16> {
        let b = self.bf(pool);
        ok(
            "paged_attention gather",
            self.k.gather_rows_bf16(&b, rows, pool.cols()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_tables_take_the_largest_block_size_that_fits() {
        // Blocks of 16 handed out scattered: 16.
        let a: Vec<usize> = (48..64).chain(16..20).collect();
        let b: Vec<usize> = (160..176).collect();
        let (bs, t) = block_tables(&[&a, &b], 1024);
        assert_eq!((bs, t), (16, vec![vec![3, 1], vec![10]]));
        // One list, contiguous from 0: the largest candidate whose last
        // block ends inside the pool.
        let c: Vec<usize> = (0..300).collect();
        assert_eq!(block_tables(&[&c], 512).0, 256);
        assert_eq!(block_tables(&[&c], 320).0, 64);
        // Rows that are not whole blocks of any size > 1: the rows themselves.
        let d = vec![5usize, 9, 2];
        assert_eq!(block_tables(&[&d], 16), (1, vec![vec![5, 9, 2]]));
        // A run that starts off a block boundary cannot be a block.
        let e: Vec<usize> = (8..24).collect();
        assert_eq!(block_tables(&[&e], 64).0, 8);
    }
}
