//! `igpo sft`: supervised fine-tuning on chat transcripts, loss on assistant
//! tokens only, with gradient accumulation, checkpoints and exact resume.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::checkpoint::CheckpointDType;
use super::guard::{nan_as_null, Inject, NanInjection, Skip};
use super::optim::{OptimConfig, ScheduleConfig};
use super::run::{io_err, next_example, LogLine, LoopConfig, Run, Start, StepEnd};
pub use super::run::{RunOptions as SftRunOptions, TrainError};
use super::sft_data::{load_sft_jsonl, SftExample};
use crate::backend::Backend;
use crate::model::{HandOver, Model, TrainSeq};
use crate::runfile::RunFile;
use crate::tensor::Tensor;
use crate::tokenizer::Tokenizer;

/// A whole SFT run file (TOML). Unknown keys are errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    /// Hugging Face model folder to start from.
    pub model: PathBuf,
    pub data: SftDataConfig,
    #[serde(default)]
    pub train: SftTrainConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftDataConfig {
    /// JSONL file of `{"messages": [{"role", "content"}, ...]}` lines.
    pub train: PathBuf,
    /// Skip (and count) lines that are not valid transcripts instead of stopping.
    #[serde(default)]
    pub skip_bad_lines: bool,
    /// Transcripts are cut to this many tokens.
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
}

fn default_max_seq_len() -> usize {
    512
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftTrainConfig {
    /// Output folder: config copy, metrics.jsonl, checkpoints/, tb/.
    pub run_dir: PathBuf,
    /// Optimizer steps.
    pub steps: u64,
    /// Transcripts per micro-batch.
    pub micro_batch: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub seed: u64,
    /// Save a checkpoint every this many steps (and at the end); 0 = only at the end.
    pub checkpoint_every: u64,
    /// Keep this many newest checkpoints.
    pub keep_last: usize,
    /// Dtype of each checkpoint's `model/` folder (its `state/` keeps f32).
    pub checkpoint_dtype: CheckpointDType,
    /// Vocabulary rows per chunk of the fused log-prob op.
    pub logprob_chunk: usize,
    /// Keep only each layer's input and recompute the rest in the backward.
    pub recompute_activations: bool,
}

impl Default for SftTrainConfig {
    fn default() -> Self {
        SftTrainConfig {
            run_dir: PathBuf::from("runs/sft"),
            steps: 100,
            micro_batch: 4,
            grad_accum: 1,
            seed: 0,
            checkpoint_every: 50,
            keep_last: 2,
            checkpoint_dtype: CheckpointDType::Bf16,
            logprob_chunk: 8192,
            recompute_activations: false,
        }
    }
}

impl SftConfig {
    /// Reads a TOML run file; relative paths are relative to its folder.
    pub fn load(path: &Path) -> Result<SftConfig, TrainError> {
        let file = RunFile::read(path, &[]).map_err(TrainError::from)?;
        SftConfig::from_run_file(&file)
    }

    /// The config of a run file (with its `--set` overrides applied).
    pub fn from_run_file(file: &RunFile) -> Result<SftConfig, TrainError> {
        let p = file.path.display().to_string();
        let mut cfg: SftConfig = file.parse()?;
        file.rebase([&mut cfg.model, &mut cfg.data.train, &mut cfg.train.run_dir]);
        let bad = |msg: &str| TrainError::Config {
            path: p.clone(),
            msg: msg.to_string(),
        };
        if cfg.train.micro_batch == 0 || cfg.train.grad_accum == 0 {
            return Err(bad("train.micro_batch and train.grad_accum must be >= 1"));
        }
        if cfg.train.logprob_chunk == 0 || cfg.data.max_seq_len < 2 {
            return Err(bad(
                "train.logprob_chunk must be >= 1 and data.max_seq_len >= 2",
            ));
        }
        cfg.optim.check().map_err(|m| bad(&m))?;
        Ok(cfg)
    }
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SftMetrics {
    pub step: u64,
    /// NaN (`null`) when not finite: that update was skipped.
    #[serde(with = "nan_as_null")]
    pub loss: f64,
    /// NaN (`null`) when not finite or not computed (a skipped update).
    #[serde(with = "nan_as_null")]
    pub grad_norm: f64,
    pub lr: f64,
    /// Loss-bearing tokens in the step.
    pub tokens: usize,
    /// All tokens run forward and backward in the step (prompts included).
    pub processed_tokens: usize,
    /// `processed_tokens` per second of the step.
    pub tokens_per_s: f64,
    /// Updates skipped as not finite since the run began (`train::guard`).
    #[serde(default)]
    pub skipped_updates: u64,
}

impl LogLine for SftMetrics {
    fn step(&self) -> u64 {
        self.step
    }
}

/// Summary of a finished (or stopped) run.
pub struct SftOutcome {
    pub metrics: Vec<SftMetrics>,
    pub skipped_lines: usize,
    pub final_checkpoint: Option<PathBuf>,
}

/// Loss and gradient of one micro-batch: token-mean negative log-likelihood
/// of the assistant tokens. Adds into `grads`; returns (loss, tokens).
pub fn sft_micro_batch<B: Backend>(
    model: &Model<B>,
    batch: &[&SftExample],
    chunk: usize,
    recompute: bool,
    grads: &mut [B::Tensor],
) -> (f64, usize) {
    micro_batch_handing_over(model, batch, (chunk, recompute), grads, &mut |_, _| {})
}

/// [`sft_micro_batch`], handing each group of final gradients to `ready`
/// as the backward finishes it ([`Model::backward_handing_over`]): the
/// call for a rank's last micro-batch of a step.
fn micro_batch_handing_over<B: Backend>(
    model: &Model<B>,
    batch: &[&SftExample],
    (chunk, recompute): (usize, bool),
    grads: &mut [B::Tensor],
    ready: &mut HandOver<'_, B::Tensor>,
) -> (f64, usize) {
    let b = model.backend();
    let positions: Vec<Vec<usize>> = batch
        .iter()
        .map(|e| (0..e.tokens.len()).collect())
        .collect();
    let seqs: Vec<TrainSeq<'_>> = batch
        .iter()
        .zip(&positions)
        .map(|(e, p)| TrainSeq::causal(&e.tokens, p))
        .collect();
    let (mut targets, mut weight) = (vec![], vec![]);
    for e in batch {
        for t in 0..e.tokens.len() {
            let next = t + 1 < e.tokens.len();
            targets.push(if next { e.tokens[t + 1] } else { 0 });
            weight.push(if next && e.loss_mask[t + 1] == 1 {
                1.0f32
            } else {
                0.0
            });
        }
    }
    let n: f32 = weight.iter().sum();
    if n == 0.0 {
        return (0.0, 0);
    }
    let acts = model.forward_train_with(&seqs, recompute);
    let out = model.token_logprobs(&acts.hidden, &targets, chunk, false);
    let logp = b.download(&out.logp);
    let loss = logp
        .data()
        .iter()
        .zip(&weight)
        .map(|(l, w)| -(*l as f64) * *w as f64)
        .sum::<f64>()
        / n as f64;
    let dlogp = b.upload(&Tensor::from_vec(
        &[targets.len()],
        weight.iter().map(|w| -w / n).collect(),
    ));
    let d_hidden =
        model.token_logprobs_backward(&acts.hidden, &targets, &out, (&dlogp, None), chunk, grads);
    model.backward_handing_over(&acts, &d_hidden, grads, ready);
    (loss, n as usize)
}

/// Runs (or resumes) an SFT job on `backend` (weights, gradients and AdamW
/// state live there).
pub fn run_sft<B: Backend>(
    backend: B,
    cfg: &SftConfig,
    config_text: &str,
    opts: &SftRunOptions,
) -> Result<SftOutcome, TrainError> {
    let run_dir = &cfg.train.run_dir;
    std::fs::create_dir_all(run_dir).map_err(io_err(run_dir))?;
    let tok = Tokenizer::load_dir(&cfg.model)?;
    let data = load_sft_jsonl(
        &cfg.data.train,
        &tok,
        cfg.data.max_seq_len,
        cfg.data.skip_bad_lines,
    )?;
    if data.skipped_lines > 0 {
        tracing::info!(
            "note: skipped {} bad lines of {}",
            data.skipped_lines,
            cfg.data.train.display()
        );
    }
    let t = &cfg.train;
    let ranks = crate::dist::world().size();
    if !t.grad_accum.is_multiple_of(ranks) {
        return Err(TrainError::Config {
            path: "train.grad_accum".into(),
            msg: format!(
                "{} micro-batches a step do not split over {ranks} ranks: use a multiple of {ranks}",
                t.grad_accum
            ),
        });
    }
    let loop_cfg = LoopConfig {
        run_dir: run_dir.clone(),
        model: cfg.model.clone(),
        optim: cfg.optim.clone(),
        seed: t.seed,
        steps: t.steps,
        checkpoint_every: t.checkpoint_every,
        keep_last: t.keep_last,
        checkpoint_dtype: t.checkpoint_dtype,
        tb_prefix: "",
        options: opts.clone(),
    };
    let inject = NanInjection::from_env(&[Inject::Loss, Inject::Grad])?;
    let start = Start::load(backend, &loop_cfg, data.examples.len())?;
    let mut run = Run::start(start, loop_cfg, config_text, &[])?;
    run.drive(|run, step| sft_step(run, cfg, &data.examples, step, &inject))?;
    Ok(SftOutcome {
        metrics: run.history,
        skipped_lines: data.skipped_lines,
        final_checkpoint: run.final_checkpoint,
    })
}

/// One optimizer step over `grad_accum` micro-batches from the data cursor
/// (skipped when its loss or gradient norm is not finite).
fn sft_step<B: Backend>(
    run: &mut Run<B, SftMetrics>,
    cfg: &SftConfig,
    examples: &[SftExample],
    step: u64,
    inject: &NanInjection,
) -> Result<StepEnd<SftMetrics>, TrainError> {
    let start = Instant::now();
    let t = &cfg.train;
    let b = run.model.backend().clone();
    let mut grads = run.opt.fresh_grads(&run.model);
    let (mut loss_sum, mut tokens, mut processed) = (0.0, 0usize, 0usize);
    // Data parallel: every rank walks the same data cursor and takes every
    // `ranks`-th micro-batch, so the step's examples are the solo run's. A
    // rank's last micro-batch hands its gradients over to be summed while
    // its backward runs.
    let comm = crate::dist::world();
    let last_mine = (0..t.grad_accum)
        .rev()
        .find(|i| i % comm.size() == comm.rank());
    let plan = run.opt.bucket_plan(&run.model.grad_ready_order());
    let mut summed = crate::dist::buckets::reducing(&b, comm, &plan, |buckets| {
        for i in 0..t.grad_accum {
            let batch: Vec<&SftExample> = (0..t.micro_batch)
                .map(|_| &examples[next_example(&mut run.state, &mut run.rng, examples.len())])
                .collect();
            if i % comm.size() != comm.rank() {
                continue;
            }
            let mut hand_over = |idx: &[usize], g: &mut [B::Tensor]| {
                if Some(i) == last_mine {
                    buckets.ready(idx, g);
                }
            };
            let (l, n) = micro_batch_handing_over(
                &run.model,
                &batch,
                (t.logprob_chunk, t.recompute_activations),
                &mut grads,
                &mut hand_over,
            );
            loss_sum += l;
            tokens += n;
            processed += batch.iter().map(|e| e.tokens.len()).sum::<usize>();
        }
        buckets.finish(grads)
    })
    .map_err(TrainError::Collective)?;
    if inject.at(Inject::Grad, step) {
        // Every rank's sums (ZeRO-2: the norm adds the ranks' shares).
        b.scale(&mut summed.tensors_mut()[0], f32::NAN);
    }
    if comm.size() > 1 {
        let mut sums = [loss_sum, tokens as f64, processed as f64];
        comm.all_reduce_sum_f64(&mut sums)
            .map_err(TrainError::Collective)?;
        loss_sum = sums[0];
        (tokens, processed) = (sums[1] as usize, sums[2] as usize);
    }
    let lr = cfg.schedule.lr(cfg.optim.lr, step, t.steps);
    let mut loss = loss_sum / t.grad_accum as f64;
    if inject.at(Inject::Loss, step) {
        loss = f64::NAN;
    }
    let (grad_norm, skip) = if loss.is_finite() {
        let stats = run
            .opt
            .update_summed(&b, comm, run.model.params_mut(), summed, lr, t.grad_accum)
            .map_err(TrainError::Collective)?;
        (stats.grad_norm, (!stats.applied).then_some(Skip::GradNorm))
    } else {
        (f64::NAN, Some(Skip::Loss))
    };
    let limit = cfg.optim.max_consecutive_skips;
    run.state.skips.record(step, skip, limit)?;
    let m = SftMetrics {
        step,
        loss,
        grad_norm,
        lr,
        tokens,
        processed_tokens: processed,
        tokens_per_s: processed as f64 / start.elapsed().as_secs_f64(),
        skipped_updates: run.state.skips.total,
    };
    Ok(StepEnd {
        message: format!(
            "loss {:.4}, grad norm {:.3}, {:.0} tok/s{}",
            m.loss,
            m.grad_norm,
            m.tokens_per_s,
            if skip.is_some() {
                ", update skipped"
            } else {
                ""
            }
        ),
        line: None,
        metrics: m,
    })
}
