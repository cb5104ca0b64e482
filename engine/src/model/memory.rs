//! What a model needs in memory, from its config alone: the estimates
//! `igpo model inspect` prints and the training-fit check compares with a
//! device's free memory.

use super::ModelConfig;
use crate::backend::Device;
use crate::tensor::DType;

/// Bytes a model needs where it runs (activations not included).
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryEstimate {
    pub parameters: u64,
    /// The weights on disk at their stored dtype.
    pub disk_bytes: u64,
    /// Inference on the CPU: f32 weights and the GEMM's packed copy, plus
    /// the bf16 panels decode streams when the checkpoint is bf16.
    pub inference_cpu_bytes: u64,
    /// Inference on a GPU: bf16 weights.
    pub inference_gpu_bytes: u64,
    /// Keys and values cached per token, over every layer.
    pub kv_values_per_token: usize,
    /// Training state on the CPU (see [`Device::training_bytes_per_param`]).
    pub training_cpu_bytes: u64,
    /// Training state on a GPU.
    pub training_gpu_bytes: u64,
}

impl MemoryEstimate {
    pub fn new(c: &ModelConfig, stored: DType) -> MemoryEstimate {
        let n = c.num_parameters();
        MemoryEstimate {
            parameters: n,
            disk_bytes: n * stored.size_of() as u64,
            inference_cpu_bytes: n * if stored == DType::BF16 { 10 } else { 8 },
            inference_gpu_bytes: n * 2,
            kv_values_per_token: 2 * c.num_layers * c.num_kv_heads * c.head_dim,
            training_cpu_bytes: n * Device::Cpu.training_bytes_per_param(),
            training_gpu_bytes: n * Device::Cuda(0).training_bytes_per_param(),
        }
    }

    /// The training state's bytes on `device`.
    pub fn training_bytes(&self, device: &Device) -> u64 {
        self.parameters * device.training_bytes_per_param()
    }
}

/// AdamW's first and second moments: the part of the training state
/// ZeRO-1 shards (f32 each).
pub const MOMENT_BYTES_PER_PARAM: u64 = 8;

/// A parameter's gradient (f32 on every backend): the part of the
/// training state ZeRO-2 shards.
pub const GRADIENT_BYTES_PER_PARAM: u64 = 4;

/// The training state of one data-parallel rank.
#[derive(Clone, Debug, PartialEq)]
pub struct RankMemory {
    pub ranks: usize,
    /// Values in the largest rank's share (`dist::partition_rows` over the
    /// parameters' rows, as the trainer shards them).
    pub largest_share: u64,
    /// Every rank keeps the whole state (`optim.zero_stage = 0`).
    pub replicated_bytes: u64,
    /// AdamW moments sharded (`optim.zero_stage = 1`): the largest rank's.
    pub zero1_bytes: u64,
    /// The gradients too (`optim.zero_stage = 2`) when a rank's step is one
    /// backward (one micro-batch a rank): the summed gradients of its rows,
    /// plus those live during its backward (`dist::buckets`): two layers'
    /// (one being computed, one in its bucket's buffer) and the
    /// embedding's when tied (the lm-head starts it), else the larger of
    /// two layers' and the untied embedding's with one layer's (it comes
    /// last). More micro-batches a rank hold every gradient (stage 1's
    /// bytes).
    pub zero2_bytes: u64,
}

impl RankMemory {
    /// The state per rank on `device` when `ranks` train `c` together.
    pub fn new(c: &ModelConfig, device: &Device, ranks: usize) -> RankMemory {
        let shapes: Vec<(usize, usize)> = c
            .tensor_shapes()
            .iter()
            .map(|(_, s)| match s[..] {
                [rows, ref rest @ ..] if !rest.is_empty() => (rows, rest.iter().product()),
                _ => (1, s.iter().product()),
            })
            .collect();
        let parts = crate::dist::partition_rows(&shapes, ranks.max(1));
        let largest_share = (0..ranks.max(1))
            .map(|r| {
                parts
                    .iter()
                    .zip(&shapes)
                    .map(|(p, &(_, cols))| (p[r].len() * cols) as u64)
                    .sum::<u64>()
            })
            .max()
            .unwrap_or(0);
        let n = c.num_parameters();
        let per_param = device.training_bytes_per_param();
        let zero1_bytes =
            n * (per_param - MOMENT_BYTES_PER_PARAM) + largest_share * MOMENT_BYTES_PER_PARAM;
        let numel = |s: &Vec<usize>| s.iter().product::<usize>() as u64;
        let layer: u64 = c
            .tensor_shapes()
            .iter()
            .filter(|(name, _)| name.starts_with("model.layers.0."))
            .map(|(_, s)| numel(s))
            .sum();
        let embedding = (c.vocab_size * c.hidden_size) as u64;
        let live = match c.tie_word_embeddings {
            true => embedding + 2 * layer,
            // The lm-head's goes with the first bucket; the embedding's
            // comes last, beside the bucket of the first layer.
            false => (embedding + layer).max(2 * layer),
        };
        let grad = GRADIENT_BYTES_PER_PARAM;
        RankMemory {
            ranks,
            largest_share,
            replicated_bytes: n * per_param,
            zero1_bytes,
            zero2_bytes: zero1_bytes - n * grad + (largest_share + live).min(n) * grad,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::{preset, Dims};
    use crate::model::Arch;

    #[test]
    fn qwen2_5_0_5b_needs_what_its_shape_says() {
        let c = preset("qwen2.5-0.5b").unwrap();
        let m = MemoryEstimate::new(&c, DType::BF16);
        // Qwen2.5-0.5B's published parameter count (tied embeddings).
        assert_eq!(m.parameters, 494_032_768);
        assert_eq!(m.disk_bytes, 2 * m.parameters);
        // 24 layers x 2 KV heads x 64 dims, keys and values.
        assert_eq!(m.kv_values_per_token, 2 * 24 * 2 * 64);
        assert_eq!(m.training_bytes(&Device::Cpu), m.training_cpu_bytes);
        assert_eq!(m.training_bytes(&Device::Cuda(3)), m.training_gpu_bytes);
        assert!(m.training_gpu_bytes < m.training_cpu_bytes);
    }

    #[test]
    fn from_dims_rejects_heads_that_do_not_split() {
        let d = Dims {
            vocab: 100,
            hidden: 64,
            intermediate: 128,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            tied: true,
        };
        let c = ModelConfig::from_dims(Arch::Qwen3, d).unwrap();
        assert_eq!((c.head_dim, c.attention_bias), (16, false));
        assert!(ModelConfig::from_dims(Arch::Llama, Dims { heads: 3, ..d }).is_err());
        assert!(ModelConfig::from_dims(Arch::Llama, Dims { kv_heads: 3, ..d }).is_err());
        assert!(ModelConfig::from_dims(Arch::Llama, Dims { hidden: 36, ..d }).is_err());
    }

    #[test]
    fn zero_1_divides_the_moments_over_the_ranks() {
        let c = preset("qwen2.5-0.5b").unwrap();
        let n = c.num_parameters();
        let one = RankMemory::new(&c, &Device::Cuda(0), 1);
        assert_eq!(one.largest_share, n);
        assert_eq!(one.zero1_bytes, one.replicated_bytes);
        let eight = RankMemory::new(&c, &Device::Cuda(0), 8);
        assert_eq!(eight.replicated_bytes, one.replicated_bytes);
        // Shares are cut at row boundaries: n / 8 within a row (the MLP's
        // down projection has the longest, 4864 values).
        assert!(eight.largest_share.abs_diff(n / 8) <= 4864, "{eight:?}");
        assert_eq!(
            one.zero1_bytes - eight.zero1_bytes,
            (n - eight.largest_share) * MOMENT_BYTES_PER_PARAM
        );
        // ZeRO-2: one rank holds every gradient anyway; eight hold their
        // rows' sums, the tied embedding's (136 M values) and two
        // layers' (14.9 M values each) during the backward.
        assert_eq!(one.zero2_bytes, one.zero1_bytes);
        let live = 151_936 * 896 + 2 * 14_912_384;
        assert_eq!(
            eight.zero1_bytes - eight.zero2_bytes,
            (n - eight.largest_share - live) * GRADIENT_BYTES_PER_PARAM
        );
    }
}
