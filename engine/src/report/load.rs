//! Reading a run folder written by `igpo train`: `metrics.jsonl`,
//! `eval.jsonl`, the last `samples/step-N.jsonl` and `config.toml`.
//!
//! The report reads only the fields it draws (a view of the train loop's
//! records), so a run written before a new metric existed still renders.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::ReportError;

/// A metric that was NaN or infinite is written as `null` (JSON has no
/// NaN); it reads back as NaN and the figures leave that point out.
use crate::train::guard::nan_as_null::deserialize as nan_if_null;

/// One line of `metrics.jsonl` (the fields the report draws).
#[derive(Clone, Debug, Deserialize)]
pub struct StepMetrics {
    pub step: u64,
    #[serde(deserialize_with = "nan_if_null")]
    pub outcome_reward: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub f1: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub mean_turns: f64,
    #[serde(default)]
    pub ig_mean: Vec<Option<f64>>,
    #[serde(default)]
    pub ig_std: Vec<Option<f64>>,
    #[serde(deserialize_with = "nan_if_null")]
    pub gt_entropy_drop: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub zero_adv_ratio: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub kl: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub entropy: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub clip_frac: f64,
    pub cum_grad_tokens: usize,
    /// Updates skipped as not finite so far (absent before it was logged).
    #[serde(default)]
    pub skipped_updates: u64,
    #[serde(deserialize_with = "nan_if_null")]
    pub rollout_s: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub scoring_s: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub update_s: f64,
}

/// One line of `eval.jsonl`.
#[derive(Clone, Debug, Deserialize)]
pub struct DevPoint {
    pub step: u64,
    pub cum_grad_tokens: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub f1: f64,
    /// Standard error of `f1` over the dev questions (NaN when the run did
    /// not log it).
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub f1_se: f64,
    #[serde(default, deserialize_with = "nan_if_null")]
    pub em: f64,
}

fn nan() -> f64 {
    f64::NAN
}

/// One line of `samples/step-N.jsonl`.
#[derive(Clone, Debug, Deserialize)]
pub struct SampleLine {
    #[serde(default)]
    pub id: String,
    pub question: String,
    #[serde(default)]
    pub answers: Vec<String>,
    #[serde(default)]
    pub final_answer: Option<String>,
    #[serde(default)]
    pub f1: f64,
    #[serde(default)]
    pub outcome_reward: f64,
    /// `p_0..p_{T-1}`; empty when the estimator does not score turns.
    #[serde(default)]
    pub gt_probability: Vec<f64>,
    #[serde(default)]
    pub turn_rewards: Vec<f64>,
    #[serde(default)]
    pub text: String,
}

impl SampleLine {
    /// Information gain of each tool-calling turn: `p_{k+1} - p_k`
    /// (empty when the run did not score the ground truth).
    pub fn information_gain(&self) -> Vec<f64> {
        self.gt_probability
            .windows(2)
            .map(|w| w[1] - w[0])
            .collect()
    }

    /// The assistant turns' texts, in order (ChatML transcripts); empty when
    /// the text has no ChatML assistant blocks.
    pub fn assistant_turns(&self) -> Vec<&str> {
        crate::tokenizer::chat::chatml_assistant_turns(&self.text)
    }
}

/// Everything the report needs from one run folder.
#[derive(Clone, Debug)]
pub struct RunData {
    pub dir: PathBuf,
    /// The legend: the folder name (plus its parent when two runs share it).
    pub name: String,
    /// `[rl] estimator` of the run's `config.toml` (`?` when absent).
    pub estimator: String,
    /// The dev set: dataset file of the run file (or the plugin's name) and split.
    pub dataset: String,
    /// `[train] seed` of the run's `config.toml`.
    pub seed: Option<u64>,
    /// The run's `config.toml` without `train.seed` and `train.run_dir`
    /// (canonical TOML): runs with equal settings differ only by seed and
    /// are drawn as one group.
    pub setting: String,
    pub metrics: Vec<StepMetrics>,
    pub evals: Vec<DevPoint>,
    /// The last step that wrote samples, and its samples.
    pub samples: Option<(u64, Vec<SampleLine>)>,
}

impl RunData {
    /// Name and estimator, as the legend shows them.
    pub fn label(&self) -> String {
        format!("{} ({})", self.name, self.estimator)
    }

    /// True when the run scored the ground truth after every turn (IGPO and
    /// friends); GRPO-style runs log zeros there.
    pub fn scored(&self) -> bool {
        self.metrics.iter().any(|m| {
            (m.gt_entropy_drop != 0.0 && !m.gt_entropy_drop.is_nan())
                || m.ig_std
                    .iter()
                    .chain(&m.ig_mean)
                    .flatten()
                    .any(|&v| v != 0.0)
        })
    }
}

fn read_text(path: &Path) -> Result<String, ReportError> {
    std::fs::read_to_string(path).map_err(|e| ReportError::Io {
        path: path.display().to_string(),
        source: e,
    })
}

/// Parses a JSON-lines file; blank lines are skipped, anything else that
/// does not parse names the file and line.
fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, ReportError> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(line).map_err(|e| ReportError::Malformed {
            path: path.display().to_string(),
            line: i + 1,
            message: e.to_string(),
        })?;
        out.push(v);
    }
    Ok(out)
}

/// The newest `samples/step-N.jsonl` of a run, if any.
fn last_samples(dir: &Path) -> Result<Option<(u64, Vec<SampleLine>)>, ReportError> {
    let sdir = dir.join("samples");
    let Ok(entries) = std::fs::read_dir(&sdir) else {
        return Ok(None);
    };
    let last = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name
                .strip_prefix("step-")?
                .strip_suffix(".jsonl")?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n);
    match last {
        Some((n, path)) => Ok(Some((n, read_jsonl(&path)?))),
        None => Ok(None),
    }
}

/// What the report reads from the run's copy of its run file.
struct Described {
    estimator: String,
    dataset: String,
    seed: Option<u64>,
    setting: String,
}

/// Estimator, dev-set label, seed and setting from the run's `config.toml`.
fn describe(dir: &Path) -> Result<Described, ReportError> {
    let path = dir.join("config.toml");
    if !path.is_file() {
        // No run file: a group of its own.
        return Ok(Described {
            estimator: "?".into(),
            dataset: "dev".into(),
            seed: None,
            setting: format!("(no config.toml in {})", dir.display()),
        });
    }
    let v: toml::Value = toml::from_str(&read_text(&path)?).map_err(|e| ReportError::Config {
        path: path.display().to_string(),
        message: e.message().to_string(),
    })?;
    let seed = v
        .get("train")
        .and_then(|t| t.get("seed"))
        .and_then(|s| s.as_integer())
        .map(|s| s as u64);
    let mut rest = v.clone();
    if let Some(table) = rest.as_table_mut() {
        crate::sweep::forget_seed_and_run_dir(table);
    }
    let setting = toml::to_string(&rest).unwrap_or_default();
    let get = |keys: &[&str]| {
        keys.iter()
            .try_fold(&v, |v, k| v.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let estimator = get(&["rl", "estimator"]).unwrap_or_else(|| "igpo".into());
    let data = get(&["dataset", "plugin", "config", "file"]).or_else(|| {
        get(&["dataset", "plugin", "path"]).map(|p| {
            Path::new(&p)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or(p)
        })
    });
    let split = get(&["eval", "split"]).unwrap_or_else(|| "dev".into());
    let dataset = match data {
        Some(d) => format!("{d} ({split})"),
        None => split,
    };
    Ok(Described {
        estimator,
        dataset,
        seed,
        setting,
    })
}

/// Reads one run folder.
pub fn load_run(dir: &Path) -> Result<RunData, ReportError> {
    if dir.exists() && !dir.is_dir() {
        return Err(ReportError::NotAFolder(dir.display().to_string()));
    }
    if !dir.is_dir() {
        return Err(ReportError::MissingRun(dir.display().to_string()));
    }
    let metrics_path = dir.join("metrics.jsonl");
    if !metrics_path.is_file() {
        return Err(ReportError::NotARun(dir.display().to_string()));
    }
    let metrics: Vec<StepMetrics> = read_jsonl(&metrics_path)?;
    let eval_path = dir.join("eval.jsonl");
    let evals = if eval_path.is_file() {
        read_jsonl(&eval_path)?
    } else {
        Vec::new()
    };
    let d = describe(dir)?;
    let name = dir
        .canonicalize()
        .unwrap_or_else(|_| dir.to_path_buf())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    Ok(RunData {
        dir: dir.to_path_buf(),
        name,
        estimator: d.estimator,
        dataset: d.dataset,
        seed: d.seed,
        setting: d.setting,
        metrics,
        evals,
        samples: last_samples(dir)?,
    })
}

/// The run folders of `dirs` with every sweep folder of `igpo sweep` (one
/// holding `sweep.json`) replaced by its runs, in the sweep's order. A run
/// of a sweep that has not written its `metrics.jsonl` is an error naming
/// it: a report of a partial sweep would compare groups of different sizes
/// without saying so.
fn expand_sweeps(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, ReportError> {
    let mut out: Vec<PathBuf> = Vec::new();
    // A run named twice (a sweep folder and one of its runs) counts once.
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut push = |dir: PathBuf| {
        let key = dir.canonicalize().unwrap_or_else(|_| dir.clone());
        if !seen.contains(&key) {
            seen.push(key);
            out.push(dir);
        }
    };
    for dir in dirs {
        let file = crate::sweep::SweepFile::read(dir).map_err(|e| ReportError::Config {
            path: dir.join(crate::sweep::SWEEP_FILE).display().to_string(),
            message: e.to_string(),
        })?;
        let Some(file) = file else {
            push(dir.clone());
            continue;
        };
        for run in &file.runs {
            let run_dir = dir.join(&run.dir);
            if !run_dir.join("metrics.jsonl").is_file() {
                return Err(ReportError::IncompleteSweep {
                    sweep: dir.display().to_string(),
                    run: run_dir.display().to_string(),
                });
            }
            push(run_dir);
        }
    }
    Ok(out)
}

/// Reads every run folder (sweep folders stand for their runs); two runs
/// with the same folder name are told apart by their parent folder.
pub fn load_runs(dirs: &[PathBuf]) -> Result<Vec<RunData>, ReportError> {
    let mut runs = expand_sweeps(dirs)?
        .iter()
        .map(|d| load_run(d))
        .collect::<Result<Vec<_>, _>>()?;
    let names: Vec<String> = runs.iter().map(|r| r.name.clone()).collect();
    for r in runs.iter_mut() {
        if names.iter().filter(|n| **n == r.name).count() > 1 {
            if let Some(parent) = r
                .dir
                .canonicalize()
                .ok()
                .and_then(|p| p.parent().and_then(|p| p.file_name()).map(|s| s.to_owned()))
            {
                r.name = format!("{}/{}", parent.to_string_lossy(), r.name);
            }
        }
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(gt: &[f64], text: &str) -> SampleLine {
        serde_json::from_value(serde_json::json!({
            "question": "q", "gt_probability": gt, "text": text
        }))
        .unwrap()
    }

    #[test]
    fn information_gain_is_the_change_of_p() {
        let s = sample(&[0.1, 0.4, 0.25], "");
        let ig = s.information_gain();
        assert_eq!(ig.len(), 2);
        assert!((ig[0] - 0.3).abs() < 1e-12 && (ig[1] + 0.15).abs() < 1e-12);
        assert!(sample(&[], "").information_gain().is_empty());
    }

    #[test]
    fn assistant_turns_of_a_chatml_transcript() {
        let text = "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<tool_call>a</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>r</tool_response><|im_end|>\n<|im_start|>assistant\n<answer> x </answer>";
        assert_eq!(
            sample(&[], text).assistant_turns(),
            vec!["<tool_call>a</tool_call>", "<answer> x </answer>"]
        );
        assert!(sample(&[], "plain").assistant_turns().is_empty());
    }

    #[test]
    fn null_metrics_read_as_nan() {
        let line = r#"{"step":1,"outcome_reward":null,"f1":0.5,"mean_turns":2.0,"gt_entropy_drop":0.0,"zero_adv_ratio":0.0,"kl":null,"entropy":0.1,"clip_frac":0.0,"cum_grad_tokens":10,"rollout_s":1.0,"scoring_s":0.0,"update_s":1.0}"#;
        let m: StepMetrics = serde_json::from_str(line).unwrap();
        assert!(m.kl.is_nan() && m.outcome_reward.is_nan() && m.f1 == 0.5);
        // A missing field is still an error.
        assert!(serde_json::from_str::<StepMetrics>(r#"{"step":1}"#).is_err());
    }
}
