//! The TensorBoard event files of `igpo sft` and `igpo train` runs, read
//! back with TensorBoard's own reader (`tools/reference/read_tensorboard.py`):
//! every number of every metrics.jsonl / eval.jsonl line is a scalar at its
//! step with the same f32 value, nothing else is there, and a resume that
//! truncates the logs leaves the events equal to them.

use crate::common;
use crate::plugins_support;
use crate::rl_support;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

/// (step, tag) -> value.
type Scalars = BTreeMap<(u64, String), f32>;

/// What the `.jsonl` logs of `run` say TensorBoard must show: for each
/// `(tag prefix, file)`, every number of every line but `step` (arrays and
/// objects flattened to `key/0`, `key/sub`; booleans 0 / 1) at the line's step.
fn expected(run: &Path, logs: &[(&str, &str)]) -> Scalars {
    fn flatten(tag: String, v: &Value, step: u64, out: &mut Scalars) {
        let x = match v {
            Value::Number(n) => n.as_f64().unwrap() as f32,
            Value::Bool(b) => *b as u8 as f32,
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    flatten(format!("{tag}/{i}"), x, step, out);
                }
                return;
            }
            Value::Object(o) => {
                for (k, x) in o {
                    flatten(format!("{tag}/{k}"), x, step, out);
                }
                return;
            }
            Value::Null | Value::String(_) => return,
        };
        assert!(out.insert((step, tag.clone()), x).is_none(), "{tag} twice");
    }
    let mut out = Scalars::new();
    for (prefix, file) in logs {
        let text = std::fs::read_to_string(run.join(file)).unwrap();
        assert!(!text.is_empty(), "{file} is empty");
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let step = v["step"].as_u64().unwrap();
            for (k, x) in v.as_object().unwrap() {
                if k != "step" {
                    flatten(format!("{prefix}{k}"), x, step, &mut out);
                }
            }
        }
    }
    out
}

/// The scalars in `run/tb` as TensorBoard reads them; checks there is one
/// event file, it starts with the file version, and every value is a scalar.
fn read_back(python: &Path, run: &Path) -> Scalars {
    let script = common::workspace().join("tools/reference/read_tensorboard.py");
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(run.join("tb"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "read_tensorboard.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump: Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = dump["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "one event file: {files:?}");
    let name = files[0].as_str().unwrap();
    let host_pid: Vec<&str> = name
        .strip_prefix("events.out.tfevents.")
        .unwrap_or_else(|| panic!("{name}"))
        .splitn(2, '.')
        .collect();
    assert!(host_pid[0].parse::<u64>().is_ok(), "{name}");
    assert!(
        host_pid[1]
            .rsplit('.')
            .next()
            .unwrap()
            .parse::<u32>()
            .is_ok(),
        "{name}"
    );
    assert_eq!(dump["file_version"], "brain.Event:2");
    let mut scalars = Scalars::new();
    for event in dump["events"].as_array().unwrap() {
        let step = event["step"].as_u64().unwrap();
        for (tag, plugin) in event["plugins"].as_object().unwrap() {
            assert_eq!(plugin, "scalars", "{tag} at step {step}");
        }
        for (tag, v) in event["scalars"].as_object().unwrap() {
            let x = v.as_f64().unwrap() as f32;
            let old = scalars.insert((step, tag.clone()), x);
            assert!(old.is_none(), "{tag} at step {step} twice");
        }
    }
    scalars
}

/// The events of `run` equal its logs: the same (step, tag) pairs, each
/// with the same f32 (bit for bit).
fn assert_events_equal_logs(python: &Path, run: &Path, logs: &[(&str, &str)]) -> Scalars {
    let want = expected(run, logs);
    let got = read_back(python, run);
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    for (key, w) in &want {
        assert_eq!(
            got[key].to_bits(),
            w.to_bits(),
            "{key:?}: {} != {w}",
            got[key]
        );
    }
    got
}

fn steps_of(s: &Scalars, tag: &str) -> Vec<u64> {
    s.keys()
        .filter(|(_, t)| t == tag)
        .map(|(s, _)| *s)
        .collect()
}

fn igpo_ok(args: &[&str], envs: &[(&str, &Path)]) {
    let (code, out, err) = common::igpo_env(args, envs);
    assert_eq!(code, 0, "igpo {args:?} failed:\n{out}\n{err}");
}

const TRANSCRIPTS: &str = r#"{"messages":[{"role":"user","content":"Capital of France?"},{"role":"assistant","content":"Paris."}]}
{"messages":[{"role":"user","content":"Capital of Italy?"},{"role":"assistant","content":"Rome."}]}
{"messages":[{"role":"user","content":"2+2?"},{"role":"assistant","content":"4"}]}
"#;

#[test]
fn sft_events_equal_metrics_also_after_a_resume() {
    let Some(python) = common::python("sft_events_equal_metrics_also_after_a_resume") else {
        return;
    };
    let dir = plugins_support::scratch("tensorboard_sft");
    common::init_tiny_model(&dir.join("model"), &["--dtype", "f32"]);
    std::fs::write(dir.join("train.jsonl"), TRANSCRIPTS).unwrap();
    let config = dir.join("run.toml");
    std::fs::write(
        &config,
        "model = \"model\"\n[data]\ntrain = \"train.jsonl\"\nmax_seq_len = 64\n\n\
         [train]\nrun_dir = \"run\"\nsteps = 4\nmicro_batch = 2\ncheckpoint_every = 2\nkeep_last = 5\nlogprob_chunk = 20000\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let run = dir.join("run");
    let logs = [("", "metrics.jsonl")];

    igpo_ok(&["sft", "--config", config], &[]);
    let first = assert_events_equal_logs(&python, &run, &logs);
    assert_eq!(steps_of(&first, "loss"), vec![1, 2, 3, 4]);
    assert!(first.contains_key(&(1, "tokens_per_s".to_string())));

    // Resumed from step 2: the logs keep steps 1-2 and redo 3-4 (other
    // wall-clock numbers); the events follow, without the old steps 3-4.
    std::fs::remove_dir_all(run.join("checkpoints/step-4")).unwrap();
    igpo_ok(&["sft", "--config", config, "--resume"], &[]);
    let resumed = assert_events_equal_logs(&python, &run, &logs);
    assert_eq!(steps_of(&resumed, "loss"), vec![1, 2, 3, 4]);
}

#[test]
fn train_events_equal_metrics_and_evals_also_after_a_resume() {
    let name = "train_events_equal_metrics_and_evals_also_after_a_resume";
    let Some(python) = common::python(name) else {
        return;
    };
    let Some(plugins) = plugins_support::plugin_dir(name) else {
        return;
    };
    let dir = plugins_support::scratch("tensorboard_train");
    rl_support::setup(&dir);
    let config = rl_support::run_file(&dir, &plugins, "", "");
    let config = config.to_str().unwrap();
    let cache = plugins.join(".cache");
    let envs: [(&str, &Path); 1] = [("IGPO_CACHE_DIR", &cache)];
    let run = dir.join("run");
    let logs = [("train/", "metrics.jsonl"), ("eval/", "eval.jsonl")];

    igpo_ok(&["train", "--config", config], &envs);
    let first = assert_events_equal_logs(&python, &run, &logs);
    assert_eq!(steps_of(&first, "train/f1"), vec![1, 2]);
    assert_eq!(steps_of(&first, "eval/f1"), vec![0, 2]);
    // The dev F1 of a step with an evaluation is in its metrics too. (This
    // model never calls the tool: `ig_mean` / `ig_std` are empty lists, so
    // no `train/ig_mean/<turn>` tags; the unit tests flatten lists.)
    assert_eq!(steps_of(&first, "train/dev_f1"), vec![2]);

    // Resumed from step 1: step 2 and its evaluation are redone.
    std::fs::remove_dir_all(run.join("checkpoints/step-2")).unwrap();
    igpo_ok(&["train", "--config", config, "--resume"], &envs);
    let resumed = assert_events_equal_logs(&python, &run, &logs);
    assert_eq!(steps_of(&resumed, "train/f1"), vec![1, 2]);
    assert_eq!(steps_of(&resumed, "eval/f1"), vec![0, 2]);
}
