//! Runs that differ only by seed, drawn and summarized as one group: the
//! mean curve with its 95 % band, and mean ± interval of each run's final
//! numbers (`stats`). A run with no twin is a group of one and is shown
//! exactly as before groups existed.

use super::load::{RunData, StepMetrics};
use super::stats::{paired, Paired, Summary};

/// Runs with equal settings (their `config.toml` without seed and run folder).
pub struct Group<'a> {
    /// The legend: the sweep's setting folder when the runs share one,
    /// else the first run's name.
    pub name: String,
    pub estimator: String,
    pub dataset: String,
    pub runs: Vec<&'a RunData>,
}

impl Group<'_> {
    /// Name, estimator and, for a group, its number of seeds.
    pub fn label(&self) -> String {
        if self.runs.len() == 1 {
            self.runs[0].label()
        } else {
            format!(
                "{} ({}, {} seeds)",
                self.name,
                self.estimator,
                self.runs.len()
            )
        }
    }

    /// Each run's `(seed, value)` of `f`; a run whose config.toml names no
    /// seed is left out (it pairs with nothing).
    pub fn per_seed(&self, f: impl Fn(&RunData) -> Option<f64>) -> Vec<(u64, f64)> {
        self.runs
            .iter()
            .filter_map(|r| Some((r.seed?, f(r)?)))
            .collect()
    }

    /// The summary over the group's runs of one number per run.
    pub fn summary(&self, f: impl Fn(&RunData) -> Option<f64>) -> Option<Summary> {
        let values: Vec<f64> = self.runs.iter().filter_map(|r| f(r)).collect();
        Summary::of(&values)
    }

    /// True when a run of the group scored the ground truth.
    pub fn scored(&self) -> bool {
        self.runs.iter().any(|r| r.scored())
    }
}

/// Groups `runs` by setting, in the order each setting first appears.
pub fn group_runs(runs: &[RunData]) -> Vec<Group<'_>> {
    let mut groups: Vec<Group> = Vec::new();
    for r in runs {
        match groups
            .iter_mut()
            .find(|g| g.runs[0].setting == r.setting && g.runs[0].dataset == r.dataset)
        {
            Some(g) => g.runs.push(r),
            None => groups.push(Group {
                name: r.name.clone(),
                estimator: r.estimator.clone(),
                dataset: r.dataset.clone(),
                runs: vec![r],
            }),
        }
    }
    for g in groups.iter_mut().filter(|g| g.runs.len() > 1) {
        let parent = |r: &RunData| {
            r.dir.canonicalize().ok().and_then(|p| {
                p.parent()?
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
        };
        g.name = match parent(g.runs[0]) {
            Some(p) if g.runs.iter().all(|r| parent(r).as_ref() == Some(&p)) => p,
            _ => format!("{} +{}", g.runs[0].name, g.runs.len() - 1),
        };
    }
    groups
}

/// One curve of a group: the mean at each x, and the 95 % interval where
/// at least two runs have a point there.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeanCurve {
    pub points: Vec<(f64, f64)>,
    /// `(x, lo, hi)`.
    pub band: Vec<(f64, f64, f64)>,
}

/// The mean curve of several runs' curves (points at equal x are pooled;
/// NaN values are left out).
pub fn mean_curve(curves: &[Vec<(f64, f64)>]) -> MeanCurve {
    let mut xs: Vec<(f64, Vec<f64>)> = Vec::new();
    for &(x, y) in curves.iter().flatten() {
        if !x.is_finite() {
            continue;
        }
        match xs.iter_mut().find(|(x0, _)| *x0 == x) {
            Some((_, ys)) => ys.push(y),
            None => xs.push((x, vec![y])),
        }
    }
    xs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out = MeanCurve::default();
    for (x, ys) in xs {
        let Some(s) = Summary::of(&ys) else { continue };
        out.points.push((x, s.mean));
        if s.n >= 2 {
            out.band.push((x, s.lo, s.hi));
        }
    }
    out
}

/// The curve of each run of `g` by `f`, pooled into the mean curve.
pub fn group_curve(g: &Group, f: impl Fn(&RunData) -> Vec<(f64, f64)>) -> MeanCurve {
    let curves: Vec<Vec<(f64, f64)>> = g.runs.iter().map(|r| f(r)).collect();
    mean_curve(&curves)
}

/// The per-step curve of a metric.
pub fn step_curve(g: &Group, f: impl Fn(&StepMetrics) -> f64) -> MeanCurve {
    group_curve(g, |r| {
        r.metrics.iter().map(|m| (m.step as f64, f(m))).collect()
    })
}

/// The numbers a sweep is judged by, one value per run.
pub mod per_run {
    use super::RunData;

    /// Dev F1 of the last evaluation.
    pub fn final_f1(r: &RunData) -> Option<f64> {
        r.evals.last().map(|e| e.f1)
    }

    /// The best dev F1 of any evaluation.
    pub fn best_f1(r: &RunData) -> Option<f64> {
        r.evals
            .iter()
            .map(|e| e.f1)
            .filter(|v| v.is_finite())
            .reduce(f64::max)
    }

    /// Mean share of zero-advantage groups over the run's steps.
    pub fn zero_adv(r: &RunData) -> Option<f64> {
        mean(r.metrics.iter().map(|m| m.zero_adv_ratio))
    }

    /// Mean ground-truth entropy drop over the run's steps (`None` when the
    /// estimator does not score turns).
    pub fn gt_entropy_drop(r: &RunData) -> Option<f64> {
        if !r.scored() {
            return None;
        }
        mean(r.metrics.iter().map(|m| m.gt_entropy_drop))
    }

    /// Tokens that produced gradients over the whole run.
    pub fn grad_tokens(r: &RunData) -> Option<f64> {
        r.metrics.last().map(|m| m.cum_grad_tokens as f64)
    }

    fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
        let v: Vec<f64> = values.collect();
        super::Summary::of(&v).map(|s| s.mean)
    }
}

/// Group `a` against group `b` on `f`, over the seeds both ran (`None`
/// when they share no seed, or were evaluated on different dev sets).
pub fn compare(a: &Group, b: &Group, f: impl Fn(&RunData) -> Option<f64>) -> Option<Paired> {
    if a.dataset != b.dataset {
        return None;
    }
    paired(&a.per_seed(&f), &b.per_seed(&f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_curve_pools_equal_steps() {
        let c = mean_curve(&[
            vec![(0.0, 1.0), (5.0, 2.0)],
            vec![(0.0, 3.0), (5.0, 2.0), (10.0, 7.0)],
        ]);
        assert_eq!(c.points, vec![(0.0, 2.0), (5.0, 2.0), (10.0, 7.0)]);
        // Two runs at 0 and 5 (the band), one at 10 (none).
        assert_eq!(c.band.len(), 2);
        let (x, lo, hi) = c.band[0];
        // mean 2, sd sqrt(2), se 1, t(0.975, 1) = 12.706.
        assert_eq!(x, 0.0);
        assert!((hi - 2.0 - 12.706_204_736).abs() < 1e-6 && (lo + hi - 4.0).abs() < 1e-9);
        assert_eq!(c.band[1], (5.0, 2.0, 2.0));
        // A single curve comes back as it is, without a band.
        let one = mean_curve(&[vec![(1.0, 0.5), (2.0, f64::NAN)]]);
        assert_eq!(one.points, vec![(1.0, 0.5)]);
        assert!(one.band.is_empty());
    }
}
