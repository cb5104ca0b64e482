//! `igpo train` end to end on a tiny random model with the real plugins:
//! metrics, samples, dev evaluation, exact resume, GRPO's advantage collapse
//! against IGPO's dense rewards, and one-line errors on bad run files.

use crate::common;
use crate::plugins_support;
use crate::rl_support;

use std::path::Path;

use igpo::backend::Cpu;
use igpo::train::{run_train, RlMetrics, RlRunConfig, RlRunOptions};
use rl_support::{run_file, setup};

fn train(path: &Path, opts: RlRunOptions) -> Vec<RlMetrics> {
    let cfg = RlRunConfig::load(path).unwrap();
    let text = std::fs::read_to_string(path).unwrap();
    run_train(Cpu, &cfg, &text, &opts).unwrap().metrics
}

fn read_metrics(run: &Path) -> Vec<RlMetrics> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The numbers of a step without its wall-clock times.
fn untimed(m: &RlMetrics) -> RlMetrics {
    RlMetrics {
        rollout_s: 0.0,
        scoring_s: 0.0,
        update_s: 0.0,
        ..m.clone()
    }
}

#[test]
fn train_resumes_exactly_and_grpo_collapses_on_equal_outcomes() {
    let Some(plugins) = plugins_support::plugin_dir("igpo_train_end_to_end") else {
        return;
    };
    let dir = plugins_support::scratch("rl_train_e2e");
    setup(&dir);

    // IGPO, two steps straight.
    let path = run_file(&dir, &plugins, "", "");
    let m = train(&path, RlRunOptions::default());
    assert_eq!(m.len(), 2);
    let run = dir.join("run");
    assert_eq!(read_metrics(&run).len(), 2);
    for s in &m {
        // A random model never answers: every outcome is the format penalty...
        assert_eq!(s.answer_rate, 0.0);
        assert_eq!(s.outcome_reward, -2.0);
        // ...yet its tool calls move the ground truth's probability, so IGPO's
        // groups still have advantages (no collapse).
        // (IGPO without tool calls has nothing to gain: see the SmolLM2 test.)
        // One PPO epoch, one mini-batch: on policy, nothing clipped.
        assert!((s.ratio_mean - 1.0).abs() < 1e-6, "{s:?}");
        assert_eq!(s.clip_frac, 0.0);
        assert!(s.grad_tokens > 0 && s.grad_norm > 0.0 && s.kl.is_finite());
        // Log-probs recomputed for the loss equal those sampled (temperature 1).
        assert!(s.logprob_delta < 1e-4, "{s:?}");
    }
    assert!(m[1].cum_grad_tokens == m[0].grad_tokens + m[1].grad_tokens);
    // Step 2 updated weights trained with KL to the reference: KL > 0 now.
    assert!(m[1].kl > 0.0);
    let samples = std::fs::read_to_string(run.join("samples/step-1.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(samples.lines().next().unwrap()).unwrap();
    let p = first["gt_probability"].as_array().unwrap();
    assert!(!p.is_empty() && p.iter().all(|v| v.as_f64().unwrap() > 0.0));
    assert_eq!(
        first["turn_rewards"].as_array().unwrap().len(),
        first["turn_advantages"].as_array().unwrap().len()
    );
    let evals = std::fs::read_to_string(run.join("eval.jsonl")).unwrap();
    let steps: Vec<u64> = evals
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, vec![0, 2]);
    let straight = std::fs::read(run.join("checkpoints/step-2/state/master.safetensors")).unwrap();

    // Killed after step 1, resumed: the same numbers and the same weights.
    std::fs::remove_dir_all(&run).unwrap();
    train(
        &path,
        RlRunOptions {
            resume: false,
            stop_after: Some(1),
        },
    );
    assert_eq!(read_metrics(&run).len(), 1);
    train(
        &path,
        RlRunOptions {
            resume: true,
            stop_after: None,
        },
    );
    let resumed = read_metrics(&run);
    assert_eq!(
        resumed.iter().map(untimed).collect::<Vec<_>>(),
        m.iter().map(untimed).collect::<Vec<_>>()
    );
    assert_eq!(
        std::fs::read(run.join("checkpoints/step-2/state/master.safetensors")).unwrap(),
        straight,
        "resumed weights differ"
    );

    // GRPO on the same rollouts: all outcomes equal, every group collapses.
    std::fs::remove_dir_all(&run).unwrap();
    let path = run_file(&dir, &plugins, "estimator = \"grpo\"", "");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("steps = 2", "steps = 1")).unwrap();
    let g = train(&path, RlRunOptions::default());
    assert_eq!(g[0].zero_adv_ratio, 1.0);
    assert_eq!(g[0].pg_loss, 0.0);
    // GRPO does not reward with p_t, but scores it (score_baselines) for the
    // report: every sample has p_0.
    let samples = std::fs::read_to_string(run.join("samples/step-1.jsonl")).unwrap();
    for line in samples.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let p = v["gt_probability"].as_array().unwrap();
        assert!(!p.is_empty() && p[0].as_f64().unwrap() > 0.0, "{line}");
    }
}

/// (exit code, stderr) of `igpo ARGS`.
fn igpo_cli(args: &[&str]) -> (i32, String) {
    let (code, _, err) = common::igpo(args);
    (code, err)
}

#[test]
fn bad_run_files_fail_with_one_line_before_any_work() {
    let Some(plugins) = plugins_support::plugin_dir("igpo_train_bad_input") else {
        return;
    };
    let dir = plugins_support::scratch("rl_train_bad");
    setup(&dir);
    let good = std::fs::read_to_string(run_file(&dir, &plugins, "", "")).unwrap();
    let p = plugins.display().to_string();
    let cases: Vec<(String, &str)> = vec![
        (
            good.replace("qa-reward.wasm", "no-such-plugin.wasm"),
            "reward.path: plugin file",
        ),
        (
            good.replace(
                &format!("{p}/bm25-search.wasm"),
                &format!("{p}/qa-reward.wasm"),
            ),
            "tool",
        ),
        (
            good.replace("group_size = 3", "group_size = 3\nestimator = \"ppo2\""),
            "unknown variant `ppo2`",
        ),
        (
            good.replace("group_size = 3", "group_size = 3\ngamma = 1.5"),
            "rl.gamma must be in (0, 1]",
        ),
        (
            good.replace("group_size = 3", "group_size = 1"),
            "rl.group_size must be >= 2",
        ),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let (code, err) = igpo_cli(&["train", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 2, "case {i}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "case {i}: expected one line, got:\n{err}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(needle),
            "case {i}: {err}"
        );
        assert!(
            !dir.join("run/metrics.jsonl").exists(),
            "case {i}: work started"
        );
    }
    // `--set` overrides go through the same checks as the file itself.
    let good_path = dir.join("good.toml");
    std::fs::write(&good_path, &good).unwrap();
    let sets = [
        ("rl.group_size=1", "rl.group_size must be >= 2"),
        ("rl.bogus=1", "unknown field `bogus`"),
        (
            "reward.path=no-such-plugin.wasm",
            "reward.path: plugin file",
        ),
        ("rl.group_size", "expected key=value"),
    ];
    for (set, needle) in sets {
        let (code, err) = igpo_cli(&[
            "train",
            "--config",
            good_path.to_str().unwrap(),
            "--set",
            set,
        ]);
        assert_eq!(code, 2, "--set {set}: {err}");
        assert_eq!(err.lines().count(), 1, "--set {set}: {err}");
        assert!(err.contains(needle), "--set {set}: {err}");
        assert!(
            !dir.join("run/metrics.jsonl").exists(),
            "--set {set}: work started"
        );
    }
}
