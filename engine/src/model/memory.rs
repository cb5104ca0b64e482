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
}
