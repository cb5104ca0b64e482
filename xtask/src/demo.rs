//! `cargo xtask demo`: the search agent from scratch on CPU, or `demo smollm2`: the real SmolLM2.

use std::path::PathBuf;
use std::process::Command;

use crate::plugins::build_plugins;
use crate::smollm2::smollm2_dir;
use crate::{cargo, igpo_release, root, run, target, Result};

pub(crate) fn demo(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        None => demo_search_agent(None),
        Some("--seeds") => {
            let n = match args.get(1) {
                None => 1,
                Some(n) => n
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| format!("--seeds {n}: expected a whole number >= 1"))?,
            };
            demo_search_agent(Some(n))
        }
        Some("smollm2") => demo_smollm2(&args[1..]),
        Some(other) => Err(format!(
            "unknown demo `{other}`: `cargo xtask demo [--seeds N]` (the search agent, from scratch; with --seeds, the paper's ablation over N seeds) or `cargo xtask demo smollm2 [PROMPT]`"
        )),
    }
}

/// `cargo xtask demo smollm2 [PROMPT]`: the real SmolLM2-135M-Instruct answers a prompt.
fn demo_smollm2(args: &[String]) -> Result<()> {
    let dir = smollm2_dir(&["--release"])?;
    let prompt = args
        .first()
        .map(String::as_str)
        .unwrap_or("What is the capital of France?");
    run(igpo_release()
        .args(["generate", "--model"])
        .arg(&dir)
        .args(["--prompt", prompt, "--max-new-tokens", "64"]))
}

/// The tiny policy of the demo (Qwen2 layout; vocabulary = the synthetic
/// world's tokenizer). Sizes chosen by measurement on 2 CPU cores, see
/// examples/demo/README.md.
const DEMO_MODEL: &[&str] = &[
    "--arch",
    "qwen2",
    "--hidden",
    "128",
    "--heads",
    "4",
    "--kv-heads",
    "2",
    "--layers",
    "2",
    "--intermediate",
    "384",
    "--tied",
    "--dtype",
    "f32",
    "--seed",
    "0",
];

/// The synthetic world of the demo (`igpo data synth` flags; the rest are
/// its defaults). 70% of the 2-hop demonstrations are lazy (half stop after
/// one search, half do not search), so the SFT policy reads and copies well
/// but often stops after one search on 2-hop questions: what RL should fix.
/// 300 dev questions: one run's dev F1 then has a standard error near 0.025.
const DEMO_WORLD: &[&str] = &["--seed", "0", "--lazy", "0.7", "--dev", "300"];

/// The paper's ablation (Table 3) as `rl.estimator` values: IGPO (F1 + IG),
/// F1 only with IGPO's turn machinery, IG only, and GRPO. IGPO first: the
/// sweep's table compares every other setting with it.
const ABLATION: &str = "rl.estimator=igpo,f1_only,ig_only,grpo";

/// Wall time of each stage of the demo, printed at the end.
struct Stages(Vec<(String, f64)>);

impl Stages {
    fn time<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = std::time::Instant::now();
        eprintln!("xtask: == {name} ==");
        let out = f()?;
        self.0
            .push((name.to_string(), start.elapsed().as_secs_f64()));
        Ok(out)
    }

    fn print(&self) {
        println!("demo stages (wall time):");
        for (name, s) in &self.0 {
            println!("  {name:<36} {s:>7.1} s");
        }
        let total: f64 = self.0.iter().map(|(_, s)| s).sum();
        println!("  {:<36} {total:>7.1} s", "total");
    }
}

/// What the demo keeps under `target/demo/`.
struct Demo {
    dir: PathBuf,
    igpo: PathBuf,
}

impl Demo {
    fn igpo(&self) -> Command {
        let mut c = Command::new(&self.igpo);
        c.current_dir(root())
            .env("IGPO_CACHE_DIR", target().join("plugins/.cache"));
        c
    }

    /// A run file of examples/demo/, copied into target/demo/ as `dest`
    /// with its `../../target/` paths pointing at this build's target folder
    /// (and `edit` applied).
    fn run_file(&self, name: &str, dest: &str, edit: impl Fn(String) -> String) -> Result<PathBuf> {
        let src = root().join("examples/demo").join(name);
        let text = std::fs::read_to_string(&src).map_err(|e| format!("{}: {e}", src.display()))?;
        let text = edit(text.replace("../../target/", &format!("{}/", target().display())));
        let dest = self.dir.join(dest);
        std::fs::write(&dest, text).map_err(|e| format!("{}: {e}", dest.display()))?;
        Ok(dest)
    }
}

/// `cargo xtask demo`: the whole job on the embedded default, from nothing,
/// on CPU: a synthetic multi-hop world served by the bm25-search plugin, a
/// tiny model taught the agent protocol by SFT on demonstrations, its dev F1,
/// then IGPO training and the dev F1 after it. With `seeds`, the RL stage
/// is the paper's ablation instead (`ablation_demo`).
fn demo_search_agent(seeds: Option<u64>) -> Result<()> {
    let mut stages = Stages(vec![]);
    let demo = Demo {
        dir: target().join("demo"),
        igpo: target().join("release/igpo"),
    };
    stages.time("build igpo (release) + plugins", || {
        run(cargo().args(["build", "--release", "-p", "igpo"]))?;
        build_plugins(false)
    })?;
    std::fs::create_dir_all(&demo.dir).map_err(|e| format!("{}: {e}", demo.dir.display()))?;
    let eval_cfg = demo.run_file("eval.toml", "eval.toml", |t| t)?;
    let eval_t1 = demo.run_file("eval.toml", "eval-t1.toml", |t| {
        t.replace(
            "temperature = 0.0   # greedy evaluation",
            "temperature = 1.0   # sampled, as in training",
        )
    })?;
    let sft_cfg = demo.run_file("sft.toml", "sft.toml", |t| t)?;
    let data = demo.dir.join("data");
    stages.time("igpo data synth", || {
        let _ = std::fs::remove_dir_all(&data);
        run(demo
            .igpo()
            .args(["data", "synth", "--out"])
            .arg(&data)
            .arg("--agent-config")
            .arg(&eval_cfg)
            .args(DEMO_WORLD))
    })?;
    stages.time("igpo model init (tiny Qwen2)", || {
        let init = demo.dir.join("init");
        let _ = std::fs::remove_dir_all(&init);
        run(demo
            .igpo()
            .args(["model", "init"])
            .arg(&init)
            .args(DEMO_MODEL)
            .arg("--vocab-from")
            .arg(data.join("tokenizer.json")))
    })?;
    stages.time("igpo sft", || {
        let _ = std::fs::remove_dir_all(demo.dir.join("sft"));
        run(demo.igpo().args(["sft", "--config"]).arg(&sft_cfg))
    })?;
    let sft_eval = stages.time("igpo eval (SFT model, dev)", || {
        eval_demo(&demo, &[&eval_cfg, &eval_t1], "eval-sft")
    })?;
    // ---- RL: `igpo train` (IGPO) from the SFT checkpoint, then the dev
    // eval of the trained policy. Added by the RL work; see train_demo. ----
    if let Some(n) = seeds {
        ablation_demo(&demo, &mut stages, n)?;
        stages.print();
        println!(
            "dev F1 of the SFT model: {:.3} greedy, {:.3} at temperature 1",
            sft_eval[0].f1, sft_eval[1].f1
        );
        return Ok(());
    }
    let rl_eval = train_demo(&demo, &mut stages)?;
    stages.print();
    println!(
        "dev F1 of the SFT model: {:.3} greedy, {:.3} at temperature 1",
        sft_eval[0].f1, sft_eval[1].f1
    );
    if let Some(r) = rl_eval {
        println!(
            "dev F1 after IGPO: {:.3} greedy (before: {:.3})",
            r.f1, sft_eval[0].f1
        );
    }
    Ok(())
}

/// The RL stage of the demo: `igpo train` with IGPO from the SFT checkpoint
/// (examples/demo/igpo.toml), the same run with `estimator = "grpo"`, the
/// two runs' dev F1 and zero-advantage ratios side by side (and as
/// `target/demo/report.html` by `igpo report`), and `eval_demo` of the IGPO
/// policy. Returns that greedy dev eval.
fn train_demo(demo: &Demo, stages: &mut Stages) -> Result<Option<EvalSummary>> {
    let runs = [("igpo", "IGPO"), ("grpo", "GRPO")];
    for (name, label) in runs {
        let cfg = demo.run_file("igpo.toml", &format!("{name}.toml"), |t| {
            t.replace("estimator = \"igpo\"", &format!("estimator = \"{name}\""))
                .replace("demo/igpo\"", &format!("demo/{name}\""))
        })?;
        stages.time(&format!("igpo train ({label})"), || {
            let _ = std::fs::remove_dir_all(demo.dir.join(name));
            run(demo.igpo().args(["train", "--config"]).arg(&cfg))
        })?;
    }
    let curves: Vec<(Vec<serde_json::Value>, Vec<serde_json::Value>)> = runs
        .iter()
        .map(|(name, _)| {
            let dir = demo.dir.join(name);
            Ok((
                read_jsonl(&dir.join("eval.jsonl"))?,
                read_jsonl(&dir.join("metrics.jsonl"))?,
            ))
        })
        .collect::<Result<_>>()?;
    println!("dev F1 (greedy) over training, and the share of zero-advantage groups:");
    println!("  step   IGPO F1   GRPO F1   IGPO zero-adv   GRPO zero-adv");
    let zero = |m: &[serde_json::Value], step: u64| {
        m.iter()
            .find(|x| x["step"].as_u64() == Some(step))
            .and_then(|x| x["zero_adv_ratio"].as_f64())
            .map(|z| format!("{z:.2}"))
            .unwrap_or_else(|| "-".into())
    };
    for (i, e) in curves[0].0.iter().enumerate() {
        let step = e["step"].as_u64().unwrap_or(0);
        let g = curves[1]
            .0
            .get(i)
            .and_then(|x| x["f1"].as_f64())
            .unwrap_or(f64::NAN);
        println!(
            "  {step:>4}   {:>7.3}   {g:>7.3}   {:>13}   {:>13}",
            e["f1"].as_f64().unwrap_or(f64::NAN),
            zero(&curves[0].1, step),
            zero(&curves[1].1, step),
        );
    }
    let mean_zero = |m: &[serde_json::Value]| {
        m.iter()
            .filter_map(|x| x["zero_adv_ratio"].as_f64())
            .sum::<f64>()
            / m.len().max(1) as f64
    };
    println!(
        "  mean zero-advantage ratio over all steps: IGPO {:.3}, GRPO {:.3}",
        mean_zero(&curves[0].1),
        mean_zero(&curves[1].1)
    );
    // The same comparison as a page (README: `igpo report`).
    let report = demo.dir.join("report.html");
    let mut cmd = demo.igpo();
    cmd.arg("report");
    cmd.args(runs.iter().map(|(name, _)| demo.dir.join(name)));
    run(cmd.arg("--out").arg(&report))?;
    let last = curves[0].1.len();
    let trained = demo.run_file("eval.toml", "eval-igpo.toml", |t| {
        t.replace(
            "demo/sft/checkpoints/step-1000",
            &format!("demo/igpo/checkpoints/step-{last}"),
        )
    })?;
    let out = stages.time("igpo eval (IGPO model, dev)", || {
        eval_demo(demo, &[&trained], "eval-igpo")
    })?;
    Ok(out.into_iter().next())
}

/// `cargo xtask demo --seeds N`: the four settings of `ABLATION` x N seeds
/// from the SFT checkpoint by `igpo sweep` (which prints the table with
/// intervals), and their report, `target/demo/ablation.html`.
fn ablation_demo(demo: &Demo, stages: &mut Stages, seeds: u64) -> Result<()> {
    let cfg = demo.run_file("igpo.toml", "igpo.toml", |t| t)?;
    let out = demo.dir.join("ablation");
    stages.time(&format!("igpo sweep (4 settings x {seeds} seeds)"), || {
        // The SFT model was just made again: earlier runs are of another one.
        let _ = std::fs::remove_dir_all(&out);
        run(demo
            .igpo()
            .args(["sweep", "--config"])
            .arg(&cfg)
            .args([
                "--seeds",
                &format!("0..{seeds}"),
                "--set",
                ABLATION,
                "--out",
            ])
            .arg(&out))
    })?;
    let report = demo.dir.join("ablation.html");
    run(demo
        .igpo()
        .arg("report")
        .arg(&out)
        .arg("--out")
        .arg(&report))
}

/// One eval run of the demo, with what the demo prints about it.
struct EvalSummary {
    f1: f64,
}

/// `igpo eval` of the given run files (trajectories into target/demo/OUT/),
/// then, per run: F1, EM, and how often 2-hop questions got two searches.
fn eval_demo(demo: &Demo, configs: &[&PathBuf], out: &str) -> Result<Vec<EvalSummary>> {
    let out_dir = demo.dir.join(out);
    let mut cmd = demo.igpo();
    cmd.args(["eval", "--out-dir"])
        .arg(&out_dir)
        .arg("--config");
    cmd.args(configs.iter().map(|c| c.as_os_str()));
    eprintln!("xtask: running igpo eval {}", out);
    let output = cmd
        .output()
        .map_err(|e| format!("cannot start {}: {e}", demo.igpo.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    if !output.status.success() {
        return Err(format!(
            "igpo eval failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let hops = read_jsonl(&demo.dir.join("data/dev.jsonl"))?
        .into_iter()
        .map(|q| {
            (
                q["id"].as_str().unwrap_or("").to_string(),
                q["hops"].as_u64().unwrap_or(0),
            )
        })
        .collect::<std::collections::HashMap<_, _>>();
    let mut summaries = vec![];
    for cfg in configs {
        let stem = cfg
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let report: serde_json::Value = stdout
            .lines()
            .find_map(|l| {
                let json = l.strip_prefix(&format!("{}: ", cfg.display()))?;
                serde_json::from_str(json).ok()
            })
            .ok_or_else(|| format!("igpo eval printed no report for {}", cfg.display()))?;
        let trajs = read_jsonl(&out_dir.join(format!("{stem}.jsonl")))?;
        let (mut two_hop, mut searched_twice) = (0, 0);
        for t in &trajs {
            if hops.get(t["id"].as_str().unwrap_or("")) == Some(&2) {
                two_hop += 1;
                let calls = t["turns"]
                    .as_array()
                    .map(|a| a.iter().filter(|m| m["tool"].is_string()).count())
                    .unwrap_or(0);
                searched_twice += (calls >= 2) as usize;
            }
        }
        let f1 = report["f1"].as_f64().unwrap_or(0.0);
        println!(
            "{stem}: dev F1 {f1:.3}, EM {:.3}, answered {:.2}; 2-hop questions searched twice: {searched_twice}/{two_hop}",
            report["em"].as_f64().unwrap_or(0.0),
            report["answered"].as_f64().unwrap_or(0.0),
        );
        summaries.push(EvalSummary { f1 });
    }
    Ok(summaries)
}

fn read_jsonl(path: &std::path::Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{}: {e}", path.display())))
        .collect()
}
