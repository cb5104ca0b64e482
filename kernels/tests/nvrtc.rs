//! Every kernel family compiles with NVRTC to PTX for sm_80 and sm_90 with no
//! error and no warning. Runs wherever NVRTC and the CUDA headers are found
//! (`IGPO_NVRTC_DIR`, `IGPO_CUDA_INCLUDE`: `cargo xtask test` installs them from
//! PyPI wheels into target/ and sets both); elsewhere it prints why it skipped.
//! With `IGPO_PTX_OUT` set, the PTX is also written there
//! (`FAMILY.sm_XY.ptx`) for `ptxas -v` (`cargo xtask kernels`).

use std::time::Instant;

use igpo_kernels::compile::{compile, compile_source, cuda_include_dir, load_nvrtc, nvrtc_version};
use igpo_kernels::{CompileOptions, Family};

#[test]
fn every_family_compiles_to_ptx_for_sm80_and_sm90_without_warnings() {
    if let Err(e) = load_nvrtc() {
        eprintln!(
            "SKIPPED: {e}\n(cargo xtask test installs NVRTC from PyPI and sets IGPO_NVRTC_DIR)"
        );
        return;
    }
    if cuda_include_dir().is_none() {
        eprintln!("SKIPPED: no CUDA headers (cuda_bf16.h); set IGPO_CUDA_INCLUDE");
        return;
    }
    let version = nvrtc_version().expect("NVRTC version");
    let out = std::env::var_os("IGPO_PTX_OUT").map(std::path::PathBuf::from);
    if let Some(dir) = &out {
        std::fs::create_dir_all(dir).expect("IGPO_PTX_OUT");
    }
    let mut failures = Vec::new();
    for arch in [(8, 0), (9, 0)] {
        let opts = CompileOptions::for_arch(arch.0, arch.1);
        for family in Family::ALL {
            let start = Instant::now();
            match compile(family, &opts) {
                Err(e) => failures.push(e.to_string()),
                Ok(c) => {
                    let ms = start.elapsed().as_secs_f64() * 1e3;
                    let warnings = c.warnings();
                    if !warnings.is_empty() {
                        failures.push(format!(
                            "{}.cu for {}: warnings:\n{}",
                            family.name(),
                            opts.arch_name(),
                            c.log
                        ));
                    }
                    for k in family.kernel_names() {
                        if !c.ptx.contains(&format!(".entry {k}(")) {
                            failures.push(format!(
                                "{}.cu for {}: no entry `{k}` in the PTX",
                                family.name(),
                                opts.arch_name()
                            ));
                        }
                    }
                    eprintln!(
                        "nvrtc {}.{} {:>10}.cu {}: {:>7.1} ms, {:>7} bytes of PTX, {} kernels",
                        version.0,
                        version.1,
                        family.name(),
                        opts.arch_name(),
                        ms,
                        c.ptx.len(),
                        family.kernel_names().len()
                    );
                    if let Some(dir) = &out {
                        let path = dir.join(format!("{}.{}.ptx", family.name(), opts.arch_name()));
                        std::fs::write(&path, &c.ptx).expect("write PTX");
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The checks above must be able to fail: a warning and an error are seen.
#[test]
fn warnings_and_errors_are_reported() {
    if load_nvrtc().is_err() || cuda_include_dir().is_none() {
        eprintln!("SKIPPED: no NVRTC / CUDA headers (see the test above)");
        return;
    }
    let opts = CompileOptions::for_arch(9, 0);
    let warn = "extern \"C\" __global__ void k(float* x) { int unused = 3; x[0] = 1.0f; }";
    let c = compile_source("warn", warn, &opts).expect("compiles");
    assert!(!c.warnings().is_empty(), "no warning in log: {:?}", c.log);
    let bad = "extern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }";
    let e = compile_source("bad", bad, &opts).expect_err("must fail");
    assert!(e.to_string().contains("undefined_name"), "{e}");
}

/// Without a GPU, loading the kernels is a clear error, never cudarc's panic.
#[test]
fn no_gpu_is_a_clear_error() {
    if igpo_kernels::launch::driver_present() {
        eprintln!("SKIPPED: a CUDA driver is present on this machine");
        return;
    }
    let cache = igpo_kernels::PtxCache::new(std::env::temp_dir().join("igpo-ptx-test"));
    match igpo_kernels::launch::Kernels::new(0, &cache) {
        Err(e @ igpo_kernels::Error::NoDriver) => {
            assert!(e.to_string().contains("no NVIDIA GPU"), "{e}")
        }
        Err(e) => panic!("expected NoDriver, got {e}"),
        Ok(_) => panic!("kernels loaded without a driver"),
    }
}
