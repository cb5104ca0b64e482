//! Launch wrapper of `cu/rope.cu`: rotary position embedding in place
//! (`rope_bf16`).

use cudarc::driver::{CudaSlice, PushKernelArg};
use half::bf16;

use super::{check_len, cuda, elem_cfg, Kernels};
use crate::host::to_i32;
use crate::{Error, Result};

/// What [`Kernels::rope`] rotates by: one position per row, the inverse
/// frequencies (`head_dim / 2` of them), the head size, and the factor on cos
/// and sin (yarn's attention factor, else 1).
#[derive(Clone, Copy)]
pub struct RopeArgs<'a> {
    pub positions: &'a CudaSlice<i32>,
    pub inv_freq: &'a CudaSlice<f32>,
    pub head_dim: usize,
    pub scale: f32,
}

impl Kernels {
    /// RoPE in place on `x[rows, cols]` (rotate-half), cos and sin times
    /// `args.scale`; `backward` rotates back.
    pub fn rope(
        &self,
        x: &mut CudaSlice<bf16>,
        rows: usize,
        cols: usize,
        args: &RopeArgs<'_>,
        backward: bool,
    ) -> Result<()> {
        let RopeArgs {
            positions,
            inv_freq,
            head_dim,
            scale,
        } = *args;
        if head_dim == 0 || !head_dim.is_multiple_of(2) || !cols.is_multiple_of(head_dim) {
            return Err(Error::Invalid(format!(
                "rope: row of {cols} is not whole heads of even size {head_dim}"
            )));
        }
        check_len("rope x", x, rows * cols)?;
        check_len("rope positions", positions, rows)?;
        check_len("rope inv_freq", inv_freq, head_dim / 2)?;
        let (r, c, h) = (to_i32(rows)?, to_i32(cols)?, to_i32(head_dim)?);
        let sign: f32 = if backward { -1.0 } else { 1.0 };
        let f = self.f("rope_bf16")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(x).arg(positions).arg(inv_freq);
        b.arg(&r).arg(&c).arg(&h).arg(&sign).arg(&scale);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(elem_cfg(rows * cols / 2)) }.map_err(cuda)?;
        Ok(())
    }
}
