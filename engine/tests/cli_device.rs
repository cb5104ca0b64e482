//! `--device` on every command that runs a model. On a machine without a GPU,
//! `--device cuda` fails before any work (nothing written, no plugin or model
//! loaded) with one error line naming the device; `--device bogus` is one
//! line too. The same inputs run with `--device cpu` (the plugin-backed
//! commands when `IGPO_PLUGIN_DIR` is set), so a failure is about the device.

use crate::common;
use crate::plugins_support;

use std::path::{Path, PathBuf};

fn igpo(args: &[&str], cache: Option<&Path>) -> (i32, String, String) {
    match cache {
        Some(c) => common::igpo_env(args, &[("IGPO_CACHE_DIR", c)]),
        None => common::igpo(args),
    }
}

/// Whether this process can open CUDA device 0 (then the no-GPU checks
/// cannot run here).
fn gpu_present(test: &str) -> bool {
    match igpo::backend::Cuda::new(0) {
        Ok(_) => {
            eprintln!(
                "skipped the no-GPU checks of {test}: CUDA device 0 opened in this process, so `--device cuda` would run"
            );
            true
        }
        Err(_) => false,
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("igpo-device-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Run files for every command over one tiny model (the real Qwen2.5
/// tokenizer), a tiny SFT set and a tiny QA set for the plugins.
struct Inputs {
    dir: PathBuf,
    model: String,
    sft: String,
    train: String,
    agent: String,
}

fn inputs(name: &str, plugins: &Path) -> Inputs {
    let dir = scratch(name);
    let model = dir.join("model");
    common::init_tiny_model(&model, &["--dtype", "f32"]);
    std::fs::write(dir.join("sft.jsonl"), format!("{}\n", common::SFT_LINE)).unwrap();
    std::fs::write(dir.join("sft.toml"), common::SFT_TOML).unwrap();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("qa.jsonl"), common::QA_JSONL).unwrap();
    let p = plugins.display();
    let common_part = format!(
        r#"model = "model"

[agent]
max_turns = 1
max_new_tokens_per_turn = 4
max_new_tokens_per_rollout = 4

[dataset]
split = "train"
[dataset.plugin]
path = "{p}/qa-dataset.wasm"
readonly_dir = "data"
config = {{ file = "qa.jsonl", dev_size = 1 }}

[reward]
path = "{p}/qa-reward.wasm"
"#
    );
    std::fs::write(
        dir.join("agent.toml"),
        common_part.replacen("model = \"model\"\n", "model = \"model\"\nbatch = 1\n", 1),
    )
    .unwrap();
    std::fs::write(
        dir.join("train.toml"),
        format!(
            "{common_part}\n[rl]\ngroup_size = 2\nprompts_per_step = 1\n\n\
             [train]\nrun_dir = \"train-run\"\nsteps = 1\nmicro_batch = 2\nlogprob_chunk = 40000\n"
        ),
    )
    .unwrap();
    let s = |p: PathBuf| p.display().to_string();
    Inputs {
        model: s(model),
        sft: s(dir.join("sft.toml")),
        train: s(dir.join("train.toml")),
        agent: s(dir.join("agent.toml")),
        dir,
    }
}

/// Every model-running command over `inp`, each with the outputs it would
/// write (none of which may exist after a failed device check).
fn commands(inp: &Inputs) -> Vec<(Vec<String>, Vec<PathBuf>)> {
    let d = &inp.dir;
    let s = |p: &Path| p.display().to_string();
    let v = |a: &[&str]| a.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        (
            v(&[
                "generate",
                "--model",
                &inp.model,
                "--prompt",
                "hi",
                "--max-new-tokens",
                "2",
            ]),
            vec![],
        ),
        (v(&["sft", "--config", &inp.sft]), vec![d.join("sft-run")]),
        (
            v(&["train", "--config", &inp.train]),
            vec![d.join("train-run")],
        ),
        (
            v(&[
                "rollout",
                "--config",
                &inp.agent,
                "--out",
                &s(&d.join("trajs.jsonl")),
            ]),
            vec![d.join("trajs.jsonl")],
        ),
        (
            v(&[
                "eval",
                "--config",
                &inp.agent,
                "--out-dir",
                &s(&d.join("eval-out")),
            ]),
            vec![d.join("eval-out")],
        ),
        (
            v(&[
                "bench",
                "forward",
                "--model",
                &inp.model,
                "--prefill-tokens",
                "8",
                "--decode-prompt-tokens",
                "4",
                "--decode-tokens",
                "2",
                "--batches",
                "1",
                "--repeats",
                "1",
                "--train-seq",
                "8",
                "--out",
                &s(&d.join("bench.json")),
            ]),
            vec![d.join("bench.json")],
        ),
        (v(&["model", "inspect", &inp.model]), vec![]),
    ]
}

fn with_device(args: &[String], device: &str) -> Vec<String> {
    let mut a = args.to_vec();
    a.extend(["--device".to_string(), device.to_string()]);
    a
}

fn assert_one_line(args: &[String], code: i32, err: &str, needles: &[&str]) {
    assert_ne!(code, 0, "{args:?} should fail; stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: expected one stderr line, got:\n{err}"
    );
    assert!(lines[0].starts_with("error: "), "{args:?}: {err}");
    for n in needles {
        assert!(lines[0].contains(n), "{args:?}: `{n}` missing from: {err}");
    }
}

#[test]
fn cuda_without_a_gpu_fails_before_any_work_with_one_line() {
    let plugins = std::env::var_os("IGPO_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/nonexistent-igpo-plugins"));
    let inp = inputs("cuda", &plugins);
    let gpu = gpu_present("cuda_without_a_gpu_fails_before_any_work_with_one_line");
    for (args, outputs) in commands(&inp) {
        for device in ["bogus", "cuda:", "gpu0"] {
            let a = with_device(&args, device);
            let refs: Vec<&str> = a.iter().map(String::as_str).collect();
            let (code, _, err) = igpo(&refs, None);
            assert_one_line(&a, code, &err, &[device, "use cpu, cuda or cuda:N"]);
        }
        if gpu {
            continue;
        }
        for (device, named) in [("cuda", "cuda:0"), ("cuda:1", "cuda:1")] {
            let a = with_device(&args, device);
            let refs: Vec<&str> = a.iter().map(String::as_str).collect();
            let (code, out, err) = igpo(&refs, None);
            assert_eq!(code, 2, "{a:?}: {err}");
            // With a driver but no usable GPU / NVRTC the reason differs;
            // the device is named either way.
            let why = if igpo_kernels::launch::driver_present() {
                ""
            } else {
                "CUDA driver"
            };
            assert_one_line(&a, code, &err, &[&format!("--device {named}: "), why]);
            for o in &outputs {
                assert!(!o.exists(), "{a:?} wrote {} before failing", o.display());
            }
            if args[0] == "model" {
                // inspect describes the model, then says it cannot check the fit.
                assert!(out.contains("training:"), "{out}");
                assert!(err.contains("cannot tell whether it fits"), "{err}");
            } else {
                assert!(err.contains("use --device cpu"), "{err}");
                assert!(out.is_empty(), "{a:?} printed: {out}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&inp.dir);
}

#[test]
fn the_same_inputs_run_on_cpu() {
    let plugins = plugins_support::plugin_dir("the_same_inputs_run_on_cpu (plugin commands)");
    let inp = inputs(
        "cpu",
        plugins
            .as_deref()
            .unwrap_or(Path::new("/nonexistent-igpo-plugins")),
    );
    let cache = plugins.as_ref().map(|p| p.join(".cache"));
    for (args, outputs) in commands(&inp) {
        let needs_plugins = ["train", "rollout", "eval"].contains(&args[0].as_str());
        if needs_plugins && plugins.is_none() {
            continue;
        }
        let a = with_device(&args, "cpu");
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let (code, out, err) = igpo(&refs, cache.as_deref());
        assert_eq!(code, 0, "{a:?} failed: {err}");
        eprintln!("ran on cpu: {}", args[..2].join(" "));
        for o in &outputs {
            assert!(o.exists(), "{a:?} did not write {}", o.display());
        }
        if args[0] == "model" {
            assert!(
                out.contains("fits on cpu for training: yes") || out.contains("unknown"),
                "{out}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&inp.dir);
}

/// `IGPO_PROFILE=1 igpo bench forward`: the same measurements, plus one
/// profiled run of each whose op times per phase are printed and recorded;
/// a training step of 2 sequences in micro-batches of 1 accumulates both.
#[test]
fn bench_forward_profile_breaks_each_measurement_into_phases() {
    let dir = scratch("bench-profile");
    let model = dir.join("model");
    common::init_tiny_model(&model, &["--dtype", "f32"]);
    let args = |out: &Path| {
        vec![
            "bench".to_string(),
            "forward".into(),
            "--model".into(),
            model.display().to_string(),
            "--prefill-tokens".into(),
            "8".into(),
            "--decode-prompt-tokens".into(),
            "4".into(),
            "--decode-tokens".into(),
            "2".into(),
            "--batches".into(),
            "1,2".into(),
            "--repeats".into(),
            "1".into(),
            "--train-seq".into(),
            "8".into(),
            "--train-batch".into(),
            "2".into(),
            "--train-micro-batch".into(),
            "1".into(),
            "--out".into(),
            out.display().to_string(),
        ]
    };
    let profiled = dir.join("profiled.json");
    let a = args(&profiled);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (code, _, err) = common::igpo_env(&a, &[("IGPO_PROFILE", Path::new("1"))]);
    assert_eq!(code, 0, "{err}");
    for label in ["prefill", "decode batch 1", "decode batch 2", "train"] {
        assert!(err.contains(&format!("profile {label}: wall ")), "{err}");
    }
    assert!(err.contains("outside ops"), "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&profiled).unwrap()).unwrap();
    assert_eq!(v["train_micro_batch"], 1);
    assert!(
        v["backend"].as_str().unwrap().ends_with("(profiled)"),
        "{v}"
    );
    let ops = |run: &str, phase: &str| v["profile"][run]["phases"][phase]["ops"].as_u64();
    // Layers make GEMMs and attention in every run; only training steps the optimizer.
    for run in ["prefill", "decode batch 1", "train"] {
        assert!(ops(run, "gemm").unwrap() > 0, "{run}: {v}");
        assert!(ops(run, "attention").unwrap() > 0, "{run}: {v}");
        assert!(v["profile"][run]["wall_seconds"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(ops("prefill", "optimizer"), None, "{v}");
    // What waits for the device on a GPU: one read per micro-batch (its loss)
    // and one for the gradient norm; the clipping itself reads nothing.
    assert_eq!(
        v["profile"]["train"]["host_reads"], 3,
        "{}",
        v["profile"]["train"]
    );
    assert!(ops("train", "optimizer").unwrap() > 0, "{v}");
    assert!(ops("train", "logprob").unwrap() > 0, "{v}");
    // One layer, two micro-batches: attention forward and backward, twice.
    assert_eq!(
        ops("train", "attention"),
        Some(4),
        "{}",
        v["profile"]["train"]
    );

    let plain = dir.join("plain.json");
    let a = args(&plain);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (code, _, err) = common::igpo(&a);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("profile "), "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plain).unwrap()).unwrap();
    assert!(v.get("profile").is_none(), "{v}");
    assert!(v["train_tokens_per_s"].as_f64().unwrap() > 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `igpo bench attention`: seconds and TFLOP/s of causal attention's training
/// forward and backward; a shape it cannot run is one error line.
#[test]
fn bench_attention_times_forward_and_backward() {
    let dir = scratch("bench-attention");
    let out = dir.join("attention.json");
    let (code, _, err) = common::igpo(&[
        "bench",
        "attention",
        "--seq",
        "96",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--head-dim",
        "32",
        "--repeats",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(
        (v["seq"].as_u64(), v["heads"].as_u64()),
        (Some(96), Some(4))
    );
    for k in [
        "forward_seconds",
        "backward_seconds",
        "forward_tflops",
        "backward_tflops",
    ] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
    // FLOPs by FlashAttention's count: forward 4 s^2 d h / 2, backward 2.5x.
    let fwd_flops =
        v["forward_tflops"].as_f64().unwrap() * 1e12 * v["forward_seconds"].as_f64().unwrap();
    assert!(
        (fwd_flops - 4.0 * 96.0 * 96.0 * 32.0 * 4.0 / 2.0).abs() < 1.0,
        "{v}"
    );
    let (code, _, err) = common::igpo(&["bench", "attention", "--heads", "3", "--kv-heads", "2"]);
    assert_ne!(code, 0);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--kv-heads must divide --heads"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
