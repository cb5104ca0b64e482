//! The run loop `igpo sft` and `igpo train` share: resume from the newest
//! checkpoint, the data cursor over a seeded shuffled order, the JSONL
//! metric logs (and their TensorBoard events), the progress bar, the
//! checkpoint cadence and keep-last-K. A job brings only its step
//! ([`Run::drive`]).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::checkpoint::{
    load_checkpoint_state, resume_point, save_checkpoint, CheckpointDType, CheckpointError,
    DataPosition, TrainerState,
};
use super::guard::SkipCounts;
use super::optim::{AdamW, OptimConfig, Shards};
use super::sft_data::SftDataError;
use super::tensorboard::{json_lines, EventWriter};
use crate::backend::Backend;
use crate::model::{Model, ModelError};
use crate::plugins::PluginError;
use crate::rng::Rng;
use crate::rollout::RolloutError;
use crate::runfile::RunFileError;
use crate::tokenizer::TokenizerError;

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
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    #[error("{0}: the training split has no examples")]
    NoTrainingExamples(PathBuf),
    #[error("rl.probe_template: {0}")]
    ProbeTemplate(String),
    /// `optim.max_consecutive_skips` updates in a row were not finite.
    #[error(
        "step {step}: {skips} updates in a row were skipped (the last: {why}), the limit of \
         optim.max_consecutive_skips; the newest checkpoint holds the last good weights: lower \
         optim.lr or check the data, then --resume"
    )]
    Diverged {
        step: u64,
        skips: u32,
        why: super::guard::Skip,
    },
    /// A collective of a data-parallel run failed.
    #[error("data parallel: {0}")]
    Collective(crate::dist::CommError),
    /// A metrics line handed to the TensorBoard writer that it cannot log.
    #[error("{path}: line to log {msg}")]
    LogLine { path: PathBuf, msg: String },
}

impl From<RunFileError> for TrainError {
    fn from(e: RunFileError) -> TrainError {
        TrainError::Config {
            path: e.path,
            msg: e.msg,
        }
    }
}

/// The I/O error of `path`, as a [`TrainError`].
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.display().to_string();
    move |source| TrainError::Io { path, source }
}

/// Options of one invocation (not part of the run file).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Continue from the newest complete checkpoint in the run folder.
    pub resume: bool,
    /// Stop after this step (its checkpoint is written), as if the process
    /// were killed right after it (tests of exact resume).
    pub stop_after: Option<u64>,
}

/// What the loop reads from a run file.
#[derive(Clone, Debug)]
pub(crate) struct LoopConfig {
    pub run_dir: PathBuf,
    /// The model the run starts from; checkpoints copy its tokenizer and
    /// generation files.
    pub model: PathBuf,
    pub optim: OptimConfig,
    pub seed: u64,
    pub steps: u64,
    /// Checkpoint every this many steps (and at the end); 0 = only at the end.
    pub checkpoint_every: u64,
    pub keep_last: usize,
    pub checkpoint_dtype: CheckpointDType,
    /// Tag prefix of `metrics.jsonl`'s scalars in TensorBoard.
    pub tb_prefix: &'static str,
    pub options: RunOptions,
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

/// The data cursor: the index of the next of `n` examples; past the end of
/// the order a new epoch starts in a fresh shuffled order.
pub(crate) fn next_example(state: &mut TrainerState, rng: &mut Rng, n: usize) -> usize {
    if state.data.index as usize >= n {
        state.data = DataPosition {
            epoch: state.data.epoch + 1,
            index: 0,
        };
        state.order = shuffled(n, rng);
    }
    let i = state.order[state.data.index as usize] as usize;
    state.data.index += 1;
    i
}

/// Whether step `step` of `total` falls on a cadence of `every` steps (the
/// last step always does; `every` 0 = only the last): checkpoints, dev evals.
pub(crate) fn on_cadence(step: u64, total: u64, every: u64) -> bool {
    step == total || (every > 0 && step.is_multiple_of(every))
}

/// A line of a JSONL log: it knows its step (a resume keeps the lines up to
/// the checkpoint's).
pub(crate) trait LogLine: Serialize + DeserializeOwned {
    fn step(&self) -> u64;
}

/// An append-only JSONL log of the run folder whose every line also goes to
/// TensorBoard, tagged `tag_prefix` + key.
pub(crate) struct JsonlLog {
    path: PathBuf,
    /// None: a log that discards (a data-parallel rank other than 0).
    file: Option<std::fs::File>,
    tag_prefix: &'static str,
}

impl JsonlLog {
    /// Keeps the lines of `path` up to step `keep_to` (none without it: a
    /// fresh run; a resumed one rewrites what came after its checkpoint) and
    /// opens it for appending. Returns the kept lines.
    pub(crate) fn reopen<T: LogLine>(
        path: PathBuf,
        tag_prefix: &'static str,
        keep_to: Option<u64>,
    ) -> Result<(Vec<T>, JsonlLog), TrainError> {
        let (kept, mut log) = JsonlLog::read_kept(path, tag_prefix, keep_to);
        if crate::dist::world().rank() != 0 {
            // Rank 0 alone writes the run folder.
            return Ok((kept, log));
        }
        let text: String = json_lines(&kept).iter().map(|l| l.clone() + "\n").collect();
        crate::fsutil::write_atomic(&log.path, text.as_bytes()).map_err(io_err(&log.path))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&log.path)
            .map_err(io_err(&log.path))?;
        log.file = Some(file);
        Ok((kept, log))
    }

    /// The lines of `path` up to step `keep_to` and a log that discards what
    /// is appended: [`JsonlLog::reopen`] for a rank that does not write.
    pub(crate) fn read_kept<T: LogLine>(
        path: PathBuf,
        tag_prefix: &'static str,
        keep_to: Option<u64>,
    ) -> (Vec<T>, JsonlLog) {
        let kept: Vec<T> = match keep_to {
            Some(s) => std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<T>(l).ok())
                .filter(|m| m.step() <= s)
                .collect(),
            None => vec![],
        };
        let log = JsonlLog {
            path,
            file: None,
            tag_prefix,
        };
        (kept, log)
    }

    /// Appends `v` as one line, and its scalars to `tb`.
    pub(crate) fn append<T: Serialize>(
        &mut self,
        v: &T,
        tb: &mut EventWriter,
    ) -> Result<(), TrainError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let line = serde_json::to_string(v).expect("json") + "\n";
        file.write_all(line.as_bytes())
            .map_err(io_err(&self.path))?;
        tb.write_json_line(self.tag_prefix, &line)
    }
}

/// The progress bar. It draws only when stderr, where indicatif draws, is a
/// terminal; otherwise step lines go to the log.
struct Progress(indicatif::ProgressBar);

impl Progress {
    fn new(total: u64, at: u64) -> Progress {
        let bar = if std::io::stderr().is_terminal() {
            indicatif::ProgressBar::new(total)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps, eta {eta} | {msg}",
            )
            .expect("template"),
        );
        bar.set_position(at);
        Progress(bar)
    }

    /// A step line: above the bar on a terminal, a log line otherwise.
    fn line(&self, line: String) {
        if self.0.is_hidden() {
            tracing::info!("{line}");
        } else if tracing::enabled!(tracing::Level::INFO) {
            self.0.println(line);
        }
    }
}

/// What a job's step hands back to the loop.
pub(crate) struct StepEnd<M> {
    pub metrics: M,
    /// The step's line (printed above the bar, or logged).
    pub line: Option<String>,
    /// The bar's message.
    pub message: String,
}

/// The model, optimizer and trainer state a run starts from: the newest
/// checkpoint on `--resume`, else the run file's model and a fresh state.
pub(crate) struct Start<B: Backend> {
    pub model: Model<B>,
    pub opt: AdamW<B>,
    rng: Rng,
    state: TrainerState,
    /// Step of the checkpoint resumed from.
    pub resumed_at: Option<u64>,
}

impl<B: Backend> Start<B> {
    /// Loads what `cfg` starts from, over a dataset of `n_examples`. Writes
    /// nothing to the run folder.
    pub(crate) fn load(
        backend: B,
        cfg: &LoopConfig,
        n_examples: usize,
    ) -> Result<Self, TrainError> {
        let from = if cfg.options.resume {
            resume_point(&cfg.run_dir)?
        } else {
            None
        };
        let weights_dir = from.as_ref().map_or(&cfg.model, |(_, d)| d);
        let model = crate::model::load(weights_dir, backend.clone())?;
        let comm = crate::dist::world();
        let stage = if comm.size() > 1 {
            cfg.optim.zero_stage
        } else {
            0
        };
        let shards = (stage >= 1).then(|| {
            let shapes: Vec<Vec<usize>> = model
                .params()
                .iter()
                .map(|p| backend.shape(p).to_vec())
                .collect();
            Shards::even(&shapes, comm.size(), comm.rank())
        });
        let mut opt = AdamW::with_shards(
            &backend,
            cfg.optim.clone(),
            model.param_names(),
            model.params(),
            shards,
        );
        if stage >= 1 {
            let (kept, all) = opt.kept_values();
            tracing::info!(
                "ZeRO-{stage}: rank {} keeps the AdamW state of {kept} of {all} values ({:.1} %){}",
                comm.rank(),
                100.0 * kept as f64 / all.max(1) as f64,
                if stage == 2 {
                    " and receives the summed gradients of those only"
                } else {
                    ""
                }
            );
        }
        if comm.size() > 1 {
            let plan = opt.bucket_plan(&model.grad_ready_order());
            let how = match cfg.optim.bucket_mb {
                0.0 => "after the backward (optim.bucket_mb = 0)".to_string(),
                mb => format!(
                    "in {} bucket(s) of about {mb} MiB, each as soon as the backward is done \
                     with it",
                    plan.buckets().len()
                ),
            };
            tracing::info!("rank {}: gradients summed {how}", comm.rank());
        }
        let mut rng = Rng::new(cfg.seed);
        let order = shuffled(n_examples, &mut rng);
        let mut state = TrainerState {
            step: 0,
            rng: rng.state(),
            data: DataPosition::default(),
            order,
            optimizer_steps: None,
            skips: SkipCounts::default(),
        };
        if let Some((step, dir)) = &from {
            state = load_checkpoint_state(dir, &model, &mut opt)?;
            rng = Rng::from_state(state.rng);
            tracing::info!("resuming from {} (step {step})", dir.display());
        }
        Ok(Start {
            model,
            opt,
            rng,
            state,
            resumed_at: from.map(|(s, _)| s),
        })
    }
}

/// A run in progress: what the loop owns and a step may use.
pub(crate) struct Run<B: Backend, M> {
    pub model: Model<B>,
    pub opt: AdamW<B>,
    pub rng: Rng,
    pub state: TrainerState,
    pub cfg: LoopConfig,
    /// The metrics of every step so far (a resume's kept ones first).
    pub history: Vec<M>,
    pub tb: EventWriter,
    pub final_checkpoint: Option<PathBuf>,
    metrics: JsonlLog,
}

impl<B: Backend, M: LogLine> Run<B, M> {
    /// Records `config_text` as the run folder's `config.toml`, reopens
    /// `metrics.jsonl` and restarts TensorBoard with the kept history of
    /// `other_logs` (tag prefix, lines) and the metrics, in step order.
    pub(crate) fn start(
        start: Start<B>,
        cfg: LoopConfig,
        config_text: &str,
        other_logs: &[(&str, &[String])],
    ) -> Result<Self, TrainError> {
        let run_dir = &cfg.run_dir;
        let mut start = start;
        // Data parallel: rank 0's weights on every rank; rank 0 alone
        // writes the run folder (logs, TensorBoard, checkpoints).
        let comm = crate::dist::world();
        let b = start.model.backend().clone();
        crate::dist::join_device_group(&b, comm).map_err(TrainError::Collective)?;
        crate::dist::broadcast_tensors(&b, comm, start.model.params_mut())
            .map_err(TrainError::Collective)?;
        let metrics_path = run_dir.join("metrics.jsonl");
        let (history, metrics, tb) = if comm.rank() != 0 {
            let (history, metrics) =
                JsonlLog::read_kept::<M>(metrics_path, cfg.tb_prefix, start.resumed_at);
            (history, metrics, EventWriter::discarding())
        } else {
            std::fs::create_dir_all(run_dir).map_err(io_err(run_dir))?;
            crate::fsutil::write_atomic(&run_dir.join("config.toml"), config_text.as_bytes())
                .map_err(io_err(run_dir))?;
            let (history, metrics) =
                JsonlLog::reopen::<M>(metrics_path, cfg.tb_prefix, start.resumed_at)?;
            let mut tb = EventWriter::restart(run_dir)?;
            let lines = json_lines(&history);
            let mut logs = other_logs.to_vec();
            logs.push((cfg.tb_prefix, &lines));
            tb.write_history(&logs)?;
            (history, metrics, tb)
        };
        Ok(Run {
            model: start.model,
            opt: start.opt,
            rng: start.rng,
            state: start.state,
            cfg,
            history,
            tb,
            final_checkpoint: None,
            metrics,
        })
    }

    /// Runs `step` for each step left: logs its metrics, moves the bar,
    /// checkpoints on the cadence (keeping the newest `keep_last`) and stops
    /// early after `stop_after`.
    pub(crate) fn drive(
        &mut self,
        mut step: impl FnMut(&mut Self, u64) -> Result<StepEnd<M>, TrainError>,
    ) -> Result<(), TrainError> {
        let total = self.cfg.steps;
        let bar = Progress::new(total, self.state.step);
        let comm = crate::dist::world();
        while self.state.step < total {
            let n = self.state.step + 1;
            let end = step(self, n)?;
            self.state.step = n;
            self.state.rng = self.rng.state();
            self.state.optimizer_steps = Some(self.opt.step);
            self.metrics.append(&end.metrics, &mut self.tb)?;
            // Every rank holds the whole step's metrics: rank 0 says them.
            if let (Some(line), 0) = (end.line, comm.rank()) {
                bar.line(line);
            }
            bar.0.set_position(n);
            bar.0.set_message(end.message);
            self.history.push(end.metrics);
            let stop_here = self.cfg.options.stop_after == Some(n);
            let checkpoint = stop_here || on_cadence(n, total, self.cfg.checkpoint_every);
            if checkpoint && comm.size() > 1 {
                // Data parallel: the ranks still hold one model (every rank
                // takes part; a solo run skips it).
                let b = self.model.backend();
                let sum = crate::dist::weights_checksum(b, self.model.params());
                crate::dist::replicas_agree(comm, sum, n).map_err(TrainError::Collective)?;
            }
            let moments = match checkpoint {
                true => self
                    .opt
                    .host_moments(self.model.backend(), comm)
                    .map_err(TrainError::Collective)?,
                false => None,
            };
            if let Some(moments) = moments {
                self.final_checkpoint = Some(save_checkpoint(
                    &self.cfg.run_dir,
                    &self.model,
                    moments,
                    &self.state,
                    &self.cfg.model,
                    self.cfg.checkpoint_dtype,
                    self.cfg.keep_last,
                )?);
            }
            if stop_here {
                break;
            }
        }
        bar.0.finish_and_clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// A line of a test log.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct TestLine {
        step: u64,
        x: f64,
    }

    impl LogLine for TestLine {
        fn step(&self) -> u64 {
            self.step
        }
    }

    #[test]
    fn the_cursor_walks_each_epoch_in_a_fresh_permutation() {
        let mut rng = Rng::new(3);
        let order = shuffled(4, &mut rng);
        let mut state = TrainerState {
            step: 0,
            rng: rng.state(),
            data: DataPosition::default(),
            order: order.clone(),
            optimizer_steps: None,
            skips: SkipCounts::default(),
        };
        let first: Vec<usize> = (0..4)
            .map(|_| next_example(&mut state, &mut rng, 4))
            .collect();
        assert_eq!(first, order.iter().map(|&i| i as usize).collect::<Vec<_>>());
        assert_eq!(state.data, DataPosition { epoch: 0, index: 4 });
        let mut second: Vec<usize> = (0..4)
            .map(|_| next_example(&mut state, &mut rng, 4))
            .collect();
        assert_eq!(state.data, DataPosition { epoch: 1, index: 4 });
        assert_eq!(
            state.order.iter().map(|&i| i as usize).collect::<Vec<_>>(),
            second
        );
        second.sort();
        assert_eq!(second, vec![0, 1, 2, 3]);
        // The same seed walks the same stream.
        let mut rng2 = Rng::new(3);
        assert_eq!(shuffled(4, &mut rng2), order);
    }

    #[test]
    fn checkpoints_come_on_the_cadence_and_at_the_end() {
        let due: Vec<u64> = (1..=7).filter(|&s| on_cadence(s, 7, 3)).collect();
        assert_eq!(due, vec![3, 6, 7]);
        let due: Vec<u64> = (1..=7).filter(|&s| on_cadence(s, 7, 0)).collect();
        assert_eq!(due, vec![7]);
    }

    #[test]
    fn a_resumed_log_keeps_the_lines_up_to_the_checkpoint() {
        let dir = std::env::temp_dir().join(format!("igpo-run-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.jsonl");
        let text =
            "{\"step\":1,\"x\":0.5}\n{\"step\":2,\"x\":1.5}\nnot json\n{\"step\":3,\"x\":2.5}\n";
        std::fs::write(&path, text).unwrap();
        let mut tb = EventWriter::restart(&dir).unwrap();
        let (kept, mut log) = JsonlLog::reopen::<TestLine>(path.clone(), "t/", Some(2)).unwrap();
        assert_eq!(kept.iter().map(|l| l.step).collect::<Vec<_>>(), vec![1, 2]);
        log.append(&TestLine { step: 3, x: 9.0 }, &mut tb).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"step\":1,\"x\":0.5}\n{\"step\":2,\"x\":1.5}\n{\"step\":3,\"x\":9.0}\n"
        );
        // A fresh run starts the log empty.
        let (kept, _) = JsonlLog::reopen::<TestLine>(path.clone(), "t/", None).unwrap();
        assert!(kept.is_empty());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
