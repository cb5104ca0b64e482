//! AdamW with decoupled weight decay and bias correction over f32 master
//! weights, global-norm gradient clipping, its state optionally sharded over
//! data-parallel ranks (ZeRO-1), and the learning-rate schedule.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::backend::{clip_factor, AdamWStep, Backend};
use crate::dist::{Collective, CommError};
use crate::tensor::Tensor;

/// Optimizer settings (`[optim]` in a run config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay (AdamW), applied to parameters not matched by `no_decay`.
    pub weight_decay: f64,
    /// Parameters whose name contains any of these substrings get no weight decay.
    pub no_decay: Vec<String>,
    /// Clip the global gradient norm to this value; 0 disables clipping.
    pub grad_clip: f64,
    /// Stop the run after this many updates in a row were skipped for a
    /// non-finite loss, gradient norm, advantage or log-prob (`train::guard`).
    pub max_consecutive_skips: u32,
    /// Data parallel: 0 keeps the whole AdamW state on every rank; 1 shards
    /// it (ZeRO-1): each rank keeps the moments of, and updates, its share
    /// of the parameters, then sends the updated weights to the others.
    pub zero_stage: u8,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 1e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            no_decay: vec!["norm".into(), "bias".into()],
            grad_clip: 1.0,
            max_consecutive_skips: 5,
            zero_stage: 0,
        }
    }
}

impl OptimConfig {
    /// The settings' own rules, as the run file's one error line.
    pub fn check(&self) -> Result<(), String> {
        if self.lr.is_nan() || self.lr < 0.0 {
            return Err("optim.lr must be >= 0".into());
        }
        if self.max_consecutive_skips == 0 {
            return Err("optim.max_consecutive_skips must be >= 1".into());
        }
        if self.zero_stage > 1 {
            return Err(format!(
                "optim.zero_stage = {}: 0 (replicated) or 1 (AdamW state sharded over the \
                 ranks); stage 2 (gradients sharded too) is not built",
                self.zero_stage
            ));
        }
        Ok(())
    }
}

/// Learning-rate schedule (`[schedule]`): linear warmup, then constant or cosine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    pub warmup_steps: u64,
    /// "constant" or "cosine".
    pub kind: ScheduleKind,
    /// Cosine decays to `lr * min_lr_ratio` at the last step.
    pub min_lr_ratio: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Constant,
    Cosine,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            warmup_steps: 0,
            kind: ScheduleKind::Constant,
            min_lr_ratio: 0.0,
        }
    }
}

impl ScheduleConfig {
    /// Learning rate of optimizer step `step` (1-based) out of `total`.
    pub fn lr(&self, peak: f64, step: u64, total: u64) -> f64 {
        if step <= self.warmup_steps && self.warmup_steps > 0 {
            return peak * step as f64 / self.warmup_steps as f64;
        }
        match self.kind {
            ScheduleKind::Constant => peak,
            ScheduleKind::Cosine => {
                let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
                let t = (step.saturating_sub(self.warmup_steps) as f64 / span).min(1.0);
                let min = peak * self.min_lr_ratio;
                min + (peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

/// AdamW state: first and second moments per parameter, and the step count.
pub struct AdamW<B: Backend> {
    pub config: OptimConfig,
    /// Moments of what this process updates: the whole parameter, the rows
    /// of it [`Shards`] give this rank, or an empty tensor.
    pub m: Vec<B::Tensor>,
    pub v: Vec<B::Tensor>,
    /// Optimizer steps taken so far.
    pub step: u64,
    decay: Vec<bool>,
    shapes: Vec<Vec<usize>>,
    shards: Option<Shards>,
}

/// ZeRO-1: the rows of each parameter whose moments each rank keeps and
/// which it updates (`dist::partition_rows`: equal shares of the model's
/// values), and which rank this is. A parameter of one dimension is one
/// row.
#[derive(Clone, Debug, PartialEq)]
pub struct Shards {
    /// Per parameter, per rank.
    pub rows: Vec<Vec<Range<usize>>>,
    pub rank: usize,
}

impl Shards {
    /// Equal shares of parameters shaped `shapes` over `ranks`, as `rank`.
    pub fn even(shapes: &[Vec<usize>], ranks: usize, rank: usize) -> Shards {
        let m: Vec<(usize, usize)> = shapes.iter().map(|s| matrix(s)).collect();
        Shards {
            rows: crate::dist::partition_rows(&m, ranks),
            rank,
        }
    }

    fn mine(&self, i: usize) -> Range<usize> {
        self.rows[i][self.rank].clone()
    }
}

/// A parameter as `(rows, cols)`: its first dimension by the rest (one
/// row when it has one dimension).
fn matrix(shape: &[usize]) -> (usize, usize) {
    match shape {
        [rows, rest @ ..] if !rest.is_empty() => (*rows, rest.iter().product()),
        _ => (1, shape.iter().product()),
    }
}

/// What one optimizer step did.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    /// Global gradient norm before clipping (of the averaged gradient).
    pub grad_norm: f64,
    pub lr: f64,
    /// False when the norm was not finite: nothing changed (the step count
    /// included).
    pub applied: bool,
}

impl<B: Backend> AdamW<B> {
    /// Fresh state for parameters `params` named `names`.
    pub fn new(
        backend: &B,
        config: OptimConfig,
        names: &[String],
        params: &[B::Tensor],
    ) -> AdamW<B> {
        Self::with_shards(backend, config, names, params, None)
    }

    /// Fresh state that keeps moments only for the rows `shards` gives
    /// this rank (for all of every parameter without).
    pub fn with_shards(
        backend: &B,
        config: OptimConfig,
        names: &[String],
        params: &[B::Tensor],
        shards: Option<Shards>,
    ) -> AdamW<B> {
        let shapes: Vec<Vec<usize>> = params.iter().map(|p| backend.shape(p).to_vec()).collect();
        let kept = |i: usize| -> Vec<usize> {
            match &shards {
                None => shapes[i].clone(),
                Some(s) => piece_shape(&shapes[i], s.mine(i)),
            }
        };
        let zeros = || {
            (0..params.len())
                .map(|i| backend.zeros(&kept(i)))
                .collect::<Vec<_>>()
        };
        let decay = names
            .iter()
            .map(|n| !config.no_decay.iter().any(|pat| n.contains(pat.as_str())))
            .collect();
        AdamW {
            m: zeros(),
            v: zeros(),
            step: 0,
            decay,
            shapes,
            shards,
            config,
        }
    }

    /// The values this process keeps moments for, and those of all
    /// parameters.
    pub fn kept_values(&self) -> (usize, usize) {
        let all = self
            .shapes
            .iter()
            .map(|s| s.iter().product::<usize>())
            .sum();
        let kept = match &self.shards {
            None => all,
            Some(s) => (0..self.shapes.len())
                .map(|i| s.mine(i).len() * matrix(&self.shapes[i]).1)
                .sum(),
        };
        (kept, all)
    }

    /// Sets parameter `i`'s moments from the whole `m` and `v` (a
    /// checkpoint's), keeping the rows this process keeps.
    pub fn set_moments(&mut self, backend: &B, i: usize, m: &Tensor, v: &Tensor) {
        let span = self.shards.as_ref().map(|s| s.mine(i));
        let (_, cols) = matrix(&self.shapes[i]);
        for (src, dst) in [(m, &mut self.m[i]), (v, &mut self.v[i])] {
            *dst = match &span {
                None => backend.upload(src),
                Some(span) => backend.upload(&Tensor::from_vec(
                    &piece_shape(&self.shapes[i], span.clone()),
                    src.data()[span.start * cols..span.end * cols].to_vec(),
                )),
            };
        }
    }

    /// Whether each parameter gets weight decay.
    pub fn decays(&self) -> &[bool] {
        &self.decay
    }

    /// One update with the gradients `grads` (sums over `accumulated`
    /// micro-batches, averaged here), clipping by global norm first. A
    /// gradient whose norm is not finite changes nothing (`applied` false).
    /// State sharded over ranks updates through [`AdamW::update_over`].
    pub fn update(
        &mut self,
        backend: &B,
        params: &mut [B::Tensor],
        grads: &[B::Tensor],
        lr: f64,
        accumulated: usize,
    ) -> StepStats {
        assert!(
            self.shards.is_none(),
            "sharded AdamW state updates through update_over"
        );
        self.apply(backend, params, grads, lr, accumulated).0
    }

    /// [`AdamW::update`] in a data-parallel job: with sharded state each
    /// rank updates its rows and broadcasts them, so every rank holds the
    /// whole updated model again.
    pub fn update_over(
        &mut self,
        backend: &B,
        comm: &dyn Collective,
        params: &mut [B::Tensor],
        grads: &[B::Tensor],
        lr: f64,
        accumulated: usize,
    ) -> Result<StepStats, CommError> {
        let (s, mut pieces) = self.apply(backend, params, grads, lr, accumulated);
        if let (Some(shards), true) = (&self.shards, s.applied) {
            for (i, p) in params.iter_mut().enumerate() {
                let mine = match pieces[i].take() {
                    Some(piece) => backend.download(&piece),
                    None if shards.mine(i).is_empty() => Tensor::zeros(&[0]),
                    None => backend.download(p),
                };
                let whole = assemble(&self.shapes[i], &shards.rows[i], comm, shards.rank, mine)?;
                *p = backend.upload(&whole);
            }
        }
        Ok(s)
    }

    /// The step: the global norm, then AdamW on what this process updates.
    /// Returns the rows it updated apart from their parameter (ZeRO-1), by
    /// parameter.
    fn apply(
        &mut self,
        backend: &B,
        params: &mut [B::Tensor],
        grads: &[B::Tensor],
        lr: f64,
        accumulated: usize,
    ) -> (StepStats, Vec<Option<B::Tensor>>) {
        assert_eq!(
            params.len(),
            grads.len(),
            "adamw: one gradient per parameter"
        );
        let avg = 1.0 / accumulated.max(1) as f64;
        self.step += 1;
        let c = &self.config;
        let t = self.step as i32;
        let steps: Vec<AdamWStep> = self
            .decay
            .iter()
            .map(|&decay| AdamWStep {
                lr: lr as f32,
                beta1: c.beta1 as f32,
                beta2: c.beta2 as f32,
                eps: c.eps as f32,
                weight_decay: if decay { c.weight_decay as f32 } else { 0.0 },
                bias_correction1: (1.0 - c.beta1.powi(t)) as f32,
                bias_correction2: (1.0 - c.beta2.powi(t)) as f32,
                grad_scale: 1.0, // set by adamw_clipped: avg x clip factor
            })
            .collect();
        let mut pieces: Vec<Option<B::Tensor>> = (0..params.len()).map(|_| None).collect();
        let grad_norm = match &self.shards {
            None => backend.adamw_clipped(
                params,
                grads,
                (&mut self.m, &mut self.v),
                &steps,
                avg,
                c.grad_clip,
            ),
            // Every rank holds every summed gradient: the norm is the whole
            // model's (`Backend::adamw_clipped`'s default arithmetic, so a
            // CPU run's bits are plain data parallelism's); AdamW is
            // elementwise, so updating rows apart gives the same bits.
            Some(shards) => {
                let sq: f64 = grads.iter().map(|g| backend.sum_squares(g)).sum();
                let grad_norm = sq.sqrt() * avg;
                if grad_norm.is_finite() {
                    let clip = clip_factor(grad_norm, c.grad_clip);
                    for (i, p) in params.iter_mut().enumerate() {
                        let mine = shards.mine(i);
                        let step = AdamWStep {
                            grad_scale: (avg * clip) as f32,
                            ..steps[i]
                        };
                        let (m, v) = (&mut self.m[i], &mut self.v[i]);
                        if mine.len() == matrix(&self.shapes[i]).0 {
                            backend.adamw(p, &grads[i], m, v, &step);
                        } else if !mine.is_empty() {
                            let mut rows = backend.slice_rows(p, mine.clone());
                            let g = backend.slice_rows(&grads[i], mine);
                            backend.adamw(&mut rows, &g, m, v, &step);
                            pieces[i] = Some(rows);
                        }
                    }
                }
                grad_norm
            }
        };
        let applied = grad_norm.is_finite();
        if !applied {
            self.step -= 1;
        }
        let stats = StepStats {
            grad_norm,
            lr,
            applied,
        };
        (stats, pieces)
    }

    /// Every parameter's moments `(m, v)` on the host of rank 0 (`None` on
    /// the others), for a checkpoint: with sharded state each rank
    /// broadcasts its rows, one parameter at a time. Every rank calls it.
    pub fn host_moments(
        &self,
        backend: &B,
        comm: &dyn Collective,
    ) -> Result<Option<Vec<(Tensor, Tensor)>>, CommError> {
        let Some(s) = &self.shards else {
            return Ok((comm.rank() == 0).then(|| {
                let pairs = self.m.iter().zip(&self.v);
                pairs
                    .map(|(m, v)| (backend.download(m), backend.download(v)))
                    .collect()
            }));
        };
        let mut out = vec![];
        for i in 0..self.shapes.len() {
            let [m, v] = [&self.m[i], &self.v[i]].map(|t| {
                assemble(
                    &self.shapes[i],
                    &s.rows[i],
                    comm,
                    s.rank,
                    backend.download(t),
                )
            });
            if comm.rank() == 0 {
                out.push((m?, v?));
            }
        }
        Ok((comm.rank() == 0).then_some(out))
    }
}

/// The shape of rows `span` of a parameter shaped `shape`.
fn piece_shape(shape: &[usize], span: Range<usize>) -> Vec<usize> {
    let (rows, _) = matrix(shape);
    match span.len() {
        0 => vec![0],
        n if n == rows => shape.to_vec(),
        n => [&[n][..], &shape[1..]].concat(),
    }
}

/// A whole parameter-shaped tensor from every rank's rows (`spans`, per
/// rank): `mine` holds this rank's. Each rank broadcasts its rows in turn.
fn assemble(
    shape: &[usize],
    spans: &[Range<usize>],
    comm: &dyn Collective,
    rank: usize,
    mine: Tensor,
) -> Result<Tensor, CommError> {
    let (rows, cols) = matrix(shape);
    if spans[rank].len() == rows {
        // This rank holds it whole: the others take it from here.
        let mut mine = mine;
        comm.broadcast(mine.data_mut(), rank)?;
        return Ok(mine);
    }
    let mut whole = vec![0.0f32; rows * cols];
    for (r, span) in spans.iter().enumerate() {
        if span.is_empty() {
            continue;
        }
        let dst = &mut whole[span.start * cols..span.end * cols];
        if r == rank {
            dst.copy_from_slice(mine.data());
        }
        comm.broadcast(dst, r)?;
    }
    Ok(Tensor::from_vec(shape, whole))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;
    use crate::tensor::Tensor;

    #[test]
    fn schedule_warms_up_then_decays() {
        let s = ScheduleConfig {
            warmup_steps: 10,
            kind: ScheduleKind::Cosine,
            min_lr_ratio: 0.1,
        };
        assert!((s.lr(1.0, 5, 110) - 0.5).abs() < 1e-12);
        assert!((s.lr(1.0, 10, 110) - 1.0).abs() < 1e-12);
        assert!((s.lr(1.0, 60, 110) - 0.55).abs() < 1e-12);
        assert!((s.lr(1.0, 110, 110) - 0.1).abs() < 1e-12);
        let c = ScheduleConfig::default();
        assert_eq!(c.lr(2.0, 1, 5), 2.0);
    }

    /// Two steps of AdamW against the update written out by hand (the
    /// PyTorch `torch.optim.AdamW` formulas).
    #[test]
    fn adamw_matches_the_formulas() {
        let cfg = OptimConfig {
            lr: 0.1,
            weight_decay: 0.5,
            grad_clip: 0.0,
            no_decay: vec!["bias".into()],
            ..OptimConfig::default()
        };
        let names = vec!["w".to_string(), "b.bias".to_string()];
        let mut params = vec![
            Tensor::from_vec(&[2], vec![1.0, -2.0]),
            Tensor::from_vec(&[1], vec![3.0]),
        ];
        let grads = vec![
            Tensor::from_vec(&[2], vec![0.5, -1.0]),
            Tensor::from_vec(&[1], vec![2.0]),
        ];
        let mut opt = AdamW::new(&Cpu, cfg.clone(), &names, &params);
        let mut want = [1.0f64, -2.0, 3.0];
        let g = [0.5f64, -1.0, 2.0];
        let (mut m, mut v) = ([0.0f64; 3], [0.0f64; 3]);
        for t in 1..=2 {
            opt.update(&Cpu, &mut params, &grads, cfg.lr, 1);
            for i in 0..3 {
                let wd = if i < 2 { cfg.weight_decay } else { 0.0 };
                want[i] *= 1.0 - cfg.lr * wd;
                m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * g[i];
                v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g[i] * g[i];
                let mh = m[i] / (1.0 - cfg.beta1.powi(t));
                let vh = v[i] / (1.0 - cfg.beta2.powi(t));
                want[i] -= cfg.lr * mh / (vh.sqrt() + cfg.eps);
            }
        }
        let got = [
            params[0].data()[0],
            params[0].data()[1],
            params[1].data()[0],
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let cfg = OptimConfig {
            lr: 1.0,
            weight_decay: 0.0,
            grad_clip: 1.0,
            beta1: 0.0,
            beta2: 0.0,
            eps: 0.0,
            ..OptimConfig::default()
        };
        // With beta1 = beta2 = 0, AdamW moves by lr * g / |g| = lr * sign(g):
        // clipping does not change that, but the reported norm is pre-clip.
        let names = vec!["w".to_string()];
        let mut p = vec![Tensor::from_vec(&[2], vec![0.0, 0.0])];
        let g = vec![Tensor::from_vec(&[2], vec![6.0, 8.0])];
        let mut opt = AdamW::new(&Cpu, cfg, &names, &p);
        let s = opt.update(&Cpu, &mut p, &g, 1.0, 2);
        assert!(
            (s.grad_norm - 5.0).abs() < 1e-9,
            "norm of the averaged gradient"
        );
        assert!((p[0].data()[0] + 1.0).abs() < 1e-6 && (p[0].data()[1] + 1.0).abs() < 1e-6);
    }

    /// A NaN or infinite gradient leaves weights, moments and the step
    /// count as they were; the next finite one updates as if it never came.
    #[test]
    fn a_non_finite_gradient_changes_nothing() {
        let cfg = OptimConfig::default();
        let names = vec!["w".to_string()];
        let start = vec![Tensor::from_vec(&[2], vec![0.5, -1.0])];
        let good = vec![Tensor::from_vec(&[2], vec![0.1, 0.2])];
        let mut clean = start.clone();
        let mut opt = AdamW::new(&Cpu, cfg.clone(), &names, &clean);
        opt.update(&Cpu, &mut clean, &good, 1e-2, 1);
        for bad in [f32::NAN, f32::INFINITY] {
            let mut p = start.clone();
            let mut opt2 = AdamW::new(&Cpu, cfg.clone(), &names, &p);
            let g = vec![Tensor::from_vec(&[2], vec![bad, 0.2])];
            let s = opt2.update(&Cpu, &mut p, &g, 1e-2, 1);
            assert!(!s.applied && !s.grad_norm.is_finite());
            assert_eq!(opt2.step, 0);
            assert_eq!(p[0].data(), start[0].data());
            assert!(opt2.m[0]
                .data()
                .iter()
                .chain(opt2.v[0].data())
                .all(|&x| x == 0.0));
            assert!(opt2.update(&Cpu, &mut p, &good, 1e-2, 1).applied);
            assert_eq!(p[0].data(), clean[0].data());
            assert_eq!(opt2.step, opt.step);
        }
    }
}
