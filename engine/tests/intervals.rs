//! The report's interval arithmetic (engine/src/report/stats.rs) against
//! scipy: `tools/reference/intervals.json`, written by
//! `tools/reference/intervals.py`. Under `cargo xtask test` the script is
//! also run again in its Python (IGPO_PYTHON, which has scipy) and must
//! print what is committed.

use crate::common;

use igpo::report::stats::{paired, t_quantile, Summary};
use serde_json::Value;

fn reference() -> Value {
    let path = common::workspace().join("tools/reference/intervals.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn close(got: f64, want: f64, what: &str) {
    let tol = 1e-10 * want.abs().max(1.0);
    assert!((got - want).abs() <= tol, "{what}: {got} vs scipy {want}");
}

fn values(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn check_summary(s: &Summary, want: &Value, what: &str) {
    assert_eq!(s.n as u64, want["n"].as_u64().unwrap(), "{what}");
    for (got, key) in [
        (s.mean, "mean"),
        (s.sd, "sd"),
        (s.se, "se"),
        (s.lo, "lo"),
        (s.hi, "hi"),
    ] {
        close(got, want[key].as_f64().unwrap(), &format!("{what}.{key}"));
    }
}

#[test]
fn t_quantiles_match_scipy() {
    let r = reference();
    let qs = r["t_quantiles"].as_array().unwrap();
    assert!(qs.len() >= 40);
    for q in qs {
        let (p, df) = (q["p"].as_f64().unwrap(), q["df"].as_f64().unwrap());
        let (got, want) = (t_quantile(p, df), q["t"].as_f64().unwrap());
        // Past ~1e4 degrees of freedom ln Γ(a+b) - ln Γ(a) - ln Γ(b)
        // cancels (each ~5e5 at df 1e5): 1e-9 relative there.
        let tol = if df > 1e4 { 1e-9 } else { 1e-10 } * want.abs().max(1.0);
        assert!(
            (got - want).abs() <= tol,
            "t({p}, {df}): {got} vs scipy {want}"
        );
    }
}

#[test]
fn summaries_and_paired_comparison_match_scipy() {
    let r = reference();
    for (name, want) in r["samples"].as_object().unwrap() {
        let s = Summary::of(&values(&want["values"])).unwrap();
        check_summary(&s, want, name);
    }
    let seeded = |v: &Value| -> Vec<(u64, f64)> {
        values(v)
            .into_iter()
            .enumerate()
            .map(|(i, x)| (i as u64, x))
            .collect()
    };
    let pairs = r["paired"].as_object().unwrap();
    assert_eq!(pairs.len(), 3);
    for (name, p) in pairs {
        let got = paired(&seeded(&p["a"]), &seeded(&p["b"])).unwrap();
        check_summary(&got.diff, p, name);
        // A tiny p-value is checked relative to itself.
        let want = p["p_value"].as_f64().unwrap();
        assert!(
            (got.p_value - want).abs() <= 1e-9 * want + 1e-14,
            "{name} p-value: {} vs scipy {want}",
            got.p_value
        );
    }
}

#[test]
fn committed_reference_is_what_scipy_prints() {
    let Some(python) = common::python("committed_reference_is_what_scipy_prints") else {
        return;
    };
    let script = common::workspace().join("tools/reference/intervals.py");
    let out = std::process::Command::new(python)
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Equal up to the last bits numpy's vectorized sums may change between CPUs.
    let mut diffs = vec![];
    same_json(&fresh, &reference(), "", &mut diffs);
    assert!(
        diffs.is_empty(),
        "tools/reference/intervals.json is stale (rerun {}): {diffs:?}",
        script.display()
    );
}

fn same_json(a: &Value, b: &Value, at: &str, diffs: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            if x.len() != y.len() {
                diffs.push(format!("{at}: keys differ"));
            }
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => same_json(v, w, &format!("{at}/{k}"), diffs),
                    None => diffs.push(format!("{at}/{k}: missing")),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                same_json(v, w, &format!("{at}/{i}"), diffs);
            }
        }
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            if (x - y).abs() > 1e-12 * x.abs().max(y.abs()).max(1e-300) {
                diffs.push(format!("{at}: {x} vs {y}"));
            }
        }
        _ if a == b => {}
        _ => diffs.push(format!("{at}: {a} vs {b}")),
    }
}
