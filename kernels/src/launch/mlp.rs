//! Launch wrappers of `cu/mlp.cu`: SwiGLU forward and backward.

use cudarc::driver::{CudaSlice, PushKernelArg};
use half::bf16;

use super::{check_len, cuda, elem_cfg, Kernels};
use crate::host::to_i32;
use crate::Result;

/// The input of SwiGLU: `gate` and `up`, `[rows, cols]` bf16 each. The
/// forward and the backward take the same one.
#[derive(Clone, Copy)]
pub struct SwigluInput<'a> {
    pub gate: &'a CudaSlice<bf16>,
    pub up: &'a CudaSlice<bf16>,
    pub rows: usize,
    pub cols: usize,
}

impl Kernels {
    /// `out = silu(gate) * up` on `[rows, cols]` matrices.
    pub fn swiglu(&self, out: &mut CudaSlice<bf16>, input: &SwigluInput<'_>) -> Result<()> {
        let (gate, up, rows, cols) = (input.gate, input.up, input.rows, input.cols);
        for (what, s) in [("gate", gate), ("up", up)] {
            check_len(&format!("swiglu {what}"), s, rows * cols)?;
        }
        check_len("swiglu out", out, rows * cols)?;
        let (r, c) = (to_i32(rows)?, to_i32(cols)?);
        let f = self.f("swiglu_fwd")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(out).arg(gate).arg(up).arg(&r).arg(&c).arg(&c);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(elem_cfg(rows * cols)) }.map_err(cuda)?;
        Ok(())
    }

    pub fn swiglu_backward(
        &self,
        dgate: &mut CudaSlice<bf16>,
        dup: &mut CudaSlice<bf16>,
        input: &SwigluInput<'_>,
        dy: &CudaSlice<bf16>,
    ) -> Result<()> {
        let (gate, up, rows, cols) = (input.gate, input.up, input.rows, input.cols);
        for (what, s) in [("gate", gate), ("up", up), ("dy", dy)] {
            check_len(&format!("swiglu_backward {what}"), s, rows * cols)?;
        }
        check_len("swiglu_backward dgate", dgate, rows * cols)?;
        check_len("swiglu_backward dup", dup, rows * cols)?;
        let (r, c) = (to_i32(rows)?, to_i32(cols)?);
        let f = self.f("swiglu_bwd")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(dgate).arg(dup).arg(gate).arg(up).arg(dy);
        b.arg(&r).arg(&c).arg(&c);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(elem_cfg(rows * cols)) }.map_err(cuda)?;
        Ok(())
    }
}
