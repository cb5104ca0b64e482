//! `igpo sweep` end to end on the tiny RL world (rl_support) with the real
//! plugins: a 2 settings x 2 seeds grid, its sweep.json and run folders,
//! a second run that skips every finished run, a run cut short that the
//! next sweep finishes exactly as it would have run, the report of the
//! sweep (groups by seed, the seed tables), and one-line errors.

use crate::common;
use crate::plugins_support;
use crate::rl_support;

use std::path::Path;

use rl_support::{run_file, setup};
use serde_json::Value;

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("igpo-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A run's numbers without wall-clock times.
fn untimed(run: &Path) -> Vec<Value> {
    let mut lines = jsonl(&run.join("metrics.jsonl"));
    for l in lines.iter_mut() {
        let m = l.as_object_mut().unwrap();
        m.retain(|k, _| !k.ends_with("_s"));
    }
    lines.extend(jsonl(&run.join("eval.jsonl")));
    lines
}

#[test]
fn a_sweep_runs_its_grid_resumes_and_reports() {
    let Some(plugins) = plugins_support::plugin_dir("a_sweep_runs_its_grid_resumes_and_reports")
    else {
        return;
    };
    let dir = temp_dir("sweep-grid");
    setup(&dir);
    let cfg = run_file(&dir, &plugins, "", "");
    let out = dir.join("sweep");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["sweep", "--config"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.push(cfg.display().to_string());
        a.extend(
            [
                "--seeds",
                "0..2",
                "--set",
                "rl.estimator=igpo,grpo",
                "--jobs",
                "2",
                "--out",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        a.push(out.display().to_string());
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        common::igpo(&refs)
    };
    let (code, stdout, stderr) = run(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("4 runs finished (0 before this sweep)"),
        "{stdout}"
    );

    let sweep: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sweep.json")).unwrap()).unwrap();
    let runs = sweep["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    for (setting, estimator) in [
        ("run,rl.estimator=igpo", "igpo"),
        ("run,rl.estimator=grpo", "grpo"),
    ] {
        for seed in [0, 1] {
            let rd = out.join(setting).join(format!("seed-{seed}"));
            let config: toml::Table = std::fs::read_to_string(rd.join("config.toml"))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(config["train"]["seed"].as_integer(), Some(seed));
            assert_eq!(config["rl"]["estimator"].as_str(), Some(estimator));
            assert_eq!(
                jsonl(&rd.join("metrics.jsonl")).len(),
                2,
                "{}",
                rd.display()
            );
            assert!(rd.join("checkpoints/step-2").is_dir());
            assert!(out.join(setting).join(format!("seed-{seed}.log")).is_file());
        }
    }
    // Two seeds really differ.
    let a = out.join("run,rl.estimator=igpo/seed-0");
    let b = out.join("run,rl.estimator=igpo/seed-1");
    assert_ne!(untimed(&a), untimed(&b));

    // Again: nothing to do.
    let (code, stdout, stderr) = run(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("4 runs finished (4 before this sweep)"),
        "{stdout}"
    );
    assert!(stderr.contains("4 already finished"), "{stderr}");

    // A run cut short after step 1 (its last checkpoint and log lines gone,
    // as if killed): the next sweep finishes it, with the same numbers.
    let before = untimed(&a);
    std::fs::remove_dir_all(a.join("checkpoints/step-2")).unwrap();
    let (code, stdout, stderr) = run(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("4 runs finished (3 before this sweep)"),
        "{stdout}"
    );
    assert_eq!(untimed(&a), before);
    let log = std::fs::read_to_string(out.join("run,rl.estimator=igpo/seed-0.log")).unwrap();
    assert!(
        log.contains("resuming from") && log.contains("(step 1)"),
        "{log}"
    );

    // The run file edited: its old run folders are never continued.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("lr = 1e-3", "lr = 2e-3")).unwrap();
    let (code, _, stderr) = run(&[]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("holds a run of another setting"),
        "{stderr}"
    );
    std::fs::write(&cfg, text).unwrap();

    // The report of the sweep folder: one group per setting.
    let html_path = dir.join("report.html");
    let (code, stdout, stderr) = common::igpo(&[
        "report",
        out.to_str().unwrap(),
        "--out",
        html_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("report: 4 runs: run,rl.estimator=igpo (igpo, 2 seeds) vs run,rl.estimator=grpo (grpo, 2 seeds)"), "{stdout}");
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert!(
        html.contains("run,rl.estimator=igpo (igpo, 2 seeds)"),
        "{html}"
    );
    assert!(html.contains("run,rl.estimator=grpo (grpo, 2 seeds)"));
    for id in ["seed-summary", "seed-runs", "paired"] {
        assert!(html.contains(&format!("id=\"{id}\"")), "{id}");
    }
    // One run missing its metrics: one line naming it.
    std::fs::remove_file(b.join("metrics.jsonl")).unwrap();
    let (code, _, stderr) = common::igpo(&[
        "report",
        out.to_str().unwrap(),
        "--out",
        html_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("seed-1: no metrics.jsonl") && stderr.contains("sweep"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_sweeps_fail_with_one_line_before_any_run() {
    let Some(plugins) = plugins_support::plugin_dir("bad_sweeps_fail_with_one_line_before_any_run")
    else {
        return;
    };
    let dir = temp_dir("sweep-bad");
    setup(&dir);
    let cfg = run_file(&dir, &plugins, "", "");
    let cfg = cfg.to_str().unwrap();
    let out = dir.join("out");
    let out = out.to_str().unwrap();
    for (args, want) in [
        (vec!["--seeds", "3..1"], "--seeds 3..1: no seeds"),
        (vec!["--seeds", "x"], "--seeds x: expected"),
        (vec!["--set", "rl.estimator"], "expected key=value"),
        (
            vec!["--set", "train.seed=1,2"],
            "the sweep sets this key itself",
        ),
        (
            vec!["--set", "rl.estimator=igpo,nope"],
            "run,rl.estimator=nope/seed-0",
        ),
        (vec!["--set", "rl.group_size=1"], "group_size"),
        (vec!["--jobs", "0"], "--jobs 0"),
        (
            vec!["--set", "model=no-such-model"],
            "is not a model folder",
        ),
    ] {
        let mut a = vec!["sweep", "--config", cfg, "--out", out];
        a.extend(args.iter());
        let (code, _, stderr) = common::igpo(&a);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        // Nothing ran.
        assert!(!Path::new(out).join("sweep.json").exists(), "{args:?}");
    }
    // Another sweep running into the folder (here: this test process holds
    // its claim): one line, nothing run.
    std::fs::create_dir_all(out).unwrap();
    let claim = Path::new(out).join(".sweep.lock");
    std::fs::write(&claim, std::process::id().to_string()).unwrap();
    let (code, _, stderr) = common::igpo(&["sweep", "--config", cfg, "--out", out, "--seeds", "0"]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("in use by another igpo process"),
        "{stderr}"
    );
    assert!(!Path::new(out).join("sweep.json").exists());
    std::fs::remove_file(&claim).unwrap();

    // A run that fails while running: the sweep says which, and where its log is.
    let (code, _, stderr) = common::igpo(&[
        "sweep",
        "--config",
        cfg,
        "--out",
        out,
        "--seeds",
        "0",
        "--set",
        "dataset.plugin.config.file=missing.jsonl",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("1 of 1 runs failed") && stderr.contains("seed-0.log"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
