//! `igpo report`: one self-contained HTML page (inline SVG, no scripts, no
//! network) comparing run folders of `igpo train` side by side. It redraws
//! the paper's figures from `metrics.jsonl` / `eval.jsonl` (zero-advantage
//! groups, dev F1 per step, drop of ground-truth entropy, F1 against
//! gradient tokens), the training signals (reward, KL, entropy, clip
//! fraction, turns), the time split, and a table of sampled trajectories
//! with each turn's information gain.
//!
//! Figure ids (stable; tests look them up): `fig-zero-adv`, `fig-dev-f1`
//! (`fig-dev-f1-2`.. when runs use different dev sets), `fig-gt-entropy-drop`,
//! `fig-f1-vs-tokens`, `fig-reward`, `fig-kl`, `fig-entropy`,
//! `fig-clip-frac`, `fig-turns`, `fig-time-split`.

pub mod groups;
mod html;
mod load;
mod plot;
pub mod stats;
mod table;

use std::path::{Path, PathBuf};

pub use html::{escape, render};
pub use load::{load_run, load_runs, DevPoint, RunData, SampleLine, StepMetrics};
pub use plot::{hex, run_color, PALETTE, PHASES};
pub use table::seed_table;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("run folder {0} does not exist")]
    MissingRun(String),
    #[error("{0} is a file, not a run folder of `igpo train`")]
    NotAFolder(String),
    #[error("{0} is not a run folder of `igpo train` (no metrics.jsonl)")]
    NotARun(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: malformed line: {message}")]
    Malformed {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path}: not a run file: {message}")]
    Config { path: String, message: String },
    #[error("{run}: no metrics.jsonl, but sweep {sweep} lists this run (run the sweep again to finish it, or report the run folders you have)")]
    IncompleteSweep { sweep: String, run: String },
    #[error("no run folders given")]
    NoRuns,
    #[error("drawing {0}")]
    Plot(String),
}

/// Loads `dirs`, renders the page and writes it atomically to `out`.
/// Returns the runs it read.
pub fn write_report(dirs: &[PathBuf], out: &Path) -> Result<Vec<RunData>, ReportError> {
    if dirs.is_empty() {
        return Err(ReportError::NoRuns);
    }
    let runs = load_runs(dirs)?;
    let page = render(&runs)?;
    crate::fsutil::write_atomic(out, page.as_bytes()).map_err(|e| ReportError::Io {
        path: out.display().to_string(),
        source: e,
    })?;
    Ok(runs)
}
