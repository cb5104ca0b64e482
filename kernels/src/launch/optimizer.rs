//! Launch wrappers of `cu/optimizer.cu`: the fused AdamW step and the clip
//! factor; [`Kernels::clip_scale`] adds `norm.cu`'s sums of squares.

use cudarc::driver::{CudaSlice, PushKernelArg};
use half::bf16;

use super::{check_len, cuda, elem_cfg, rows_cfg, Kernels, NULL};
use crate::host::to_i32;
use crate::Result;

/// AdamW hyper-parameters of one step (the engine's `AdamWStep`).
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub bias_correction1: f32,
    pub bias_correction2: f32,
    pub grad_scale: f32,
}

/// What one AdamW step updates in place: the f32 master weights, their bf16
/// copy when there is one, and the two moments (f32, as long as `master`).
pub struct AdamWState<'a> {
    pub master: &'a mut CudaSlice<f32>,
    pub param_bf16: Option<&'a mut CudaSlice<bf16>>,
    pub m: &'a mut CudaSlice<f32>,
    pub v: &'a mut CudaSlice<f32>,
}

impl Kernels {
    /// One fused AdamW step on f32 master weights; refreshes the bf16 copy
    /// when given. `scale_dev` (one f32 on the device, e.g. from
    /// `clip_factor`) multiplies `grad_scale`.
    pub fn adamw(
        &self,
        state: AdamWState<'_>,
        grad: &CudaSlice<f32>,
        scale_dev: Option<&CudaSlice<f32>>,
        n: usize,
        st: &AdamW,
    ) -> Result<()> {
        let AdamWState {
            master,
            param_bf16,
            m,
            v,
        } = state;
        check_len("adamw master", master, n)?;
        check_len("adamw grad", grad, n)?;
        check_len("adamw m", m, n)?;
        check_len("adamw v", v, n)?;
        let n_i = n as i64;
        let f = self.f("adamw_step")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(master);
        match param_bf16 {
            Some(p) => {
                check_len("adamw param_bf16", p, n)?;
                b.arg(p)
            }
            None => b.arg(&NULL),
        };
        b.arg(grad).arg(m).arg(v);
        match scale_dev {
            Some(s) => {
                check_len("adamw scale_dev", s, 1)?;
                b.arg(s)
            }
            None => b.arg(&NULL),
        };
        b.arg(&n_i)
            .arg(&st.lr)
            .arg(&st.beta1)
            .arg(&st.beta2)
            .arg(&st.eps)
            .arg(&st.weight_decay)
            .arg(&st.bias_correction1)
            .arg(&st.bias_correction2)
            .arg(&st.grad_scale);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(elem_cfg(n)) }.map_err(cuda)?;
        Ok(())
    }

    /// Global-norm clipping with nothing read back: the squared norm of each
    /// of `grads` (`(buffer, length)`) into its own slot, their sum in slot
    /// order, then [`Kernels::clip_factor`]: `scale` = avg x clip factor (what
    /// `adamw`'s `scale_dev` takes), `norm` = the pre-clip norm. 2 launches
    /// per gradient + 2; one scratch buffer for the per-block partials, reused
    /// in stream order.
    pub fn clip_scale(
        &self,
        grads: &[(&CudaSlice<f32>, usize)],
        avg: f64,
        max_norm: f64,
        scale: &mut CudaSlice<f32>,
        norm: &mut CudaSlice<f64>,
    ) -> Result<()> {
        let mut slots = self.zeros::<f64>(grads.len())?;
        let most_blocks = grads
            .iter()
            .map(|&(_, n)| elem_cfg(n).grid_dim.0 as usize)
            .max()
            .unwrap_or(1);
        let mut partial = self.zeros::<f64>(most_blocks)?;
        for (i, &(g, n)) in grads.iter().enumerate() {
            check_len("clip_scale grad", g, n)?;
            if n == 0 {
                continue; // its slot stays 0
            }
            // `partial` has a slot for every block of the largest gradient.
            self.sum_squares_into(&mut slots.slice_mut(i..i + 1), &mut partial, g, n)?;
        }
        let mut total = self.zeros::<f64>(1)?;
        let count = to_i32(grads.len())?;
        // One block reads the `grads.len()` slots.
        self.sum_f64(&mut total.as_view_mut(), &slots, count)?;
        self.clip_factor(scale, Some(norm), &total, avg, max_norm)
    }

    /// Gradient scale on the device from the summed squares (see optimizer.cu).
    pub fn clip_factor(
        &self,
        out: &mut CudaSlice<f32>,
        norm_out: Option<&mut CudaSlice<f64>>,
        sumsq: &CudaSlice<f64>,
        avg: f64,
        max_norm: f64,
    ) -> Result<()> {
        check_len("clip_factor out", out, 1)?;
        check_len("clip_factor sumsq", sumsq, 1)?;
        let f = self.f("clip_factor")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(out);
        match norm_out {
            Some(n) => b.arg(n),
            None => b.arg(&NULL),
        };
        b.arg(sumsq).arg(&avg).arg(&max_norm);
        // SAFETY: one thread, lengths checked.
        self.count_launch();
        unsafe { b.launch(rows_cfg(1, 32)) }.map_err(cuda)?;
        Ok(())
    }
}
