//! The CPU backend's elementwise ops: kernels over slices compiled for the
//! process's instruction set (`isa::simd_fn!`, the same bits on every one),
//! run on one thread when the tensor is small and in chunks over rayon's
//! pool otherwise. A decode step's tensors are a few rows: a rayon call
//! from outside the pool costs more than the work (measured in
//! docs/benchmarks.md), so below [`PARALLEL_MIN`] elements it runs inline.

use rayon::prelude::*;

use super::isa::simd_fn;
use super::softmax;
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
    fn add_kernel [add_kernel_on] (dst: &mut [f32], src: &[f32]) {
        for (a, b) in dst.iter_mut().zip(src) {
            *a += b;
        }
    }
}

simd_fn! {
    fn scale_kernel [scale_kernel_on] (dst: &mut [f32], s: f32) {
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
    fn swiglu_kernel [swiglu_kernel_on] (out: &mut [f32], gate: &[f32], up: &[f32]) {
        for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + softmax::exp(-g)) * u;
        }
    }
}

simd_fn! {
    fn swiglu_backward_kernel [swiglu_backward_kernel_on] (dg: &mut [f32], du: &mut [f32], gate: &[f32], up: &[f32], dy: &[f32]) {
        for ((((dg, du), g), u), d) in dg.iter_mut().zip(du.iter_mut()).zip(gate).zip(up).zip(dy) {
            let sig = 1.0 / (1.0 + softmax::exp(-g));
            let silu = g * sig;
            *du = d * silu;
            *dg = d * u * sig * (1.0 + g * (1.0 - sig));
        }
    }
}

/// The gradients of `silu(gate) * up`: `(dgate, dup)` as new vectors.
pub(super) fn swiglu_backward(gate: &[f32], up: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let n = gate.len();
    assert!(up.len() == n && dy.len() == n, "swiglu_backward: lengths");
    let (mut dg, mut du) = (vec![0.0f32; n], vec![0.0f32; n]);
    if parallel(n) {
        let c = PARALLEL_MIN;
        dg.par_chunks_mut(c)
            .zip(du.par_chunks_mut(c))
            .zip(
                gate.par_chunks(c)
                    .zip(up.par_chunks(c))
                    .zip(dy.par_chunks(c)),
            )
            .for_each(|((dg, du), ((g, u), d))| swiglu_backward_kernel(dg, du, g, u, d));
    } else {
        swiglu_backward_kernel(&mut dg, &mut du, gate, up, dy)
    }
    (dg, du)
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
    fn adamw_kernel [adamw_kernel_on] (p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], st: &AdamWStep) {
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

    const TEST_STEP: AdamWStep = AdamWStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        bias_correction1: 0.1,
        bias_correction2: 0.001,
        grad_scale: 0.5,
    };

    /// Every kernel gives the same bits on every instruction set this CPU
    /// runs (the portable build is the reference).
    #[test]
    fn kernels_agree_across_instruction_sets() {
        use super::super::isa::Isa;
        let n = 1000;
        let (a, b, c) = (
            super::super::test_values(n, 3),
            super::super::test_values(n, 4),
            super::super::test_values(n, 5),
        );
        let st = TEST_STEP;
        let all = |isa: Isa| {
            let mut x = a.clone();
            add_kernel_on(isa, &mut x, &b);
            scale_kernel_on(isa, &mut x, 0.7);
            let mut s = vec![0.0; n];
            swiglu_kernel_on(isa, &mut s, &a, &b);
            let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
            swiglu_backward_kernel_on(isa, &mut dg, &mut du, &a, &b, &c);
            let (mut p, mut m, mut v) = (a.clone(), b.clone(), vec![0.5; n]);
            adamw_kernel_on(isa, &mut p, &c, &mut m, &mut v, &st);
            [x, s, dg, du, p, m, v]
        };
        let want = all(Isa::Portable);
        for isa in Isa::available() {
            assert!(all(isa) == want, "{isa:?}");
        }
    }

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
            let silu = |g: f32| g / (1.0 + softmax::exp(-g));
            let want: Vec<f32> = a.iter().zip(&b).map(|(g, u)| silu(*g) * u).collect();
            assert!(s == want, "swiglu {n}");
            for (g, u) in a.iter().zip(&b) {
                let exact = *g as f64 / (1.0 + (-*g as f64).exp()) * *u as f64;
                assert!(
                    (silu(*g) as f64 * *u as f64 - exact).abs() < 1e-6,
                    "silu({g})"
                );
            }
            let (dg, du) = swiglu_backward(&a, &b, &want);
            for i in 0..n {
                let sig = 1.0 / (1.0 + softmax::exp(-a[i]));
                assert!(du[i] == want[i] * (a[i] * sig), "swiglu_backward {n}");
                let g = want[i] * b[i] * sig * (1.0 + a[i] * (1.0 - sig));
                assert!(dg[i] == g, "swiglu_backward {n}");
            }
            let mut rows = a.clone();
            add_bias(&mut rows, &b[..n.min(7)]);
            if n % n.min(7) == 0 {
                assert!(rows
                    .iter()
                    .enumerate()
                    .all(|(i, r)| *r == a[i] + b[i % n.min(7)]));
            }
            let st = TEST_STEP;
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
