//! Rollouts: sampling, batched generation and the multi-turn agent loop.

pub mod agent;
mod decode;
mod generate;
mod prefix;
pub mod protocol;
pub mod sampler;

pub use agent::{
    agent_system_prompt, run_agent, tool_turn, AgentConfig, RolloutError, RolloutStats, Segment,
    SpanKind, Task, Trajectory, TurnMeta,
};
pub use generate::{generate, stop_tokens, GenerateOptions, Generation, StopReason};
pub use sampler::SamplingParams;
