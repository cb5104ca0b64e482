//! IGPO Engine library. See ARCHITECTURE.md for the map.
pub mod backend;
pub mod bench;
pub mod cli;
pub mod data;
pub mod dist;
pub mod eval;
pub mod fsutil;
/// Fuzz targets and driver (engine/tests/fuzz.rs, `cargo xtask fuzz`).
#[doc(hidden)]
pub mod fuzz;
pub mod kv;
pub mod model;
pub mod plugins;
pub mod report;
pub mod rl;
pub mod rng;
pub mod rollout;
pub mod runfile;
pub mod sweep;
pub mod tasks;
pub mod tensor;
pub mod tokenizer;
pub mod train;
