//! Open MPI for the test suite: `cargo xtask test` builds and tests the
//! engine with its `mpi` feature (data-parallel training), whose build needs
//! Open MPI's headers and libclang (bindgen), and whose tests run `mpirun`.

use std::path::Path;
use std::process::Command;

use crate::{run, Result};

/// The cargo arguments of every build `cargo xtask test` makes of the
/// engine (tests, clippy, the tool-SFT binary): one feature set, one build.
/// `nccl` compiles the CUDA backend's NCCL group (nothing to link: NCCL is
/// loaded at run time, and only on a GPU).
pub(crate) const TEST_FEATURES: [&str; 2] = ["--features", "igpo/mpi,igpo/nccl"];

const PACKAGES: [&str; 3] = ["openmpi-bin", "libopenmpi-dev", "libclang-dev"];

/// Installs Open MPI and libclang with apt-get when either is missing (as
/// root, as on CI); otherwise says what to install, in one line.
pub(crate) fn ensure_open_mpi() -> Result<()> {
    if has_open_mpi() && has_libclang() {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        return Err(format!(
            "the test suite needs Open MPI and libclang: install {} (apt) and run again",
            PACKAGES.join(" ")
        ));
    }
    let install = || {
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(PACKAGES)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    if install().is_err() {
        // A fresh machine's package lists may be missing or stale.
        run(Command::new("apt-get").arg("update"))?;
        install()?;
    }
    if !(has_open_mpi() && has_libclang()) {
        return Err(format!(
            "apt-get installed {} but mpirun or libclang is still missing",
            PACKAGES.join(" ")
        ));
    }
    Ok(())
}

fn has_open_mpi() -> bool {
    Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new("mpicc")
            .arg("--showme:version")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// Whether bindgen will find a libclang: `LIBCLANG_PATH`, or the places
/// Debian's `libclang-dev` puts it.
fn has_libclang() -> bool {
    let dirs: Vec<std::path::PathBuf> = std::env::var_os("LIBCLANG_PATH")
        .map(|p| vec![p.into()])
        .unwrap_or_default()
        .into_iter()
        .chain(
            std::fs::read_dir("/usr/lib")
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("llvm-"))
                .map(|e| e.path().join("lib")),
        )
        .chain([Path::new("/usr/lib/x86_64-linux-gnu").to_path_buf()])
        .collect();
    dirs.iter().any(|d| {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("libclang.so")
                    || name.starts_with("libclang-") && name.contains(".so")
            })
    })
}
