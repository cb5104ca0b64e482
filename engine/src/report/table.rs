//! The over-seeds judgement as plain text (what `igpo sweep` prints when it
//! ends): per setting the mean and 95 % interval of the final dev F1, the
//! zero-advantage ratio, the ground-truth entropy drop and the gradient
//! tokens, then each setting against the first, seed by seed.

use std::fmt::Write;

use super::groups::{compare, group_runs, per_run, Group};
use super::load::RunData;
use super::stats::Summary;

fn cell(s: Option<Summary>, digits: usize) -> String {
    match s {
        Some(s) if s.n >= 2 => {
            format!("{:.digits$} [{:.digits$}, {:.digits$}]", s.mean, s.lo, s.hi)
        }
        Some(s) => format!("{:.digits$}", s.mean),
        None => "-".into(),
    }
}

/// The table for `runs` (grouped by setting; a group of one run shows its
/// values without an interval).
pub fn seed_table(runs: &[RunData]) -> String {
    let groups = group_runs(runs);
    let rows: Vec<[String; 6]> = groups
        .iter()
        .map(|g| {
            [
                g.name.clone(),
                g.runs.len().to_string(),
                cell(g.summary(per_run::final_f1), 3),
                cell(g.summary(per_run::zero_adv), 3),
                cell(g.summary(per_run::gt_entropy_drop), 2),
                cell(g.summary(per_run::grad_tokens), 0),
            ]
        })
        .collect();
    let head = [
        "setting",
        "seeds",
        "final dev F1 [95% CI]",
        "zero-adv ratio",
        "gt entropy drop",
        "gradient tokens",
    ];
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[&str]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "  {}", padded.join("  ").trim_end());
    };
    line(&mut out, &head);
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&mut out, &cells);
    }
    if let Some((first, rest)) = groups.split_first() {
        for g in rest {
            comparison(&mut out, g, first);
        }
    }
    out
}

/// One line: `g` minus `base` on the final dev F1, seed by seed.
fn comparison(out: &mut String, g: &Group, base: &Group) {
    let Some(p) = compare(g, base, per_run::final_f1) else {
        return;
    };
    let interval = match (p.diff.n >= 2, p.p_value.is_finite()) {
        (true, true) => format!(
            ", 95% CI [{:+.3}, {:+.3}], p = {:.3}",
            p.diff.lo, p.diff.hi, p.p_value
        ),
        (true, false) => format!(", 95% CI [{:+.3}, {:+.3}]", p.diff.lo, p.diff.hi),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "  {} - {}: final dev F1 {:+.3} over {} paired seed{}{interval}",
        g.name,
        base.name,
        p.diff.mean,
        p.diff.n,
        if p.diff.n == 1 { "" } else { "s" }
    );
}
