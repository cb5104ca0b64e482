//! The backend conformance suite: one generic test body per op of
//! [`Backend`], instantiated for every backend (`cpu/conformance_tests.rs`
//! for [`Cpu`](crate::backend::Cpu); `cuda/tests.rs` for
//! [`Cuda`](crate::backend::Cuda), where a GPU is present).
//!
//! # The rules every op must satisfy
//! - **Forward against float64.** Every output equals the float64 loops of
//!   `reference.rs`, computed from the inputs as downloaded, within the
//!   backend's tolerance: `max |got - want| <= tol * max |want|` (the same
//!   measure the CUDA tests always used). Test inputs are rounded to bf16, so
//!   both backends start from exactly the values the reference sees.
//! - **Backward against finite differences.** Every gradient equals the
//!   reference's analytic gradient on every element (same measure), and at
//!   32 coordinates spread over the tensor both equal central differences of
//!   the float64 reference's scalar probe `L = sum(out * dy)` (the reference
//!   within 1e-6 of the largest gradient: it checks `reference.rs` itself).
//!   Backwards that add into a gradient (`dw`, `db`, `dtable`) start from a
//!   non-zero buffer.
//! - **Determinism.** The same call twice gives the same bits (no kernel uses
//!   floating-point atomics).
//! - **Batch invariance, where promised.** A sequence's rows of
//!   `cached_attention` / `paged_attention` are the bits it gets alone (and
//!   the batched CUDA launch gives the per-sequence default's bits); on the
//!   CPU ([`Tol::exact`]) a linear layer's and the fused log-prob's output
//!   rows never depend on the batch (ARCHITECTURE.md), the paged cache gives
//!   the contiguous cache's bits and a head norm is the row norm of its view.
//! - **Exact ops are exact.** Row moves (`gather/slice/concat/append_rows`,
//!   `write_kv`, `embedding`) give the input bits; `embedding_backward` gives
//!   the bits of f32 additions in the order of the ids.
//!
//! # Tolerances
//! [`Tol::CPU`]: the reference backend computes in f32 (sums of up to 151,936
//! terms), so 1e-5 of the largest value, forward and backward (the worst
//! seen is 6.4e-7, attention's `dq`).
//! [`Tol::CUDA`]: activations are bf16 (8 bits of mantissa, 2^-9 relative
//! rounding of every stored value) with f32 accumulation, so 2e-2 forward and
//! backward, 3e-2 for the fused log-prob's backward (its `dlogits` are rounded
//! to bf16 before two GEMMs) and 5e-2 for attention's backward (the kernels'
//! own tests allow 2e-2 of the largest plus 1/32 of each value); AdamW runs
//! on f32 master weights (1e-6); these are the bounds `cuda/tests.rs` held
//! the GPU to against the CPU before this suite.

#![allow(clippy::single_range_in_vec_init)]

mod ops;
pub(crate) mod reference;

pub(crate) use ops::*;

use crate::rng::Rng;
use crate::tensor::Tensor;

/// How close a backend must come to the float64 reference, and which
/// bitwise promises it makes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tol {
    /// Forward outputs, relative to the largest reference value.
    pub fwd: f64,
    /// Gradients (linear, norms, RoPE, SwiGLU, embedding).
    pub bwd: f64,
    /// Sums of an input's rows (linear's `db`).
    pub sum: f64,
    /// Attention's `dq`, `dk`, `dv`.
    pub attn_bwd: f64,
    /// The fused log-prob's `dh`, `dw`.
    pub logprob_bwd: f64,
    /// AdamW's parameters and moments (f32 master weights everywhere).
    pub optim: f64,
    /// Rows (of 48, per setting) whose inverse-CDF pick may differ from the
    /// reference's when the logits are a GEMM's output: a uniform within
    /// ~1e-9 of a boundary of the cumulative mass may pick the neighbour.
    pub sample_misses: usize,
    /// The f32 reference's bitwise promises (see the module doc).
    pub exact: bool,
}

impl Tol {
    pub(crate) const CPU: Tol = Tol {
        fwd: 1e-5,
        bwd: 1e-5,
        sum: 1e-5,
        attn_bwd: 1e-5,
        logprob_bwd: 1e-5,
        optim: 1e-6,
        sample_misses: 0,
        exact: true,
    };
    pub(crate) const CUDA: Tol = Tol {
        fwd: 2e-2,
        bwd: 2e-2,
        sum: 1e-2,
        attn_bwd: 5e-2,
        logprob_bwd: 3e-2,
        optim: 1e-6,
        sample_misses: 2,
        exact: false,
    };
}

/// A tensor of normal values times `scale`, rounded to bf16 (so every
/// backend holds exactly these values).
pub(crate) fn input(rng: &mut Rng, shape: &[usize], scale: f64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(
        shape,
        (0..n)
            .map(|_| half::bf16::from_f64(rng.normal() * scale).to_f32())
            .collect(),
    )
}

/// The values of `t` as f64.
pub(crate) fn f64s(t: &Tensor) -> Vec<f64> {
    t.data().iter().map(|&v| v as f64).collect()
}

/// `max |got - want| <= rel * max |want|` (printed, like the CUDA tests).
pub(crate) fn close(name: &str, got: &Tensor, want: &[f64], rel: f64) {
    assert_eq!(got.numel(), want.len(), "{name}: length");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let (mut worst, mut at) = (0.0f64, 0);
    for (i, (&g, &w)) in got.data().iter().zip(want).enumerate() {
        let e = (g as f64 - w).abs();
        if e > worst || e.is_nan() {
            (worst, at) = (e, i);
        }
    }
    eprintln!("{name}: max error {worst:.3e} (scale {scale:.3e})");
    assert!(
        worst <= rel * scale,
        "{name}: max error {worst:.3e} > {rel} x {scale:.3e} at {at}: got {}, want {}",
        got.data()[at],
        want[at]
    );
}

/// The same bits.
pub(crate) fn same_bits(name: &str, a: &Tensor, b: &Tensor) {
    assert_eq!(a.shape(), b.shape(), "{name}: shape");
    let differ = a
        .data()
        .iter()
        .zip(b.data())
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    assert!(differ == 0, "{name}: {differ} values differ in their bits");
}

/// The 32 coordinates of an `n`-element tensor a gradient is checked at by
/// finite differences.
fn fd_coordinates(n: usize) -> impl Iterator<Item = usize> {
    (0..32.min(n)).map(move |t| (t * 7919 + 13) % n)
}

/// The step of the central differences (f64 inputs: truncation ~1e-8).
const FD_EPS: f64 = 1e-4;

/// A gradient `got` (the backend's) against the reference's analytic one
/// `want` on every element, and both against central differences of the
/// reference loss at 32 coordinates: `loss(i, delta)` is the float64 probe
/// with input element `i` moved by `delta`.
pub(crate) fn grad(
    name: &str,
    got: &Tensor,
    want: &[f64],
    rel: f64,
    loss: impl Fn(usize, f64) -> f64,
) {
    close(name, got, want, rel);
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    for i in fd_coordinates(want.len()) {
        let fd = (loss(i, FD_EPS) - loss(i, -FD_EPS)) / (2.0 * FD_EPS);
        assert!(
            (want[i] - fd).abs() <= 1e-6 * scale,
            "{name}[{i}]: the reference's gradient {} vs its finite difference {fd}",
            want[i]
        );
        let g = got.data()[i] as f64;
        assert!(
            (g - fd).abs() <= rel * scale + 1e-6 * scale,
            "{name}[{i}]: backward {g} vs finite difference {fd} (scale {scale:.3e})"
        );
    }
}

/// `x` with element `i` moved by `delta`.
pub(crate) fn moved(x: &[f64], i: usize, delta: f64) -> Vec<f64> {
    let mut y = x.to_vec();
    y[i] += delta;
    y
}
