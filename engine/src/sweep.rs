//! `igpo sweep`: run files repeated over seeds and a grid of `--set` values.
//!
//! Every run of the grid is an `igpo train --resume` child process with its
//! own run folder, `OUT/<setting>/seed-<S>/`, and its own log,
//! `OUT/<setting>/seed-<S>.log`; `OUT/sweep.json` lists the runs (what
//! `igpo report OUT` reads). The whole plan is checked before anything runs
//! (every run file with its overrides parses), a run whose newest checkpoint
//! is its last step is not run again, and a run that was cut short continues
//! from its newest checkpoint: running the same sweep again finishes it.
//! Several runs at once (`jobs`) split the machine's cores between them.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::runfile::RunFile;
use crate::train::checkpoint::resume_point;
use crate::train::RlRunConfig;

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// A bad `--seeds` / `--set` / `--jobs` value.
    #[error("{0}")]
    Spec(String),
    /// A run of the grid whose run file (with its overrides) is not valid.
    #[error("sweep run {setting}/seed-{seed}: {msg}")]
    Plan {
        setting: String,
        seed: u64,
        msg: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("sweep: {failed} of {total} runs failed; first: {first}")]
    Failed {
        failed: usize,
        total: usize,
        first: String,
    },
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> SweepError + '_ {
    move |source| SweepError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One `--set key=v1,v2,...` of the grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    pub key: String,
    pub values: Vec<String>,
}

impl Axis {
    /// `key=v1,v2`: commas inside brackets, braces or quotes belong to the
    /// value (`rl.x=[1,2],[3]` is two values).
    pub fn parse(s: &str) -> Result<Axis, SweepError> {
        let bad = |m: &str| SweepError::Spec(format!("--set {s}: {m}"));
        let (key, values) = s
            .split_once('=')
            .ok_or_else(|| bad("expected key=value[,value...]"))?;
        let key = key.trim();
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(bad("empty key segment"));
        }
        if key == "train.seed" || key == "train.run_dir" {
            return Err(bad(
                "the sweep sets this key itself (use --seeds and --out)",
            ));
        }
        let (mut depth, mut quote) = (0i32, None::<char>);
        let mut parts = vec![String::new()];
        for c in values.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (None, '"' | '\'') => quote = Some(c),
                (None, '[' | '{') => depth += 1,
                (None, ']' | '}') => depth -= 1,
                (None, ',') if depth == 0 => {
                    parts.push(String::new());
                    continue;
                }
                _ => {}
            }
            parts.last_mut().unwrap().push(c);
        }
        let values: Vec<String> = parts.iter().map(|p| p.trim().to_string()).collect();
        if values.iter().any(String::is_empty) {
            return Err(bad("empty value"));
        }
        Ok(Axis {
            key: key.to_string(),
            values,
        })
    }
}

/// `--seeds`: `A..B` (B excluded), `A..=B`, or a list `a,b,c`.
pub fn parse_seeds(s: &str) -> Result<Vec<u64>, SweepError> {
    let bad = |m: &str| SweepError::Spec(format!("--seeds {s}: {m}"));
    let num = |t: &str| {
        t.trim()
            .parse::<u64>()
            .map_err(|_| bad("expected A..B, A..=B or a list a,b,c of whole numbers"))
    };
    const MAX: u64 = 10_000;
    let range = |a: u64, end: u64| {
        if end <= a {
            Err(bad("no seeds in this range"))
        } else if end - a > MAX {
            Err(bad("more than 10,000 seeds"))
        } else {
            Ok((a..end).collect::<Vec<u64>>())
        }
    };
    let seeds: Vec<u64> = if let Some((a, b)) = s.split_once("..=") {
        range(num(a)?, num(b)?.saturating_add(1))?
    } else if let Some((a, b)) = s.split_once("..") {
        range(num(a)?, num(b)?)?
    } else {
        s.split(',').map(num).collect::<Result<_, _>>()?
    };
    let mut sorted = seeds.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != seeds.len() {
        return Err(bad("a seed is listed twice"));
    }
    if seeds.len() as u64 > MAX {
        return Err(bad("more than 10,000 seeds"));
    }
    Ok(seeds)
}

/// What to sweep.
#[derive(Clone, Debug)]
pub struct SweepSpec {
    /// Run files of `igpo train`; each is a setting of its own.
    pub configs: Vec<PathBuf>,
    pub seeds: Vec<u64>,
    /// The grid: every combination of one value per axis.
    pub axes: Vec<Axis>,
    /// The sweep folder.
    pub out: PathBuf,
    /// Runs at once (each gets `cores / jobs` threads).
    pub jobs: usize,
    /// `--device` of every run.
    pub device: String,
}

/// One run of the grid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedRun {
    /// The setting's folder name: the run file's stem and the grid values
    /// (`igpo,rl.estimator=grpo`).
    pub setting: String,
    pub seed: u64,
    pub config: PathBuf,
    /// The grid's overrides of this run (seed and run folder not included).
    pub sets: Vec<String>,
    /// The run folder, relative to the sweep folder.
    pub dir: PathBuf,
    pub steps: u64,
}

impl PlannedRun {
    /// Every `--set` the child gets: the grid's, then seed and run folder
    /// (absolute: a relative path in a run file is taken from the run
    /// file's folder).
    fn all_sets(&self, out: &Path) -> Vec<String> {
        let dir = std::path::absolute(out.join(&self.dir)).unwrap_or_else(|_| out.join(&self.dir));
        let mut sets = self.sets.clone();
        sets.push(format!("train.seed={}", self.seed));
        sets.push(format!(
            "train.run_dir={}",
            toml::Value::String(dir.display().to_string())
        ));
        sets
    }

    fn log(&self, out: &Path) -> PathBuf {
        out.join(&self.setting)
            .join(format!("seed-{}.log", self.seed))
    }
}

/// `OUT/sweep.json`: the runs of the sweep (every sweep run into this folder).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SweepFile {
    pub runs: Vec<PlannedRun>,
}

pub const SWEEP_FILE: &str = "sweep.json";

/// `OUT/.sweep.lock`: the pid of the sweep running into `OUT`.
const SWEEP_LOCK: &str = ".sweep.lock";

impl SweepFile {
    pub fn read(out: &Path) -> Result<Option<SweepFile>, SweepError> {
        let path = out.join(SWEEP_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| SweepError::Spec(format!("{}: {e}", path.display())))
    }
}

/// A folder-safe name for a grid value: `/`, spaces and control characters
/// become `_`, so every setting is one folder.
fn folder_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// Every run of the grid, each run file read with its overrides and checked.
pub fn plan(spec: &SweepSpec) -> Result<Vec<PlannedRun>, SweepError> {
    if spec.configs.is_empty() {
        return Err(SweepError::Spec("sweep: no --config given".into()));
    }
    if spec.jobs == 0 {
        return Err(SweepError::Spec(
            "--jobs 0: at least one run at a time".into(),
        ));
    }
    // Every combination of one value per axis, first axis slowest.
    let mut grid: Vec<Vec<(String, String)>> = vec![vec![]];
    for axis in &spec.axes {
        grid = grid
            .into_iter()
            .flat_map(|combo| {
                axis.values.iter().map(move |v| {
                    let mut c = combo.clone();
                    c.push((axis.key.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    let mut stems: Vec<String> = Vec::new();
    let mut runs = Vec::new();
    for config in &spec.configs {
        let mut stem = config
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "run".into());
        // Two run files with one name (a/igpo.toml, b/igpo.toml): number them.
        if stems.contains(&stem) {
            stem = format!("{stem}-{}", stems.len() + 1);
        }
        stems.push(stem.clone());
        for combo in &grid {
            let setting = std::iter::once(folder_safe(&stem))
                .chain(combo.iter().map(|(k, v)| folder_safe(&format!("{k}={v}"))))
                .collect::<Vec<_>>()
                .join(",");
            let sets: Vec<String> = combo.iter().map(|(k, v)| format!("{k}={v}")).collect();
            for &seed in &spec.seeds {
                let mut run = PlannedRun {
                    setting: setting.clone(),
                    seed,
                    config: config.clone(),
                    sets: sets.clone(),
                    dir: Path::new(&setting).join(format!("seed-{seed}")),
                    steps: 0,
                };
                let plan_err = |msg: String| SweepError::Plan {
                    setting: setting.clone(),
                    seed,
                    msg,
                };
                let file = RunFile::read(config, &run.all_sets(&spec.out))
                    .map_err(|e| plan_err(e.to_string()))?;
                let cfg = RlRunConfig::from_run_file(&file).map_err(|e| plan_err(e.to_string()))?;
                run.steps = cfg.train.steps;
                // Two settings in one folder (`a/b` and `a_b` are both `a_b`).
                if runs.iter().any(|r: &PlannedRun| r.dir == run.dir) {
                    return Err(plan_err(
                        "two settings of this sweep have this folder name: tell them apart".into(),
                    ));
                }
                // A run folder of another setting (an edited run file, a
                // different grid into the same --out) is never continued.
                let existing = spec.out.join(&run.dir).join("config.toml");
                if existing.is_file() {
                    let was = std::fs::read_to_string(&existing).map_err(io_err(&existing))?;
                    if setting_of(&was) != setting_of(&file.text) {
                        return Err(plan_err(format!(
                            "{} holds a run of another setting (its config.toml differs from this run file \
                             with its --set values beyond seed and run folder): use another --out, or remove it",
                            spec.out.join(&run.dir).display()
                        )));
                    }
                }
                runs.push(run);
            }
        }
    }
    Ok(runs)
}

/// A run file's settings: its TOML without `train.seed` and `train.run_dir`
/// (`None` when it is not TOML). Runs of one setting differ only there.
pub fn setting_of(run_file_text: &str) -> Option<toml::Table> {
    let mut t: toml::Table = run_file_text.parse().ok()?;
    forget_seed_and_run_dir(&mut t);
    Some(t)
}

/// Removes `train.seed` and `train.run_dir` from a run file's table: what
/// is left is its setting (also how `igpo report` groups runs).
pub fn forget_seed_and_run_dir(run_file: &mut toml::Table) {
    if let Some(train) = run_file.get_mut("train").and_then(|v| v.as_table_mut()) {
        train.remove("seed");
        train.remove("run_dir");
    }
}

/// Whether the run folder holds the run's last checkpoint.
pub fn is_finished(out: &Path, run: &PlannedRun) -> Result<bool, SweepError> {
    let dir = out.join(&run.dir);
    if !dir.is_dir() {
        return Ok(false);
    }
    let point = resume_point(&dir).map_err(|e| SweepError::Plan {
        setting: run.setting.clone(),
        seed: run.seed,
        msg: e.to_string(),
    })?;
    Ok(point.is_some_and(|(step, _)| step >= run.steps))
}

/// How a sweep ended (when every run succeeded).
#[derive(Clone, Debug, PartialEq)]
pub struct SweepOutcome {
    pub runs: usize,
    /// Runs that were finished before this sweep started.
    pub skipped: usize,
    pub seconds: f64,
}

/// A child process running one run.
struct Running {
    run: PlannedRun,
    child: Child,
}

/// Lines of `metrics.jsonl`: the steps a run has logged.
fn steps_logged(dir: &Path) -> u64 {
    std::fs::read(dir.join("metrics.jsonl"))
        .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64)
        .unwrap_or(0)
}

/// The last non-empty line of a log (what the run said when it failed).
fn last_line(log: &Path) -> String {
    std::fs::read_to_string(log)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// The overall progress: steps done over all runs, drawn in place on a
/// terminal, a line per run started or ended otherwise.
struct Progress {
    tty: bool,
    total_steps: u64,
    start: Instant,
}

impl Progress {
    fn draw(&self, done_steps: u64, runs_done: usize, runs: usize, running: &[Running]) {
        if !self.tty {
            return;
        }
        let frac = done_steps as f64 / self.total_steps.max(1) as f64;
        let width = 30;
        let filled = ((frac * width as f64).round() as usize).min(width);
        let names: Vec<String> = running
            .iter()
            .map(|r| format!("{}/seed-{}", r.run.setting, r.run.seed))
            .collect();
        let line = format!(
            "\rsweep [{}{}] {:>3.0}% {runs_done}/{runs} runs, {:.0} s, running {}",
            "#".repeat(filled),
            ".".repeat(width - filled),
            frac * 100.0,
            self.start.elapsed().as_secs_f64(),
            names.join(" ")
        );
        let line: String = line.chars().take(200).collect();
        eprint!("{line}\x1b[K");
        let _ = std::io::stderr().flush();
    }

    fn event(&self, text: &str) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
        eprintln!("sweep: {text}");
    }
}

/// Starts `igpo train --resume` for `run`, its output appended to its log
/// (a resumed run's log keeps why the last attempt ended).
fn start(
    run: &PlannedRun,
    spec: &SweepSpec,
    igpo: &Path,
    threads: usize,
) -> Result<Child, SweepError> {
    let log_path = run.log(&spec.out);
    if let Some(parent) = log_path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io_err(&log_path))?;
    let err_log = log.try_clone().map_err(io_err(&log_path))?;
    let mut cmd = Command::new(igpo);
    cmd.args(["train", "--resume", "--device", &spec.device, "--config"])
        .arg(&run.config);
    for s in run.all_sets(&spec.out) {
        cmd.arg("--set").arg(s);
    }
    if spec.jobs > 1 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        cmd.env("RAYON_NUM_THREADS", threads.to_string());
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err_log))
        .spawn()
        .map_err(io_err(igpo))
}

/// Runs the sweep: `igpo` is the binary the runs are started with.
pub fn run_sweep(spec: &SweepSpec, igpo: &Path) -> Result<SweepOutcome, SweepError> {
    let runs = plan(spec)?;
    std::fs::create_dir_all(&spec.out).map_err(io_err(&spec.out))?;
    // One sweep at a time per folder: two would train the same runs at once.
    let _claim = crate::fsutil::lock_folder(&spec.out, SWEEP_LOCK).map_err(SweepError::Spec)?;
    // sweep.json: this sweep's runs after any earlier ones into this folder.
    let mut file = SweepFile::read(&spec.out)?.unwrap_or_default();
    for r in &runs {
        if !file.runs.iter().any(|o| o.dir == r.dir) {
            file.runs.push(r.clone());
        }
    }
    let json = serde_json::to_string_pretty(&file).expect("sweep file serializes");
    let sweep_json = spec.out.join(SWEEP_FILE);
    crate::fsutil::write_atomic(&sweep_json, json.as_bytes()).map_err(io_err(&sweep_json))?;

    let mut todo = Vec::new();
    let mut skipped = 0;
    for r in &runs {
        if is_finished(&spec.out, r)? {
            skipped += 1;
        } else {
            todo.push(r.clone());
        }
    }
    let progress = Progress {
        tty: std::io::stderr().is_terminal(),
        total_steps: runs.iter().map(|r| r.steps).sum(),
        start: Instant::now(),
    };
    progress.event(&format!(
        "{} runs ({} settings x {} seeds) into {}; {skipped} already finished",
        runs.len(),
        runs.len() / spec.seeds.len().max(1),
        spec.seeds.len(),
        spec.out.display()
    ));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / spec.jobs).max(1);
    let mut queue = todo.into_iter();
    let mut running: Vec<Running> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    let mut finished_now = 0;
    // No `?` in this loop: every error is one run's failure, so the loop
    // never returns while children are still running.
    loop {
        while running.len() < spec.jobs {
            let Some(run) = queue.next() else { break };
            let name = format!("{}/seed-{}", run.setting, run.seed);
            match start(&run, spec, igpo, threads) {
                Ok(child) => {
                    progress.event(&format!(
                        "started {name} (log {})",
                        run.log(&spec.out).display()
                    ));
                    running.push(Running { run, child });
                }
                Err(e) => {
                    let why = format!("{name} (not started: {e})");
                    progress.event(&format!("FAILED {why}"));
                    failed.push(why);
                }
            }
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        let mut i = 0;
        while i < running.len() {
            let ended = match running[i].child.try_wait() {
                Ok(None) => {
                    i += 1;
                    continue;
                }
                Ok(Some(status)) if status.success() => Ok(()),
                Ok(Some(status)) => Err(status.to_string()),
                Err(e) => {
                    let _ = running[i].child.kill();
                    let _ = running[i].child.wait();
                    Err(format!("lost: {e}"))
                }
            };
            let r = running.remove(i);
            let name = format!("{}/seed-{}", r.run.setting, r.run.seed);
            let log = r.run.log(&spec.out);
            if let Err(status) = ended {
                let why = format!(
                    "{name} ({status}: {}; log {})",
                    last_line(&log),
                    log.display()
                );
                progress.event(&format!("FAILED {why}"));
                failed.push(why);
            } else {
                finished_now += 1;
                progress.event(&format!("finished {name}"));
            }
        }
        if !progress.tty {
            continue;
        }
        let done_steps: u64 = runs
            .iter()
            .map(|r| steps_logged(&spec.out.join(&r.dir)).min(r.steps))
            .sum();
        progress.draw(
            done_steps,
            skipped + finished_now + failed.len(),
            runs.len(),
            &running,
        );
    }
    if progress.tty {
        eprint!("\r\x1b[K");
    }
    if let Some(first) = failed.first() {
        return Err(SweepError::Failed {
            failed: failed.len(),
            total: runs.len(),
            first: first.clone(),
        });
    }
    Ok(SweepOutcome {
        runs: runs.len(),
        skipped,
        seconds: progress.start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds() {
        assert_eq!(parse_seeds("0..5").unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(parse_seeds("2..=4").unwrap(), vec![2, 3, 4]);
        assert_eq!(parse_seeds("7").unwrap(), vec![7]);
        assert_eq!(parse_seeds("3, 1,9").unwrap(), vec![3, 1, 9]);
        for bad in ["", "5..5", "a..3", "1,,2", "1,1", "-1..2", "0..100000"] {
            assert!(parse_seeds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn axes() {
        let a = Axis::parse("rl.estimator=igpo, grpo").unwrap();
        assert_eq!(
            (a.key.as_str(), a.values.clone()),
            ("rl.estimator", vec!["igpo".into(), "grpo".into()])
        );
        let a = Axis::parse("x.y=[1,2],{ a = 1, b = 2 },\"p,q\"").unwrap();
        assert_eq!(a.values, vec!["[1,2]", "{ a = 1, b = 2 }", "\"p,q\""]);
        for bad in [
            "rl.estimator",
            "=1",
            "a..b=1",
            "a=1,,2",
            "train.seed=1,2",
            "train.run_dir=x",
        ] {
            assert!(Axis::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            folder_safe("tools.0.config.format={text} /x"),
            "tools.0.config.format={text}__x"
        );
    }
}
