//! A run survives what kills runs: `igpo sft` and `igpo train` killed with
//! SIGKILL at random moments (checkpoint writes included) resume to the
//! same weights and metrics as a run never interrupted; a full disk during
//! a checkpoint is one error line and leaves the previous checkpoint
//! loadable; NaNs injected through the `IGPO_INJECT_NAN` hook skip their
//! updates (counted, weights untouched) and stop a run that keeps failing.

use crate::common;
use crate::plugins_support;
use crate::rl_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use igpo::rng::Rng;

/// `igpo` with `args` and `envs`, stdout and stderr captured.
fn igpo_cmd(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_igpo"));
    c.args(args).envs(envs.iter().copied());
    c
}

/// (exit code, stderr) of `igpo ARGS` with `envs`.
fn run(args: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
    let out = igpo_cmd(args, envs).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str], envs: &[(&str, &str)]) {
    let (code, err) = run(args, envs);
    assert_eq!(code, 0, "igpo {args:?} failed:\n{err}");
}

const TRANSCRIPTS: &str = r#"{"messages":[{"role":"user","content":"Capital of France?"},{"role":"assistant","content":"Paris."}]}
{"messages":[{"role":"user","content":"Capital of Italy?"},{"role":"assistant","content":"Rome."}]}
{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"2+2?"},{"role":"assistant","content":"4"}]}
{"messages":[{"role":"user","content":"Color of the sky?"},{"role":"assistant","content":"Blue."}]}
"#;

/// A tiny model, transcripts and an SFT run file of `steps` steps with a
/// checkpoint after each; returns the run file.
fn sft_world(dir: &Path, steps: u64) -> PathBuf {
    common::init_tiny_model(&dir.join("model"), &["--seed", "5", "--dtype", "f32"]);
    std::fs::write(dir.join("train.jsonl"), TRANSCRIPTS).unwrap();
    let cfg = format!(
        "model = \"model\"\n[data]\ntrain = \"train.jsonl\"\nmax_seq_len = 64\n\n\
         [train]\nrun_dir = \"run\"\nsteps = {steps}\nmicro_batch = 2\ngrad_accum = 2\n\
         checkpoint_every = 1\nkeep_last = 20\nlogprob_chunk = 20000\n\n\
         [optim]\nlr = 0.01\nweight_decay = 0.0\n"
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// The lines of a JSONL log without the fields that measure wall time.
fn untimed_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            for k in ["tokens_per_s", "rollout_s", "scoring_s", "update_s"] {
                o.remove(k);
            }
            v
        })
        .collect()
}

fn master(run: &Path, step: u64) -> Vec<u8> {
    let p = run.join(format!("checkpoints/step-{step}/state/master.safetensors"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Temporaries of checkpoint writes in `run` (of process `pid` only, when
/// given: those of earlier kills stay until the next write removes them).
fn half_written(run: &Path, pid: Option<u32>) -> usize {
    let ours = |name: &str| match pid {
        Some(p) => name.ends_with(&format!(".tmp-{p}")),
        None => name.contains(".tmp-"),
    };
    std::fs::read_dir(run.join("checkpoints"))
        .map(|d| {
            d.flatten()
                .filter(|e| ours(&e.file_name().to_string_lossy()))
                .count()
        })
        .unwrap_or(0)
}

/// Kills of a resumed run, and what they hit.
#[derive(Debug, Default)]
struct Kills {
    /// Random moments that fell inside a checkpoint write (it left a
    /// temporary).
    random_mid_write: usize,
    /// Kills aimed at a checkpoint write (as soon as its temporary showed).
    aimed_mid_write: usize,
    /// Kills that found the process already ended.
    after_the_end: usize,
    /// Runs brought to their end through kills and resumes (each checked).
    rounds: usize,
}

/// Runs `args` (a `--resume`d `igpo sft`/`train` of `steps` steps) again
/// and again: `random` times killed with SIGKILL after a random delay below
/// a span, and after every fifth of those once more killed as soon as a
/// checkpoint write has begun. Whenever the run reaches its end, `check`
/// compares it with the straight run and it starts over from scratch;
/// after the last kill it is resumed to the end and checked.
///
/// The span starts at `span` and adapts so that the kills spread over the
/// run whatever the machine's load: longer after an attempt that
/// checkpointed nothing new, shorter after one that got more than a step on.
fn kill_and_resume(
    args: &[&str],
    run_dir: &Path,
    (steps, random): (u64, usize),
    mut span: Duration,
    check: impl Fn(),
) -> Kills {
    let mut rng = Rng::new(2026);
    let mut k = Kills::default();
    let mut progress = vec![];
    for i in 0..random + random / 5 {
        let aimed = i % 6 == 5;
        let before = newest_checkpoint(run_dir);
        let mut child = igpo_cmd(args, &[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if aimed {
            while half_written(run_dir, Some(child.id())) == 0
                && child.try_wait().unwrap().is_none()
            {
                std::thread::sleep(Duration::from_millis(1));
            }
        } else {
            std::thread::sleep(span.mul_f64((rng.next_u64() % 10_000) as f64 / 10_000.0));
        }
        let ended = child.try_wait().unwrap().is_some();
        k.after_the_end += ended as usize;
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
        match (half_written(run_dir, Some(child.id())) > 0, aimed) {
            (true, true) => k.aimed_mid_write += 1,
            (true, false) => k.random_mid_write += 1,
            _ => {}
        }
        let after = newest_checkpoint(run_dir);
        progress.push(after);
        if !aimed {
            match (after - before, ended) {
                (0, false) => span = span.mul_f64(1.25),
                (0 | 1, _) => {}
                _ => span = span.mul_f64(0.6),
            }
        }
        if after == steps {
            check();
            k.rounds += 1;
            std::fs::remove_dir_all(run_dir).unwrap();
        }
    }
    eprintln!(
        "{random} kills at random moments and {} aimed at checkpoint writes: {k:?}; \
         newest checkpoint after each: {progress:?}",
        random / 5
    );
    ok(args, &[]);
    check();
    assert_eq!(half_written(run_dir, None), 0, "temporaries left behind");
    assert!(
        k.aimed_mid_write > 0,
        "no kill landed in a checkpoint write"
    );
    k
}

fn newest_checkpoint(run: &Path) -> u64 {
    std::fs::read_dir(run.join("checkpoints"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Runs `igpo COMMAND --config CFG` straight, then again from scratch
/// killed at random moments (`kill_and_resume`, delays below a `1/span_div`
/// of the straight run's time) and resumed: the JSONL `logs` of the run
/// folder (wall times aside) and the final weights must be the same.
fn resumes_exactly_after_kills(
    command: &str,
    cfg: &Path,
    steps: u64,
    logs: &[&str],
    span_div: u32,
) {
    let run_dir = cfg.parent().unwrap().join("run");
    let c = cfg.to_str().unwrap();
    let t0 = Instant::now();
    ok(&["-q", command, "--config", c], &[]);
    let span = t0.elapsed() / span_div;
    let read_logs = || -> Vec<_> {
        logs.iter()
            .map(|l| untimed_lines(&run_dir.join(l)))
            .collect()
    };
    let straight = read_logs();
    assert_eq!(straight[0].len() as u64, steps);
    let weights = master(&run_dir, steps);
    std::fs::remove_dir_all(&run_dir).unwrap();

    let check = || {
        assert!(read_logs() == straight, "resumed logs differ");
        assert!(master(&run_dir, steps) == weights, "resumed weights differ");
    };
    let args = ["-q", command, "--config", c, "--resume"];
    kill_and_resume(&args, &run_dir, (steps, 20), span, check);
}

#[test]
fn sft_killed_at_random_moments_resumes_exactly() {
    let dir = plugins_support::scratch("crash_sft");
    let cfg = sft_world(&dir, 10);
    resumes_exactly_after_kills("sft", &cfg, 10, &["metrics.jsonl"], 5);
}

#[test]
fn train_killed_at_random_moments_resumes_exactly() {
    let Some(plugins) = plugins_support::plugin_dir("train_killed_at_random_moments") else {
        return;
    };
    let dir = plugins_support::scratch("crash_train");
    rl_support::setup(&dir);
    // Two PPO updates per step: the AdamW step count is not the trainer's.
    let cfg = rl_support::run_file(&dir, &plugins, "", "mini_batches = 2");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("steps = 2", "steps = 4")).unwrap();
    resumes_exactly_after_kills("train", &cfg, 4, &["metrics.jsonl", "eval.jsonl"], 3);
}

/// A shell command run as root in a private mount namespace (a tmpfs can be
/// mounted there without touching the machine); `None` says why not.
fn in_mount_namespace(script: &str) -> Option<std::process::Output> {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let mut c = Command::new("unshare");
    if !root {
        c.args(["--user", "--map-root-user"]);
    }
    c.args(["--mount", "sh", "-c", script]);
    match c.output() {
        // 97: the script's mount failed; "unshare: ...": no namespace.
        Ok(out)
            if out.status.code() != Some(97)
                && !String::from_utf8_lossy(&out.stderr).starts_with("unshare:") =>
        {
            Some(out)
        }
        Ok(out) => {
            eprintln!(
                "skipped the full-disk test: cannot mount a tmpfs in a mount namespace: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            None
        }
        Err(e) => {
            eprintln!("skipped the full-disk test: cannot run unshare: {e}");
            None
        }
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

#[test]
fn a_full_disk_during_a_checkpoint_is_one_error_and_keeps_the_previous_one() {
    let dir = plugins_support::scratch("crash_full_disk");
    let cfg = sft_world(&dir, 3);
    let c = cfg.to_str().unwrap();
    // One step on a roomy disk measures a checkpoint.
    ok(&["-q", "sft", "--config", c, "--set", "train.steps=1"], &[]);
    let one = dir_bytes(&dir.join("run/checkpoints/step-1"));
    std::fs::remove_dir_all(dir.join("run")).unwrap();
    // A tmpfs with room for one checkpoint and a half: the second fills it.
    let mnt = dir.join("small-disk");
    let out = dir.join("after");
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let script = format!(
        "mount -t tmpfs -o size={kib}k tmpfs {mnt} || exit 97\n\
         {igpo} -q sft --config {c} --set train.run_dir='\"{mnt}/run\"' 2> {out}/stderr\n\
         echo $? > {out}/code\n\
         cp -a {mnt}/run {out}/run\n",
        kib = (one + one / 2) / 1024 + 256,
        mnt = mnt.display(),
        igpo = env!("CARGO_BIN_EXE_igpo"),
        out = out.display(),
    );
    let Some(done) = in_mount_namespace(&script) else {
        return;
    };
    assert!(done.status.success(), "{done:?}");
    let code: i32 = std::fs::read_to_string(out.join("code"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let err = std::fs::read_to_string(out.join("stderr")).unwrap();
    assert_eq!(code, 2, "a full disk fails the run");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one error line, got:\n{err}");
    for needle in [
        "error: checkpoint step-2 not written",
        "the newest complete one is step-1",
        "No space left on device",
    ] {
        assert!(lines[0].contains(needle), "`{needle}` missing: {err}");
    }
    // Nothing half-written; step 1 complete and resumable on a disk with room.
    let run_dir = out.join("run");
    assert_eq!(half_written(&run_dir, None), 0, "a temporary was left");
    let names: Vec<String> = std::fs::read_dir(run_dir.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["step-1"]);
    let set = format!("train.run_dir=\"{}\"", run_dir.display());
    ok(
        &["-q", "sft", "--config", c, "--set", &set, "--resume"],
        &[],
    );
    assert_eq!(untimed_lines(&run_dir.join("metrics.jsonl")).len(), 3);
}

/// `skipped_updates` and `grad_norm` of each line of a metrics log.
fn skips(run: &Path) -> Vec<(u64, bool)> {
    untimed_lines(&run.join("metrics.jsonl"))
        .iter()
        .map(|l| {
            (
                l["skipped_updates"].as_u64().unwrap(),
                l["grad_norm"].is_null(),
            )
        })
        .collect()
}

#[test]
fn injected_nans_skip_their_updates_and_stop_a_run_that_keeps_failing() {
    let dir = plugins_support::scratch("crash_nan_sft");
    let cfg = sft_world(&dir, 5);
    let c = cfg.to_str().unwrap();
    let run_dir = dir.join("run");
    // A NaN gradient at step 2, a NaN loss at step 3: both skipped and
    // counted, the weights and moments after step 3 those after step 1.
    let (code, err) = run(
        &["sft", "--config", c],
        &[("IGPO_INJECT_NAN", "grad@2,loss@3")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("step 2: update skipped (non-finite gradient norm)"),
        "{err}"
    );
    assert!(
        err.contains("step 3: update skipped (non-finite loss)"),
        "{err}"
    );
    let m = untimed_lines(&run_dir.join("metrics.jsonl"));
    assert!(m[2]["loss"].is_null());
    assert_eq!(
        skips(&run_dir),
        [(0, false), (1, true), (2, true), (2, false), (2, false)]
    );
    assert!(master(&run_dir, 1) == master(&run_dir, 3));
    assert!(master(&run_dir, 3) != master(&run_dir, 4));
    let moments = |s| {
        std::fs::read(run_dir.join(format!("checkpoints/step-{s}/state/optimizer.safetensors")))
            .unwrap()
    };
    assert!(moments(1) == moments(3));

    // Three in a row with a limit of three: the run stops with one line.
    std::fs::remove_dir_all(&run_dir).unwrap();
    let (code, err) = run(
        &[
            "-q",
            "sft",
            "--config",
            c,
            "--set",
            "optim.max_consecutive_skips=3",
        ],
        &[("IGPO_INJECT_NAN", "grad@2,grad@3,loss@4")],
    );
    assert_eq!(code, 2);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "error: step 4: 3 updates in a row were skipped (the last: non-finite loss)"
        ),
        "{err}"
    );
    // A bad hook value is one line too.
    let (code, err) = run(
        &["sft", "--config", c],
        &[("IGPO_INJECT_NAN", "advantage@1")],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("IGPO_INJECT_NAN") && err.contains("no Advantage"),
        "{err}"
    );
}

#[test]
fn train_skips_updates_with_nan_advantages_or_log_probs() {
    let Some(plugins) = plugins_support::plugin_dir("train_skips_nan_updates") else {
        return;
    };
    let dir = plugins_support::scratch("crash_nan_train");
    rl_support::setup(&dir);
    let cfg = rl_support::run_file(&dir, &plugins, "", "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("steps = 2", "steps = 3")).unwrap();
    let run_dir = dir.join("run");
    let (code, err) = run(
        &["train", "--config", cfg.to_str().unwrap()],
        &[("IGPO_INJECT_NAN", "advantage@1,logprob@2")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("step 1: update skipped (non-finite advantage)"),
        "{err}"
    );
    assert!(
        err.contains("step 2: update skipped (non-finite old or reference log-probability)"),
        "{err}"
    );
    assert_eq!(skips(&run_dir), [(1, true), (2, true), (2, false)]);
    assert!(master(&run_dir, 1) == master(&run_dir, 2));
    assert!(master(&run_dir, 2) != master(&run_dir, 3));
    // The report's summary counts them: its next-to-last column.
    let html = dir.join("report.html");
    ok(
        &[
            "report",
            run_dir.to_str().unwrap(),
            "--out",
            html.to_str().unwrap(),
        ],
        &[],
    );
    let html = std::fs::read_to_string(html).unwrap();
    let summary = html.split("<table id=\"summary\">").nth(1).unwrap();
    let row = summary.split("</tr>").nth(1).unwrap();
    let cells: Vec<&str> = row.split("<td class=\"num\">").collect();
    assert!(summary.contains("<th>skipped updates</th><th>wall time (s)</th>"));
    assert_eq!(cells[cells.len() - 2], "2</td>", "{row}");
}
