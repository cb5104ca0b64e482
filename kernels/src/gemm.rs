//! GEMMs through cuBLAS (`cublasGemmEx`): bf16 inputs, f32 accumulation,
//! bf16 or f32 output, on row-major matrices as the rest of the engine stores
//! them (weights `[out, in]`, the Hugging Face `nn.Linear` layout).
//!
//! Row-major `C[m, n] = op(A) op(B)` is column-major `C^T = op(B)^T op(A)^T`,
//! so every call swaps the operands and passes the row lengths as leading
//! dimensions; [`Blas::gemm`] does it once for all users.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::{result, sys, CudaBlas};
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};
use half::bf16;

use crate::host::to_i32;
use crate::{Error, Result};

/// An output element type of [`Blas::gemm`].
pub trait GemmOut {
    const CUDA_TYPE: sys::cudaDataType;
}
impl GemmOut for bf16 {
    const CUDA_TYPE: sys::cudaDataType = sys::cudaDataType::CUDA_R_16BF;
}
impl GemmOut for f32 {
    const CUDA_TYPE: sys::cudaDataType = sys::cudaDataType::CUDA_R_32F;
}

/// A cuBLAS handle bound to one stream.
pub struct Blas {
    blas: CudaBlas,
    stream: Arc<CudaStream>,
    /// GEMMs launched (one cuBLAS call each), for the step counters.
    launches: std::sync::atomic::AtomicU64,
}

impl Blas {
    pub fn new(stream: Arc<CudaStream>) -> Result<Blas> {
        // SAFETY: only tries to open libcublas by its usual names.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::Cuda(
                "cuBLAS (libcublas.so.13) is not available; install CUDA 13".into(),
            ));
        }
        let blas = CudaBlas::new(stream.clone()).map_err(|e| Error::Cuda(format!("{e:?}")))?;
        Ok(Blas {
            blas,
            stream,
            launches: Default::default(),
        })
    }

    /// GEMMs launched since the handle was made.
    pub fn launches(&self) -> u64 {
        self.launches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Row-major `C[m, n] = alpha op(A) op(B) + beta C` with `op(A)` `[m, k]`
    /// (A stored `[k, m]` when `trans_a`) and `op(B)` `[k, n]` (B stored
    /// `[n, k]` when `trans_b`). bf16 inputs, f32 accumulation.
    pub fn gemm<C: GemmOut>(
        &self,
        c: &mut impl DevicePtrMut<C>,
        a: &impl DevicePtr<bf16>,
        b: &impl DevicePtr<bf16>,
        (m, n, k): (usize, usize, usize),
        (trans_a, trans_b): (bool, bool),
        (alpha, beta): (f32, f32),
    ) -> Result<()> {
        for (what, have, need) in [
            ("A", a.len(), m * k),
            ("B", b.len(), k * n),
            ("C", c.len(), m * n),
        ] {
            if have < need {
                return Err(Error::Invalid(format!(
                    "gemm {m}x{n}x{k}: {what} holds {have} elements, needs {need}"
                )));
            }
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        let op = |t: bool| {
            if t {
                sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let (mi, ni, ki) = (to_i32(m)?, to_i32(n)?, to_i32(k)?);
        let lda_b = if trans_b { ki } else { ni };
        let ldb_a = if trans_a { mi } else { ki };
        let (bp, _rb) = b.device_ptr(&self.stream);
        let (ap, _ra) = a.device_ptr(&self.stream);
        let (cp, _rc) = c.device_ptr_mut(&self.stream);
        self.launches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: lengths checked above; the pointers stay valid while the
        // SyncOnDrop guards live (to the end of this function).
        unsafe {
            result::gemm_ex(
                *self.blas.handle(),
                op(trans_b),
                op(trans_a),
                ni,
                mi,
                ki,
                (&alpha) as *const f32 as *const c_void,
                bp as *const c_void,
                sys::cudaDataType::CUDA_R_16BF,
                lda_b,
                ap as *const c_void,
                sys::cudaDataType::CUDA_R_16BF,
                ldb_a,
                (&beta) as *const f32 as *const c_void,
                cp as *mut c_void,
                C::CUDA_TYPE,
                ni,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| Error::Cuda(format!("cublasGemmEx {m}x{n}x{k}: {e:?}")))
    }

    /// `y[m, n] = x[m, k] @ w[n, k]^T` (a linear layer; bias separately).
    pub fn linear<C: GemmOut>(
        &self,
        y: &mut impl DevicePtrMut<C>,
        x: &impl DevicePtr<bf16>,
        w: &impl DevicePtr<bf16>,
        (m, n, k): (usize, usize, usize),
    ) -> Result<()> {
        self.gemm(y, x, w, (m, n, k), (false, true), (1.0, 0.0))
    }

    /// Backward of [`Blas::linear`]: `dx[m, k] = dy[m, n] @ w[n, k]` and
    /// `dw[n, k] += dy^T @ x` (f32 accumulation into the gradient).
    pub fn linear_backward<C: GemmOut>(
        &self,
        dx: &mut impl DevicePtrMut<C>,
        dw: &mut impl DevicePtrMut<f32>,
        x: &impl DevicePtr<bf16>,
        w: &impl DevicePtr<bf16>,
        dy: &impl DevicePtr<bf16>,
        (m, n, k): (usize, usize, usize),
    ) -> Result<()> {
        self.gemm(dx, dy, w, (m, k, n), (false, false), (1.0, 0.0))?;
        self.gemm(dw, dy, x, (n, k, m), (true, false), (1.0, 1.0))
    }
}
