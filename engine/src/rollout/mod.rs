//! Rollouts: sampling and batched generation (the multi-turn agent loop
//! will live here too).

mod generate;
pub mod sampler;

pub use generate::{generate, GenerateOptions, Generation, StopReason};
pub use sampler::SamplingParams;
