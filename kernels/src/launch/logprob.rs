//! Launch wrappers of `cu/logprob.cu`: the chunked lm-head log-prob of the
//! chosen tokens (and entropy), forward and backward.

use cudarc::driver::{CudaSlice, PushKernelArg};
use half::bf16;

use super::{check_len, cuda, elem_cfg, rows_cfg, Kernels, NULL, ROW_THREADS};
use crate::host::to_i32;
use crate::Result;

/// Running statistics of the chunked log-prob forward (one entry per row).
pub struct LogprobState {
    pub run_max: CudaSlice<f32>,
    pub run_sum: CudaSlice<f64>,
    pub run_zsum: CudaSlice<f64>,
    pub target_logit: CudaSlice<f32>,
}

/// One chunk of the vocabulary: the logits `z[rows, c]` (f32) of vocabulary
/// ids `lo..lo + c`, and each row's target id. The forward and the backward
/// take the same one.
#[derive(Clone, Copy)]
pub struct LogprobChunk<'a> {
    pub z: &'a CudaSlice<f32>,
    pub targets: &'a CudaSlice<i32>,
    pub rows: usize,
    pub c: usize,
    pub lo: usize,
}

impl Kernels {
    pub fn logprob_state(&self, rows: usize) -> Result<LogprobState> {
        let mut st = LogprobState {
            run_max: self.zeros(rows)?,
            run_sum: self.zeros(rows)?,
            run_zsum: self.zeros(rows)?,
            target_logit: self.zeros(rows)?,
        };
        let r = to_i32(rows)?;
        let f = self.f("logprob_init")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut st.run_max)
            .arg(&mut st.run_sum)
            .arg(&mut st.run_zsum)
            .arg(&mut st.target_logit)
            .arg(&r);
        // SAFETY: every buffer has `rows` entries.
        self.count_launch();
        unsafe { b.launch(elem_cfg(rows)) }.map_err(cuda)?;
        Ok(st)
    }

    /// Folds the logits `z[rows, c]` of vocabulary ids `lo..lo + c` into `st`.
    pub fn logprob_chunk(&self, st: &mut LogprobState, chunk: &LogprobChunk<'_>) -> Result<()> {
        let (z, targets) = (chunk.z, chunk.targets);
        let (rows, c, lo) = (chunk.rows, chunk.c, chunk.lo);
        check_len("logprob z", z, rows * c)?;
        check_len("logprob targets", targets, rows)?;
        check_len("logprob state", &st.run_max, rows)?;
        let (r, c_i, lo_i) = (to_i32(rows)?, to_i32(c)?, to_i32(lo)?);
        let f = self.f("logprob_chunk_fwd")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut st.run_max)
            .arg(&mut st.run_sum)
            .arg(&mut st.run_zsum)
            .arg(&mut st.target_logit)
            .arg(z)
            .arg(targets)
            .arg(&r)
            .arg(&c_i)
            .arg(&c_i)
            .arg(&lo_i);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(rows_cfg(rows, ROW_THREADS)) }.map_err(cuda)?;
        Ok(())
    }

    /// `logp`, `lse` and optionally the entropy from the final state; counts
    /// rows whose log-prob was positive or non-finite into `violations[0]`.
    pub fn logprob_finalize(
        &self,
        logp: &mut CudaSlice<f32>,
        lse: &mut CudaSlice<f32>,
        entropy: Option<&mut CudaSlice<f32>>,
        violations: &mut CudaSlice<i32>,
        st: &LogprobState,
        rows: usize,
    ) -> Result<()> {
        check_len("logprob logp", logp, rows)?;
        check_len("logprob lse", lse, rows)?;
        check_len("logprob violations", violations, 1)?;
        check_len("logprob state", &st.run_max, rows)?;
        let r = to_i32(rows)?;
        let f = self.f("logprob_finalize")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(logp).arg(lse);
        match entropy {
            Some(e) => {
                check_len("logprob entropy", e, rows)?;
                b.arg(e)
            }
            None => b.arg(&NULL),
        };
        b.arg(violations)
            .arg(&st.run_max)
            .arg(&st.run_sum)
            .arg(&st.run_zsum)
            .arg(&st.target_logit)
            .arg(&r);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(elem_cfg(rows)) }.map_err(cuda)?;
        Ok(())
    }

    /// `dz[rows, c]` (bf16) of chunk `lo` from its recomputed logits `z`;
    /// `entropy`: the forward's entropy and its gradient, per row.
    pub fn logprob_chunk_backward(
        &self,
        dz: &mut CudaSlice<bf16>,
        chunk: &LogprobChunk<'_>,
        lse: &CudaSlice<f32>,
        dlogp: &CudaSlice<f32>,
        entropy: Option<(&CudaSlice<f32>, &CudaSlice<f32>)>,
    ) -> Result<()> {
        let (z, targets) = (chunk.z, chunk.targets);
        let (rows, c, lo) = (chunk.rows, chunk.c, chunk.lo);
        check_len("logprob_backward dz", dz, rows * c)?;
        check_len("logprob_backward z", z, rows * c)?;
        for (what, s) in [("lse", lse), ("dlogp", dlogp)] {
            check_len(&format!("logprob_backward {what}"), s, rows)?;
        }
        check_len("logprob_backward targets", targets, rows)?;
        let (r, c_i, lo_i) = (to_i32(rows)?, to_i32(c)?, to_i32(lo)?);
        let f = self.f("logprob_chunk_bwd")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(dz).arg(z).arg(targets).arg(lse).arg(dlogp);
        match entropy {
            Some((e, de)) => {
                check_len("logprob_backward entropy", e, rows)?;
                check_len("logprob_backward dentropy", de, rows)?;
                b.arg(e).arg(de)
            }
            None => b.arg(&NULL).arg(&NULL),
        };
        b.arg(&r).arg(&c_i).arg(&c_i).arg(&c_i).arg(&lo_i);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(rows_cfg(rows, ROW_THREADS)) }.map_err(cuda)?;
        Ok(())
    }
}
