//! Launch wrapper of `cu/sampling.cu`: one token per row of the logits
//! (temperature, top-k, top-p) with its log-probability.

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::{check_len, cuda, rows_cfg, Kernels};
use crate::host::to_i32;
use crate::Result;

/// Threads of one `sample_rows` block (one block per row).
const SAMPLE_THREADS: u32 = 1024;

/// The input of [`Kernels::sample`]: `logits[rows, vocab]` (f32), one
/// uniform in [0, 1) per row from the host's seeded Rng, and the sampling
/// parameters.
#[derive(Clone, Copy)]
pub struct SampleArgs<'a> {
    pub logits: &'a CudaSlice<f32>,
    pub uniforms: &'a CudaSlice<f64>,
    pub rows: usize,
    pub vocab: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
}

impl Kernels {
    /// One token per row of `logits[rows, vocab]`; `uniforms[r]` in [0, 1)
    /// from the host's seeded Rng. `out[r]` = the id sampled from row `r`,
    /// `out_logprob[r]` its log-probability under softmax(logits /
    /// temperature) over the whole row.
    pub fn sample(
        &self,
        out: &mut CudaSlice<i32>,
        out_logprob: &mut CudaSlice<f32>,
        args: &SampleArgs<'_>,
    ) -> Result<()> {
        let SampleArgs {
            logits,
            uniforms,
            rows,
            vocab,
            temperature,
            top_k,
            top_p,
        } = *args;
        check_len("sample out", out, rows)?;
        check_len("sample out_logprob", out_logprob, rows)?;
        check_len("sample logits", logits, rows * vocab)?;
        check_len("sample uniforms", uniforms, rows)?;
        let (r, v) = (to_i32(rows)?, to_i32(vocab)?);
        let k = to_i32(top_k.min(vocab))?;
        let f = self.f("sample_rows")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(out).arg(out_logprob).arg(logits).arg(uniforms);
        b.arg(&r)
            .arg(&v)
            .arg(&v)
            .arg(&temperature)
            .arg(&k)
            .arg(&top_p);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(rows_cfg(rows, SAMPLE_THREADS)) }.map_err(cuda)?;
        Ok(())
    }
}
