//! The fused log-prob's per-logit work, `exp` included, in loops that
//! vectorize: a branch-free f32 `exp` (instead of libm's, one call per
//! logit, 100 M of them in a 2,048 x 49,152 scoring pass), sums in fixed
//! lanes of f64, compiled for the process's instruction set (`Isa`).
//!
//! Every operation is an IEEE-rounded add or multiply in a fixed order (no
//! FMA contraction, no reassociation), so the results are the same bits
//! whichever instruction set runs them.

use super::isa::simd_fn;

/// Lanes of the f64 partial sums: one vector of f32 under AVX-512.
const LANES: usize = 16;

/// `e^x` in f32 for `x <= 88` (the arguments here are `z - max` or
/// `z - lse`, at most a rounding above 0), within ~2 ulp; below -87 it
/// returns e^-87 (~1.6e-38: nothing next to the row maximum's 1); NaN stays
/// NaN. Cody-Waite reduction `x = n ln 2 + r`, a degree-6 polynomial for
/// `e^r` on `|r| <= ln2 / 2` (Cephes' `expf` coefficients), `2^n` built in
/// the exponent bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Comparisons written so NaN falls through unchanged.
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    // Round to nearest with the 1.5 * 2^23 trick (no libm call, SSE2 too).
    const ROUND: f32 = 12_582_912.0;
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = (x - n * 0.693_359_4) - n * -2.121_944_4e-4;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * (r * r) + r + 1.0;
    // 2^n for n in [-126, 127]; NaN converts to 0 (e is NaN anyway).
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    e * scale
}

simd_fn! {
/// The largest value of a row chunk (-inf for an empty one; NaN values are
/// skipped, as `f32::max` does). Max is exact in any order: 16 lanes, so it
/// vectorizes.
pub fn max [max_on] (z: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let blocks = z.chunks_exact(LANES);
    let tail = blocks.remainder();
    for block in blocks {
        for l in 0..LANES {
            // `a > b` instead of `f32::max`: a plain compare + select.
            m[l] = if block[l] > m[l] { block[l] } else { m[l] };
        }
    }
    tail.iter()
        .chain(m.iter())
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}
}

simd_fn! {
/// `(sum e^(z - max), sum e^(z - max) * z)` over a row chunk, in f64.
pub fn exp_sums [exp_sums_on] (z: &[f32], max: f32) -> (f64, f64) {
    let (mut s, mut zs) = ([0.0f64; LANES], [0.0f64; LANES]);
    let blocks = z.chunks_exact(LANES);
    let tail = blocks.remainder();
    for block in blocks {
        for l in 0..LANES {
            let e = exp(block[l] - max) as f64;
            s[l] += e;
            zs[l] += e * block[l] as f64;
        }
    }
    for (l, &v) in tail.iter().enumerate() {
        let e = exp(v - max) as f64;
        s[l] += e;
        zs[l] += e * v as f64;
    }
    (tree_sum(s), tree_sum(zs))
}
}

/// The lanes added in a fixed tree (halves added pairwise): the one lane
/// reduction of the CPU kernels' fixed-lane sums.
#[inline(always)]
pub(super) fn tree_sum<T: Copy + std::ops::AddAssign, const N: usize>(mut v: [T; N]) -> T {
    debug_assert!(N.is_power_of_two());
    let mut width = N;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            v[l] += v[l + width];
        }
    }
    v[0]
}

/// The backward's `dz` over a row chunk, in place (`z` becomes `dz`):
/// `p = e^(z - lse)`, `dz = -g p (+ g at the target) - ge p (log p + H)`.
/// `target`: the target's index inside this chunk, if it falls in it.
pub fn softmax_grad(
    z: &mut [f32],
    lse: f32,
    g: f32,
    entropy: Option<(f32, f32)>,
    target: Option<usize>,
) {
    softmax_grad_row(z, lse, g, entropy);
    if let Some(t) = target {
        z[t] += g;
    }
}

simd_fn! {
fn softmax_grad_row [softmax_grad_row_on] (z: &mut [f32], lse: f32, g: f32, entropy: Option<(f32, f32)>) {
    match entropy {
        None => {
            for v in z.iter_mut() {
                *v = -g * exp(*v - lse);
            }
        }
        Some((h, ge)) => {
            for v in z.iter_mut() {
                let logp = *v - lse;
                let p = exp(logp);
                *v = -g * p - ge * p * (logp + h);
            }
        }
    }
}
}

#[cfg(test)]
mod tests {
    use super::super::isa::Isa;
    use super::*;

    /// Within 2 ulp-ish (relative 2.5e-7) of the f64 exponential over the
    /// whole range the log-prob uses, NaN kept, the far left flushed to ~0.
    #[test]
    fn exp_is_accurate_where_the_softmax_needs_it() {
        let mut worst = 0.0f64;
        for i in 0..=2_000_000 {
            let x = -87.0 + 88.5 * i as f32 / 2_000_000.0;
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
        }
        eprintln!("worst relative error on [-87, 1.5]: {worst:e}");
        assert!(worst < 2.5e-7, "worst relative error {worst:e}");
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(f32::NEG_INFINITY) < 2e-38);
        assert!(exp(-1000.0) < 2e-38);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn max_skips_nan_and_sees_every_lane_and_the_tail() {
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        for n in [1, 15, 16, 17, 40] {
            for at in 0..n {
                let mut z: Vec<f32> = (0..n).map(|i| -(i as f32)).collect();
                z[at] = 3.5;
                if n > 1 {
                    z[(at + 1) % n] = f32::NAN;
                }
                assert_eq!(max(&z), 3.5, "n {n}, max at {at}");
            }
        }
    }

    fn row(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 2003) as f32 - 1001.0) * 0.013)
            .collect()
    }

    /// The sums equal an f64 reference, and every instruction set gives the
    /// same bits (the ops and their order are fixed).
    #[test]
    fn exp_sums_match_f64_and_agree_across_instruction_sets() {
        for n in [1, 15, 16, 17, 1000, 8192] {
            let z = row(n);
            let max = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let (s, zs) = exp_sums_on(Isa::Portable, &z, max);
            let want_s: f64 = z.iter().map(|&v| ((v - max) as f64).exp()).sum();
            let want_zs: f64 = z.iter().map(|&v| ((v - max) as f64).exp() * v as f64).sum();
            assert!((s - want_s).abs() < 1e-6 * want_s, "n {n}: {s} vs {want_s}");
            assert!(
                (zs - want_zs).abs() < 1e-6 * want_s.max(want_zs.abs()),
                "n {n}"
            );
            for isa in Isa::available() {
                let got = exp_sums_on(isa, &z, max);
                assert!(got == (s, zs), "{isa:?}, n {n}");
            }
        }
    }

    /// `dz` is the softmax gradient of the formula, the same bits on every
    /// instruction set.
    #[test]
    fn softmax_grad_matches_the_formula() {
        let z = row(37);
        let max = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max + z.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        let h = -z
            .iter()
            .map(|&v| (v as f64 - lse).exp() * (v as f64 - lse))
            .sum::<f64>();
        let (g, ge, t) = (0.7f32, -0.3f32, 5);
        let mut dz = z.clone();
        softmax_grad(&mut dz, lse as f32, g, Some((h as f32, ge)), Some(t));
        for (j, (&d, &v)) in dz.iter().zip(&z).enumerate() {
            let logp = v as f64 - lse;
            let p = logp.exp();
            let onehot = if j == t { 1.0 } else { 0.0 };
            let want = g as f64 * (onehot - p) - ge as f64 * p * (logp + h);
            assert!((d as f64 - want).abs() < 1e-6, "{j}: {d} vs {want}");
        }
        for isa in Isa::available() {
            let mut other = z.clone();
            softmax_grad_row_on(isa, &mut other, lse as f32, g, Some((h as f32, ge)));
            other[t] += g;
            assert!(other == dz, "{isa:?}");
        }
    }
}
