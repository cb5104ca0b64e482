//! Interval arithmetic for runs repeated over seeds: mean, sample standard
//! deviation, standard error and the Student-t 95 % interval of a sample,
//! and the paired comparison of two settings run with the same seeds.
//! Checked against scipy (`tools/reference/intervals.py`,
//! `engine/tests/intervals.rs`).

/// Coverage of every interval the report shows.
pub const CONFIDENCE: f64 = 0.95;

/// A sample's mean with its spread and 95 % interval. With one value the
/// spread and the interval are NaN (shown as "–").
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n - 1 in the denominator).
    pub sd: f64,
    /// Standard error of the mean, `sd / sqrt(n)`.
    pub se: f64,
    /// The Student-t interval `mean ± t(0.975, n-1) se`.
    pub lo: f64,
    pub hi: f64,
}

impl Summary {
    /// The summary of the finite values of `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let xs: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        let n = xs.len();
        if n == 0 {
            return None;
        }
        let mean = xs.iter().sum::<f64>() / n as f64;
        let (sd, se, half) = if n < 2 {
            (f64::NAN, f64::NAN, f64::NAN)
        } else {
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            let sd = var.sqrt();
            let se = sd / (n as f64).sqrt();
            let t = t_quantile(0.5 + CONFIDENCE / 2.0, (n - 1) as f64);
            (sd, se, t * se)
        };
        Some(Summary {
            n,
            mean,
            sd,
            se,
            lo: mean - half,
            hi: mean + half,
        })
    }

    /// Half the interval's width.
    pub fn half_width(&self) -> f64 {
        (self.hi - self.lo) / 2.0
    }
}

/// Setting A against setting B over the seeds both ran: the summary of the
/// per-seed differences `a_s - b_s` and the two-sided p-value of the paired
/// t-test (NaN with fewer than two pairs or no spread).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Paired {
    pub diff: Summary,
    pub p_value: f64,
}

/// Pairs `a` and `b` by seed (`(seed, value)`); seeds only one side ran are
/// left out. `None` when no seed is shared.
pub fn paired(a: &[(u64, f64)], b: &[(u64, f64)]) -> Option<Paired> {
    let diffs: Vec<f64> = a
        .iter()
        .filter_map(|&(seed, x)| {
            let &(_, y) = b.iter().find(|(s, _)| *s == seed)?;
            Some(x - y)
        })
        .filter(|d| d.is_finite())
        .collect();
    let diff = Summary::of(&diffs)?;
    let p_value = if diff.n < 2 || diff.se == 0.0 || !diff.se.is_finite() {
        f64::NAN
    } else {
        let t = diff.mean / diff.se;
        let df = (diff.n - 1) as f64;
        incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    };
    Some(Paired { diff, p_value })
}

/// The `p` quantile of Student's t with `df` degrees of freedom (0 < p < 1).
pub fn t_quantile(p: f64, df: f64) -> f64 {
    // NaN fails every comparison, so it is caught here too.
    let valid = p > 0.0 && p < 1.0 && df > 0.0;
    if !valid {
        return f64::NAN;
    }
    if p == 0.5 {
        return 0.0;
    }
    if p < 0.5 {
        return -t_quantile(1.0 - p, df);
    }
    // The CDF is monotone: bracket, then bisect to the last bit.
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while t_cdf(hi, df) < p {
        lo = hi;
        hi *= 2.0;
        if hi > 1e300 {
            return f64::INFINITY;
        }
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Student's t CDF: `1 - I_x(df/2, 1/2) / 2` with `x = df / (df + t^2)`
/// for `t >= 0`, mirrored below 0.
pub fn t_cdf(t: f64, df: f64) -> f64 {
    let tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t));
    if t >= 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// The regularized incomplete beta function `I_x(a, b)`, by its continued
/// fraction (modified Lentz), using the symmetry `I_x(a,b) = 1 - I_{1-x}(b,a)`
/// where the fraction converges slowly.
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_fraction(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_fraction(b, a, 1.0 - x) / b
    }
}

fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut c = 1.0;
    let mut d = 1.0 - (a + b) * x / (a + 1.0);
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=10_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        // The even step, then the odd step of the fraction.
        for num in [
            m * (b - m) * x / ((a + m2 - 1.0) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0)),
        ] {
            d = 1.0 + num * d;
            if d.abs() < TINY {
                d = TINY;
            }
            c = 1.0 + num / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            h *= d * c;
            if num == 0.0 {
                return h;
            }
        }
        if (d * c - 1.0).abs() < 3.0 * f64::EPSILON {
            break;
        }
    }
    h
}

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, nine terms; ~1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1-x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_of_integers_and_halves() {
        // Γ(n) = (n-1)!, Γ(1/2) = sqrt(π).
        let mut fact = 1.0f64;
        for n in 1..20 {
            assert!((ln_gamma(n as f64) - fact.ln()).abs() < 1e-12, "n={n}");
            fact *= n as f64;
        }
        let half = 0.5 * std::f64::consts::PI.ln();
        assert!((ln_gamma(0.5) - half).abs() < 1e-13);
    }

    #[test]
    fn t_with_one_degree_is_cauchy() {
        // t(1) is the Cauchy distribution: quantile tan(π (p - 1/2)).
        for p in [0.6, 0.9, 0.975, 0.999] {
            let want = (std::f64::consts::PI * (p - 0.5)).tan();
            let got = t_quantile(p, 1.0);
            assert!(
                (got - want).abs() < 1e-9 * want.abs().max(1.0),
                "{p}: {got} vs {want}"
            );
        }
        assert_eq!(t_quantile(0.5, 3.0), 0.0);
        assert!((t_quantile(0.025, 4.0) + t_quantile(0.975, 4.0)).abs() < 1e-12);
        assert!(t_quantile(1.0, 3.0).is_nan() && t_quantile(0.9, 0.0).is_nan());
    }

    #[test]
    fn small_samples() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[f64::NAN]), None);
        let one = Summary::of(&[0.4]).unwrap();
        assert_eq!((one.n, one.mean), (1, 0.4));
        assert!(one.sd.is_nan() && one.lo.is_nan() && one.hi.is_nan());
        // NaN values are left out.
        let s = Summary::of(&[1.0, f64::NAN, 3.0]).unwrap();
        assert_eq!((s.n, s.mean), (2, 2.0));
        assert!((s.sd - 2f64.sqrt()).abs() < 1e-12);
        // Identical values: zero width, no p-value.
        let p = paired(&[(0, 1.0), (1, 2.0)], &[(0, 0.5), (1, 1.5)]).unwrap();
        assert_eq!((p.diff.mean, p.diff.sd, p.diff.lo), (0.5, 0.0, 0.5));
        assert!(p.p_value.is_nan());
        // Seeds only one side ran are left out.
        let p = paired(&[(0, 1.0), (7, 9.0)], &[(0, 0.5), (1, 1.5)]).unwrap();
        assert_eq!(p.diff.n, 1);
        assert_eq!(paired(&[(3, 1.0)], &[(4, 1.0)]), None);
    }
}
