//! AdamW with decoupled weight decay and bias correction over f32 master
//! weights, global-norm gradient clipping, its state optionally sharded over
//! data-parallel ranks (ZeRO-1, and ZeRO-2's reduce-scatter of the
//! gradients), and the learning-rate schedule.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::backend::{clip_factor, AdamWStep, Backend};
use crate::dist::buckets::{BucketPlan, Summed};
use crate::dist::{as_matrix, rows_shape, Collective, CommError};
use crate::model::Model;
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
    /// of the parameters, then sends the updated weights to the others; 2
    /// also reduces the gradients to their owners only (reduce-scatter).
    pub zero_stage: u8,
    /// Data parallel: the ranks' gradients are summed in buckets of about
    /// this many MiB while the backward still runs (each bucket as soon as
    /// the backward is done with it); 0 sums them all after the backward.
    pub bucket_mb: f64,
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
            bucket_mb: 25.0,
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
        if !(self.bucket_mb >= 0.0 && self.bucket_mb.is_finite()) {
            return Err("optim.bucket_mb must be >= 0 (MiB; 0 sums after the backward)".into());
        }
        if self.zero_stage > 2 {
            return Err(format!(
                "optim.zero_stage = {}: 0 (replicated), 1 (AdamW state sharded over the \
                 ranks) or 2 (the summed gradients too); stage 3 (weights) is not built",
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
        let m: Vec<(usize, usize)> = shapes.iter().map(|s| as_matrix(s)).collect();
        Shards {
            rows: crate::dist::partition_rows(&m, ranks),
            rank,
        }
    }

    fn mine(&self, i: usize) -> Range<usize> {
        self.rows[i][self.rank].clone()
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

/// What a step did, and the rows a rank updated apart from their
/// parameter (ZeRO), by parameter.
type Applied<B> = (StepStats, Vec<Option<<B as Backend>::Tensor>>);

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
                Some(s) => rows_shape(&shapes[i], s.mine(i)),
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
                .map(|i| s.mine(i).len() * as_matrix(&self.shapes[i]).1)
                .sum(),
        };
        (kept, all)
    }

    /// Sets parameter `i`'s moments from the whole `m` and `v` (a
    /// checkpoint's), keeping the rows this process keeps.
    pub fn set_moments(&mut self, backend: &B, i: usize, m: &Tensor, v: &Tensor) {
        let span = self.shards.as_ref().map(|s| s.mine(i));
        let (_, cols) = as_matrix(&self.shapes[i]);
        for (src, dst) in [(m, &mut self.m[i]), (v, &mut self.v[i])] {
            *dst = match &span {
                None => backend.upload(src),
                Some(span) => backend.upload(&Tensor::from_vec(
                    &rows_shape(&self.shapes[i], span.clone()),
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
    /// State sharded over ranks updates through [`AdamW::update_summed`].
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
            "sharded AdamW state updates through update_summed"
        );
        self.apply(backend, params, (grads, None), lr, accumulated)
            .expect("no collective without shards")
            .0
    }

    /// How a data-parallel step sums its gradients over the ranks of
    /// `comm`: buckets of `optim.bucket_mb` cut from `ready_order`
    /// ([`crate::model::Model::grad_ready_order`]), each rank receiving its
    /// own rows only under `zero_stage = 2` (ZeRO-2: one reduce-scatter a
    /// bucket, half an all-reduce's bytes). Run it with
    /// [`crate::dist::buckets::reducing`], then [`AdamW::update_summed`].
    pub fn bucket_plan(&self, ready_order: &[Vec<usize>]) -> BucketPlan {
        let bytes = (self.config.bucket_mb * (1 << 20) as f64) as usize;
        self.bucket_plan_of(ready_order, bytes)
    }

    fn bucket_plan_of(&self, ready_order: &[Vec<usize>], bucket_bytes: usize) -> BucketPlan {
        let rows = self.zero_2_rows().map(|s| s.rows.clone());
        BucketPlan::new(ready_order, &self.shapes, bucket_bytes, rows)
    }

    /// The shards whose rows each rank receives the sums of (ZeRO-2 in a
    /// job of several ranks).
    fn zero_2_rows(&self) -> Option<&Shards> {
        self.shards.as_ref().filter(|_| self.config.zero_stage >= 2)
    }

    /// A step's gradients before its first backward: under ZeRO-2 not
    /// allocated yet ([`Model::empty_grads`]: the backward allocates each,
    /// its bucket frees it once sent, so a rank whose step is one backward
    /// never holds every gradient at once), else zeros.
    pub fn fresh_grads(&self, model: &Model<B>) -> Vec<B::Tensor> {
        match self.zero_2_rows() {
            Some(_) => model.empty_grads(),
            None => model.zero_grads(),
        }
    }

    /// The step of a data-parallel job from this rank's own gradients
    /// `grads` (consumed), summed over the ranks after the backward (one
    /// bucket), then [`AdamW::update_summed`]: the unit tests' way in
    /// (training sums in buckets during the backward).
    #[cfg(test)]
    pub fn reduce_and_update(
        &mut self,
        backend: &B,
        comm: &dyn Collective,
        params: &mut [B::Tensor],
        grads: Vec<B::Tensor>,
        lr: f64,
        accumulated: usize,
    ) -> Result<StepStats, CommError> {
        let everything = vec![(0..grads.len()).collect::<Vec<_>>()];
        let plan = self.bucket_plan_of(&everything, 0);
        let summed = crate::dist::buckets::reducing(backend, comm, &plan, |b| b.finish(grads))?;
        self.update_summed(backend, comm, params, summed, lr, accumulated)
    }

    /// The update from the gradients summed over the ranks of `comm`
    /// ([`crate::dist::buckets`]); with sharded state each rank updates
    /// its rows and broadcasts them, so every rank holds the whole updated
    /// model again. Under ZeRO-2 (`Summed::Rows`) the norm adds the ranks'
    /// sums of squares.
    pub fn update_summed(
        &mut self,
        backend: &B,
        comm: &dyn Collective,
        params: &mut [B::Tensor],
        summed: Summed<B::Tensor>,
        lr: f64,
        accumulated: usize,
    ) -> Result<StepStats, CommError> {
        let (grads, rows_over) = match &summed {
            Summed::Whole(g) => (g, None),
            Summed::Rows(g) => (g, Some(comm)),
        };
        let (s, pieces) = self.apply(backend, params, (grads, rows_over), lr, accumulated)?;
        drop(summed);
        self.share_rows(backend, comm, params, pieces, s)
    }

    /// With sharded state, after an applied step: each rank broadcasts the
    /// rows it updated (`pieces`, or its whole parameter), so every rank
    /// holds the whole updated model again.
    fn share_rows(
        &self,
        backend: &B,
        comm: &dyn Collective,
        params: &mut [B::Tensor],
        mut pieces: Vec<Option<B::Tensor>>,
        step: StepStats,
    ) -> Result<StepStats, CommError> {
        let Some(shards) = &self.shards else {
            return Ok(step);
        };
        if !step.applied {
            return Ok(step);
        }
        for (i, p) in params.iter_mut().enumerate() {
            let (rows, mine) = (as_matrix(&self.shapes[i]).0, shards.mine(i));
            let sent = match pieces[i].take() {
                Some(piece) => backend.download(&piece),
                None if mine.is_empty() => Tensor::zeros(&[0]),
                None => backend.download(p),
            };
            let whole = assemble(&self.shapes[i], &shards.rows[i], comm, shards.rank, sent)?;
            // A parameter this rank updated whole is already in place.
            if mine.len() != rows {
                *p = backend.upload(&whole);
            }
        }
        Ok(step)
    }

    /// The step: the global norm, then AdamW on what this process updates.
    /// Returns the rows it updated apart from their parameter (ZeRO-1), by
    /// parameter.
    fn apply(
        &mut self,
        backend: &B,
        params: &mut [B::Tensor],
        (g, rows_over): (&[B::Tensor], Option<&dyn Collective>),
        lr: f64,
        accumulated: usize,
    ) -> Result<Applied<B>, CommError> {
        assert_eq!(params.len(), g.len(), "adamw: one gradient per parameter");
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
        let grad_norm = match (&self.shards, rows_over) {
            (None, None) => backend.adamw_clipped(
                params,
                g,
                (&mut self.m, &mut self.v),
                &steps,
                avg,
                c.grad_clip,
            ),
            (None, Some(_)) => unreachable!("gradient rows without shards"),
            // Every rank holds every summed gradient: the norm is the whole
            // model's (`Backend::adamw_clipped`'s default arithmetic, so a
            // CPU run's bits are plain data parallelism's); AdamW is
            // elementwise, so updating rows apart gives the same bits.
            // ZeRO-2: each rank holds its rows' sums; the norm adds the
            // ranks' sums of squares (another order: not the same bits).
            (Some(shards), rows_over) => {
                let sq: f64 = match rows_over {
                    None => g.iter().map(|g| backend.sum_squares(g)).sum(),
                    Some(comm) => {
                        let mut sq = [g.iter().map(|g| backend.sum_squares(g)).sum::<f64>()];
                        comm.all_reduce_sum_f64(&mut sq)?;
                        sq[0]
                    }
                };
                let grad_norm = sq.sqrt() * avg;
                if grad_norm.is_finite() {
                    let clip = clip_factor(grad_norm, c.grad_clip);
                    for (i, p) in params.iter_mut().enumerate() {
                        let mine = shards.mine(i);
                        if mine.is_empty() {
                            continue;
                        }
                        let step = AdamWStep {
                            grad_scale: (avg * clip) as f32,
                            ..steps[i]
                        };
                        let whole = mine.len() == as_matrix(&self.shapes[i]).0;
                        let sliced;
                        // ZeRO-2's sums are this rank's rows already.
                        let g = match rows_over {
                            Some(_) => &g[i],
                            None if whole => &g[i],
                            None => {
                                sliced = backend.slice_rows(&g[i], mine.clone());
                                &sliced
                            }
                        };
                        let (m, v) = (&mut self.m[i], &mut self.v[i]);
                        if whole {
                            backend.adamw(p, g, m, v, &step);
                        } else {
                            let mut rows = backend.slice_rows(p, mine);
                            backend.adamw(&mut rows, g, m, v, &step);
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
        Ok((stats, pieces))
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

/// A whole parameter-shaped tensor from every rank's rows (`spans`, per
/// rank): `mine` holds this rank's. Each rank broadcasts its rows in turn.
fn assemble(
    shape: &[usize],
    spans: &[Range<usize>],
    comm: &dyn Collective,
    rank: usize,
    mine: Tensor,
) -> Result<Tensor, CommError> {
    let (rows, cols) = as_matrix(shape);
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

    /// Two ranks (threads) with ZeRO-1 and ZeRO-2 each hold their own
    /// gradients; three steps later both hold what one process makes of
    /// the summed gradients: bit for bit where the norm does not matter
    /// (no clipping) or is computed as one process does (ZeRO-1); within
    /// rounding where ZeRO-2 adds the ranks' sums of squares. A NaN on one
    /// rank skips the step on both.
    #[test]
    fn sharded_steps_over_two_ranks_equal_one_process_on_the_summed_gradients() {
        use crate::dist::threads::Threads;
        let shapes = [vec![3, 4], vec![5], vec![2, 2], vec![1, 6]];
        let names: Vec<String> = ["w", "norm", "v", "bias"].map(String::from).to_vec();
        let values = |shape: &[usize], seed: f32| {
            let n: usize = shape.iter().product();
            Tensor::from_vec(
                shape,
                (0..n).map(|i| ((i as f32 + seed) * 0.37).sin()).collect(),
            )
        };
        let start: Vec<Tensor> = shapes.iter().map(|s| values(s, 0.0)).collect();
        let grads_of = |rank: usize, step: usize| -> Vec<Tensor> {
            let seed = (10 * rank + step + 1) as f32;
            shapes.iter().map(|s| values(s, seed)).collect()
        };
        let sum = |a: &[Tensor], b: &[Tensor]| -> Vec<Tensor> {
            a.iter()
                .zip(b)
                .map(|(x, y)| {
                    let v = x.data().iter().zip(y.data()).map(|(p, q)| p + q);
                    Tensor::from_vec(x.shape(), v.collect())
                })
                .collect()
        };
        for grad_clip in [0.0, 0.5] {
            let cfg = OptimConfig {
                lr: 0.05,
                grad_clip,
                ..OptimConfig::default()
            };
            let mut one = start.clone();
            let mut opt = AdamW::new(&Cpu, cfg.clone(), &names, &one);
            let norms: Vec<f64> = (0..3)
                .map(|t| {
                    let g = sum(&grads_of(0, t), &grads_of(1, t));
                    opt.update(&Cpu, &mut one, &g, cfg.lr, 2).grad_norm
                })
                .collect();
            for stage in [1u8, 2] {
                let cfg = OptimConfig {
                    zero_stage: stage,
                    ..cfg.clone()
                };
                let ranks = Threads::run(2, |c| {
                    let shards = Shards::even(&shapes, 2, c.rank());
                    let mut p = start.clone();
                    let mut opt = AdamW::with_shards(&Cpu, cfg.clone(), &names, &p, Some(shards));
                    let norms: Vec<f64> = (0..3)
                        .map(|t| {
                            let g = grads_of(c.rank(), t);
                            let s = opt.reduce_and_update(&Cpu, c, &mut p, g, cfg.lr, 2);
                            s.unwrap().grad_norm
                        })
                        .collect();
                    (p, norms, opt.kept_values())
                });
                let (kept_0, kept_1) = (ranks[0].2, ranks[1].2);
                assert_eq!(kept_0.0 + kept_1.0, kept_0.1, "the shares cover the model");
                for (p, got_norms, _) in &ranks {
                    let exact = stage == 1 || grad_clip == 0.0;
                    for (a, b) in p.iter().zip(&one) {
                        for (x, y) in a.data().iter().zip(b.data()) {
                            let ok = if exact { x == y } else { (x - y).abs() < 1e-6 };
                            assert!(ok, "stage {stage}, clip {grad_clip}: {x} vs {y}");
                        }
                    }
                    for (g, w) in got_norms.iter().zip(&norms) {
                        assert!((g - w).abs() <= 1e-12 * w, "stage {stage}: norm {g} vs {w}");
                    }
                }
                assert!(
                    ranks[0].0 == ranks[1].0,
                    "stage {stage}: the ranks hold one model"
                );
            }
        }
        // A NaN in rank 1's gradient: neither rank moves.
        let cfg = OptimConfig {
            zero_stage: 2,
            ..OptimConfig::default()
        };
        let after = Threads::run(2, |c| {
            let shards = Shards::even(&shapes, 2, c.rank());
            let mut p = start.clone();
            let mut opt = AdamW::with_shards(&Cpu, cfg.clone(), &names, &p, Some(shards));
            let mut g = grads_of(c.rank(), 0);
            if c.rank() == 1 {
                g[3].data_mut()[2] = f32::NAN;
            }
            let s = opt.reduce_and_update(&Cpu, c, &mut p, g, 0.05, 2).unwrap();
            (s.applied, opt.step, p)
        });
        for (applied, step, p) in after {
            assert!(!applied && step == 0);
            assert!(p == start);
        }
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
