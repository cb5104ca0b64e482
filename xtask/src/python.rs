//! The Python reference packages (`target/pyenv`) the tests and benchmarks check the engine against.

use std::path::PathBuf;
use std::process::Command;

use crate::{root, run, target, Result};

/// Which reference packages a caller needs.
#[derive(Clone, Copy)]
pub(crate) enum Packages {
    /// `tools/reference/requirements.txt`, what the suite reads with:
    /// transformers (tokenizers, chat templates), TensorBoard's event
    /// reader, pyarrow, scipy. About 1 GB.
    Readers,
    /// `requirements-torch.txt`: the readers plus torch, whose PyPI wheel
    /// brings ~5 GB of CUDA libraries; for `cargo xtask bench` and for
    /// recording the model-math fixtures, never for the suite (CI disks are
    /// not that large).
    WithTorch,
}

/// A Python venv under `target/pyenv` with `packages` installed, made once
/// per version of their requirement files (a venv made with torch also
/// serves `Readers`). Tests get it as `IGPO_PYTHON`.
pub(crate) fn python_env(packages: Packages) -> Result<PathBuf> {
    let env = target().join("pyenv");
    let python = env.join("bin/python");
    let dir = root().join("tools/reference");
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let readers = read("requirements.txt")?;
    let with_torch = format!("{readers}{}", read("requirements-torch.txt")?);
    let stamp = std::fs::read_to_string(env.join(".installed")).unwrap_or_default();
    let current = match packages {
        Packages::Readers => stamp == readers || stamp == with_torch,
        Packages::WithTorch => stamp == with_torch,
    };
    if current {
        return Ok(python);
    }
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&env))?;
    }
    let (file, wanted) = match packages {
        Packages::Readers => ("requirements.txt", readers),
        Packages::WithTorch => ("requirements-torch.txt", with_torch),
    };
    run(Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "-r"])
        .arg(dir.join(file)))?;
    let stamp = env.join(".installed");
    std::fs::write(&stamp, &wanted).map_err(|e| format!("{}: {e}", stamp.display()))?;
    Ok(python)
}
