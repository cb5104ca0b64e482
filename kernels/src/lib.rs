//! `igpo-kernels`: the engine's CUDA C kernels and the Rust code that compiles
//! and launches them.
//!
//! The sources live in `src/cu/*.cu`, one file per family ([`Family`]), and are
//! embedded with `include_str!`. At start-up [`compile`] turns a family into
//! PTX with NVRTC for the device's compute capability (cached on disk by a hash
//! of source, options and NVRTC version, [`PtxCache`]); [`launch::Kernels`]
//! loads the modules into a CUDA context and offers typed launch wrappers.
//!
//! cudarc opens `libnvrtc` / `libcuda` at run time, so this crate builds and
//! links on machines without CUDA. cudarc panics when a library is missing:
//! every entry point here checks first and returns [`Error::NoNvrtc`] or
//! [`Error::NoDriver`] instead.
//!
//! Numerics: tensors are bf16 in memory, arithmetic and reductions are f32
//! (f64 where the CPU reference uses f64), master weights and gradients of
//! parameters are f32. Every kernel mirrors an op of the CPU reference
//! (`engine/src/backend/cpu`); the comment at the top of each `.cu` file says
//! which, with the formulas.

pub mod compile;
pub mod gemm;
pub mod host;
pub mod launch;

pub use compile::{compile, nvrtc_version, CompileOptions, Compiled, PtxCache};

/// Errors of this crate. Messages are meant to be shown to a user as is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("NVRTC (libnvrtc.so) is not available: {0}")]
    NoNvrtc(String),
    #[error(
        "the CUDA driver (libcuda.so.1) is not available: no NVIDIA GPU or driver on this machine"
    )]
    NoDriver,
    #[error("there is no CUDA device {ordinal}: the driver sees {count}")]
    NoDevice { ordinal: usize, count: usize },
    #[error("NVRTC failed to compile {family}.cu for {arch} ({status}):\n{log}")]
    Compile {
        family: &'static str,
        arch: String,
        status: String,
        log: String,
    },
    #[error("NVRTC: {0}")]
    Nvrtc(String),
    #[error("CUDA: {0}")]
    Cuda(String),
    #[error("{0}")]
    Invalid(String),
    #[error("PTX cache {path}: {err}")]
    Cache { path: String, err: std::io::Error },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Included before every family's source (helpers, bf16 type).
pub const COMMON: &str = include_str!("cu/common.cuh");

/// One `.cu` file: a family of kernels compiled into one module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// RMSNorm fwd/bwd, residual add, casts, scales, column sums, sum of squares.
    Norm,
    Rope,
    Attention,
    /// SwiGLU fwd/bwd.
    Mlp,
    /// Fused lm-head log-prob of chosen tokens + entropy, fwd/bwd.
    Logprob,
    /// Fused AdamW, clip factor.
    Optimizer,
    Sampling,
    Embedding,
    /// Split-K decode attention over the paged KV cache, its merge, and the
    /// row scatter of `write_kv`.
    PagedAttention,
}

impl Family {
    pub const ALL: [Family; 9] = [
        Family::Norm,
        Family::Rope,
        Family::Attention,
        Family::Mlp,
        Family::Logprob,
        Family::Optimizer,
        Family::Sampling,
        Family::Embedding,
        Family::PagedAttention,
    ];

    /// The file name without `.cu`.
    pub fn name(self) -> &'static str {
        match self {
            Family::Norm => "norm",
            Family::Rope => "rope",
            Family::Attention => "attention",
            Family::Mlp => "mlp",
            Family::Logprob => "logprob",
            Family::Optimizer => "optimizer",
            Family::Sampling => "sampling",
            Family::Embedding => "embedding",
            Family::PagedAttention => "paged_attention",
        }
    }

    /// The family's own CUDA C source.
    pub fn source(self) -> &'static str {
        match self {
            Family::Norm => include_str!("cu/norm.cu"),
            Family::Rope => include_str!("cu/rope.cu"),
            // The scalar kernels, then the tensor-core ones (which reuse the
            // scalar file's mask helpers); the second file starts with `#line`.
            Family::Attention => concat!(
                include_str!("cu/attention.cu"),
                include_str!("cu/attention_tc.cu")
            ),
            Family::Mlp => include_str!("cu/mlp.cu"),
            Family::Logprob => include_str!("cu/logprob.cu"),
            Family::Optimizer => include_str!("cu/optimizer.cu"),
            Family::Sampling => include_str!("cu/sampling.cu"),
            Family::Embedding => include_str!("cu/embedding.cu"),
            Family::PagedAttention => include_str!("cu/paged_attention.cu"),
        }
    }

    /// What NVRTC compiles: the common header, then the family's source with
    /// `#line` so errors name the right file and line.
    pub fn full_source(self) -> String {
        format!(
            "#line 1 \"common.cuh\"\n{COMMON}\n#line 1 \"{}.cu\"\n{}",
            self.name(),
            self.source()
        )
    }

    /// The `extern "C"` kernels the family defines (what [`launch::Kernels`]
    /// loads), read from the source so the list cannot drift.
    pub fn kernel_names(self) -> Vec<String> {
        kernel_names(&self.full_source())
    }
}

/// Names of `extern "C" __global__` functions in `src`. A name with `##D`
/// comes from a macro stamped out per head size: it is listed once for every
/// top-level use `MACRO(64)` of a macro in the file.
fn kernel_names(src: &str) -> Vec<String> {
    let mut plain = Vec::new();
    let mut templated = Vec::new();
    let mut args = Vec::new();
    for line in src.lines() {
        let t = line.trim();
        if t.contains("extern \"C\"") && t.contains("__global__") {
            let mut decl = t.to_string();
            if let Some(at) = decl.find("__launch_bounds__(") {
                if let Some(close) = decl[at..].find(')') {
                    decl.replace_range(at..at + close + 1, "");
                }
            }
            let after = &decl[decl.find("__global__").unwrap_or(0)..];
            if let Some(open) = after.find('(') {
                let name = after[..open].split_whitespace().last().unwrap_or("");
                if name.contains("##") {
                    templated.push(name.to_string());
                } else if !name.is_empty() {
                    plain.push(name.to_string());
                }
            }
        } else if let Some((mac, rest)) = t.split_once('(') {
            let is_macro = !mac.is_empty()
                && mac
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit());
            if let Some(arg) = rest.strip_suffix(')').filter(|a| a.parse::<u32>().is_ok()) {
                if is_macro {
                    args.push(arg.to_string());
                }
            }
        }
    }
    // Two macros stamped out for the same head sizes list each size twice.
    let mut seen = std::collections::HashSet::new();
    args.retain(|a| seen.insert(a.clone()));
    for arg in &args {
        for name in &templated {
            plain.push(name.replace("##D", arg));
        }
    }
    plain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_lists_its_kernels() {
        let attn = Family::Attention.kernel_names();
        for d in [64, 128] {
            for k in [
                "attn_fwd",
                "attn_fwd_varlen",
                "attn_bwd_dkdv",
                "attn_bwd_dq",
                "attn_decode",
                "attn_tc_fwd",
                "attn_tc_fwd_varlen",
                "attn_tc_bwd_dkdv",
                "attn_tc_bwd_dq",
            ] {
                assert!(attn.contains(&format!("{k}_d{d}")), "{k}_d{d} in {attn:?}");
            }
        }
        assert!(attn.contains(&"attn_bwd_delta".to_string()));
        assert!(attn.contains(&"kv_append".to_string()));
        let paged = Family::PagedAttention.kernel_names();
        for k in [
            "paged_attn_split_d64",
            "paged_attn_split_d128",
            "paged_attn_merge",
            "scatter_rows_bf16",
        ] {
            assert!(paged.contains(&k.to_string()), "{k} in {paged:?}");
        }
        for f in Family::ALL {
            let names = f.kernel_names();
            assert!(!names.is_empty(), "{}: no kernels found", f.name());
            let mut sorted = names.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), names.len(), "{}: duplicate names", f.name());
        }
        assert!(Family::Norm
            .kernel_names()
            .contains(&"rmsnorm_bwd_dx".to_string()));
        assert_eq!(
            Family::Sampling.kernel_names(),
            vec!["sample_rows".to_string()]
        );
    }
}
