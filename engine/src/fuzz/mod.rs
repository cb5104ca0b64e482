//! Fuzz targets and a small, dependency-free fuzz driver that runs on stable
//! Rust (no libFuzzer, no nightly sanitizers).
//!
//! Each [`Target`] is a function of a byte string that must return without
//! panicking, hanging or asking for an absurd allocation, whatever the bytes
//! are. The [`driver`] feeds it inputs drawn from a seeded RNG: random bytes,
//! and mutations of valid seed inputs (byte edits, dictionary tokens, huge
//! integers written over header fields, JSON nodes deleted or retyped), so
//! most inputs get past the first check of the format. Failures are written
//! to a file that [`driver::replay`] runs again.
//!
//! `engine/tests/fuzz.rs` runs every target for a fixed number of inputs as
//! part of `cargo test`; `cargo xtask fuzz` runs them for longer. See
//! `docs/fuzzing.md`.

pub mod alloc;
pub mod driver;
pub(crate) mod gguf_seed;
pub mod mutate;
mod targets;

pub use targets::{check_seeds, TARGETS};

use std::path::Path;

/// One fuzz target.
pub struct Target {
    pub name: &'static str,
    /// What the target feeds, one line (for `cargo xtask fuzz --list`).
    pub about: &'static str,
    /// Runs one input. `scratch` is an empty-at-start folder of the worker
    /// thread, for targets whose code reads files.
    pub run: fn(input: &[u8], scratch: &Path),
    /// Valid inputs that mutations start from.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Tokens of the format, spliced in by the mutator.
    pub dict: &'static [&'static str],
    /// A structure-aware mutation (returns false when it does not apply).
    pub structured: Option<fn(&mut mutate::Mutator, &mut Vec<u8>) -> bool>,
    /// Generated inputs are cut to this many bytes.
    pub max_len: usize,
}

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
