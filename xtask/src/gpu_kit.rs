//! `cargo xtask gpu-kit`: everything a GPU machine without a Rust toolchain
//! needs to run the GPU checks, in `.gpu-kit/` at the repository root (ignored
//! by git: it travels to the GPU machine only when carried).
//!
//! The kit holds the release test executables with the GPU checks (the
//! kernels' `tests/gpu.rs`, the engine's unit tests with `backend::cuda`) and
//! the release `igpo`, stripped and compressed (xz, or zstd when it is clearly
//! smaller), their checksums, a MANIFEST, the tiny tokenizer `igpo model init`
//! needs for the benchmark, `run.sh` (from `tools/gpu-kit/run.sh`), and the
//! demo's plugins with `demo.sh` (the demo's pipeline on `--device cuda`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{cargo, root, run, target, Result};

/// What the device tool carries at most is 64 MiB; leave room.
const LIMIT: u64 = 60 << 20;

/// zstd is chosen only when it is this much smaller than xz: xz (or
/// Python's `lzma`) is on every machine, zstd is not.
const ZSTD_MARGIN: f64 = 0.95;

pub fn gpu_kit() -> Result<()> {
    let start = std::time::Instant::now();
    // The release profile keeps line tables; `strip` drops them (and the
    // symbols), so the cached release dependencies are reused as they are.
    let bins = [
        (
            "kernels-gpu-tests",
            test_executable(&["-p", "igpo-kernels", "--test", "gpu"], "gpu")?,
        ),
        (
            "igpo-lib-tests",
            test_executable(&["-p", "igpo", "--lib"], "igpo")?,
        ),
        ("igpo", {
            // NCCL (loaded at run time) for nccl.sh; no MPI: the GPU
            // machine has no Open MPI to link against.
            run(cargo().args([
                "build",
                "--release",
                "-p",
                "igpo",
                "--bin",
                "igpo",
                "--features",
                "nccl",
            ]))?;
            target().join("release/igpo")
        }),
    ];
    let kit = root().join(".gpu-kit");
    let _ = std::fs::remove_dir_all(&kit);
    std::fs::create_dir_all(&kit).map_err(|e| format!("{}: {e}", kit.display()))?;
    let stage = target().join("gpu-kit");
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage).map_err(|e| format!("{}: {e}", stage.display()))?;

    let mut sums = String::new();
    let mut manifest = vec![format!(
        "built {} from {} ({})",
        utc_now(),
        git(&["describe", "--always", "--dirty"]),
        git(&["log", "-1", "--format=%s"])
            .chars()
            .take(72)
            .collect::<String>()
    )];
    let mut glibc = String::new();
    for (name, built) in &bins {
        let plain = stage.join(name);
        std::fs::copy(built, &plain)
            .map_err(|e| format!("{} -> {}: {e}", built.display(), plain.display()))?;
        run(Command::new("strip").arg(&plain))?;
        glibc = glibc.max(needed_glibc(&plain));
        sums.push_str(&format!("{}  {name}\n", sha256(&plain)?));
        let xz = compress(&plain, "xz", &["-9e", "-T0", "-c"])?;
        let zst = which("zstd")
            .then(|| compress(&plain, "zst", &["-19", "--long=27", "-T0", "-q", "-c"]))
            .transpose()?;
        let (xz_len, zst_len) = (len(&xz), zst.as_deref().map(len));
        let pick = match &zst {
            Some(z) if (len(z) as f64) < ZSTD_MARGIN * xz_len as f64 => z,
            _ => &xz,
        };
        let dest = kit.join(pick.file_name().unwrap());
        std::fs::copy(pick, &dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        manifest.push(format!(
            "{name}: {} stripped, xz {}, zstd {} -> {}",
            mib(len(&plain)),
            mib(xz_len),
            zst_len.map(mib).unwrap_or_else(|| "n/a".into()),
            dest.file_name().unwrap().to_string_lossy()
        ));
    }
    manifest.push(format!(
        "needs glibc >= {glibc} (the build machine's symbols)"
    ));
    // The agent bench needs a real tokenizer: the tiny one below cannot
    // spell a tool call. Unpacked into $BIN with the binaries.
    let tokenizer = stage.join("qwen2.5-tokenizer.json");
    std::fs::copy(
        crate::data::unpack()?.join("qwen2.5-tokenizer.json"),
        &tokenizer,
    )
    .map_err(|e| format!("{}: {e}", tokenizer.display()))?;
    sums.push_str(&format!(
        "{}  qwen2.5-tokenizer.json\n",
        sha256(&tokenizer)?
    ));
    let packed = compress(&tokenizer, "xz", &["-9e", "-T0", "-c"])?;
    std::fs::copy(&packed, kit.join("qwen2.5-tokenizer.json.xz"))
        .map_err(|e| format!(".gpu-kit/qwen2.5-tokenizer.json.xz: {e}"))?;
    manifest.push(format!(
        "qwen2.5-tokenizer.json: {} -> qwen2.5-tokenizer.json.xz {} (the agent bench's)",
        mib(len(&tokenizer)),
        mib(len(&packed))
    ));
    for (src, dest) in [
        ("tools/gpu-kit/run.sh", "run.sh"),
        ("tools/gpu-kit/demo.sh", "demo.sh"),
        ("tools/gpu-kit/nccl.sh", "nccl.sh"),
        ("tools/gpu-kit/tokenizer.json", "tokenizer.json"),
    ] {
        std::fs::copy(root().join(src), kit.join(dest))
            .map_err(|e| format!("{src} -> .gpu-kit/{dest}: {e}"))?;
    }
    // The demo's plugins (demo.sh: the whole pipeline on the GPU).
    let plugins = crate::plugins::build_plugins(false)?;
    std::fs::create_dir_all(kit.join("plugins")).map_err(|e| format!(".gpu-kit/plugins: {e}"))?;
    // echo-tool: the instant tool of run.sh's agent-rollout bench.
    for name in ["bm25-search", "qa-dataset", "qa-reward", "echo-tool"] {
        let wasm = format!("{name}.wasm");
        std::fs::copy(plugins.join(&wasm), kit.join("plugins").join(&wasm))
            .map_err(|e| format!("{} -> .gpu-kit/plugins: {e}", plugins.join(&wasm).display()))?;
        manifest.push(format!(
            "plugins/{wasm}: the demo's plugin (echo-tool: the agent bench's tool)"
        ));
    }
    write(&kit.join("SHA256SUMS"), &sums)?;
    write(&kit.join("MANIFEST"), &(manifest.join("\n") + "\n"))?;
    let _ = std::fs::remove_dir_all(&stage);

    print_kit(&kit, &manifest, start)
}

/// Prints the manifest and the kit's files, largest first, with the time
/// since `start`; fails when the kit is over [`LIMIT`].
fn print_kit(kit: &Path, manifest: &[String], start: std::time::Instant) -> Result<()> {
    let mut files: Vec<(u64, String)> = std::fs::read_dir(kit)
        .map_err(|e| format!("{}: {e}", kit.display()))?
        .filter_map(|e| e.ok())
        .map(|e| (len(&e.path()), e.file_name().to_string_lossy().into_owned()))
        .collect();
    files.sort_by(|a, b| b.cmp(a));
    let total: u64 = files.iter().map(|f| f.0).sum();
    for line in manifest {
        println!("{line}");
    }
    println!(".gpu-kit/ ({:.0} s):", start.elapsed().as_secs_f64());
    for (n, f) in &files {
        println!("  {:>10}  {f}", mib(*n));
    }
    println!("  {:>10}  total (limit {})", mib(total), mib(LIMIT));
    if total > LIMIT {
        return Err(format!(
            "the kit is {} (> {}); largest: {}",
            mib(total),
            mib(LIMIT),
            files
                .iter()
                .take(3)
                .map(|(n, f)| format!("{f} {}", mib(*n)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    println!(
        "GPU session: device tool run, command `bash .gpu-kit/run.sh`, carry [\".gpu-kit\"], \
         timeout_s 560; it writes $OUT/gpu-check.log"
    );
    Ok(())
}

/// Builds `cargo test --release --no-run ARGS` and returns the executable of
/// the test target named `target_name`.
fn test_executable(args: &[&str], target_name: &str) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["test", "--release", "--no-run", "--message-format=json"])
        .args(args)
        .stderr(Stdio::inherit())
        .stdout(Stdio::piped());
    eprintln!(
        "xtask: running cargo test --release --no-run {}",
        args.join(" ")
    );
    let out = cmd
        .output()
        .map_err(|e| format!("cannot start cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo test --no-run {} failed", args.join(" ")));
    }
    executable_in(&String::from_utf8_lossy(&out.stdout), target_name).ok_or_else(|| {
        format!(
            "cargo test --no-run {}: no test executable `{target_name}` in its output",
            args.join(" ")
        )
    })
}

/// The `executable` of the test artifact named `target_name` among cargo's
/// JSON messages.
fn executable_in(messages: &str, target_name: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["profile"]["test"] == true)
        .filter(|m| m["target"]["name"] == target_name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

/// `tool ARGS FILE > FILE.ext`.
fn compress(file: &Path, ext: &str, args: &[&str]) -> Result<PathBuf> {
    let tool = if ext == "zst" { "zstd" } else { ext };
    let dest = PathBuf::from(format!("{}.{ext}", file.display()));
    let out = std::fs::File::create(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    let status = Command::new(tool)
        .args(args)
        .arg(file)
        .stdout(out)
        .status()
        .map_err(|e| format!("cannot run {tool}: {e}"))?;
    if !status.success() {
        return Err(format!("{tool} {} failed with {status}", file.display()));
    }
    Ok(dest)
}

fn which(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The newest `GLIBC_x.y` symbol version `file` needs (`objdump -T`), or "?".
fn needed_glibc(file: &Path) -> String {
    let Ok(out) = Command::new("objdump").arg("-T").arg(file).output() else {
        return "?".into();
    };
    newest_glibc(&String::from_utf8_lossy(&out.stdout)).unwrap_or_else(|| "?".into())
}

fn newest_glibc(objdump: &str) -> Option<String> {
    objdump
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let parts: Vec<u32> = v
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            Some((parts, v.to_string()))
        })
        .max()
        .map(|(_, v)| v)
}

fn sha256(file: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

fn git(args: &[&str]) -> String {
    Command::new("git")
        .args(args)
        .current_dir(root())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%FT%TZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_test_executable_among_cargo_messages() {
        let msgs = r#"{"reason":"compiler-artifact","target":{"name":"igpo","kind":["lib"]},"profile":{"test":false},"executable":null}
{"reason":"compiler-artifact","target":{"name":"igpo","kind":["bin"]},"profile":{"test":false},"executable":"/t/release/igpo"}
{"reason":"compiler-artifact","target":{"name":"igpo","kind":["lib"]},"profile":{"test":true},"executable":"/t/release/deps/igpo-abc"}
not json
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executable_in(msgs, "igpo"),
            Some(PathBuf::from("/t/release/deps/igpo-abc"))
        );
        assert_eq!(executable_in(msgs, "gpu"), None);
    }

    #[test]
    fn newest_glibc_compares_versions_as_numbers() {
        let dump = "0 DF *UND* 0 (GLIBC_2.9) x\n0 DF *UND* 0 (GLIBC_2.34) y\n0 DF *UND* GLIBC_2.3.4 z\nGLIBC_PRIVATE";
        assert_eq!(newest_glibc(dump).as_deref(), Some("2.34"));
    }
}
