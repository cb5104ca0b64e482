//! The update half of an RL step: old and reference log-probs of the kept
//! rollouts, and the PPO epochs of clipped-surrogate mini-batch updates.

use crate::backend::Backend;
use crate::dist::Collective;
use crate::model::{HandOver, Model, TrainSeq};
use crate::rl::{
    policy_loss, token_weights_in, LossConfig, LossInputs, LossStats, MiniBatchCounts,
};
use crate::rng::Rng;
use crate::rollout::Trajectory;
use crate::tensor::Tensor;
use crate::train::guard::{all_finite, Skip, SkipCounts};
use crate::train::optim::AdamW;
use crate::train::run::{shuffled, TrainError};

/// A scored rollout ready for the update.
#[derive(Clone)]
pub(crate) struct Sample {
    pub(crate) traj: Trajectory,
    /// Per-token advantage (0 off the loss mask).
    pub(crate) adv: Vec<f32>,
    /// Old (and reference) log-prob of token `j` at index `j` (0 off the mask).
    pub(crate) old: Vec<f32>,
    pub(crate) reference: Vec<f32>,
}

/// Causal sequences of the trajectories, and per row the next token.
fn causal_rows(trajs: &[&Trajectory]) -> (Vec<Vec<usize>>, Vec<u32>) {
    let positions: Vec<Vec<usize>> = trajs
        .iter()
        .map(|t| (0..t.tokens.len()).collect())
        .collect();
    let mut targets = vec![];
    for t in trajs {
        targets.extend(t.tokens[1..].iter().copied());
        targets.push(0);
    }
    (positions, targets)
}

/// Log-prob of every loss token `j` of each trajectory under `model` (no
/// gradient), indexed by `j` (0 elsewhere).
pub fn sequence_logprobs<B: Backend>(
    model: &Model<B>,
    trajs: &[&Trajectory],
    chunk: usize,
) -> Vec<Vec<f32>> {
    let (positions, targets) = causal_rows(trajs);
    let seqs: Vec<TrainSeq<'_>> = trajs
        .iter()
        .zip(&positions)
        .map(|(t, p)| TrainSeq::causal(&t.tokens, p))
        .collect();
    let acts = model.forward_train_with(&seqs, true);
    let rows = loss_rows(trajs);
    let b = model.backend();
    let hidden = b.gather_rows(&acts.hidden, &rows);
    let picked: Vec<u32> = rows.iter().map(|&r| targets[r]).collect();
    let logp = b.download(&model.token_logprobs(&hidden, &picked, chunk, false).logp);
    let mut out: Vec<Vec<f32>> = trajs.iter().map(|t| vec![0.0f32; t.tokens.len()]).collect();
    let mut it = logp.data().iter();
    for (t, o) in trajs.iter().zip(out.iter_mut()) {
        // Row 0 has no log-prob (nothing predicts the first token).
        for (o, &mask) in o.iter_mut().zip(&t.loss_mask).skip(1) {
            if mask == 1 {
                *o = *it.next().expect("one log-prob per loss row");
            }
        }
    }
    out
}

/// Packed row `r` predicts loss token `r + 1` of its sequence: the rows of
/// every loss token, in order.
fn loss_rows(trajs: &[&Trajectory]) -> Vec<usize> {
    let mut rows = vec![];
    let mut row0 = 0;
    for t in trajs {
        for j in 1..t.tokens.len() {
            if t.loss_mask[j] == 1 {
                rows.push(row0 + j - 1);
            }
        }
        row0 += t.tokens.len();
    }
    rows
}

/// How a mini-batch's gradient is computed (from `[loss]`, `[rl]` and
/// `[train]`).
#[derive(Clone, Copy)]
pub(crate) struct UpdateSettings<'a> {
    pub loss: &'a LossConfig,
    /// One importance ratio per sequence (GSPO) instead of per token.
    pub sequence_ratio: bool,
    /// Samples per forward/backward (memory, not math).
    pub micro: usize,
    /// Vocabulary rows per chunk of the fused log-prob op.
    pub chunk: usize,
    pub recompute: bool,
    /// The data-parallel ranks a mini-batch is spread over (`dist::Solo`
    /// alone): counts, statistics and gradients are summed over them.
    pub comm: &'a dyn Collective,
}

/// The numerical guard over one step's updates (`train::guard`).
pub(crate) struct Guard<'a> {
    pub counts: &'a mut SkipCounts,
    /// `optim.max_consecutive_skips`.
    pub limit: u32,
    pub step: u64,
    /// `IGPO_INJECT_NAN` puts a NaN in this step's losses / gradients.
    pub nan_loss: bool,
    pub nan_grad: bool,
}

/// Why a mini-batch's inputs cannot make an update: a non-finite advantage,
/// old or reference log-prob on any rank's part (checked before any
/// gradient is computed, so none reaches the weights).
fn bad_inputs(batch: &[&Sample], comm: &dyn Collective) -> Result<Option<Skip>, TrainError> {
    let finite_lp = |s: &&Sample| all_finite(&s.old) && all_finite(&s.reference);
    let mut bad = [
        f64::from(!batch.iter().all(|s| all_finite(&s.adv))),
        f64::from(!batch.iter().all(finite_lp)),
    ];
    sum_over_ranks(comm, &mut bad)?;
    Ok(if bad[0] > 0.0 {
        Some(Skip::Advantage)
    } else {
        (bad[1] > 0.0).then_some(Skip::LogProb)
    })
}

/// `v` summed over the data-parallel ranks (nothing to do alone).
pub(crate) fn sum_over_ranks(comm: &dyn Collective, v: &mut [f64]) -> Result<(), TrainError> {
    if comm.size() > 1 {
        comm.all_reduce_sum_f64(v).map_err(TrainError::Collective)?;
    }
    Ok(())
}

/// Loss statistics summed over the ranks' parts of a mini-batch.
fn stats_over_ranks(comm: &dyn Collective, s: &mut LossStats) -> Result<(), TrainError> {
    if comm.size() == 1 {
        return Ok(());
    }
    let mut v = [
        s.loss,
        s.pg_loss,
        s.kl,
        s.entropy,
        s.clipped as f64,
        s.ratio_sum,
        s.tokens as f64,
    ];
    sum_over_ranks(comm, &mut v)?;
    let [loss, pg_loss, kl, entropy, clipped, ratio_sum, tokens] = v;
    *s = LossStats {
        loss,
        pg_loss,
        kl,
        entropy,
        clipped: clipped as usize,
        ratio_sum,
        tokens: tokens as usize,
    };
    Ok(())
}

/// One optimizer update on a mini-batch of samples, or a skip (its inputs,
/// loss or gradient norm not finite, see [`Guard`]); an applied update adds
/// its loss statistics into `stats`. Returns the gradient norm (NaN when
/// not computed) and whether the update was skipped.
fn update_mini_batch<B: Backend>(
    model: &mut Model<B>,
    opt: &mut AdamW<B>,
    batch: &[&Sample],
    settings: &UpdateSettings<'_>,
    lr: f64,
    stats: &mut LossStats,
    guard: &mut Guard<'_>,
) -> Result<(f64, bool), TrainError> {
    let comm = settings.comm;
    let (norm, skip) = match bad_inputs(batch, comm)? {
        Some(skip) => (f64::NAN, Some(skip)),
        None => {
            let mut mine = LossStats::default();
            let b = model.backend().clone();
            let mut grads = opt.fresh_grads(model);
            // This rank's last backward hands its gradients over to be
            // summed over the ranks while it runs.
            let plan = opt.bucket_plan(&model.grad_ready_order());
            let mut summed = crate::dist::buckets::reducing(&b, comm, &plan, |buckets| {
                let model = &*model;
                add_mini_batch_grads(
                    model,
                    batch,
                    settings,
                    &mut mine,
                    &mut grads,
                    &mut |i, g| buckets.ready(i, g),
                )?;
                buckets.finish(grads).map_err(TrainError::Collective)
            })?;
            if guard.nan_grad {
                // Every rank's sums (ZeRO-2: the norm adds the ranks' shares).
                b.scale(&mut summed.tensors_mut()[0], f32::NAN);
            }
            stats_over_ranks(comm, &mut mine)?;
            if guard.nan_loss {
                mine.loss = f64::NAN;
            }
            if !mine.loss.is_finite() {
                (f64::NAN, Some(Skip::Loss))
            } else {
                let s = opt
                    .update_summed(&b, comm, model.params_mut(), summed, lr, 1)
                    .map_err(TrainError::Collective)?;
                if s.applied {
                    stats.add(&mine);
                }
                (s.grad_norm, (!s.applied).then_some(Skip::GradNorm))
            }
        }
    };
    guard.counts.record(guard.step, skip, guard.limit)?;
    Ok((norm, skip.is_some()))
}

/// The policy-loss gradient of a mini-batch (summed over its micro-batches
/// of `settings.micro` samples); adds into `stats`. Under data parallelism
/// `batch` is this rank's part: the aggregate's weights divide by the
/// whole mini-batch's counts, so the ranks' gradients sum to the whole's.
#[cfg(test)]
pub(crate) fn mini_batch_grads<B: Backend>(
    model: &Model<B>,
    batch: &[&Sample],
    settings: &UpdateSettings<'_>,
    stats: &mut LossStats,
) -> Result<Vec<B::Tensor>, TrainError> {
    let mut grads = model.zero_grads();
    add_mini_batch_grads(model, batch, settings, stats, &mut grads, &mut |_, _| {})?;
    Ok(grads)
}

/// [`mini_batch_grads`] added into `grads`; the last backward hands each
/// group of final gradients to `ready` as it finishes it
/// ([`Model::backward_handing_over`]).
fn add_mini_batch_grads<B: Backend>(
    model: &Model<B>,
    batch: &[&Sample],
    settings: &UpdateSettings<'_>,
    stats: &mut LossStats,
    grads: &mut [B::Tensor],
    ready: &mut HandOver<'_, B::Tensor>,
) -> Result<(), TrainError> {
    let UpdateSettings {
        loss: loss_cfg,
        sequence_ratio,
        micro,
        chunk,
        recompute,
        comm,
    } = *settings;
    let b = model.backend().clone();
    // Aggregation weights over the whole mini-batch.
    let seq_of: Vec<usize> = batch
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            std::iter::repeat_n(i, s.traj.loss_mask.iter().filter(|&&m| m == 1).count())
        })
        .collect();
    let mine = MiniBatchCounts::of(&seq_of);
    let mut all = [mine.tokens as f64, mine.sequences as f64];
    sum_over_ranks(comm, &mut all)?;
    let all = MiniBatchCounts {
        tokens: all[0] as usize,
        sequences: all[1] as usize,
    };
    let weights = token_weights_in(loss_cfg.aggregation, &seq_of, all);
    // The micro-batch whose backward is the mini-batch's last: the one
    // holding the last loss token's sample.
    let last = seq_of.last().map(|&i| i / micro);
    let mut w_at = 0;
    for (mi, part) in batch.chunks(micro).enumerate() {
        let trajs: Vec<&Trajectory> = part.iter().map(|s| &s.traj).collect();
        let (positions, targets) = causal_rows(&trajs);
        let seqs: Vec<TrainSeq<'_>> = trajs
            .iter()
            .zip(&positions)
            .map(|(t, p)| TrainSeq::causal(&t.tokens, p))
            .collect();
        let rows = loss_rows(&trajs);
        if rows.is_empty() {
            continue;
        }
        let acts = model.forward_train_with(&seqs, recompute);
        let hidden = b.gather_rows(&acts.hidden, &rows);
        let picked: Vec<u32> = rows.iter().map(|&r| targets[r]).collect();
        let out = model.token_logprobs(&hidden, &picked, chunk, true);
        let logp = b.download(&out.logp).into_data();
        let ent = b
            .download(out.entropy.as_ref().expect("entropy asked for"))
            .into_data();
        let (mut old, mut reference, mut adv, mut seq) = (vec![], vec![], vec![], vec![]);
        for (k, s) in part.iter().enumerate() {
            for j in 1..s.traj.tokens.len() {
                if s.traj.loss_mask[j] == 1 {
                    old.push(s.old[j]);
                    reference.push(s.reference[j]);
                    adv.push(s.adv[j]);
                    seq.push(mi * micro + k);
                }
            }
        }
        let first_seq = seq[0];
        let local_seq: Vec<usize> = seq.iter().map(|s| s - first_seq).collect();
        let w = &weights[w_at..w_at + rows.len()];
        w_at += rows.len();
        let lo = policy_loss(
            loss_cfg,
            sequence_ratio,
            &LossInputs {
                logp: &logp,
                old_logp: &old,
                ref_logp: (loss_cfg.kl_beta > 0.0).then_some(&reference[..]),
                entropy: Some(&ent),
                advantage: &adv,
                seq: &local_seq,
                weight: w,
            },
        );
        stats.add(&lo.stats);
        let n = rows.len();
        let dlogp = b.upload(&Tensor::from_vec(&[n], lo.dlogp));
        let dent = (loss_cfg.entropy_coef > 0.0)
            .then(|| b.upload(&Tensor::from_vec(&[n], lo.dentropy.expect("entropy given"))));
        let d_picked = model.token_logprobs_backward(
            &hidden,
            &picked,
            &out,
            (&dlogp, dent.as_ref()),
            chunk,
            grads,
        );
        let d_hidden = crate::backend::scatter_rows(&b, &d_picked, &rows, targets.len());
        match Some(mi) == last {
            true => model.backward_handing_over(&acts, &d_hidden, grads, ready),
            false => model.backward(&acts, &d_hidden, grads),
        }
    }
    Ok(())
}

/// What the PPO epochs did: loss statistics summed over every applied
/// update, the last update's gradient norm, the number of updates applied
/// and skipped.
#[derive(Debug, Default)]
pub(crate) struct Update {
    pub stats: LossStats,
    pub grad_norm: f64,
    pub updates: usize,
    pub skipped: usize,
}

/// Where a rank's samples sit among the step's: the kept rollouts of every
/// rank in rank order (ranks hold consecutive groups), so sample `i` here is
/// the step's `first + i` of `total`. One process holds all of them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct SampleShare {
    pub first: usize,
    pub total: usize,
}

impl SampleShare {
    /// The share of a process that holds all `n` samples.
    #[cfg(test)]
    pub(crate) fn all(n: usize) -> SampleShare {
        SampleShare { first: 0, total: n }
    }

    /// This rank's share, from every rank's count of `mine` samples.
    pub(crate) fn exchange(comm: &dyn Collective, mine: usize) -> Result<Self, TrainError> {
        let counts = crate::dist::all_counts(comm, mine).map_err(TrainError::Collective)?;
        Ok(SampleShare {
            first: counts[..comm.rank()].iter().sum(),
            total: counts.iter().sum(),
        })
    }
}

/// Phase: `epochs` passes over the step's samples, each in a fresh order
/// drawn from `rng`, split into `mini_batches` optimizer updates at rate
/// `lr`. Every rank draws the same order over all the step's samples and
/// computes the part of each mini-batch it holds (`share`), so the updates
/// are one process's. Errs when `guard` has seen too many skips in a row.
#[allow(clippy::too_many_arguments)] // the phase's inputs, each named
pub(crate) fn ppo_epochs<B: Backend>(
    model: &mut Model<B>,
    opt: &mut AdamW<B>,
    samples: &[Sample],
    share: SampleShare,
    settings: &UpdateSettings<'_>,
    (epochs, mini_batches): (usize, usize),
    lr: f64,
    rng: &mut Rng,
    guard: &mut Guard<'_>,
) -> Result<Update, TrainError> {
    let mut out = Update::default();
    let mine = share.first..share.first + samples.len();
    for _ in 0..epochs {
        let order = shuffled(share.total, rng);
        let per = share.total.div_ceil(mini_batches).max(1);
        for mb in order.chunks(per) {
            let batch: Vec<&Sample> = mb
                .iter()
                .map(|&i| i as usize)
                .filter(|i| mine.contains(i))
                .map(|i| &samples[i - share.first])
                .collect();
            let (norm, skipped) =
                update_mini_batch(model, opt, &batch, settings, lr, &mut out.stats, guard)?;
            out.grad_norm = norm;
            if skipped {
                out.skipped += 1;
            } else {
                out.updates += 1;
            }
        }
    }
    Ok(out)
}
