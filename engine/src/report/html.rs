//! The report page: one self-contained HTML file (inline CSS and SVG, no
//! scripts, no network). Every string that comes from a run is escaped here.

use std::fmt::Write;

use super::groups::{compare, group_curve, group_runs, per_run, step_curve, Group, MeanCurve};
use super::load::{DevPoint, RunData, SampleLine, StepMetrics};
use super::plot::{self, LineFigure, Series};
use super::stats::Summary;
use super::ReportError;

/// HTML/XML escaping for text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = r#"
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; margin: 24px 32px; color: #222; background: #fafafa; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.sub { color: #666; font-size: 13px; margin: 0 0 14px; }
.legend { position: sticky; top: 0; z-index: 1; background: #fafafa; padding: 6px 0; display: flex; flex-wrap: wrap; gap: 8px 22px; margin: 10px 0; font-size: 14px; }
.legend span.sw { display: inline-block; width: 22px; height: 4px; vertical-align: middle; margin-right: 6px; border-radius: 2px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(600px, 1fr)); gap: 14px; }
figure { margin: 0; background: #fff; border: 1px solid #e3e3e3; border-radius: 6px; padding: 6px; }
figure svg { width: 100%; height: auto; display: block; }
figcaption { font-size: 12.5px; color: #555; padding: 2px 6px 4px; }
table { border-collapse: collapse; font-size: 13px; background: #fff; }
th, td { border: 1px solid #e0e0e0; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.phase { display: inline-block; width: 11px; height: 11px; margin: 0 4px 0 10px; vertical-align: -1px; }
.turns { display: flex; flex-direction: column; gap: 3px; }
.turn { border-radius: 4px; padding: 2px 6px; font-size: 12px; border: 1px solid #e0e0e0; }
.turn b { font-variant-numeric: tabular-nums; }
.ig-na, .ig-zero { background: #f2f2f2; }
.answer-turn { background: #eef3fb; }
details pre { white-space: pre-wrap; font-size: 11.5px; max-width: 900px; background: #f6f6f6; padding: 6px; }
.note { font-size: 12.5px; color: #666; }
"#;

/// A time that was not a number counts as 0 in sums.
fn finite(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.filter(|v| !v.is_nan())
        .map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

/// A dev F1 with its standard error over the questions, when logged.
fn fmt_f1(p: Option<&DevPoint>) -> String {
    match p {
        Some(p) if p.f1_se.is_finite() => format!("{:.3} ± {:.3}", p.f1, p.f1_se),
        Some(p) => fmt_opt(Some(p.f1), 3),
        None => "–".into(),
    }
}

/// Mean ± half the 95 % interval (just the mean for one run).
fn fmt_mean(s: Option<Summary>, digits: usize) -> String {
    match s {
        Some(s) if s.n >= 2 && s.half_width().is_finite() => {
            format!("{:.digits$} ± {:.digits$}", s.mean, s.half_width())
        }
        Some(s) => format!("{:.digits$}", s.mean),
        None => "–".into(),
    }
}

/// Mean, standard deviation and the 95 % interval.
fn fmt_full(s: Option<Summary>, digits: usize) -> String {
    match s {
        Some(s) if s.n >= 2 => format!(
            "{:.digits$} <span class=\"note\">sd {:.digits$}</span><br>[{:.digits$}, {:.digits$}]",
            s.mean, s.sd, s.lo, s.hi
        ),
        Some(s) => format!("{:.digits$}", s.mean),
        None => "–".into(),
    }
}

/// A figure series of group `i`'s mean curve.
fn series(i: usize, c: MeanCurve) -> Series {
    Series {
        color: plot::run_color(i),
        points: c.points,
        band: c.band,
    }
}

/// A per-step series of every group, from `f` over its metrics lines.
fn per_step(groups: &[Group], f: impl Fn(&StepMetrics) -> f64 + Copy) -> Vec<Series> {
    groups
        .iter()
        .enumerate()
        .map(|(i, g)| series(i, step_curve(g, f)))
        .collect()
}

fn figure(out: &mut String, svg: &str, caption: &str) {
    let _ = writeln!(
        out,
        "<figure>{svg}<figcaption>{}</figcaption></figure>",
        escape(caption)
    );
}

/// Up to `k` samples, one per distinct question first.
fn pick_samples(samples: &[SampleLine], k: usize) -> Vec<&SampleLine> {
    let mut picked: Vec<&SampleLine> = Vec::new();
    for s in samples {
        if picked.len() < k && !picked.iter().any(|p| p.question == s.question) {
            picked.push(s);
        }
    }
    for s in samples {
        if picked.len() < k && !picked.iter().any(|p| std::ptr::eq(*p, s)) {
            picked.push(s);
        }
    }
    picked
}

/// A short view of an assistant turn: `search: query` for a tool call,
/// `answer: text` for an answer, else the text without its thinking part.
fn turn_gist(turn: &str) -> String {
    let between = |open: &str, close: &str| {
        let start = turn.find(open)? + open.len();
        let end = turn[start..].find(close).map_or(turn.len(), |e| start + e);
        Some(turn[start..end].trim())
    };
    let gist = if let Some(call) = between("<tool_call>", "</tool_call>") {
        match serde_json::from_str::<serde_json::Value>(call) {
            Ok(v) => {
                let name = v.get("name").and_then(|n| n.as_str()).unwrap_or("tool");
                let args = v.get("arguments");
                let arg = match args.and_then(|a| a.get("query")).and_then(|q| q.as_str()) {
                    Some(q) => q.to_string(),
                    None => args.map(|a| a.to_string()).unwrap_or_default(),
                };
                format!("{name}: {arg}")
            }
            Err(_) => call.to_string(),
        }
    } else if let Some(answer) = between("<answer>", "</answer>") {
        format!("answer: {answer}")
    } else {
        let body = match turn.rfind("</think>") {
            Some(i) => turn[i + "</think>".len()..].trim(),
            None => turn.trim(),
        };
        if body.is_empty() { turn.trim() } else { body }.to_string()
    };
    let mut s: String = gist.chars().take(110).collect();
    if gist.chars().count() > 110 {
        s.push('…');
    }
    s
}

/// Gains smaller than this (in p, or nats for `log_prob_diff`) are shown as
/// no change: a 2-hop question's first search moves p by ~1e-7, which is
/// not a loss worth a red chip.
const IG_NEGLIGIBLE: f64 = 1e-3;

/// Background of an information-gain chip: green for a gain, red for a
/// loss, the strength relative to the largest |gain| in the table.
fn ig_style(ig: f64, scale: f64) -> (&'static str, String) {
    if ig.abs() < IG_NEGLIGIBLE || scale <= 0.0 {
        return ("ig-zero", String::new());
    }
    let a = 0.15 + 0.7 * (ig.abs() / scale).min(1.0);
    if ig > 0.0 {
        ("ig-pos", format!("background: rgba(44,160,44,{a:.2})"))
    } else {
        ("ig-neg", format!("background: rgba(214,39,40,{a:.2})"))
    }
}

fn samples_table(out: &mut String, run: &RunData, label: &str, color: &str) {
    let Some((step, samples)) = &run.samples else {
        let _ = writeln!(
            out,
            "<h3><span style=\"color:{color}\">■</span> {}</h3><p class=\"note\">no samples/step-N.jsonl in this run</p>",
            escape(label)
        );
        return;
    };
    let picked = pick_samples(samples, 4);
    let scale = picked
        .iter()
        .flat_map(|s| s.information_gain())
        .map(f64::abs)
        .fold(0.0, f64::max);
    let _ = writeln!(
        out,
        "<h3><span style=\"color:{color}\">■</span> {} — step {step}, {} of {} samples</h3>",
        escape(label),
        picked.len(),
        samples.len()
    );
    out.push_str("<table class=\"samples\"><tr><th>question</th><th>answers</th><th>final answer</th><th>F1</th><th>turns (information gain p<sub>t</sub> − p<sub>t−1</sub> of each tool turn; outcome reward of the answer turn)</th></tr>\n");
    for s in picked {
        let ig = s.information_gain();
        let turns = s.assistant_turns();
        let n_turns = turns.len().max(s.turn_rewards.len()).max(ig.len() + 1);
        let mut cells = String::new();
        for t in 0..n_turns {
            let gist = turns.get(t).map(|t| turn_gist(t)).unwrap_or_default();
            let last = t + 1 == n_turns;
            let (class, style, value) = if last {
                (
                    "answer-turn",
                    String::new(),
                    format!("outcome {:+.3}", s.outcome_reward),
                )
            } else if let Some(&g) = ig.get(t) {
                let (c, st) = ig_style(g, scale);
                (c, st, format!("IG {g:+.2e}"))
            } else {
                ("ig-na", String::new(), "IG n/a (not scored)".to_string())
            };
            let _ = write!(
                cells,
                "<div class=\"turn {class}\" style=\"{style}\">turn {}: <b>{}</b> · {}</div>",
                t + 1,
                escape(&value),
                escape(&gist)
            );
        }
        let answers = s
            .answers
            .iter()
            .map(|a| escape(a))
            .collect::<Vec<_>>()
            .join("<br>");
        let _ = writeln!(
            out,
            "<tr><td>{}<details><summary>transcript</summary><pre>{}</pre></details></td><td>{answers}</td><td>{}</td><td class=\"num\">{:.2}</td><td><div class=\"turns\">{cells}</div></td></tr>",
            escape(&s.question),
            escape(&s.text),
            escape(s.final_answer.as_deref().unwrap_or("(no answer)")),
            s.f1
        );
    }
    out.push_str("</table>\n");
}

/// The whole page for `runs` (already loaded). Runs that differ only by
/// seed are drawn as one group (`groups`): mean curves with 95 % bands, and
/// the seed tables.
pub fn render(runs: &[RunData]) -> Result<String, ReportError> {
    let groups = group_runs(runs);
    let mut out = String::new();
    page_head(&mut out, runs, &groups);
    summary_table(&mut out, &groups);
    if groups.iter().any(|g| g.runs.len() > 1) {
        seed_tables(&mut out, &groups);
    }
    paper_figures(&mut out, &groups)?;
    training_signals(&mut out, &groups)?;
    time_split(&mut out, &groups)?;
    if groups.iter().any(|g| g.runs.len() > 1) {
        every_run_table(&mut out, &groups);
    }
    sampled_trajectories(&mut out, &groups);
    out.push_str("</body></html>\n");
    Ok(out)
}

/// The run folders, a folder holding several of them (a sweep's setting)
/// named once with their number.
fn folders(runs: &[RunData]) -> Vec<String> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for r in runs {
        let parent = r.dir.parent().filter(|p| !p.as_os_str().is_empty());
        let shared =
            parent.filter(|p| runs.iter().filter(|o| o.dir.parent() == Some(*p)).count() > 1);
        let name = match shared {
            Some(p) => p.display().to_string(),
            None => r.dir.display().to_string(),
        };
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, k)) => *k += 1,
            None => out.push((name, 1)),
        }
    }
    out.into_iter()
        .map(|(name, k)| {
            if k > 1 {
                format!("{name}/ ({k} runs)")
            } else {
                name
            }
        })
        .collect()
}

/// The document head, title, run list and colour legend (one entry per group).
fn page_head(out: &mut String, runs: &[RunData], groups: &[Group]) {
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    let names: Vec<String> = groups.iter().map(|g| g.label()).collect();
    let _ = writeln!(
        out,
        "<title>IGPO report: {}</title>\n<style>{CSS}</style></head><body>",
        escape(&names.join(" vs "))
    );
    out.push_str("<h1>IGPO run report</h1>\n");
    let grouped = if groups.len() < runs.len() {
        format!(
            " in {} settings (runs that differ only by seed are one setting: its mean is drawn, with a 95 % band)",
            groups.len()
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "<p class=\"sub\">{} run(s){}: {}</p>",
        runs.len(),
        escape(&grouped),
        escape(&folders(runs).join(", "))
    );

    out.push_str("<div class=\"legend\" id=\"legend\">");
    for (i, g) in groups.iter().enumerate() {
        let _ = write!(
            out,
            "<div><span class=\"sw\" style=\"background:{}\"></span>{}</div>",
            plot::hex(plot::run_color(i)),
            escape(&g.label())
        );
    }
    out.push_str("</div>\n");
}

/// One row per group: estimator, dev set, steps, dev F1, reward,
/// zero-advantage ratio, tokens, updates skipped as not finite, time. A
/// group of one run shows the run (dev F1 ± its standard error over the
/// questions); a larger group the means over its runs (± half the 95 %
/// interval over seeds).
fn summary_table(out: &mut String, groups: &[Group]) {
    out.push_str("<table id=\"summary\"><tr><th>run</th><th>estimator</th><th>dev set</th><th>steps</th><th>dev F1 first → last (best)</th><th>train reward first → last</th><th>zero-adv. ratio (mean)</th><th>gradient tokens</th><th>skipped updates</th><th>wall time (s)</th></tr>\n");
    for (i, g) in groups.iter().enumerate() {
        let secs = |r: &RunData| -> Option<f64> {
            Some(
                r.metrics
                    .iter()
                    .map(|m| finite(m.rollout_s) + finite(m.scoring_s) + finite(m.update_s))
                    .sum(),
            )
        };
        let first_f1 = |r: &RunData| r.evals.first().map(|e| e.f1);
        let first_reward = |r: &RunData| r.metrics.first().map(|m| m.outcome_reward);
        let last_reward = |r: &RunData| r.metrics.last().map(|m| m.outcome_reward);
        let (dev, name) = if let [r] = g.runs.as_slice() {
            (
                format!(
                    "{} → {} ({})",
                    fmt_f1(r.evals.first()),
                    fmt_f1(r.evals.last()),
                    fmt_opt(per_run::best_f1(r), 3)
                ),
                escape(&r.name),
            )
        } else {
            (
                format!(
                    "{} → {} ({})",
                    fmt_mean(g.summary(first_f1), 3),
                    fmt_mean(g.summary(per_run::final_f1), 3),
                    fmt_mean(g.summary(per_run::best_f1), 3)
                ),
                format!("{} ({} seeds)", escape(&g.name), g.runs.len()),
            )
        };
        let steps = g.summary(|r| Some(r.metrics.len() as f64));
        let skipped: u64 = g
            .runs
            .iter()
            .filter_map(|r| r.metrics.last().map(|m| m.skipped_updates))
            .sum();
        let _ = writeln!(
            out,
            "<tr><td><span style=\"color:{}\">■</span> {name}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{dev}</td><td class=\"num\">{} → {}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{skipped}</td><td class=\"num\">{}</td></tr>",
            plot::hex(plot::run_color(i)),
            escape(&g.estimator),
            escape(&g.dataset),
            fmt_opt(steps.map(|s| s.mean), 0),
            fmt_mean(g.summary(first_reward), 3),
            fmt_mean(g.summary(last_reward), 3),
            fmt_mean(g.summary(per_run::zero_adv), 3),
            fmt_opt(g.summary(per_run::grad_tokens).map(|s| s.mean), 0),
            fmt_opt(g.summary(secs).map(|s| s.mean), 1),
        );
    }
    out.push_str("</table>\n");
    if groups.iter().any(|g| g.runs.len() == 1) {
        out.push_str("<p class=\"note\">A dev F1 written a ± b is the F1 over the dev questions ± its standard error (their standard deviation over √n).</p>\n");
    }
}

/// The judgement of a sweep: per setting mean, standard deviation and 95 %
/// interval over seeds (`#seed-summary`), and every pair of settings
/// compared seed by seed (`#paired`); every run is listed at the end
/// (`every_run_table`).
fn seed_tables(out: &mut String, groups: &[Group]) {
    out.push_str("<h2 id=\"seeds\">Over seeds</h2>\n<p class=\"note\">Mean, sample standard deviation and the Student-t 95 % interval of the mean over a setting's runs (one value per seed). Final dev F1 is the last evaluation; best the highest; zero-advantage ratio and ground-truth entropy drop are means over each run's steps; gradient tokens are each run's total.</p>\n");
    out.push_str("<table id=\"seed-summary\"><tr><th>setting</th><th>seeds</th><th>final dev F1</th><th>best dev F1</th><th>zero-adv. ratio</th><th>gt entropy drop (nats)</th><th>gradient tokens</th></tr>\n");
    for (i, g) in groups.iter().enumerate() {
        let _ = writeln!(
            out,
            "<tr><td><span style=\"color:{}\">■</span> {}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            plot::hex(plot::run_color(i)),
            escape(&g.label()),
            g.runs.len(),
            fmt_full(g.summary(per_run::final_f1), 3),
            fmt_full(g.summary(per_run::best_f1), 3),
            fmt_full(g.summary(per_run::zero_adv), 3),
            fmt_full(g.summary(per_run::gt_entropy_drop), 2),
            fmt_full(g.summary(per_run::grad_tokens), 0),
        );
    }
    out.push_str("</table>\n");

    out.push_str("<h3>Settings compared seed by seed</h3>\n<p class=\"note\">For each pair of settings, the final dev F1 of A minus that of B on each seed both ran: the mean difference, its 95 % interval and the paired t-test's two-sided p-value. An interval that contains 0 does not tell the settings apart.</p>\n");
    out.push_str("<table id=\"paired\"><tr><th>A</th><th>B</th><th>seeds</th><th>final dev F1, A − B</th><th>95 % interval</th><th>p</th></tr>\n");
    let mut any = false;
    for (i, a) in groups.iter().enumerate() {
        for b in &groups[i + 1..] {
            let Some(p) = compare(a, b, per_run::final_f1) else {
                continue;
            };
            any = true;
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{:+.3}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                escape(&a.name),
                escape(&b.name),
                p.diff.n,
                p.diff.mean,
                if p.diff.n >= 2 {
                    format!("[{:+.3}, {:+.3}]", p.diff.lo, p.diff.hi)
                } else {
                    "–".into()
                },
                fmt_opt(Some(p.p_value), 3),
            );
        }
    }
    if !any {
        out.push_str("<tr><td colspan=\"6\">no two settings share a seed</td></tr>\n");
    }
    out.push_str("</table>\n");
}

/// Every run of the groups: seed, final dev F1 with its standard error, and
/// the numbers the groups are judged by (`#seed-runs`).
fn every_run_table(out: &mut String, groups: &[Group]) {
    out.push_str("<h2 id=\"every-run\">Every run</h2>\n<table id=\"seed-runs\"><tr><th>setting</th><th>seed</th><th>final dev F1 ± s.e.</th><th>best dev F1</th><th>zero-adv. ratio</th><th>gt entropy drop</th><th>gradient tokens</th><th>run folder</th></tr>\n");
    for (i, g) in groups.iter().enumerate() {
        for r in &g.runs {
            let _ = writeln!(
                out,
                "<tr><td><span style=\"color:{}\">■</span> {}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                plot::hex(plot::run_color(i)),
                escape(&g.name),
                r.seed.map_or("–".into(), |s| s.to_string()),
                fmt_f1(r.evals.last()),
                fmt_opt(per_run::best_f1(r), 3),
                fmt_opt(per_run::zero_adv(r), 3),
                fmt_opt(per_run::gt_entropy_drop(r), 2),
                fmt_opt(per_run::grad_tokens(r), 0),
                escape(&r.dir.display().to_string()),
            );
        }
    }
    out.push_str("</table>\n");
}

/// The paper's figures: zero-advantage groups, dev F1 per dev set, the ground truth's entropy drop, F1 against gradient tokens.
fn paper_figures(out: &mut String, groups: &[Group]) -> Result<(), ReportError> {
    out.push_str("<h2>The paper's figures</h2>\n<div class=\"grid\">\n");
    let svg = plot::line_figure(&LineFigure {
        id: "fig-zero-adv",
        title: "Zero-advantage groups per step",
        x_desc: "step",
        y_desc: "share of prompt groups",
        y_range: Some((-0.02, 1.02)),
        series: per_step(groups, |m| m.zero_adv_ratio),
    })?;
    figure(
        out,
        &svg,
        "Share of prompt groups whose every advantage is 0 (no learning signal). Outcome-only rewards go flat when all rollouts of a prompt score the same; turn-level information gain keeps them apart.",
    );

    // Dev F1: one figure per dev set (today one).
    let mut sets: Vec<&str> = Vec::new();
    for g in groups {
        if !sets.contains(&g.dataset.as_str()) {
            sets.push(&g.dataset);
        }
    }
    let dev_curve = |r: &RunData| r.evals.iter().map(|e| (e.step as f64, e.f1)).collect();
    for (k, set) in sets.iter().enumerate() {
        let id = if k == 0 {
            "fig-dev-f1".to_string()
        } else {
            format!("fig-dev-f1-{}", k + 1)
        };
        let title = format!("Dev F1 per step: {set}");
        let series = groups
            .iter()
            .enumerate()
            .filter(|(_, g)| g.dataset == *set)
            .map(|(i, g)| series(i, group_curve(g, dev_curve)))
            .collect();
        let svg = plot::line_figure(&LineFigure {
            id: &id,
            title: &title,
            x_desc: "step",
            y_desc: "dev F1",
            y_range: None,
            series,
        })?;
        figure(
            out,
            &svg,
            &format!("Dev-set F1 (greedy unless the run file says otherwise) from eval.jsonl; step 0 is before training. Dataset: {set}. A setting run with several seeds is drawn as their mean with its 95 % interval as a band."),
        );
    }

    let scored: Vec<Series> = groups
        .iter()
        .enumerate()
        .filter(|(_, g)| g.scored())
        .map(|(i, g)| series(i, step_curve(g, |m| m.gt_entropy_drop)))
        .collect();
    let unscored: Vec<String> = groups
        .iter()
        .filter(|g| !g.scored())
        .map(|g| g.label())
        .collect();
    let svg = plot::line_figure(&LineFigure {
        id: "fig-gt-entropy-drop",
        title: "Drop of ground-truth answer entropy",
        x_desc: "step",
        y_desc: "-ln p0 - (-ln pT-1)",
        y_range: None,
        series: scored,
    })?;
    let mut cap = "Mean over rollouts of −ln p₀ − (−ln p_{T−1}): how much the agent's turns raised the policy's probability of the ground-truth answer (higher is better).".to_string();
    if !unscored.is_empty() {
        let _ = write!(
            cap,
            " Not drawn (the estimator does not score turns): {}.",
            unscored.join(", ")
        );
    }
    figure(out, &svg, &cap);

    // Runs of a group spend different token counts by the same step: the
    // mean point of each evaluation (tokens and F1 averaged over seeds).
    let series = groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let n = g.runs.iter().map(|r| r.evals.len()).min().unwrap_or(0);
            let points = (0..n)
                .map(|k| {
                    let at = |f: fn(&DevPoint) -> f64| {
                        g.runs.iter().map(|r| f(&r.evals[k])).sum::<f64>() / g.runs.len() as f64
                    };
                    (at(|e| e.cum_grad_tokens as f64), at(|e| e.f1))
                })
                .collect();
            Series {
                color: plot::run_color(i),
                points,
                band: vec![],
            }
        })
        .collect();
    let svg = plot::line_figure(&LineFigure {
        id: "fig-f1-vs-tokens",
        title: "Dev F1 against gradient tokens",
        x_desc: "cumulative tokens used for gradients",
        y_desc: "dev F1",
        y_range: None,
        series,
    })?;
    figure(
        out,
        &svg,
        "Token efficiency: dev F1 against the cumulative number of tokens that produced gradients (every epoch counted); a setting's seeds averaged per evaluation.",
    );
    out.push_str("</div>\n");
    Ok(())
}

/// Reward, KL, entropy, clip fraction and turns per step.
fn training_signals(out: &mut String, groups: &[Group]) -> Result<(), ReportError> {
    out.push_str("<h2>Training signals</h2>\n<div class=\"grid\">\n");
    type Metric = fn(&StepMetrics) -> f64;
    let signals: [(&str, &str, &str, Metric, &str); 5] = [
        (
            "fig-reward",
            "Outcome reward (mean per step)",
            "reward",
            |m| m.outcome_reward,
            "Mean outcome reward of the step's rollouts (F1 after the format penalty).",
        ),
        (
            "fig-kl",
            "KL to the reference policy",
            "KL",
            |m| m.kl,
            "Mean KL estimate against the frozen initial policy over loss tokens.",
        ),
        (
            "fig-entropy",
            "Policy entropy",
            "entropy (nats)",
            |m| m.entropy,
            "Mean per-token entropy of the policy over loss tokens.",
        ),
        (
            "fig-clip-frac",
            "Clip fraction",
            "share of tokens",
            |m| m.clip_frac,
            "Share of loss tokens whose importance ratio was clipped.",
        ),
        (
            "fig-turns",
            "Turns per rollout",
            "turns",
            |m| m.mean_turns,
            "Mean number of assistant turns per rollout (tool calls + answer).",
        ),
    ];
    for (id, title, y, f, cap) in signals {
        let svg = plot::line_figure(&LineFigure {
            id,
            title,
            x_desc: "step",
            y_desc: y,
            y_range: None,
            series: per_step(groups, f),
        })?;
        figure(out, &svg, cap);
    }
    Ok(())
}

/// Seconds per phase (rollout, scoring, update): a figure and a table (a
/// group's mean per run).
fn time_split(out: &mut String, groups: &[Group]) -> Result<(), ReportError> {
    let rows: Vec<(String, [f64; 3])> = groups
        .iter()
        .map(|g| {
            let t = g
                .runs
                .iter()
                .flat_map(|r| &r.metrics)
                .fold([0.0; 3], |a, m| {
                    [
                        a[0] + finite(m.rollout_s),
                        a[1] + finite(m.scoring_s),
                        a[2] + finite(m.update_s),
                    ]
                });
            let n = g.runs.len() as f64;
            (g.label(), t.map(|v| v / n))
        })
        .collect();
    let svg = plot::time_split_figure("fig-time-split", &rows)?;
    let mut cap = String::new();
    for (name, c) in plot::PHASES {
        let _ = write!(
            cap,
            "<span class=\"phase\" style=\"background:{}\"></span>{name}",
            plot::hex(c)
        );
    }
    let _ = writeln!(
        out,
        "<figure>{svg}<figcaption>{cap}<br>Seconds per phase summed over steps (a setting's mean per run): rollout (generation and tool calls), scoring (ground-truth probes after every turn), update (old/ref log-probs and PPO updates).</figcaption></figure>"
    );
    out.push_str("</div>\n<table id=\"time-table\"><tr><th>run</th><th>rollout s</th><th>scoring s</th><th>update s</th><th>per step s</th></tr>\n");
    for (g, (name, t)) in groups.iter().zip(&rows) {
        let steps =
            g.runs.iter().map(|r| r.metrics.len()).sum::<usize>() as f64 / g.runs.len() as f64;
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"num\">{:.1}</td><td class=\"num\">{:.1}</td><td class=\"num\">{:.1}</td><td class=\"num\">{:.2}</td></tr>",
            escape(name),
            t[0],
            t[1],
            t[2],
            t.iter().sum::<f64>() / steps.max(1.0)
        );
    }
    out.push_str("</table>\n");
    Ok(())
}

/// The last step's sampled trajectories (of a group's first run), turns
/// coloured by information gain.
fn sampled_trajectories(out: &mut String, groups: &[Group]) {
    out.push_str("<h2 id=\"samples\">Sampled trajectories (last step)</h2>\n<p class=\"note\">Each tool turn is coloured by its information gain: <span class=\"turn ig-pos\" style=\"background: rgba(44,160,44,0.6)\">green: the turn raised p(ground truth)</span> <span class=\"turn ig-neg\" style=\"background: rgba(214,39,40,0.6)\">red: it lowered it</span> <span class=\"turn ig-zero\">grey: |gain| &lt; 0.001</span>; strength relative to the largest |gain| in the table.</p>\n");
    for (i, g) in groups.iter().enumerate() {
        let r = g.runs[0];
        let label = match (g.runs.len(), r.seed) {
            (1, _) => r.label(),
            (_, Some(seed)) => format!("{}, seed {seed}", g.label()),
            (_, None) => format!("{}, {}", g.label(), r.name),
        };
        samples_table(out, r, &label, &plot::hex(plot::run_color(i)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn turn_gists() {
        assert_eq!(
            turn_gist(
                r#"<think>hm</think><tool_call>{"name": "search", "arguments": {"query": "who?"}}</tool_call>"#
            ),
            "search: who?"
        );
        assert_eq!(
            turn_gist("<think>so</think>\n<answer> Paris </answer>"),
            "answer: Paris"
        );
        assert_eq!(
            turn_gist("<think>only thinking</think>"),
            "<think>only thinking</think>"
        );
        assert_eq!(turn_gist(&"x".repeat(200)).chars().count(), 111);
    }

    #[test]
    fn gain_colours() {
        assert_eq!(ig_style(0.5, 1.0).0, "ig-pos");
        assert_eq!(ig_style(-0.5, 1.0).0, "ig-neg");
        assert_eq!(ig_style(0.0, 1.0).0, "ig-zero");
        assert_eq!(ig_style(-2.6e-7, 1.0).0, "ig-zero");
        assert_eq!(ig_style(0.002, 1.0).0, "ig-pos");
        assert!(ig_style(1.0, 1.0).1.contains("0.85"));
    }
}
