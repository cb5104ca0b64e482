//! Training: AdamW and schedules, checkpoints that resume exactly, and the
//! SFT loop and the RL step loop (`igpo train`) built on the same pieces.

pub mod checkpoint;
pub mod config_doc;
pub mod guard;
pub mod optim;
pub mod rl;
mod run;
pub mod sft;
pub mod sft_data;
pub mod tensorboard;

pub use optim::{AdamW, OptimConfig, ScheduleConfig, ScheduleKind};
pub use rl::{run_train, RlMetrics, RlOutcome, RlRunConfig, RlRunOptions};
pub use run::{RunOptions, TrainError};
pub use sft::{run_sft, SftConfig, SftOutcome, SftRunOptions};
