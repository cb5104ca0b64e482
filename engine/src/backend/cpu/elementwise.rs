//! The CPU backend's elementwise ops: kernels over slices compiled for the
//! process's instruction set (`isa::simd_fn!`, the same bits on every one),
//! run on one thread when the tensor is small and in chunks over rayon's
//! pool otherwise. A decode step's tensors are a few rows: a rayon call
//! from outside the pool costs more than the work (measured in
//! docs/benchmarks.md), so below [`PARALLEL_MIN`] elements it runs inline.

use rayon::prelude::*;

use super::isa::simd_fn;
use crate::backend::AdamWStep;

/// Elements below which an op runs on the calling thread; also the chunk
/// size of the parallel split.
pub(super) const PARALLEL_MIN: usize = 1 << 15;

/// Whether `elements` of work go to rayon's pool.
pub(super) fn parallel(elements: usize) -> bool {
    elements >= PARALLEL_MIN
}

/// `f(dst chunk, src chunk)` over matching chunks of `dst` and `src`.
fn zip2(dst: &mut [f32], src: &[f32], f: impl Fn(&mut [f32], &[f32]) + Sync) {
    assert_eq!(dst.len(), src.len(), "elementwise: lengths");
    if parallel(dst.len()) {
        dst.par_chunks_mut(PARALLEL_MIN)
            .zip(src.par_chunks(PARALLEL_MIN))
            .for_each(|(d, s)| f(d, s));
    } else {
        f(dst, src)
    }
}

simd_fn! {
    fn add_kernel(dst: &mut [f32], src: &[f32]) {
        for (a, b) in dst.iter_mut().zip(src) {
            *a += b;
        }
    }
}

simd_fn! {
    fn scale_kernel(dst: &mut [f32], s: f32) {
        for v in dst.iter_mut() {
            *v *= s;
        }
    }
}

/// `dst += src`.
pub(super) fn add(dst: &mut [f32], src: &[f32]) {
    zip2(dst, src, add_kernel)
}

/// `dst += bias` on every `bias.len()`-wide row of `dst`.
pub(super) fn add_bias(dst: &mut [f32], bias: &[f32]) {
    let n = bias.len();
    let rows = |d: &mut [f32]| d.chunks_mut(n).for_each(|row| add_kernel(row, bias));
    if parallel(dst.len()) {
        let rows_per_chunk = (PARALLEL_MIN / n.max(1)).max(1);
        dst.par_chunks_mut(rows_per_chunk * n).for_each(rows);
    } else {
        rows(dst)
    }
}

/// `x *= s`.
pub(super) fn scale(x: &mut [f32], s: f32) {
    if parallel(x.len()) {
        x.par_chunks_mut(PARALLEL_MIN)
            .for_each(|c| scale_kernel(c, s));
    } else {
        scale_kernel(x, s)
    }
}

simd_fn! {
    fn swiglu_kernel(out: &mut [f32], gate: &[f32], up: &[f32]) {
        for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    }
}

/// `silu(gate) * up` as a new vector.
pub(super) fn swiglu(gate: &[f32], up: &[f32]) -> Vec<f32> {
    assert_eq!(gate.len(), up.len(), "swiglu: lengths");
    let mut out = vec![0.0f32; gate.len()];
    if parallel(out.len()) {
        out.par_chunks_mut(PARALLEL_MIN)
            .zip(
                gate.par_chunks(PARALLEL_MIN)
                    .zip(up.par_chunks(PARALLEL_MIN)),
            )
            .for_each(|(o, (g, u))| swiglu_kernel(o, g, u));
    } else {
        swiglu_kernel(&mut out, gate, up)
    }
    out
}

simd_fn! {
    fn adamw_kernel(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], st: &AdamWStep) {
        let decay = 1.0 - st.lr * st.weight_decay;
        for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = g * st.grad_scale;
            *m = st.beta1 * *m + (1.0 - st.beta1) * g;
            *v = st.beta2 * *v + (1.0 - st.beta2) * g * g;
            let mhat = *m / st.bias_correction1;
            let vhat = *v / st.bias_correction2;
            *p = *p * decay - st.lr * mhat / (vhat.sqrt() + st.eps);
        }
    }
}

/// One AdamW update of `param` (moments `m`, `v`) with gradient `grad`.
pub(super) fn adamw(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], st: &AdamWStep) {
    let n = param.len();
    assert!(
        grad.len() == n && m.len() == n && v.len() == n,
        "adamw: lengths"
    );
    if parallel(n) {
        let c = PARALLEL_MIN;
        param
            .par_chunks_mut(c)
            .zip(grad.par_chunks(c))
            .zip(m.par_chunks_mut(c).zip(v.par_chunks_mut(c)))
            .for_each(|((p, g), (m, v))| adamw_kernel(p, g, m, v, st));
    } else {
        adamw_kernel(param, grad, m, v, st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunked, instruction-set-compiled ops give the plain loops' bits,
    /// small (inline) and large (parallel chunks).
    #[test]
    fn ops_equal_plain_loops() {
        for n in [1, 17, PARALLEL_MIN + 5, 3 * PARALLEL_MIN] {
            let a = super::super::test_values(n, 1);
            let b = super::super::test_values(n, 2);
            let mut got = a.clone();
            add(&mut got, &b);
            let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
            assert!(got == want, "add {n}");
            scale(&mut got, 0.3);
            assert!(
                got.iter().zip(&want).all(|(g, w)| *g == w * 0.3),
                "scale {n}"
            );
            let s = swiglu(&a, &b);
            let want: Vec<f32> = a
                .iter()
                .zip(&b)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            assert!(s == want, "swiglu {n}");
            let mut rows = a.clone();
            add_bias(&mut rows, &b[..n.min(7)]);
            if n % n.min(7) == 0 {
                assert!(rows
                    .iter()
                    .enumerate()
                    .all(|(i, r)| *r == a[i] + b[i % n.min(7)]));
            }
            let st = AdamWStep {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
                bias_correction1: 0.1,
                bias_correction2: 0.001,
                grad_scale: 0.5,
            };
            let (mut p, mut m, mut v) = (a.clone(), b.clone(), vec![0.25f32; n]);
            adamw(&mut p, &b, &mut m, &mut v, &st);
            for i in 0..n {
                let g = b[i] * st.grad_scale;
                let mi = st.beta1 * b[i] + (1.0 - st.beta1) * g;
                let vi = st.beta2 * 0.25 + (1.0 - st.beta2) * g * g;
                let pi = a[i] * (1.0 - st.lr * st.weight_decay)
                    - st.lr * (mi / st.bias_correction1)
                        / ((vi / st.bias_correction2).sqrt() + st.eps);
                assert!(p[i] == pi && m[i] == mi && v[i] == vi, "adamw {n} at {i}");
            }
        }
    }
}
