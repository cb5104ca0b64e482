//! `cargo xtask data`: the real data files the tests, examples and README use
//! are committed compressed in `data/*.json.zst`; this unpacks them into
//! `target/data/` and checks each against `data/SHA256SUMS` (the sha256 of the
//! unpacked file). Already unpacked, matching files are kept.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{root, target, Result};

/// Unpacks every file named in `data/SHA256SUMS`; returns `target/data`.
pub fn unpack() -> Result<PathBuf> {
    let sums_path = root().join("data/SHA256SUMS");
    let sums =
        std::fs::read_to_string(&sums_path).map_err(|e| format!("{}: {e}", sums_path.display()))?;
    let out = target().join("data");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    for (n, line) in sums
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let (sum, name) = line
            .split_once("  ")
            .ok_or_else(|| format!("{}:{}: expected `SHA256  NAME`", sums_path.display(), n + 1))?;
        let dest = out.join(name);
        if dest.exists() && sha256_hex(&read(&dest)?) == sum {
            continue;
        }
        let packed = root().join("data").join(format!("{name}.zst"));
        let mut bytes = vec![];
        ruzstd::decoding::StreamingDecoder::new(
            std::fs::File::open(&packed).map_err(|e| format!("{}: {e}", packed.display()))?,
        )
        .map_err(|e| format!("{}: {e}", packed.display()))?
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", packed.display()))?;
        let got = sha256_hex(&bytes);
        if got != sum {
            return Err(format!(
                "{}: unpacks to sha256 {got}, data/SHA256SUMS says {sum}",
                packed.display()
            ));
        }
        let tmp = out.join(format!(".{name}.tmp-{}", std::process::id()));
        std::fs::write(&tmp, &bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        eprintln!("xtask: unpacked {}", dest.display());
    }
    Ok(out)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
