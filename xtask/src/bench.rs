//! `cargo xtask bench`: the engine beside PyTorch (CPU or CUDA), the plugin host, agent rollouts,
//! retrieval at corpus scale.

use std::path::PathBuf;
use std::process::Command;

use crate::plugins::plugins;
use crate::python::{python_env, Packages};
use crate::smollm2::smollm2_dir;
use crate::{cargo, data, igpo_release, root, run, target, Result};

pub(crate) fn bench(args: &[String]) -> Result<()> {
    let mut what = None;
    let mut device = String::from("cpu");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--device" => {
                device = it
                    .next()
                    .ok_or("--device needs a value (cpu, cuda, cuda:N)")?
                    .clone()
            }
            s if s.starts_with("--device=") => device = s["--device=".len()..].to_string(),
            "forward" | "plugins" | "rollout" | "retrieval" if what.is_none() => {
                what = Some(a.as_str())
            }
            other => {
                return Err(format!(
                    "unknown bench argument `{other}` (forward, plugins, rollout, retrieval; --device cpu|cuda[:N])"
                ))
            }
        }
    }
    if device != "cpu" {
        if !(device == "cuda" || device.starts_with("cuda:")) {
            return Err(format!("--device {device}: use cpu, cuda or cuda:N"));
        }
        if what.is_some_and(|w| w != "forward") {
            return Err("--device cuda measures the model side by side with PyTorch; plugins, rollout and retrieval are CPU benches".into());
        }
        return bench_cuda(&device);
    }
    match what {
        Some("plugins") => return bench_plugins(),
        Some("rollout") => return bench_rollout(),
        Some("retrieval") => return bench_retrieval(),
        Some(_) => {}
        None => {
            bench_plugins()?;
            bench_rollout()?;
        }
    }
    bench_forward_cpu()
}

/// Builds the release `igpo` and returns its path.
fn igpo_release_binary() -> Result<PathBuf> {
    run(cargo().args(["build", "--quiet", "--release", "-p", "igpo"]))?;
    Ok(target().join("release/igpo"))
}

/// The engine and PyTorch on SmolLM2-135M, CPU, every core: prefill, decode,
/// a training step and the scoring op, through the same scripts as the GPU
/// side by side.
fn bench_forward_cpu() -> Result<()> {
    let dir = smollm2_dir(&["--release"])?;
    let igpo = igpo_release_binary()?;
    let out = target().join("bench");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .to_string();
    let python = python_env(Packages::WithTorch)?;
    let torch = |what: &str| {
        let mut c = Command::new(&python);
        c.arg(root().join("tools/bench_torch.py")).args([
            what,
            "--device",
            "cpu",
            "--threads",
            &threads,
        ]);
        c
    };
    let forward = [
        "--prefill-tokens",
        "512",
        "--decode-tokens",
        "32",
        "--batches",
        "1,16",
        "--repeats",
        "3",
        "--train-seq",
        "512",
        "--train-batch",
        "1",
    ];
    // SmolLM2: hidden 576, vocabulary 49152.
    let score = [
        "--tokens",
        "2048",
        "--hidden",
        "576",
        "--vocab",
        "49152",
        "--repeats",
        "3",
    ];
    let file = |name: &str| out.join(name);
    // The machine's own limits first (GEMM peak, memory bandwidth): the
    // table gives each row's share of the GEMM peak.
    run(Command::new(&igpo)
        .args(["bench", "machine", "--out"])
        .arg(file("machine.json")))?;
    run(Command::new(&igpo)
        .args(["bench", "forward", "--model"])
        .arg(&dir)
        .args(forward)
        .arg("--out")
        .arg(file("forward-igpo.json")))?;
    run(torch("forward")
        .arg("--model")
        .arg(&dir)
        .args(forward)
        .arg("--out")
        .arg(file("forward-pytorch.json")))?;
    run(Command::new(&igpo)
        .args(["bench", "score"])
        .args(score)
        .arg("--out")
        .arg(file("score-igpo.json")))?;
    run(torch("score")
        .args(score)
        .arg("--out")
        .arg(file("score-pytorch.json")))?;
    run(Command::new("python3")
        .arg(root().join("tools/bench_compare.py"))
        .arg("--title")
        .arg(format!("SmolLM2-135M-Instruct, CPU, {threads} threads"))
        .arg("--forward")
        .args([file("forward-igpo.json"), file("forward-pytorch.json")])
        .arg("--score")
        .args([file("score-igpo.json"), file("score-pytorch.json")])
        .arg("--machine")
        .arg(file("machine.json"))
        .arg("--out")
        .arg(file("forward.json"))
        .arg("--markdown")
        .arg(file("forward.md")))?;
    println!("wrote {}", file("forward.md").display());
    Ok(())
}

/// `cargo xtask bench --device cuda`: `tools/bench_side_by_side.sh` on the
/// Qwen2.5-0.5B and 1.5B shapes with the release `igpo`. PyTorch: the
/// machine's python3 when it imports torch with CUDA (GPU machines have it),
/// else the `target/pyenv` one.
fn bench_cuda(device: &str) -> Result<()> {
    let igpo = igpo_release_binary()?;
    let has_torch = Command::new("python3")
        .args([
            "-c",
            "import torch, transformers; assert torch.cuda.is_available()",
        ])
        .status()
        .is_ok_and(|s| s.success());
    let python = if has_torch {
        PathBuf::from("python3")
    } else {
        python_env(Packages::WithTorch)?
    };
    let out = target().join("bench/cuda");
    run(Command::new("bash")
        .arg(root().join("tools/bench_side_by_side.sh"))
        .args(["qwen2.5-0.5b", "qwen2.5-1.5b"])
        .env("IGPO", &igpo)
        .env("OUT", &out)
        .env("PYTHON", &python)
        .env("DEVICE", device))?;
    println!("wrote {}/*.md", out.display());
    Ok(())
}

/// `cargo xtask bench rollout`: 16 concurrent SmolLM2 rollouts with the
/// bm25-search tool over SQuAD (`examples/agent/squad-search.toml`, 16
/// questions): generated tokens/s and the share of wall time spent waiting
/// on tools; writes `target/bench/rollout.json`.
fn bench_rollout() -> Result<()> {
    smollm2_dir(&["--release"])?;
    plugins()?;
    let corpus = target().join("corpus/corpus.jsonl");
    let data = data::unpack()?;
    if !corpus.exists() {
        run(igpo_release()
            .args(["data", "corpus", "--squad"])
            .arg(data.join("squad-dev-v1.1.json"))
            .arg("--wiki")
            .arg(data.join("wiki-summaries-en.json"))
            .arg("--out")
            .arg(&corpus))?;
    }
    let cfg_text = std::fs::read_to_string(root().join("examples/agent/squad-search.toml"))
        .map_err(|e| format!("examples/agent/squad-search.toml: {e}"))?
        .replace("limit = 100", "limit = 16")
        .replace(
            "temperature = 0.0   # greedy evaluation",
            "temperature = 1.0",
        );
    let cfg = root().join("examples/agent/.bench-rollout.toml");
    std::fs::write(&cfg, cfg_text).map_err(|e| format!("{}: {e}", cfg.display()))?;
    let out = target().join("bench");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    // 16 questions alone, then 4 questions x 8 rollouts (a training
    // group's G) with and without shared prompt prefixes.
    let runs: [(&str, &[&str]); 3] = [
        ("rollout", &[]),
        (
            "rollout-g8-shared",
            &["dataset.limit=4", "rollouts_per_task=8", "batch=32"],
        ),
        (
            "rollout-g8-unshared",
            &[
                "dataset.limit=4",
                "rollouts_per_task=8",
                "batch=32",
                "agent.share_prompt_prefixes=false",
            ],
        ),
    ];
    let mut result = Ok(());
    let mut rates = vec![];
    for (name, sets) in runs {
        let stats = out.join(format!("{name}.json"));
        let mut cmd = igpo_release();
        cmd.args(["rollout", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(out.join(format!("{name}-trajectories.jsonl")))
            .arg("--stats")
            .arg(&stats)
            .env("IGPO_CACHE_DIR", target().join("plugins/.cache"));
        for s in sets {
            cmd.args(["--set", s]);
        }
        result = run(&mut cmd);
        if result.is_err() {
            break;
        }
        let text = std::fs::read_to_string(&stats).unwrap_or_default();
        println!("{name}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        rates.push(v["wall_s"].as_f64().unwrap_or(f64::NAN));
    }
    let _ = std::fs::remove_file(&cfg);
    result?;
    println!(
        "shared prompt prefixes, 4 questions x 8 rollouts: {:.1} s vs {:.1} s unshared ({:.2}x)",
        rates[1],
        rates[2],
        rates[2] / rates[1]
    );
    Ok(())
}
/// BM25 at corpus scale: 2 million synthetic passages (generated from a seed,
/// kept with their index in `target/bench/retrieval-work` for reruns), index
/// build, query latency through the plugin; writes `target/bench/retrieval.json`.
/// Not part of the default `cargo xtask bench` (minutes, ~5 GB of disk).
fn bench_retrieval() -> Result<()> {
    let dir = plugins()?;
    let out = target().join("bench");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    run(igpo_release()
        .args(["bench", "retrieval", "--passages", "2000000", "--plugins"])
        .arg(&dir)
        .arg("--work")
        .arg(out.join("retrieval-work"))
        .arg("--out")
        .arg(out.join("retrieval.json"))
        .env("IGPO_CACHE_DIR", target().join("cache")))
}

/// Plugin host throughput through `igpo plugin bench`: a no-op tool (echo),
/// BM25 over the 12,100-passage corpus (1,000 SQuAD questions), and the word
/// counter of `igpo plugin new` in Rust, Python and JavaScript, each
/// measured alike; writes `target/bench/plugins/NAME.json`.
fn bench_plugins() -> Result<()> {
    let dir = plugins()?;
    let out = target().join("bench/plugins");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(out.join("corpus")).map_err(|e| format!("{}: {e}", out.display()))?;
    let data = data::unpack()?;
    let igpo = igpo_release_binary()?;
    let igpo_cmd = || {
        let mut c = Command::new(&igpo);
        c.env("IGPO_CACHE_DIR", target().join("cache"));
        c
    };
    run(igpo_cmd()
        .args(["data", "corpus", "--squad"])
        .arg(data.join("squad-dev-v1.1.json"))
        .arg("--wiki")
        .arg(data.join("wiki-summaries-en.json"))
        .arg("--out")
        .arg(out.join("corpus/corpus.jsonl")))?;
    let queries = out.join("squad-queries.jsonl");
    write_squad_queries(&data.join("squad-dev-v1.1.json"), &queries, 1000)?;
    let text = r#"{"text": "the quick brown fox jumps over the lazy dog"}"#;
    let mut cases: Vec<(String, PathBuf, Vec<String>)> = vec![
        (
            "echo".into(),
            dir.join("echo-tool.wasm"),
            vec!["--args".into(), "{}".into()],
        ),
        (
            "bm25-search".into(),
            dir.join("bm25-search.wasm"),
            vec![
                "--dir".into(),
                out.join("corpus").display().to_string(),
                "--args-file".into(),
                queries.display().to_string(),
            ],
        ),
    ];
    for (lang, wasm) in word_counters(&igpo, &out.join("word-count"))? {
        cases.push((
            format!("word-count-{lang}"),
            wasm,
            vec!["--args".into(), text.into()],
        ));
    }
    for (name, wasm, args) in cases {
        run(igpo_cmd()
            .args(["plugin", "bench"])
            .arg(&wasm)
            .args(&args)
            .arg("--out")
            .arg(out.join(format!("{name}.json"))))?;
    }
    Ok(())
}

/// The first `n` SQuAD dev questions as bm25-search arguments, one a line.
fn write_squad_queries(squad: &std::path::Path, out: &std::path::Path, n: usize) -> Result<()> {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(squad).map_err(|e| format!("{}: {e}", squad.display()))?,
    )
    .map_err(|e| format!("{}: {e}", squad.display()))?;
    let mut lines = String::new();
    let questions = v["data"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["paragraphs"].as_array().into_iter().flatten())
        .flat_map(|p| p["qas"].as_array().into_iter().flatten())
        .filter_map(|q| q["question"].as_str());
    for q in questions.take(n) {
        lines.push_str(&serde_json::json!({ "query": q }).to_string());
        lines.push('\n');
    }
    std::fs::write(out, lines).map_err(|e| format!("{}: {e}", out.display()))
}

/// `igpo plugin new word-count-LANG` for Rust, Python and JavaScript under
/// `dir`, each built with the `build:` command `igpo plugin new` prints (it
/// runs `cd PROJECT && COMMAND`); their components, from its `check:` line.
fn word_counters(igpo: &std::path::Path, dir: &std::path::Path) -> Result<Vec<(String, PathBuf)>> {
    let path = crate::plugins::guest_path()?;
    let mut built = vec![];
    for lang in ["rust", "python", "js"] {
        let name = format!("word-count-{lang}");
        let out = Command::new(igpo)
            .args(["plugin", "new", &name, "--lang", lang, "--out"])
            .arg(dir.join(&name))
            .output()
            .map_err(|e| format!("igpo plugin new: {e}"))?;
        let printed = String::from_utf8_lossy(&out.stdout);
        let line = |tag: &str| {
            printed
                .lines()
                .find_map(|l| l.strip_prefix(tag))
                .map(str::trim)
                .ok_or_else(|| format!("igpo plugin new printed no `{tag}` line: {printed}"))
        };
        if !out.status.success() {
            return Err(format!(
                "igpo plugin new {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        run(Command::new("bash")
            .args(["-c", line("build:")?])
            .env("PATH", &path)
            .env_remove("CARGO_TARGET_DIR"))?;
        let wasm = line("check:")?.trim_start_matches("igpo plugin check ");
        built.push((lang.to_string(), PathBuf::from(wasm)));
    }
    Ok(built)
}
