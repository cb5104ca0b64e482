//! NVRTC: kernel family -> PTX for one compute capability, with a disk cache.
//!
//! Where NVRTC and the CUDA headers come from:
//! - `IGPO_NVRTC_DIR`: a directory holding `libnvrtc.so.13` (e.g. the PyPI
//!   wheel `nvidia-cuda-nvrtc`'s `nvidia/cu13/lib`, which `cargo xtask test`
//!   installs under `target/`). It is opened by absolute path before cudarc
//!   looks the library up by name, so no `LD_LIBRARY_PATH` is needed.
//!   Unset: the system's loader path (a CUDA install).
//! - `IGPO_CUDA_INCLUDE`: the directory with `cuda_bf16.h`. Unset: the first of
//!   `$CUDA_HOME/include`, `$CUDA_PATH/include`, `/usr/local/cuda/include`,
//!   `IGPO_NVRTC_DIR/../include` that has it.

use std::ffi::{c_char, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cudarc::nvrtc::{result, sys};
use sha2::{Digest, Sha256};

use crate::{Error, Family, Result};

/// How to compile: target compute capability and header directories.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CompileOptions {
    /// Compute capability `(major, minor)`, e.g. `(9, 0)` for H100.
    pub arch: (u32, u32),
    pub include_dirs: Vec<PathBuf>,
}

impl CompileOptions {
    /// Options for one compute capability with the header directory found as
    /// the module documentation says.
    pub fn for_arch(major: u32, minor: u32) -> CompileOptions {
        CompileOptions {
            arch: (major, minor),
            include_dirs: cuda_include_dir().into_iter().collect(),
        }
    }

    /// `sm_90` style name of the target.
    pub fn arch_name(&self) -> String {
        format!("sm_{}{}", self.arch.0, self.arch.1)
    }

    /// The NVRTC command line. No fast-math: the kernels mirror the CPU
    /// reference's f32 arithmetic (precise `expf`, `sqrtf`, division).
    pub fn nvrtc_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--gpu-architecture=compute_{}{}", self.arch.0, self.arch.1),
            "--std=c++17".to_string(),
        ];
        for dir in &self.include_dirs {
            args.push(format!("--include-path={}", dir.display()));
        }
        args
    }
}

/// The CUDA header directory (see the module documentation).
pub fn cuda_include_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("IGPO_CUDA_INCLUDE") {
        return Some(PathBuf::from(dir));
    }
    let mut candidates: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .map(|d| PathBuf::from(d).join("include"))
        .collect();
    candidates.push(PathBuf::from("/usr/local/cuda/include"));
    if let Some(lib) = std::env::var_os("IGPO_NVRTC_DIR") {
        candidates.push(PathBuf::from(lib).join("../include"));
    }
    candidates
        .into_iter()
        .find(|d| d.join("cuda_bf16.h").is_file())
}

/// Makes NVRTC loadable (see the module documentation), once per process.
/// Fails with a readable reason instead of cudarc's panic.
pub fn load_nvrtc() -> Result<()> {
    static LOADED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            if let Some(dir) = std::env::var_os("IGPO_NVRTC_DIR") {
                preload_dir(Path::new(&dir))?;
            }
            // SAFETY: only tries to open the library by its usual names.
            if unsafe { sys::is_culib_present() } {
                Ok(())
            } else {
                Err(
                    "not found by the loader; install CUDA 13 (or the PyPI wheel \
                     nvidia-cuda-nvrtc) and set IGPO_NVRTC_DIR to the directory \
                     holding libnvrtc.so.13"
                        .to_string(),
                )
            }
        })
        .clone()
        .map_err(Error::NoNvrtc)
}

/// Opens `libnvrtc*.so*` of `dir` by absolute path and keeps them open, so a
/// later open by name (cudarc's) finds the loaded library.
fn preload_dir(dir: &Path) -> std::result::Result<(), String> {
    let main = dir.join("libnvrtc.so.13");
    if !main.is_file() {
        return Err(format!(
            "IGPO_NVRTC_DIR={} has no libnvrtc.so.13",
            dir.display()
        ));
    }
    let mut libs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("IGPO_NVRTC_DIR={}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libnvrtc-builtins") && n.contains(".so"))
        })
        .collect();
    libs.sort();
    libs.push(main);
    for lib in libs {
        // SAFETY: loading NVIDIA's NVRTC libraries runs only their initializers.
        let handle = unsafe { libloading::Library::new(&lib) }
            .map_err(|e| format!("{}: {e}", lib.display()))?;
        // Kept open for the life of the process (cudarc holds its own handle).
        std::mem::forget(handle);
    }
    Ok(())
}

/// NVRTC's version `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    load_nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded; the out-pointers are valid.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| Error::Nvrtc(format!("{e:?}")))?;
    Ok((major, minor))
}

/// PTX of one family and NVRTC's log (warnings, when any).
#[derive(Clone, Debug)]
pub struct Compiled {
    pub ptx: String,
    pub log: String,
}

impl Compiled {
    /// Log lines that report a warning.
    pub fn warnings(&self) -> Vec<&str> {
        self.log
            .lines()
            .filter(|l| l.to_ascii_lowercase().contains("warning"))
            .collect()
    }
}

fn c_chars_to_string(v: &[c_char]) -> String {
    let bytes: Vec<u8> = v
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Compiles `family` to PTX with NVRTC (no cache; see [`PtxCache`]).
pub fn compile(family: Family, opts: &CompileOptions) -> Result<Compiled> {
    compile_source(family.name(), &family.full_source(), opts)
}

/// Compiles one CUDA C source named `name` (used in messages) to PTX.
pub fn compile_source(name: &'static str, source: &str, opts: &CompileOptions) -> Result<Compiled> {
    load_nvrtc()?;
    let src = CString::new(source)
        .map_err(|_| Error::Invalid(format!("{name}.cu contains a NUL byte")))?;
    let cname = CString::new(format!("{name}.cu"))
        .map_err(|_| Error::Invalid(format!("{name}: NUL in the name")))?;
    let prog = result::create_program(src.as_c_str(), Some(cname.as_c_str()))
        .map_err(|e| Error::Nvrtc(format!("create program {name}: {e:?}")))?;
    let args = opts.nvrtc_args();
    // SAFETY: `prog` was just created and is destroyed once, below.
    let status = unsafe { result::compile_program(prog, &args) };
    let log = unsafe { result::get_program_log(prog) }
        .map(|l| c_chars_to_string(&l))
        .unwrap_or_default();
    let out = match status {
        Err(e) => Err(Error::Compile {
            family: name,
            arch: opts.arch_name(),
            status: format!("{e:?}"),
            log,
        }),
        Ok(()) => unsafe { result::get_ptx(prog) }
            .map(|p| Compiled {
                ptx: c_chars_to_string(&p),
                log,
            })
            .map_err(|e| Error::Nvrtc(format!("get PTX of {name}: {e:?}"))),
    };
    // SAFETY: created above, not destroyed before.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

/// PTX on disk, keyed by a hash of the source, the NVRTC options and the
/// NVRTC version: a changed kernel or toolkit never reuses stale PTX.
#[derive(Clone, Debug)]
pub struct PtxCache {
    dir: PathBuf,
}

impl PtxCache {
    pub fn new(dir: impl Into<PathBuf>) -> PtxCache {
        PtxCache { dir: dir.into() }
    }

    /// `$IGPO_CACHE_DIR/ptx`, else `$XDG_CACHE_HOME/igpo/ptx`, else
    /// `~/.cache/igpo/ptx`, else a folder under the system's temp directory.
    pub fn default_location() -> PtxCache {
        let dir = if let Some(d) = std::env::var_os("IGPO_CACHE_DIR") {
            PathBuf::from(d).join("ptx")
        } else if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
            PathBuf::from(d).join("igpo/ptx")
        } else if let Some(h) = std::env::var_os("HOME") {
            PathBuf::from(h).join(".cache/igpo/ptx")
        } else {
            std::env::temp_dir().join("igpo-ptx")
        };
        PtxCache::new(dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Hex SHA-256 of everything that decides the PTX.
    pub fn key(family: Family, opts: &CompileOptions, nvrtc: (i32, i32)) -> String {
        let mut h = Sha256::new();
        h.update(family.full_source().as_bytes());
        for a in opts.nvrtc_args() {
            h.update([0u8]);
            h.update(a.as_bytes());
        }
        h.update(format!("nvrtc {}.{}", nvrtc.0, nvrtc.1).as_bytes());
        h.finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    }

    /// The path a family's PTX is cached at.
    pub fn path(&self, family: Family, opts: &CompileOptions, nvrtc: (i32, i32)) -> PathBuf {
        let key = Self::key(family, opts, nvrtc);
        self.dir.join(format!(
            "{}-{}-{}.ptx",
            family.name(),
            opts.arch_name(),
            &key[..16]
        ))
    }

    /// Cached PTX, or NVRTC's (then written to the cache atomically). A cache
    /// that cannot be written is not an error: the PTX is returned anyway.
    pub fn get_or_compile(&self, family: Family, opts: &CompileOptions) -> Result<String> {
        let path = self.path(family, opts, nvrtc_version()?);
        if let Ok(ptx) = std::fs::read_to_string(&path) {
            if ptx.contains(".entry") {
                return Ok(ptx);
            }
        }
        let compiled = compile(family, opts)?;
        let _ = write_atomic(&path, compiled.ptx.as_bytes());
        Ok(compiled.ptx)
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let err = |e| Error::Cache {
        path: path.display().to_string(),
        err: e,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension(format!("ptx.{}.tmp", std::process::id()));
    std::fs::write(&tmp, data).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_changes_with_source_options_and_version() {
        let a = CompileOptions {
            arch: (9, 0),
            include_dirs: vec![],
        };
        let b = CompileOptions {
            arch: (8, 0),
            include_dirs: vec![],
        };
        let k = PtxCache::key(Family::Rope, &a, (13, 0));
        assert_eq!(k.len(), 64);
        assert_eq!(k, PtxCache::key(Family::Rope, &a, (13, 0)));
        assert_ne!(k, PtxCache::key(Family::Rope, &b, (13, 0)));
        assert_ne!(k, PtxCache::key(Family::Mlp, &a, (13, 0)));
        assert_ne!(k, PtxCache::key(Family::Rope, &a, (13, 1)));
        let p = PtxCache::new("/x").path(Family::Rope, &a, (13, 0));
        assert!(p.to_string_lossy().starts_with("/x/rope-sm_90-"));
    }

    #[test]
    fn nvrtc_args_name_the_virtual_arch_and_headers() {
        let o = CompileOptions {
            arch: (8, 0),
            include_dirs: vec![PathBuf::from("/inc")],
        };
        let args = o.nvrtc_args();
        assert_eq!(args[0], "--gpu-architecture=compute_80");
        assert!(args.contains(&"--include-path=/inc".to_string()));
        assert!(!args.iter().any(|a| a.contains("fast-math")));
    }
}
