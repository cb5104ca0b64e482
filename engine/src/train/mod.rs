//! Training: AdamW and schedules, checkpoints that resume exactly, and the
//! SFT loop (the RL step loop builds on the same pieces).

pub mod checkpoint;
pub mod optim;
pub mod sft;
pub mod sft_data;

pub use optim::{AdamW, OptimConfig, ScheduleConfig, ScheduleKind};
pub use sft::{run_sft, SftConfig, SftOutcome, SftRunOptions};
