//! `igpo report` on a small recorded run (tests/fixtures/report: the first
//! 10 steps of the demo's IGPO and GRPO runs): every figure is there by id
//! with one series per run and one point per step (or dev evaluation), text
//! from runs is escaped, and bad input gets one clear error line.

use crate::common;

use std::path::{Path, PathBuf};

use igpo::report::{hex, load_runs, render, run_color, write_report, PHASES};

fn fixture(run: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/report")
        .join(run)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("igpo-report-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// The `<svg id="{id}" ...> ... </svg>` element of the page.
fn figure<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("<svg id=\"{id}\""))
        .unwrap_or_else(|| panic!("figure {id} missing"));
    let end = start + html[start..].find("</svg>").expect("closed svg") + "</svg>".len();
    &html[start..end]
}

/// Point markers (filled circles) of the series drawn in `color`.
fn points(svg: &str, color: &str) -> usize {
    svg.split("<circle")
        .skip(1)
        .filter(|c| c[..c.find("/>").unwrap()].contains(&format!("fill=\"{color}\"")))
        .count()
}

/// Polylines (series lines) of `color`, with their vertex counts.
fn lines(svg: &str, color: &str) -> Vec<usize> {
    svg.split("<polyline")
        .skip(1)
        .map(|c| &c[..c.find("/>").unwrap()])
        .filter(|t| t.contains(&format!("stroke=\"{color}\"")))
        .map(|t| {
            let p = t.split("points=\"").nth(1).unwrap();
            p[..p.find('"').unwrap()].split_whitespace().count()
        })
        .collect()
}

fn bars(svg: &str, color: &str) -> usize {
    svg.split("<rect")
        .skip(1)
        .filter(|c| c[..c.find("/>").unwrap()].contains(&format!("fill=\"{color}\"")))
        .count()
}

#[test]
fn two_runs_every_figure_every_point() {
    let dirs = [fixture("igpo"), fixture("grpo")];
    let out = tmp("two").join("report.html");
    let runs = write_report(&dirs, &out).unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(
        (runs[0].estimator.as_str(), runs[1].estimator.as_str()),
        ("igpo", "grpo")
    );
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    // Self-contained: no scripts, nothing fetched.
    assert!(!html.contains("<script"));
    assert!(!html
        .replace("http://www.w3.org/2000/svg", "")
        .contains("http"));
    // Legend: folder name + estimator.
    assert!(html.contains("igpo (igpo)") && html.contains("grpo (grpo)"));

    let (igpo, grpo) = (hex(run_color(0)), hex(run_color(1)));
    // Per-step figures: 10 steps each, two series.
    for id in [
        "fig-zero-adv",
        "fig-reward",
        "fig-kl",
        "fig-entropy",
        "fig-clip-frac",
        "fig-turns",
    ] {
        let svg = figure(&html, id);
        assert_eq!(points(svg, &igpo), 10, "{id} igpo points");
        assert_eq!(points(svg, &grpo), 10, "{id} grpo points");
        assert_eq!(lines(svg, &igpo), vec![10], "{id} igpo line");
        assert_eq!(lines(svg, &grpo), vec![10], "{id} grpo line");
    }
    // Dev evaluations: steps 0, 5, 10; labelled by the dev set.
    for id in ["fig-dev-f1", "fig-f1-vs-tokens"] {
        let svg = figure(&html, id);
        assert_eq!(points(svg, &igpo), 3, "{id}");
        assert_eq!(points(svg, &grpo), 3, "{id}");
    }
    assert!(figure(&html, "fig-dev-f1").contains("questions.jsonl (dev)"));
    // Entropy drop: only the run that scores turns is drawn.
    let svg = figure(&html, "fig-gt-entropy-drop");
    assert_eq!(points(svg, &igpo), 10);
    assert_eq!(points(svg, &grpo), 0);
    assert!(html.contains("does not score turns): grpo (grpo)"));
    // Time split: one bar segment per phase per run.
    let svg = figure(&html, "fig-time-split");
    for (_, c) in PHASES {
        assert_eq!(bars(svg, &hex(c)), 2);
    }
    // Samples: the last step (10), information gain coloured for IGPO only.
    assert!(html.contains("igpo (igpo) — step 10, 3 of 3 samples"));
    assert!(html.contains("grpo (grpo) — step 10, 3 of 3 samples"));
    assert!(html.contains("class=\"turn ig-neg\"") || html.contains("class=\"turn ig-pos\""));
    assert!(html.contains("IG n/a (not scored)"));
    assert!(html.contains("search: Who is the mentor of Lalpeth?"));
}

#[test]
fn one_run_one_series() {
    let runs = load_runs(&[fixture("igpo")]).unwrap();
    let html = render(&runs).unwrap();
    let svg = figure(&html, "fig-zero-adv");
    assert_eq!(points(svg, &hex(run_color(0))), 10);
    assert_eq!(points(svg, &hex(run_color(1))), 0);
    assert_eq!(lines(svg, &hex(run_color(0))), vec![10]);
    assert!(lines(svg, &hex(run_color(1))).is_empty());
}

#[test]
fn text_from_runs_is_escaped() {
    let root = tmp("hostile");
    let run = root.join("run<b>&\"x\"");
    copy_dir(&fixture("igpo"), &run);
    let hostile = serde_json::json!({
        "id": "x#0",
        "question": "<script>alert(1)</script>",
        "answers": ["\"><img src=x onerror=alert(2)>"],
        "final_answer": "</td></table><h1>owned</h1>",
        "f1": 0.0,
        "outcome_reward": 0.0,
        "gt_probability": [0.1, 0.3],
        "turn_rewards": [0.2, 0.0],
        "turn_advantages": [0.0, 0.0],
        "text": "<|im_start|>assistant\n<tool_call>{\"name\": \"search\", \"arguments\": {\"query\": \"<svg onload=alert(3)>\"}}</tool_call><|im_end|>\n<|im_start|>assistant\n<answer> </td> </answer><|im_end|>"
    });
    std::fs::write(run.join("samples/step-11.jsonl"), format!("{hostile}\n")).unwrap();
    let cfg = std::fs::read_to_string(run.join("config.toml"))
        .unwrap()
        .replace("estimator = \"igpo\"", "estimator = \"<i>igpo</i>\"");
    std::fs::write(run.join("config.toml"), cfg).unwrap();
    let out = root.join("report.html");
    write_report(&[run], &out).unwrap();
    let html = std::fs::read_to_string(out).unwrap();
    for raw in [
        "<script",
        "<img",
        "<h1>owned",
        "<svg onload",
        "<i>igpo",
        "run<b>",
    ] {
        assert!(!html.contains(raw), "unescaped {raw}");
    }
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("&quot;&gt;&lt;img src=x onerror=alert(2)&gt;"));
    assert!(html.contains("search: &lt;svg onload=alert(3)&gt;"));
    assert!(html.contains("run&lt;b&gt;&amp;&quot;x&quot; (&lt;i&gt;igpo&lt;/i&gt;)"));
    // A positive gain is green.
    assert!(html.contains("class=\"turn ig-pos\""));
}

/// (exit code, stderr) of `igpo ARGS`.
fn igpo(args: &[&str]) -> (i32, String) {
    let (code, _, err) = common::igpo(args);
    (code, err)
}

#[test]
fn bad_runs_get_one_error_line() {
    let root = tmp("bad");
    let out = root.join("r.html");
    let out = out.to_str().unwrap();
    // A folder that does not exist.
    let missing = root.join("no-such-run");
    let (code, err) = igpo(&["report", missing.to_str().unwrap(), "--out", out]);
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: run folder")
            && err.contains("no-such-run")
            && err.contains("does not exist"),
        "{err}"
    );
    // A folder without metrics.jsonl.
    let (code, err) = igpo(&["report", root.to_str().unwrap(), "--out", out]);
    assert_eq!(code, 2);
    assert!(err.contains("no metrics.jsonl"), "{err}");
    // A malformed metrics line names the file and the line.
    let run = root.join("broken");
    copy_dir(&fixture("grpo"), &run);
    let mut m = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    m.push_str("{\"step\": 11, \"outcome_reward\": \"lots\"}\n");
    std::fs::write(run.join("metrics.jsonl"), m).unwrap();
    let (code, err) = igpo(&[
        "report",
        fixture("igpo").to_str().unwrap(),
        run.to_str().unwrap(),
        "--out",
        out,
    ]);
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("broken/metrics.jsonl:11: malformed line"),
        "{err}"
    );
    assert!(!Path::new(out).exists(), "no report is written on error");
    // And a good one writes the page.
    let (code, err) = igpo(&["report", fixture("igpo").to_str().unwrap(), "--out", out]);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read_to_string(out)
        .unwrap()
        .contains("fig-time-split"));
}

/// A copy of fixture `run` as `to` with `train.seed = seed` and every dev
/// F1 raised by `lift`.
fn seeded_copy(run: &str, to: &Path, seed: u64, lift: f64) {
    copy_dir(&fixture(run), to);
    let cfg = to.join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replacen("[train]\n", &format!("[train]\nseed = {seed}\n"), 1);
    assert!(text.contains(&format!("seed = {seed}")));
    std::fs::write(&cfg, text).unwrap();
    let evals = to.join("eval.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(&evals)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["f1"] = (v["f1"].as_f64().unwrap() + lift).into();
            v["f1_se"] = 0.02.into();
            v.to_string()
        })
        .collect();
    std::fs::write(&evals, lines.join("\n") + "\n").unwrap();
}

#[test]
fn runs_that_differ_by_seed_are_one_group() {
    let dir = tmp("seeds");
    // IGPO seeds 0-2 (final F1 0.96 + 0, 0.02, 0.04), GRPO seeds 0-1.
    for (seed, lift) in [(0, 0.0), (1, 0.02), (2, 0.04)] {
        seeded_copy("igpo", &dir.join(format!("igpo/seed-{seed}")), seed, lift);
    }
    for (seed, lift) in [(0, 0.0), (1, 0.01)] {
        seeded_copy("grpo", &dir.join(format!("grpo/seed-{seed}")), seed, lift);
    }
    let dirs: Vec<PathBuf> = [
        "igpo/seed-0",
        "igpo/seed-1",
        "igpo/seed-2",
        "grpo/seed-0",
        "grpo/seed-1",
    ]
    .iter()
    .map(|d| dir.join(d))
    .collect();
    let runs = load_runs(&dirs).unwrap();
    assert_eq!(runs[1].seed, Some(1));
    assert_eq!(runs[0].setting, runs[2].setting);
    assert_ne!(runs[0].setting, runs[3].setting);
    let html = render(&runs).unwrap();
    assert!(html.contains("igpo (igpo, 3 seeds)") && html.contains("grpo (grpo, 2 seeds)"));
    assert!(html.contains("5 run(s) in 2 settings"));
    let (igpo, grpo) = (hex(run_color(0)), hex(run_color(1)));
    // One mean line per group, one point per evaluation, a band under it.
    let svg = figure(&html, "fig-dev-f1");
    assert_eq!(points(svg, &igpo), 3);
    assert_eq!(points(svg, &grpo), 3);
    assert_eq!(lines(svg, &igpo), vec![3]);
    assert_eq!(svg.matches("<polygon").count(), 2, "one band per group");
    assert_eq!(points(figure(&html, "fig-reward"), &igpo), 10);
    // The tables over seeds.
    let table = |id: &str| {
        let start = html.find(&format!("<table id=\"{id}\"")).unwrap();
        &html[start..start + html[start..].find("</table>").unwrap()]
    };
    let igpo_final = runs[0].evals.last().unwrap().f1;
    let mean = format!("{:.3}", igpo_final + 0.02);
    assert!(
        table("seed-summary").contains(&mean),
        "{}",
        table("seed-summary")
    );
    assert_eq!(table("seed-runs").matches("<tr>").count(), 1 + 5);
    assert!(table("seed-runs").contains(&format!("{igpo_final:.3} ± 0.020")));
    // Paired: seeds 0 and 1 only.
    let grpo_final = runs[3].evals.last().unwrap().f1;
    let diff = (igpo_final - grpo_final) + (0.02 - 0.01) / 2.0;
    let paired = table("paired");
    assert!(paired.contains(&format!("{diff:+.3}")), "{paired}");
    assert!(paired.contains("<td class=\"num\">2</td>"), "{paired}");
    // A run with another setting is a group of its own, drawn as before.
    let other = dir.join("igpo-lr");
    seeded_copy("igpo", &other, 0, 0.0);
    let cfg = other.join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("lr = 5e-4"));
    std::fs::write(&cfg, text.replace("lr = 5e-4", "lr = 1e-3")).unwrap();
    let mut all = dirs.clone();
    all.push(other);
    let runs = load_runs(&all).unwrap();
    let html = render(&runs).unwrap();
    assert!(html.contains("6 run(s) in 3 settings"), "{html}");
    assert!(html.contains("igpo-lr (igpo)"));
}

#[test]
fn a_sweep_folder_missing_a_run_is_one_error_naming_it() {
    let dir = tmp("sweep-missing");
    seeded_copy("igpo", &dir.join("a/seed-0"), 0, 0.0);
    std::fs::create_dir_all(dir.join("a/seed-1")).unwrap();
    std::fs::write(
        dir.join("sweep.json"),
        r#"{"runs":[{"setting":"a","seed":0,"config":"x.toml","sets":[],"dir":"a/seed-0","steps":10},
                   {"setting":"a","seed":1,"config":"x.toml","sets":[],"dir":"a/seed-1","steps":10}]}"#,
    )
    .unwrap();
    let err = load_runs(std::slice::from_ref(&dir))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("a/seed-1: no metrics.jsonl") && err.contains("sweep"),
        "{err}"
    );
    seeded_copy("igpo", &dir.join("a/seed-1-full"), 1, 0.0);
    std::fs::remove_dir_all(dir.join("a/seed-1")).unwrap();
    std::fs::rename(dir.join("a/seed-1-full"), dir.join("a/seed-1")).unwrap();
    let runs = load_runs(std::slice::from_ref(&dir)).unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[1].seed, Some(1));
}
