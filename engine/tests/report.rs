//! `igpo report` on a small recorded run (tests/fixtures/report: the first
//! 10 steps of the demo's IGPO and GRPO runs): every figure is there by id
//! with one series per run and one point per step (or dev evaluation), text
//! from runs is escaped, and bad input gets one clear error line.

mod common;

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
