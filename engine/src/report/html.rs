//! The report page: one self-contained HTML file (inline CSS and SVG, no
//! scripts, no network). Every string that comes from a run is escaped here.

use std::fmt::Write;

use super::load::{RunData, SampleLine};
use super::plot::{self, LineFigure, Series};
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
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

/// A per-step series of every run, from `f` over its metrics lines.
fn per_step(runs: &[RunData], f: impl Fn(&super::load::StepMetrics) -> f64) -> Vec<Series> {
    runs.iter()
        .enumerate()
        .map(|(i, r)| Series {
            color: plot::run_color(i),
            points: r.metrics.iter().map(|m| (m.step as f64, f(m))).collect(),
        })
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

fn samples_table(out: &mut String, run: &RunData, color: &str) {
    let Some((step, samples)) = &run.samples else {
        let _ = writeln!(
            out,
            "<h3><span style=\"color:{color}\">■</span> {}</h3><p class=\"note\">no samples/step-N.jsonl in this run</p>",
            escape(&run.label())
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
        escape(&run.label()),
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

/// The whole page for `runs` (already loaded).
pub fn render(runs: &[RunData]) -> Result<String, ReportError> {
    let mut out = String::new();
    page_head(&mut out, runs);
    summary_table(&mut out, runs);
    paper_figures(&mut out, runs)?;
    training_signals(&mut out, runs)?;
    time_split(&mut out, runs)?;
    sampled_trajectories(&mut out, runs);
    out.push_str("</body></html>\n");
    Ok(out)
}

/// The document head, title, run list and colour legend.
fn page_head(out: &mut String, runs: &[RunData]) {
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    let names: Vec<String> = runs.iter().map(|r| r.label()).collect();
    let _ = writeln!(
        out,
        "<title>IGPO report: {}</title>\n<style>{CSS}</style></head><body>",
        escape(&names.join(" vs "))
    );
    out.push_str("<h1>IGPO run report</h1>\n");
    let _ = writeln!(
        out,
        "<p class=\"sub\">{} run(s): {}</p>",
        runs.len(),
        escape(
            &runs
                .iter()
                .map(|r| r.dir.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    );

    out.push_str("<div class=\"legend\" id=\"legend\">");
    for (i, r) in runs.iter().enumerate() {
        let _ = write!(
            out,
            "<div><span class=\"sw\" style=\"background:{}\"></span>{}</div>",
            plot::hex(plot::run_color(i)),
            escape(&r.label())
        );
    }
    out.push_str("</div>\n");
}

/// One row per run: estimator, dev set, steps, dev F1, reward, zero-advantage ratio, tokens, updates skipped as not finite, time.
fn summary_table(out: &mut String, runs: &[RunData]) {
    out.push_str("<table id=\"summary\"><tr><th>run</th><th>estimator</th><th>dev set</th><th>steps</th><th>dev F1 first → last (best)</th><th>train reward first → last</th><th>zero-adv. ratio (mean)</th><th>gradient tokens</th><th>skipped updates</th><th>wall time (s)</th></tr>\n");
    for (i, r) in runs.iter().enumerate() {
        let first = r.evals.first().map(|e| e.f1);
        let last = r.evals.last().map(|e| e.f1);
        let best = r.evals.iter().map(|e| e.f1).reduce(f64::max);
        let zero = if r.metrics.is_empty() {
            None
        } else {
            Some(r.metrics.iter().map(|m| m.zero_adv_ratio).sum::<f64>() / r.metrics.len() as f64)
        };
        let secs: f64 = r
            .metrics
            .iter()
            .map(|m| finite(m.rollout_s) + finite(m.scoring_s) + finite(m.update_s))
            .sum();
        let _ = writeln!(
            out,
            "<tr><td><span style=\"color:{}\">■</span> {}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{} → {} ({})</td><td class=\"num\">{} → {}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{secs:.1}</td></tr>",
            plot::hex(plot::run_color(i)),
            escape(&r.name),
            escape(&r.estimator),
            escape(&r.dataset),
            r.metrics.len(),
            fmt_opt(first, 3),
            fmt_opt(last, 3),
            fmt_opt(best, 3),
            fmt_opt(r.metrics.first().map(|m| m.outcome_reward), 3),
            fmt_opt(r.metrics.last().map(|m| m.outcome_reward), 3),
            fmt_opt(zero, 3),
            r.metrics.last().map(|m| m.cum_grad_tokens).unwrap_or(0),
            r.metrics.last().map(|m| m.skipped_updates).unwrap_or(0),
        );
    }
    out.push_str("</table>\n");
}

/// The paper's figures: zero-advantage groups, dev F1 per dev set, the ground truth's entropy drop, F1 against gradient tokens.
fn paper_figures(out: &mut String, runs: &[RunData]) -> Result<(), ReportError> {
    out.push_str("<h2>The paper's figures</h2>\n<div class=\"grid\">\n");
    let svg = plot::line_figure(&LineFigure {
        id: "fig-zero-adv",
        title: "Zero-advantage groups per step",
        x_desc: "step",
        y_desc: "share of prompt groups",
        y_range: Some((-0.02, 1.02)),
        series: per_step(runs, |m| m.zero_adv_ratio),
    })?;
    figure(
        out,
        &svg,
        "Share of prompt groups whose every advantage is 0 (no learning signal). Outcome-only rewards go flat when all rollouts of a prompt score the same; turn-level information gain keeps them apart.",
    );

    // Dev F1: one figure per dev set (today one).
    let mut sets: Vec<&str> = Vec::new();
    for r in runs {
        if !sets.contains(&r.dataset.as_str()) {
            sets.push(&r.dataset);
        }
    }
    for (k, set) in sets.iter().enumerate() {
        let id = if k == 0 {
            "fig-dev-f1".to_string()
        } else {
            format!("fig-dev-f1-{}", k + 1)
        };
        let title = format!("Dev F1 per step: {set}");
        let series = runs
            .iter()
            .enumerate()
            .filter(|(_, r)| r.dataset == *set)
            .map(|(i, r)| Series {
                color: plot::run_color(i),
                points: r.evals.iter().map(|e| (e.step as f64, e.f1)).collect(),
            })
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
            &format!("Dev-set F1 (greedy unless the run file says otherwise) from eval.jsonl; step 0 is before training. Dataset: {set}."),
        );
    }

    let scored: Vec<Series> = runs
        .iter()
        .enumerate()
        .filter(|(_, r)| r.scored())
        .map(|(i, r)| Series {
            color: plot::run_color(i),
            points: r
                .metrics
                .iter()
                .map(|m| (m.step as f64, m.gt_entropy_drop))
                .collect(),
        })
        .collect();
    let unscored: Vec<String> = runs
        .iter()
        .filter(|r| !r.scored())
        .map(|r| r.label())
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

    let series = runs
        .iter()
        .enumerate()
        .map(|(i, r)| Series {
            color: plot::run_color(i),
            points: r
                .evals
                .iter()
                .map(|e| (e.cum_grad_tokens as f64, e.f1))
                .collect(),
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
        "Token efficiency: dev F1 against the cumulative number of tokens that produced gradients (every epoch counted).",
    );
    out.push_str("</div>\n");
    Ok(())
}

/// Reward, KL, entropy, clip fraction and turns per step.
fn training_signals(out: &mut String, runs: &[RunData]) -> Result<(), ReportError> {
    out.push_str("<h2>Training signals</h2>\n<div class=\"grid\">\n");
    type Metric = fn(&super::load::StepMetrics) -> f64;
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
            series: per_step(runs, f),
        })?;
        figure(out, &svg, cap);
    }
    Ok(())
}

/// Seconds per phase (rollout, scoring, update): a figure and a table.
fn time_split(out: &mut String, runs: &[RunData]) -> Result<(), ReportError> {
    let rows: Vec<(String, [f64; 3])> = runs
        .iter()
        .map(|r| {
            let t = r.metrics.iter().fold([0.0; 3], |a, m| {
                [
                    a[0] + finite(m.rollout_s),
                    a[1] + finite(m.scoring_s),
                    a[2] + finite(m.update_s),
                ]
            });
            (r.label(), t)
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
        "<figure>{svg}<figcaption>{cap}<br>Seconds per phase summed over steps: rollout (generation and tool calls), scoring (ground-truth probes after every turn), update (old/ref log-probs and PPO updates).</figcaption></figure>"
    );
    out.push_str("</div>\n<table id=\"time-table\"><tr><th>run</th><th>rollout s</th><th>scoring s</th><th>update s</th><th>per step s</th></tr>\n");
    for (r, (name, t)) in runs.iter().zip(&rows) {
        let steps = r.metrics.len().max(1) as f64;
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"num\">{:.1}</td><td class=\"num\">{:.1}</td><td class=\"num\">{:.1}</td><td class=\"num\">{:.2}</td></tr>",
            escape(name),
            t[0],
            t[1],
            t[2],
            t.iter().sum::<f64>() / steps
        );
    }
    out.push_str("</table>\n");
    Ok(())
}

/// The last step's sampled trajectories of every run, turns coloured by information gain.
fn sampled_trajectories(out: &mut String, runs: &[RunData]) {
    out.push_str("<h2 id=\"samples\">Sampled trajectories (last step)</h2>\n<p class=\"note\">Each tool turn is coloured by its information gain: <span class=\"turn ig-pos\" style=\"background: rgba(44,160,44,0.6)\">green: the turn raised p(ground truth)</span> <span class=\"turn ig-neg\" style=\"background: rgba(214,39,40,0.6)\">red: it lowered it</span> <span class=\"turn ig-zero\">grey: |gain| &lt; 0.001</span>; strength relative to the largest |gain| in the table.</p>\n");
    for (i, r) in runs.iter().enumerate() {
        samples_table(out, r, &plot::hex(plot::run_color(i)));
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
