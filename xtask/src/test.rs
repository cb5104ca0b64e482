//! `cargo xtask test`: the whole test suite as CI runs it, with what it needs made first.

use crate::mpi::{ensure_open_mpi, TEST_FEATURES};
use crate::plugins::plugins;
use crate::python::{python_env, Packages};
use crate::smollm2::{smollm2_dir, smollm2_gguf};
use crate::tool_sft::smollm2_tool_dir;
use crate::{cargo, data, kernels, readme, run, target, Result};

pub(crate) fn test(args: &[String]) -> Result<()> {
    // First the lints, so a formatting slip fails in minutes, not at the end
    // (skipped, like the README, when only some tests were asked for).
    // Open MPI first: the lints and the tests build the `mpi` feature.
    ensure_open_mpi()?;
    if args.is_empty() {
        lints()?;
    } else {
        eprintln!("xtask: fmt and clippy skipped (test arguments given)");
    }
    let cuda_env = kernels::prepare()?;
    let plugin_dir = plugins()?;
    let gguf = smollm2_gguf()?;
    // The suite's build (its features): the import does not compile a
    // second engine.
    let dir = smollm2_dir(&TEST_FEATURES)?;
    let data = data::unpack()?;
    let tool_dir = smollm2_tool_dir(&dir, &plugin_dir, &data)?;
    let python = python_env(Packages::Readers)?;
    run(cargo()
        .args(["test", "--workspace"])
        .args(TEST_FEATURES)
        .args(args)
        .env("IGPO_SMOLLM2_GGUF", &gguf)
        .env("IGPO_SMOLLM2_DIR", &dir)
        .env("IGPO_SMOLLM2_TOOL_DIR", &tool_dir)
        .env("IGPO_PLUGIN_DIR", &plugin_dir)
        .env("IGPO_PYTHON", &python)
        .env("IGPO_DATA", &data)
        .envs(cuda_env))?;
    // The tests' scratch (`CARGO_TARGET_TMPDIR`: GBs of checkpoints from the
    // crash tests) stays when a test fails, for a look; once all passed it
    // goes, before the README's runs fill the disk again.
    let scratch = target().join("tmp");
    std::fs::remove_dir_all(&scratch).or_else(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Ok(()),
        _ => Err(format!("{}: {e}", scratch.display())),
    })?;
    // Last: the README, as a new user runs it (skipped when only some tests
    // were asked for).
    if args.is_empty() {
        readme::check()
    } else {
        eprintln!("xtask: README check skipped (test arguments given)");
        Ok(())
    }
}

/// `cargo fmt --check` and clippy with warnings as errors, over the workspace
/// and every target (tests, benches, xtask).
fn lints() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))
        .map_err(|e| format!("{e}; run `cargo fmt --all` to format"))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        TEST_FEATURES[0],
        TEST_FEATURES[1],
        "--",
        "-D",
        "warnings",
    ]))
}
