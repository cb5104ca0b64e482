//! Launch wrappers of `cu/norm.cu`: RMSNorm and the per-head RMSNorm with
//! their backwards, and the elementwise kernels of that file (residual add,
//! bias, scales, casts, row gathers, column sums, sum of squares).

use cudarc::driver::{
    CudaSlice, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use half::bf16;

use super::{check_len, cuda, elem_cfg, rows_cfg, Kernels, ELEM_THREADS, NULL, ROW_THREADS};
use crate::host::to_i32;
use crate::{Error, Result};

/// Rows summed by one block of the deterministic column sums.
const COLSUM_ROWS: usize = 256;

/// Heads per block of the one-warp-per-head kernels (`head_rmsnorm_*`).
const HEADS_PER_BLOCK: usize = 4;

fn heads_cfg(heads: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (heads.div_ceil(HEADS_PER_BLOCK).max(1) as u32, 1, 1),
        block_dim: (32 * HEADS_PER_BLOCK as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per `ELEM_THREADS` columns of `d`, one per row chunk: the grid
/// of the column sums.
fn colsum_cfg(d: usize, chunks: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (d.div_ceil(ELEM_THREADS as usize) as u32, chunks as u32, 1),
        block_dim: (ELEM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `n / head_dim`, or an error when `n` is not whole heads.
fn whole_heads(op: &str, n: usize, head_dim: usize) -> Result<usize> {
    if head_dim == 0 || !n.is_multiple_of(head_dim) {
        return Err(Error::Invalid(format!(
            "{op}: {n} values are not whole heads of {head_dim}"
        )));
    }
    Ok(n / head_dim)
}

/// What an RMSNorm normalizes: the rows `x` (bf16), the weight `w` (bf16,
/// one value per column, or per head dimension for [`Kernels::head_rms_norm`])
/// and `eps`. The forward and the backward take the same one.
#[derive(Clone, Copy)]
pub struct NormInput<'a> {
    pub x: &'a CudaSlice<bf16>,
    pub w: &'a CudaSlice<bf16>,
    pub eps: f32,
}

impl Kernels {
    /// `out = rmsnorm(x) * w` per row (`x` `[rows, d]`); `rstd` (1/rms per
    /// row) when given.
    pub fn rms_norm(
        &self,
        out: &mut CudaSlice<bf16>,
        rstd: Option<&mut CudaSlice<f32>>,
        input: &NormInput<'_>,
        rows: usize,
        d: usize,
    ) -> Result<()> {
        let NormInput { x, w, eps } = *input;
        check_len("rms_norm out", out, rows * d)?;
        check_len("rms_norm x", x, rows * d)?;
        check_len("rms_norm w", w, d)?;
        let (rows_i, d_i) = (to_i32(rows)?, to_i32(d)?);
        let f = self.f("rmsnorm_fwd")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(out);
        match rstd {
            Some(r) => {
                check_len("rms_norm rstd", r, rows)?;
                b.arg(r)
            }
            None => b.arg(&NULL),
        };
        b.arg(x).arg(w).arg(&rows_i).arg(&d_i).arg(&eps);
        // SAFETY: lengths checked above; argument order as in norm.cu.
        self.count_launch();
        unsafe { b.launch(rows_cfg(rows, ROW_THREADS)) }.map_err(cuda)?;
        Ok(())
    }

    /// Backward of [`Kernels::rms_norm`]: writes `dx`, adds into `dw` (f32),
    /// deterministic (row chunks summed in order).
    pub fn rms_norm_backward(
        &self,
        dx: &mut CudaSlice<bf16>,
        dw: &mut CudaSlice<f32>,
        input: &NormInput<'_>,
        dy: &CudaSlice<bf16>,
        rows: usize,
        d: usize,
    ) -> Result<()> {
        let NormInput { x, w, eps } = *input;
        for (what, s) in [("x", x), ("dy", dy)] {
            check_len(&format!("rms_norm_backward {what}"), s, rows * d)?;
        }
        check_len("rms_norm_backward dx", dx, rows * d)?;
        check_len("rms_norm_backward w", w, d)?;
        check_len("rms_norm_backward dw", dw, d)?;
        let (rows_i, d_i) = (to_i32(rows)?, to_i32(d)?);
        let mut rstd = self.zeros::<f32>(rows)?;
        let f = self.f("rmsnorm_bwd_dx")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(dx).arg(&mut rstd).arg(x).arg(w).arg(dy);
        b.arg(&rows_i).arg(&d_i).arg(&eps);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(rows_cfg(rows, ROW_THREADS)) }.map_err(cuda)?;
        self.rms_norm_dw(dw, x, dy, &rstd, rows, d)
    }

    /// `dw[d] += sum over rows of dy * x * rstd[row]` (rows `[rows, d]`),
    /// row chunks summed in order: deterministic.
    fn rms_norm_dw(
        &self,
        dw: &mut CudaSlice<f32>,
        x: &CudaSlice<bf16>,
        dy: &CudaSlice<bf16>,
        rstd: &CudaSlice<f32>,
        rows: usize,
        d: usize,
    ) -> Result<()> {
        let chunks = rows.div_ceil(COLSUM_ROWS).max(1);
        let mut partial = self.zeros::<f32>(chunks * d)?;
        let (rows_i, d_i, per) = (to_i32(rows)?, to_i32(d)?, to_i32(COLSUM_ROWS)?);
        let f = self.f("rmsnorm_bwd_dw_partial")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut partial).arg(x).arg(dy).arg(rstd);
        b.arg(&rows_i).arg(&d_i).arg(&per);
        // SAFETY: partial holds chunks * d; x, dy are rows * d (checked by
        // the callers), rstd rows.
        self.count_launch();
        unsafe { b.launch(colsum_cfg(d, chunks)) }.map_err(cuda)?;
        self.colsum(dw, &partial, chunks, d)
    }

    /// Qwen3's q_norm / k_norm: RMSNorm of each `head_dim`-wide head of `x`
    /// (`n` values, whole heads) with the shared weight `w[head_dim]`.
    pub fn head_rms_norm(
        &self,
        out: &mut CudaSlice<bf16>,
        input: &NormInput<'_>,
        n: usize,
        head_dim: usize,
    ) -> Result<()> {
        let NormInput { x, w, eps } = *input;
        let heads = whole_heads("head_rms_norm", n, head_dim)?;
        check_len("head_rms_norm out", out, n)?;
        check_len("head_rms_norm x", x, n)?;
        check_len("head_rms_norm w", w, head_dim)?;
        let (g, d) = (to_i32(heads)?, to_i32(head_dim)?);
        let f = self.f("head_rmsnorm_fwd")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(out).arg(x).arg(w).arg(&g).arg(&d).arg(&eps);
        // SAFETY: lengths checked above; argument order as in norm.cu.
        self.count_launch();
        unsafe { b.launch(heads_cfg(heads)) }.map_err(cuda)?;
        Ok(())
    }

    /// Backward of [`Kernels::head_rms_norm`]: writes `dx`, adds into `dw`
    /// (f32, heads summed in order as chunks: deterministic).
    pub fn head_rms_norm_backward(
        &self,
        dx: &mut CudaSlice<bf16>,
        dw: &mut CudaSlice<f32>,
        input: &NormInput<'_>,
        dy: &CudaSlice<bf16>,
        n: usize,
        head_dim: usize,
    ) -> Result<()> {
        let NormInput { x, w, eps } = *input;
        let heads = whole_heads("head_rms_norm_backward", n, head_dim)?;
        for (what, s) in [("x", x), ("dy", dy)] {
            check_len(&format!("head_rms_norm_backward {what}"), s, n)?;
        }
        check_len("head_rms_norm_backward dx", dx, n)?;
        check_len("head_rms_norm_backward w", w, head_dim)?;
        check_len("head_rms_norm_backward dw", dw, head_dim)?;
        let (g, d) = (to_i32(heads)?, to_i32(head_dim)?);
        let mut rstd = self.zeros::<f32>(heads)?;
        let f = self.f("head_rmsnorm_bwd_dx")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(dx).arg(&mut rstd).arg(x).arg(w).arg(dy);
        b.arg(&g).arg(&d).arg(&eps);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(heads_cfg(heads)) }.map_err(cuda)?;
        // dw: one "row" per head.
        self.rms_norm_dw(dw, x, dy, &rstd, heads, head_dim)
    }

    /// `dst[c] += sum_k partial[k, c]`, chunks in order.
    fn colsum(
        &self,
        dst: &mut CudaSlice<f32>,
        partial: &CudaSlice<f32>,
        chunks: usize,
        d: usize,
    ) -> Result<()> {
        let (chunks_i, d_i) = (to_i32(chunks)?, to_i32(d)?);
        let f = self.f("colsum_f32")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(dst).arg(partial).arg(&chunks_i).arg(&d_i);
        // SAFETY: callers check dst (d) and partial (chunks * d).
        self.count_launch();
        unsafe { b.launch(colsum_cfg(d, 1)) }.map_err(cuda)?;
        Ok(())
    }

    /// Bias gradient: `db[c] += sum_r dy[r, c]` (deterministic).
    pub fn bias_backward(
        &self,
        db: &mut CudaSlice<f32>,
        dy: &CudaSlice<bf16>,
        rows: usize,
        d: usize,
    ) -> Result<()> {
        check_len("bias_backward dy", dy, rows * d)?;
        check_len("bias_backward db", db, d)?;
        let chunks = rows.div_ceil(COLSUM_ROWS).max(1);
        let mut partial = self.zeros::<f32>(chunks * d)?;
        let (rows_i, d_i, per) = (to_i32(rows)?, to_i32(d)?, to_i32(COLSUM_ROWS)?);
        let f = self.f("colsum_partial_bf16")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut partial).arg(dy).arg(&rows_i).arg(&d_i).arg(&per);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(colsum_cfg(d, chunks)) }.map_err(cuda)?;
        self.colsum(db, &partial, chunks, d)
    }

    /// `x += y` (bf16, f32 arithmetic).
    pub fn add_assign(&self, x: &mut CudaSlice<bf16>, y: &CudaSlice<bf16>, n: usize) -> Result<()> {
        self.add_into(("add_assign", "add_assign_bf16"), x, y, n)
    }

    /// `x += y` on f32 buffers.
    pub fn add_assign_f32(
        &self,
        x: &mut CudaSlice<f32>,
        y: &CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        self.add_into(("add_assign_f32", "add_assign_f32"), x, y, n)
    }

    /// `x += y` through `kernel` (`add_assign_bf16` or `add_assign_f32`);
    /// errors name `op`.
    fn add_into<T: DeviceRepr>(
        &self,
        (op, kernel): (&str, &str),
        x: &mut CudaSlice<T>,
        y: &CudaSlice<T>,
        n: usize,
    ) -> Result<()> {
        check_len(&format!("{op} x"), x, n)?;
        check_len(&format!("{op} y"), y, n)?;
        let n_i = n as i64;
        let f = self.f(kernel)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(x).arg(y).arg(&n_i);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(elem_cfg(n)) }.map_err(cuda)?;
        Ok(())
    }

    /// `x *= s` on an f32 buffer (gradients).
    pub fn scale_f32(&self, x: &mut CudaSlice<f32>, s: f32, n: usize) -> Result<()> {
        self.scale(("scale", "scale_f32"), x, s, n)
    }

    /// `x *= s` on a bf16 buffer.
    pub fn scale_bf16(&self, x: &mut CudaSlice<bf16>, s: f32, n: usize) -> Result<()> {
        self.scale(("scale_bf16", "scale_bf16"), x, s, n)
    }

    /// `x *= s` through `kernel` (`scale_f32` or `scale_bf16`); errors name
    /// `op`.
    fn scale<T: DeviceRepr>(
        &self,
        (op, kernel): (&str, &str),
        x: &mut CudaSlice<T>,
        s: f32,
        n: usize,
    ) -> Result<()> {
        check_len(&format!("{op} x"), x, n)?;
        let n_i = n as i64;
        let f = self.f(kernel)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(x).arg(&s).arg(&n_i);
        // SAFETY: length checked above.
        self.count_launch();
        unsafe { b.launch(elem_cfg(n)) }.map_err(cuda)?;
        Ok(())
    }

    /// Sum of squares of an f32 buffer, f64 accumulation, deterministic; the
    /// result stays on the device (`out[0]`).
    pub fn sum_squares(
        &self,
        out: &mut CudaSlice<f64>,
        x: &CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        check_len("sum_squares x", x, n)?;
        check_len("sum_squares out", out, 1)?;
        let blocks = elem_cfg(n).grid_dim.0 as usize;
        let mut partial = self.zeros::<f64>(blocks)?;
        self.sum_squares_into(&mut out.as_view_mut(), &mut partial, x, n)
    }

    /// `out[0]` = the sum of squares of `x[..n]`: per-block partials into
    /// `partial` (at least one slot per block of `elem_cfg(n)`), then their
    /// sum in order. Two launches; the callers check the lengths.
    pub(super) fn sum_squares_into(
        &self,
        out: &mut CudaViewMut<'_, f64>,
        partial: &mut CudaSlice<f64>,
        x: &CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        let cfg = elem_cfg(n);
        let n_i = n as i64;
        let f = self.f("sum_squares_partial")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut *partial).arg(x).arg(&n_i);
        // SAFETY: partial has one slot per block.
        self.count_launch();
        unsafe { b.launch(cfg) }.map_err(cuda)?;
        let count = to_i32(cfg.grid_dim.0 as usize)?;
        self.sum_f64(out, partial, count)
    }

    /// `out[0]` = the sum of `values[..count]` in order (one block).
    pub(super) fn sum_f64(
        &self,
        out: &mut CudaViewMut<'_, f64>,
        values: &CudaSlice<f64>,
        count: i32,
    ) -> Result<()> {
        let f = self.f("sum_f64")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(out).arg(values).arg(&count);
        // SAFETY: one block reads `count` values, writes one.
        self.count_launch();
        unsafe { b.launch(rows_cfg(1, 1024)) }.map_err(cuda)?;
        Ok(())
    }

    /// `out[r, c] += bias[c]` on a `[rows, cols]` bf16 matrix.
    pub fn add_bias(
        &self,
        out: &mut CudaSlice<bf16>,
        bias: &CudaSlice<bf16>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        check_len("add_bias out", out, rows * cols)?;
        check_len("add_bias bias", bias, cols)?;
        let (r, c) = (to_i32(rows)?, to_i32(cols)?);
        let f = self.f("add_bias_bf16")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(out).arg(bias).arg(&r).arg(&c);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(elem_cfg(rows * cols)) }.map_err(cuda)?;
        Ok(())
    }

    /// A new bf16 copy of the first `n` values of `x`.
    pub fn to_bf16(&self, x: &CudaSlice<f32>, n: usize) -> Result<CudaSlice<bf16>> {
        self.cast(("to_bf16", "cast_f32_to_bf16"), x, n)
    }

    /// A new f32 copy of the first `n` values of `x`.
    pub fn to_f32(&self, x: &CudaSlice<bf16>, n: usize) -> Result<CudaSlice<f32>> {
        self.cast(("to_f32", "cast_bf16_to_f32"), x, n)
    }

    /// A new copy of the first `n` values of `x` in the other float type,
    /// through `kernel`; errors name `op`.
    fn cast<T: DeviceRepr, U: DeviceRepr + ValidAsZeroBits>(
        &self,
        (op, kernel): (&str, &str),
        x: &CudaSlice<T>,
        n: usize,
    ) -> Result<CudaSlice<U>> {
        check_len(&format!("{op} x"), x, n)?;
        let mut out = self.zeros::<U>(n)?;
        let n_i = n as i64;
        let f = self.f(kernel)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut out).arg(x).arg(&n_i);
        // SAFETY: both hold n values.
        self.count_launch();
        unsafe { b.launch(elem_cfg(n)) }.map_err(cuda)?;
        Ok(out)
    }

    /// Rows `rows` of the `[_, cols]` matrix `x` (bf16 or f32: `kernel` is
    /// `gather_rows_bf16` or `gather_rows_f32`).
    fn gather<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        kernel: &str,
        x: &CudaSlice<T>,
        rows: &[usize],
        cols: usize,
    ) -> Result<CudaSlice<T>> {
        let have = x.len() / cols.max(1);
        if let Some(r) = rows.iter().find(|&&r| r >= have) {
            return Err(Error::Invalid(format!(
                "gather_rows: row {r} of a {have}-row matrix"
            )));
        }
        let idx: Vec<i32> = rows.iter().map(|&r| to_i32(r)).collect::<Result<_>>()?;
        let idx_d = self.upload(if idx.is_empty() { &[0] } else { &idx })?;
        let mut out = self.zeros::<T>(rows.len() * cols)?;
        let (n, c) = (to_i32(rows.len())?, to_i32(cols)?);
        let f = self.f(kernel)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut out).arg(x).arg(&idx_d).arg(&n).arg(&c);
        // SAFETY: every row index checked against x.
        self.count_launch();
        unsafe { b.launch(elem_cfg(rows.len() * cols)) }.map_err(cuda)?;
        Ok(out)
    }

    pub fn gather_rows_bf16(
        &self,
        x: &CudaSlice<bf16>,
        rows: &[usize],
        cols: usize,
    ) -> Result<CudaSlice<bf16>> {
        self.gather("gather_rows_bf16", x, rows, cols)
    }

    pub fn gather_rows_f32(
        &self,
        x: &CudaSlice<f32>,
        rows: &[usize],
        cols: usize,
    ) -> Result<CudaSlice<f32>> {
        self.gather("gather_rows_f32", x, rows, cols)
    }
}
