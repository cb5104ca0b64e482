//! The optimizer's ops (`Backend::sum_squares`, `scale`, `adamw`,
//! `adamw_clipped`): the clipped step keeps its norms and clip factor on the
//! device and reads the norm once.

use cudarc::driver::CudaSlice;

use super::{adamw_hyper, ok, AdamWStep, Cuda, CudaTensor, Data, View};

pub(super) fn sum_squares(gpu: &Cuda, t: &CudaTensor) -> f64 {
    let n = t.numel();
    if n == 0 {
        return 0.0;
    }
    let mut out = ok("sum_squares", gpu.k.zeros::<f64>(1));
    ok("sum_squares", gpu.k.sum_squares(&mut out, &gpu.f32v(t), n));
    ok("sum_squares", gpu.k.download(&out))[0]
}

pub(super) fn scale(gpu: &Cuda, x: &mut CudaTensor, s: f32) {
    let n = x.numel();
    match &mut x.data {
        Data::F32(v) => ok("scale", gpu.k.scale_f32(v, s, n)),
        Data::Bf16(v) => ok("scale", gpu.k.scale_bf16(v, s, n)),
        Data::Param { master, work } => {
            ok("scale", gpu.k.scale_f32(master, s, n));
            *work = ok("scale", gpu.k.to_bf16(master, n));
        }
    }
}

pub(super) fn adamw(
    gpu: &Cuda,
    param: &mut CudaTensor,
    grad: &CudaTensor,
    m: &mut CudaTensor,
    v: &mut CudaTensor,
    st: &AdamWStep,
) {
    assert_eq!(param.shape, grad.shape, "adamw: grad shape");
    let g = gpu.f32v(grad);
    let (Data::F32(ms), Data::F32(vs)) = (&mut m.data, &mut v.data) else {
        panic!("adamw: moments must be f32 (made by zeros)")
    };
    gpu.adamw_scaled(param, &g, ms, vs, None, &adamw_hyper(st, st.grad_scale));
}

/// The norm and clip factor stay on the device (`Kernels::clip_scale`);
/// every AdamW launch reads the factor there; one download of the norm at
/// the end is the step's only wait (the default path waited once per
/// gradient).
pub(super) fn adamw_clipped(
    gpu: &Cuda,
    params: &mut [CudaTensor],
    grads: &[CudaTensor],
    (m, v): (&mut [CudaTensor], &mut [CudaTensor]),
    steps: &[AdamWStep],
    avg: f64,
    max_norm: f64,
) -> f64 {
    let views: Vec<View<'_, f32>> = grads.iter().map(|g| gpu.f32v(g)).collect();
    let sized: Vec<(&CudaSlice<f32>, usize)> = views
        .iter()
        .zip(grads)
        .map(|(view, g)| (&**view, g.numel()))
        .collect();
    let mut scale = ok("adamw_clipped", gpu.k.zeros::<f32>(1));
    let mut norm = ok("adamw_clipped", gpu.k.zeros::<f64>(1));
    ok(
        "adamw_clipped",
        gpu.k
            .clip_scale(&sized, avg, max_norm, &mut scale, &mut norm),
    );
    for (i, p) in params.iter_mut().enumerate() {
        assert_eq!(p.shape, grads[i].shape, "adamw: grad shape");
        let (Data::F32(ms), Data::F32(vs)) = (&mut m[i].data, &mut v[i].data) else {
            panic!("adamw: moments must be f32 (made by zeros)")
        };
        // grad_scale 1, times `scale` on the device: avg x clip
        let hp = adamw_hyper(&steps[i], 1.0);
        gpu.adamw_scaled(p, &views[i], ms, vs, Some(&scale), &hp);
    }
    ok("adamw_clipped", gpu.k.download(&norm))[0]
}
