//! The engine's integration tests, one module per former test file, built as
//! ONE test binary: 27 binaries of ~100 MB each (the engine, wasmtime and
//! cudarc linked into every one) cost CI ~3 GB of disk and a link apiece.
//! Run one file's tests with `cargo test -p igpo --test suite sft::`.
//!
//! Tests that measure the process itself stay binaries of their own
//! (`tests/{fuzz,bench_memory,logprob_memory,plugin_soak}.rs`: a counting
//! global allocator, or the process's RSS, file descriptors and threads).
//! Modules here run in parallel with each other: each keeps its scratch
//! folders under names of its own.

mod common;
mod plugins_support;
mod rl_support;

mod chat_templates;
mod cli_bad_input;
mod cli_config;
mod cli_device;
mod cli_errors;
mod cli_logging;
mod crash_safety;
mod distributed;
mod hf_grads;
mod hf_reference;
mod intervals;
mod layering;
mod native_tool_calls;
mod paged_kv;
mod plugins;
mod plugins_cli;
mod plugins_http;
mod qa_parquet;
mod report;
mod retrieval_cli;
mod rl_smollm2;
mod rl_train;
mod rollout;
mod sft;
mod smollm2;
mod sweep;
mod tensorboard;
