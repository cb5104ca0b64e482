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
];
/// componentize-py, pinned (see docs/toolchain.md).
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// `cargo xtask plugins`: builds every first-party plugin into
/// `target/plugins/NAME.wasm` (Rust guests with cargo for wasm32-wasip2,
/// the Python calculator with componentize-py from a cached venv).
pub(crate) fn plugins() -> Result<PathBuf> {
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
