//! RMSNorm on the GPU, over rows (`Backend::rms_norm`) and over each head
//! of q and k (Qwen3's `head_rms_norm`), forward and backward.

use igpo_kernels::launch::NormInput;

use super::{ok, Cuda, CudaTensor, Data};

pub(super) fn rms_norm(gpu: &Cuda, x: &CudaTensor, w: &CudaTensor, eps: f32) -> CudaTensor {
    let (rows, d) = (x.rows(), x.cols());
    assert_eq!(w.numel(), d, "rms_norm: weight length");
    let mut out = gpu.new_bf16(&x.shape);
    if let Data::Bf16(o) = &mut out.data {
        ok(
            "rms_norm",
            gpu.k.rms_norm(
                o,
                None,
                &NormInput {
                    x: &gpu.bf(x),
                    w: &gpu.bf(w),
                    eps,
                },
                rows,
                d,
            ),
        );
    }
    out
}

pub(super) fn head_rms_norm(gpu: &Cuda, x: &CudaTensor, w: &CudaTensor, eps: f32) -> CudaTensor {
    let mut out = gpu.new_bf16(&x.shape);
    if let Data::Bf16(o) = &mut out.data {
        ok(
            "head_rms_norm",
            gpu.k.head_rms_norm(
                o,
                &NormInput {
                    x: &gpu.bf(x),
                    w: &gpu.bf(w),
                    eps,
                },
                x.numel(),
                w.numel(),
            ),
        );
    }
    out
}

pub(super) fn rms_norm_backward(
    gpu: &Cuda,
    x: &CudaTensor,
    w: &CudaTensor,
    dy: &CudaTensor,
    eps: f32,
    dw: &mut CudaTensor,
) -> CudaTensor {
    let (rows, d) = (x.rows(), x.cols());
    let mut dx = gpu.new_bf16(&x.shape);
    let Data::F32(dws) = &mut dw.data else {
        panic!("rms_norm_backward: weight gradients must be f32 (made by zeros)")
    };
    if let Data::Bf16(dxs) = &mut dx.data {
        ok(
            "rms_norm_backward",
            gpu.k.rms_norm_backward(
                dxs,
                dws,
                &NormInput {
                    x: &gpu.bf(x),
                    w: &gpu.bf(w),
                    eps,
                },
                &gpu.bf(dy),
                rows,
                d,
            ),
        );
    }
    dx
}

pub(super) fn head_rms_norm_backward(
    gpu: &Cuda,
    x: &CudaTensor,
    w: &CudaTensor,
    dy: &CudaTensor,
    eps: f32,
    dw: &mut CudaTensor,
) -> CudaTensor {
    let mut dx = gpu.new_bf16(&x.shape);
    let Data::F32(dws) = &mut dw.data else {
        panic!("head_rms_norm_backward: weight gradients must be f32 (made by zeros)")
    };
    if let Data::Bf16(dxs) = &mut dx.data {
        ok(
            "head_rms_norm_backward",
            gpu.k.head_rms_norm_backward(
                dxs,
                dws,
                &NormInput {
                    x: &gpu.bf(x),
                    w: &gpu.bf(w),
                    eps,
                },
                &gpu.bf(dy),
                x.numel(),
                w.numel(),
            ),
        );
    }
    dx
}
