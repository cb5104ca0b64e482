//! `igpo sft`: supervised fine-tuning on chat transcripts, loss on assistant
//! tokens only, with gradient accumulation, checkpoints and exact resume.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::checkpoint::{
    load_checkpoint_state, resume_point, save_checkpoint, CheckpointDType, CheckpointError,
    DataPosition, TrainerState,
};
use super::optim::{AdamW, OptimConfig, ScheduleConfig};
use super::sft_data::{load_sft_jsonl, SftDataError, SftExample};
use crate::backend::Backend;
use crate::model::{Model, ModelError, TrainSeq};
use crate::rng::Rng;
use crate::runfile::{RunFile, RunFileError};
use crate::tensor::Tensor;
use crate::tokenizer::{Tokenizer, TokenizerError};

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

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {msg}")]
    Config { path: String, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Data(#[from] SftDataError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{0}")]
    Other(String),
}

impl From<RunFileError> for TrainError {
    fn from(e: RunFileError) -> TrainError {
        TrainError::Config {
            path: e.path,
            msg: e.msg,
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
        let base = file.base();
        for p in [&mut cfg.model, &mut cfg.data.train, &mut cfg.train.run_dir] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
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
        if cfg.optim.lr.is_nan() || cfg.optim.lr < 0.0 {
            return Err(bad("optim.lr must be >= 0"));
        }
        Ok(cfg)
    }
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SftMetrics {
    pub step: u64,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    /// Loss-bearing tokens in the step.
    pub tokens: usize,
    /// All tokens run forward and backward in the step (prompts included).
    pub processed_tokens: usize,
    /// `processed_tokens` per second of the step.
    pub tokens_per_s: f64,
}

/// Options of one invocation (not part of the run file).
#[derive(Clone, Debug, Default)]
pub struct SftRunOptions {
    /// Continue from the newest complete checkpoint in the run folder.
    pub resume: bool,
    /// Stop after this step, as if the process were killed right after a
    /// checkpoint (tests of exact resume).
    pub stop_after: Option<u64>,
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
        model.token_logprobs_backward(&acts.hidden, &targets, &out, &dlogp, None, chunk, grads);
    model.backward(&acts, &d_hidden, grads);
    (loss, n as usize)
}

/// A seeded permutation of `0..n` (Fisher-Yates), the data order of a pass.
pub(crate) fn shuffled(n: usize, rng: &mut Rng) -> Vec<u64> {
    let mut order: Vec<u64> = (0..n as u64).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
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
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |e| TrainError::Io { path, source: e }
    };
    std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
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
    let resume_from = if opts.resume {
        resume_point(run_dir)?
    } else {
        None
    };
    let weights_dir = resume_from
        .as_ref()
        .map(|(_, d)| d.clone())
        .unwrap_or_else(|| cfg.model.clone());
    let mut model = crate::model::load(&weights_dir, backend.clone())?;
    let mut opt = AdamW::new(
        &backend,
        cfg.optim.clone(),
        model.param_names(),
        model.params(),
    );
    let mut rng = Rng::new(cfg.train.seed);
    let mut state = TrainerState {
        step: 0,
        rng: rng.state(),
        data: DataPosition::default(),
        order: shuffled(data.examples.len(), &mut rng),
    };
    state.rng = rng.state();
    let metrics_path = run_dir.join("metrics.jsonl");
    let mut history: Vec<SftMetrics> = vec![];
    if let Some((step, dir)) = &resume_from {
        state = load_checkpoint_state(dir, &model, &mut opt)?;
        rng = Rng::from_state(state.rng);
        // Keep the metrics of the steps the checkpoint covers.
        if let Ok(text) = std::fs::read_to_string(&metrics_path) {
            history = text
                .lines()
                .filter_map(|l| serde_json::from_str::<SftMetrics>(l).ok())
                .filter(|m| m.step <= *step)
                .collect();
        }
        tracing::info!("resuming from {} (step {step})", dir.display());
    }
    crate::fsutil::write_atomic(&run_dir.join("config.toml"), config_text.as_bytes())
        .map_err(io(run_dir))?;
    let mut lines: String = history
        .iter()
        .map(|m| serde_json::to_string(m).expect("json") + "\n")
        .collect();
    crate::fsutil::write_atomic(&metrics_path, lines.as_bytes()).map_err(io(&metrics_path))?;
    let mut metrics_file = std::fs::OpenOptions::new()
        .append(true)
        .open(&metrics_path)
        .map_err(io(&metrics_path))?;
    let mut tb = super::tensorboard::EventWriter::restart(run_dir)?;
    tb.write_history(&[("", &super::tensorboard::json_lines(&history))])?;

    let total = cfg.train.steps;
    let bar = if std::io::stdout().is_terminal() {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps, eta {eta} {msg}")
            .expect("template"),
    );
    bar.set_position(state.step);
    let mut final_checkpoint = None;
    let n = data.examples.len();
    while state.step < total {
        let start = Instant::now();
        let mut grads = model.zero_grads();
        let (mut loss_sum, mut tokens, mut processed) = (0.0, 0usize, 0usize);
        for _ in 0..cfg.train.grad_accum {
            let mut batch = Vec::with_capacity(cfg.train.micro_batch);
            for _ in 0..cfg.train.micro_batch {
                if state.data.index as usize >= n {
                    state.data = DataPosition {
                        epoch: state.data.epoch + 1,
                        index: 0,
                    };
                    state.order = shuffled(n, &mut rng);
                }
                batch.push(&data.examples[state.order[state.data.index as usize] as usize]);
                state.data.index += 1;
            }
            let (l, t) = sft_micro_batch(
                &model,
                &batch,
                cfg.train.logprob_chunk,
                cfg.train.recompute_activations,
                &mut grads,
            );
            loss_sum += l;
            tokens += t;
            processed += batch.iter().map(|e| e.tokens.len()).sum::<usize>();
        }
        let lr = cfg.schedule.lr(cfg.optim.lr, state.step + 1, total);
        let stats = {
            let params = model.params_mut();
            opt.update(&backend, params, &grads, lr, cfg.train.grad_accum)
        };
        state.step += 1;
        state.rng = rng.state();
        let m = SftMetrics {
            step: state.step,
            loss: loss_sum / cfg.train.grad_accum as f64,
            grad_norm: stats.grad_norm,
            lr,
            tokens,
            processed_tokens: processed,
            tokens_per_s: processed as f64 / start.elapsed().as_secs_f64(),
        };
        lines = serde_json::to_string(&m).expect("json") + "\n";
        metrics_file
            .write_all(lines.as_bytes())
            .map_err(io(&metrics_path))?;
        tb.write_json_line("", &lines)?;
        bar.set_position(state.step);
        bar.set_message(format!(
            "loss {:.4}, grad norm {:.3}, {:.0} tok/s",
            m.loss, m.grad_norm, m.tokens_per_s
        ));
        history.push(m);
        let every = cfg.train.checkpoint_every;
        let stop_here = opts.stop_after == Some(state.step);
        if state.step == total || stop_here || (every > 0 && state.step.is_multiple_of(every)) {
            final_checkpoint = Some(save_checkpoint(
                run_dir,
                &model,
                &opt,
                &state,
                &cfg.model,
                cfg.train.checkpoint_dtype,
                cfg.train.keep_last,
            )?);
        }
        if stop_here {
            break;
        }
    }
    bar.finish_and_clear();
    Ok(SftOutcome {
        metrics: history,
        skipped_lines: data.skipped_lines,
        final_checkpoint,
    })
}
