//! CUDA kernels checked without a GPU: NVRTC, the CUDA headers and `ptxas`
//! come from NVIDIA's PyPI wheels, installed once under `target/cuda-wheels/`.
//! `cargo xtask kernels` compiles every `.cu` file to PTX (the igpo-kernels
//! test) and assembles it with `ptxas -arch=sm_90 -v`, printing registers,
//! shared memory and spills per kernel; then it runs the kernels themselves in
//! the CPU emulator (`kernels/emu`, g++) against reference loops that mirror
//! the CPU backend, and once more with bugs planted in the emulated
//! tensor-core primitives (each must be caught). Spills in attention kernels
//! fail the check. `cargo xtask test` runs all of it first and passes the
//! NVRTC location to the test suite.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{cargo, run, target, Result};

/// One CUDA release for all three wheels (see docs/toolchain.md).
const CUDA_WHEELS: &str = "13.5.37";
const WHEELS: [&str; 3] = [
    "nvidia-cuda-nvrtc",
    "nvidia-cuda-runtime",
    "nvidia-cuda-nvcc",
];
/// The architecture whose register use is reported.
const PTXAS_ARCH: &str = "sm_90";

/// `nvidia/cu13` of the installed wheels (lib/, include/, bin/ptxas).
fn cuda_wheels() -> Result<PathBuf> {
    let root = target().join("cuda-wheels").join(CUDA_WHEELS);
    let cu = root.join("nvidia/cu13");
    let stamp = root.join(".installed");
    if stamp.exists() && cu.join("lib/libnvrtc.so.13").exists() {
        return Ok(cu);
    }
    let start = Instant::now();
    let _ = std::fs::remove_dir_all(&root);
    let mut pip = Command::new("python3");
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-cache-dir",
        "--target",
    ])
    .arg(&root);
    for w in WHEELS {
        pip.arg(format!("{w}=={CUDA_WHEELS}"));
    }
    run(&mut pip)?;
    for need in ["lib/libnvrtc.so.13", "include/cuda_bf16.h", "bin/ptxas"] {
        if !cu.join(need).exists() {
            return Err(format!(
                "the CUDA {CUDA_WHEELS} wheels have no {need} under {}",
                cu.display()
            ));
        }
    }
    std::fs::write(&stamp, CUDA_WHEELS).map_err(|e| format!("{}: {e}", stamp.display()))?;
    eprintln!(
        "xtask: CUDA {CUDA_WHEELS} wheels (NVRTC, headers, ptxas) installed in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(cu)
}

/// The environment the kernel compile test reads.
fn nvrtc_env(cu: &Path) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("IGPO_NVRTC_DIR", cu.join("lib")),
        ("IGPO_CUDA_INCLUDE", cu.join("include")),
    ]
}

/// What `cargo xtask test` calls: installs the wheels, runs the kernel
/// checks, and returns the environment for the whole test suite.
/// `IGPO_SKIP_CUDA_WHEELS=1` skips all of it (the compile test then says so).
pub fn prepare() -> Result<Vec<(&'static str, PathBuf)>> {
    if std::env::var_os("IGPO_SKIP_CUDA_WHEELS").is_some_and(|v| v == "1") {
        eprintln!("xtask: IGPO_SKIP_CUDA_WHEELS=1: CUDA kernels are not compiled");
        return Ok(Vec::new());
    }
    let start = Instant::now();
    let cu = cuda_wheels()?;
    check(&cu)?;
    eprintln!(
        "xtask: kernel checks took {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(nvrtc_env(&cu))
}

/// `cargo xtask kernels`.
pub fn kernels() -> Result<()> {
    let start = Instant::now();
    let cu = cuda_wheels()?;
    check(&cu)?;
    eprintln!(
        "xtask: kernels checked in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// NVRTC compile test (writes PTX), then `ptxas -v` per family.
fn check(cu: &Path) -> Result<()> {
    let ptx_dir = target().join("kernels/ptx");
    let _ = std::fs::remove_dir_all(&ptx_dir);
    run(cargo()
        .args([
            "test",
            "--quiet",
            "-p",
            "igpo-kernels",
            "--test",
            "nvrtc",
            "--",
            "--nocapture",
        ])
        .envs(nvrtc_env(cu))
        .env("IGPO_PTX_OUT", &ptx_dir))?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&ptx_dir)
        .map_err(|e| format!("{}: {e}", ptx_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(&format!(".{PTXAS_ARCH}.ptx")))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!(
            "no PTX in {}: did the compile test skip?",
            ptx_dir.display()
        ));
    }
    let mut rows = Vec::new();
    for f in &files {
        let out = Command::new(cu.join("bin/ptxas"))
            .args([&format!("-arch={PTXAS_ARCH}"), "-v", "-o", "/dev/null"])
            .arg(f)
            .output()
            .map_err(|e| format!("cannot run ptxas: {e}"))?;
        let log = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!("ptxas failed on {}:\n{log}", f.display()));
        }
        if log.contains("warning") {
            return Err(format!("ptxas warns on {}:\n{log}", f.display()));
        }
        let family = f
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('.').next())
            .unwrap_or("?")
            .to_string();
        for k in parse_ptxas(&log) {
            rows.push((family.clone(), k));
        }
    }
    let mut table = format!(
        "ptxas -arch={PTXAS_ARCH} -v (CUDA {CUDA_WHEELS})\n{:<15} {:<22} {:>5} {:>7} {:>6} {:>12}\n",
        "family", "kernel", "regs", "smem B", "stack", "spill st/ld"
    );
    let mut spilling = 0;
    let mut attention_spills = Vec::new();
    for (family, k) in &rows {
        let flag = if k.spill_stores + k.spill_loads > 0 {
            spilling += 1;
            if family == "attention" || family == "paged_attention" {
                attention_spills.push(k.name.clone());
            }
            "  SPILLS"
        } else {
            ""
        };
        table.push_str(&format!(
            "{:<15} {:<22} {:>5} {:>7} {:>6} {:>6}/{:<5}{flag}\n",
            family, k.name, k.registers, k.smem, k.stack, k.spill_stores, k.spill_loads
        ));
    }
    table.push_str(&format!("{} kernels, {spilling} spilling\n", rows.len()));
    print!("{table}");
    let report = target().join("kernels/ptxas.txt");
    std::fs::write(&report, &table).map_err(|e| format!("{}: {e}", report.display()))?;
    // Attention is the hot loop of prefill, decode and training: a spill
    // there is a regression, not a note.
    if !attention_spills.is_empty() {
        return Err(format!(
            "attention kernels spill registers ({}): see {}",
            attention_spills.join(", "),
            report.display()
        ));
    }
    emulate()
}

/// Compiles `kernels/emu/emu_test.cpp` (the real kernel sources under the CPU
/// emulator) with g++ and runs it. Without a C++20 compiler it says so and
/// skips: this check is an extra, the GPU run is the real one.
fn emulate() -> Result<()> {
    let start = Instant::now();
    let emu = crate::root().join("kernels/emu");
    let exe = target().join("kernels/emu_test");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    let built = Command::new(&cxx)
        .args(["-std=c++20", "-O1", "-pthread", "-I"])
        .arg(emu.join("include"))
        .arg("-o")
        .arg(&exe)
        .arg(emu.join("emu_test.cpp"))
        .status();
    match built {
        Err(e) => {
            eprintln!("xtask: SKIPPED the kernel emulator: cannot run {cxx}: {e}");
            return Ok(());
        }
        Ok(s) if !s.success() => return Err(format!("{cxx} failed on kernels/emu/emu_test.cpp")),
        Ok(_) => {}
    }
    run(&mut Command::new(&exe))?;
    // Test mode: bugs planted in the emulated tensor-core primitives (a wrong
    // mma fragment layout, ldmatrix without .trans, a missing cp.async wait)
    // must make the attention checks fail; it exits 1 if one goes unseen.
    run(Command::new(&exe).arg("planted"))?;
    eprintln!(
        "xtask: kernels emulated on the CPU in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[derive(Debug, Default, PartialEq)]
struct KernelInfo {
    name: String,
    registers: u32,
    smem: u32,
    stack: u32,
    spill_stores: u32,
    spill_loads: u32,
}

/// The number just before `unit` in `line` ("32 registers" -> 32).
fn number_before(line: &str, unit: &str) -> Option<u32> {
    let at = line.find(unit)?;
    line[..at].split_whitespace().last()?.parse().ok()
}

/// Per-kernel numbers from `ptxas -v` output.
fn parse_ptxas(log: &str) -> Vec<KernelInfo> {
    let mut out: Vec<KernelInfo> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push(KernelInfo {
                name,
                ..Default::default()
            });
            continue;
        }
        let Some(k) = out.last_mut() else { continue };
        if line.contains("bytes stack frame") {
            k.stack = number_before(line, "bytes stack frame").unwrap_or(0);
            k.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
            k.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
        }
        if line.contains("registers") {
            k.registers = number_before(line, "registers").unwrap_or(0);
            k.smem = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptxas_verbose_output() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'attn_fwd_d128' for 'sm_90'\n\
ptxas info    : Function properties for attn_fwd_d128\n\
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 80 registers, used 1 barriers, 36872 bytes smem\n\
ptxas info    : Compiling entry function 'k2' for 'sm_90'\n\
ptxas info    : Function properties for k2\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 9 registers, used 0 barriers\n";
        let k = parse_ptxas(log);
        assert_eq!(
            k[0],
            KernelInfo {
                name: "attn_fwd_d128".into(),
                registers: 80,
                smem: 36872,
                stack: 8,
                spill_stores: 4,
                spill_loads: 12
            }
        );
        assert_eq!(
            (k[1].name.as_str(), k[1].registers, k[1].smem),
            ("k2", 9, 0)
        );
    }
}
