//! The dense layers on the GPU: `linear` (cuBLAS GEMMs, bias as its own
//! kernel) and the SwiGLU activation, forward and backward.

use super::{ok, swiglu_input, Cuda, CudaTensor, Data};

pub(super) fn linear(
    gpu: &Cuda,
    x: &CudaTensor,
    w: &CudaTensor,
    bias: Option<&CudaTensor>,
) -> CudaTensor {
    let (m, k) = (x.rows(), x.cols());
    let n = w.rows();
    assert_eq!(
        w.cols(),
        k,
        "linear: x has {k} columns, weight {:?}",
        w.shape
    );
    let mut out = gpu.new_bf16(&[m, n]);
    let (xb, wb) = (gpu.bf(x), gpu.bf(w));
    if let Data::Bf16(y) = &mut out.data {
        ok("linear", gpu.blas.linear(y, &*xb, &*wb, (m, n, k)));
        if let Some(b) = bias {
            assert_eq!(b.numel(), n, "linear: bias length");
            ok("linear bias", gpu.k.add_bias(y, &gpu.bf(b), m, n));
        }
    }
    out
}

pub(super) fn linear_backward(
    gpu: &Cuda,
    x: &CudaTensor,
    w: &CudaTensor,
    dy: &CudaTensor,
    dw: &mut CudaTensor,
    db: Option<&mut CudaTensor>,
) -> CudaTensor {
    let (m, k, n) = (x.rows(), x.cols(), w.rows());
    assert_eq!(dy.shape, [m, n], "linear_backward: dy shape");
    let mut dx = gpu.new_bf16(&[m, k]);
    let dyb = gpu.bf(dy);
    let Data::F32(dws) = &mut dw.data else {
        panic!("linear_backward: weight gradients must be f32 (made by zeros)")
    };
    if let Data::Bf16(dxs) = &mut dx.data {
        ok(
            "linear_backward",
            gpu.blas
                .linear_backward(dxs, dws, &*gpu.bf(x), &*gpu.bf(w), &*dyb, (m, n, k)),
        );
    }
    if let Some(db) = db {
        let Data::F32(dbs) = &mut db.data else {
            panic!("linear_backward: bias gradients must be f32 (made by zeros)")
        };
        ok("linear_backward bias", gpu.k.bias_backward(dbs, &dyb, m, n));
    }
    dx
}

pub(super) fn swiglu(gpu: &Cuda, gate: &CudaTensor, up: &CudaTensor) -> CudaTensor {
    assert_eq!(gate.shape, up.shape, "swiglu: shapes");
    let mut out = gpu.new_bf16(&gate.shape);
    if let Data::Bf16(o) = &mut out.data {
        ok(
            "swiglu",
            gpu.k
                .swiglu(o, &swiglu_input(&gpu.bf(gate), &gpu.bf(up), gate)),
        );
    }
    out
}

pub(super) fn swiglu_backward(
    gpu: &Cuda,
    gate: &CudaTensor,
    up: &CudaTensor,
    dy: &CudaTensor,
) -> (CudaTensor, CudaTensor) {
    let (mut dg, mut du) = (gpu.new_bf16(&gate.shape), gpu.new_bf16(&up.shape));
    if let (Data::Bf16(a), Data::Bf16(b)) = (&mut dg.data, &mut du.data) {
        ok(
            "swiglu_backward",
            gpu.k.swiglu_backward(
                a,
                b,
                &swiglu_input(&gpu.bf(gate), &gpu.bf(up), gate),
                &gpu.bf(dy),
            ),
        );
    }
    (dg, du)
}
