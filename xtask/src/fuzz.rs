//! `cargo xtask fuzz [TARGET...] [--cases N | --seconds S] [--seed S]
//! [--replay FILE] [--release]`: the fuzz targets of `engine/tests/fuzz.rs`
//! for longer than `cargo test` runs them (each target for S seconds or N
//! inputs; all targets when none is named). A failing input is saved under
//! `target/fuzz/<target>/crash-<hash>`; `--replay FILE` runs one again.
//! See docs/fuzzing.md.

use crate::plugins::plugins;
use crate::{cargo, run, target, Result};

const USAGE: &str = "usage: cargo xtask fuzz [TARGET...] [--cases N | --seconds S] [--seed S] [--replay FILE] [--release]";

pub(crate) fn fuzz(args: &[String]) -> Result<()> {
    let mut targets: Vec<String> = vec![];
    let mut envs: Vec<(&str, String)> = vec![];
    let mut release = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value; {USAGE}"))
        };
        match a.as_str() {
            "--cases" => envs.push(("IGPO_FUZZ_CASES", value(a)?)),
            "--seconds" => envs.push(("IGPO_FUZZ_SECONDS", value(a)?)),
            "--seed" => envs.push(("IGPO_FUZZ_SEED", value(a)?)),
            "--time-limit" => envs.push(("IGPO_FUZZ_TIME_LIMIT", value(a)?)),
            "--replay" => {
                let file = std::path::absolute(value(a)?).map_err(|e| e.to_string())?;
                envs.push(("IGPO_FUZZ_REPLAY", file.display().to_string()));
            }
            "--release" => release = true,
            "-h" | "--help" => return Err(USAGE.into()),
            flag if flag.starts_with('-') => return Err(format!("unknown flag {flag}; {USAGE}")),
            name => targets.push(name.to_string()),
        }
    }
    let replaying = envs.iter().any(|(k, _)| *k == "IGPO_FUZZ_REPLAY");
    if replaying && targets.len() != 1 {
        return Err(format!("--replay needs exactly one TARGET; {USAGE}"));
    }
    if !replaying
        && !envs
            .iter()
            .any(|(k, _)| matches!(*k, "IGPO_FUZZ_CASES" | "IGPO_FUZZ_SECONDS"))
    {
        envs.push(("IGPO_FUZZ_SECONDS", "60".into()));
    }
    // plugin_call runs the echo tool plugin.
    let plugin_dir = match std::env::var_os("IGPO_PLUGIN_DIR") {
        Some(d) => std::path::PathBuf::from(d),
        None if targets.is_empty() || targets.iter().any(|t| t == "plugin_call") => plugins()?,
        None => target().join("plugins"),
    };
    let crash_dir = target().join("fuzz");
    let mut cmd = cargo();
    cmd.args(["test", "-p", "igpo", "--test", "fuzz"]);
    if release {
        cmd.arg("--release");
    }
    cmd.args(["--", "--nocapture", "--test-threads=1"]);
    if !targets.is_empty() {
        cmd.arg("--exact").args(&targets);
    }
    cmd.env("IGPO_PLUGIN_DIR", plugin_dir)
        .env("IGPO_FUZZ_CRASH_DIR", &crash_dir)
        .envs(envs);
    run(&mut cmd)
}
