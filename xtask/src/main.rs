//! `cargo xtask demo | test | bench`: the project's entry points for a new
//! user and for CI. Everything the commands need (the real SmolLM2 model, the
//! Python reference packages) is fetched here and cached under `target/`.

mod bench;
mod data;
mod demo;
mod fuzz;
mod gpu_kit;
mod kernels;
mod mpi;
mod plugins;
mod python;
mod readme;
mod smollm2;
mod test;
mod tool_sft;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

type Result<T> = std::result::Result<T, String>;

/// What `cargo xtask` without a known command prints.
const USAGE: &str = "usage: cargo xtask <demo|test|fuzz|data|plugins|kernels|gpu-kit|readme|bench> [args]\n  demo     run the main job on the embedded default (`demo smollm2 [PROMPT]`: the real SmolLM2 answers)\n  test     run the whole test suite (what CI runs)\n  fuzz     run the fuzz targets for longer (`fuzz [TARGET...] [--seconds S | --cases N] [--seed S] [--replay FILE]`; docs/fuzzing.md)\n  data     unpack data/*.json.zst (SQuAD, Wikipedia summaries, QA sets, the Qwen2.5 tokenizer) into target/data, sha256-checked\n  plugins  build the first-party plugins (wasm32-wasip2) into target/plugins\n  kernels  compile every CUDA kernel with NVRTC (sm_80, sm_90), report ptxas registers/smem/spills, run them in the CPU emulator\n  gpu-kit  build the GPU checks into .gpu-kit/ for a GPU machine without Rust (`bash .gpu-kit/run.sh` there)\n  readme   run README.md's shell blocks as one session (long runs shortened; part of `test`)\n  bench    measure the engine against PyTorch on CPU, and the plugin host\n           (`bench forward|plugins|rollout` runs one part;\n           `bench --device cuda`: Qwen2.5-0.5B/1.5B shapes on the GPU beside PyTorch)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo::demo(&args[1..]),
        Some("test") => test::test(&args[1..]),
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        Some("bench") => bench::bench(&args[1..]),
        Some("data") => data::unpack().map(|dir| eprintln!("xtask: data in {}", dir.display())),
        Some("plugins") => {
            plugins::plugins().map(|dir| eprintln!("xtask: plugins in {}", dir.display()))
        }
        Some("kernels") => kernels::kernels(),
        Some("gpu-kit") => gpu_kit::gpu_kit(),
        Some("readme") => readme::check(),
        _ => Err(USAGE.into()),
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
