//! The Python reference packages (`target/pyenv`) the tests and benchmarks check the engine against.

use std::path::PathBuf;
use std::process::Command;

use crate::{root, run, target, Result};

/// A Python venv under `target/pyenv` with the reference packages
/// (`tools/reference/requirements.txt`: torch, transformers, tensorboard,
/// pyarrow), made once per version of that file. Tests get it as
/// `IGPO_PYTHON` (readers nobody here wrote: transformers, TensorBoard's
/// event reader, pyarrow).
pub(crate) fn python_env() -> Result<PathBuf> {
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
