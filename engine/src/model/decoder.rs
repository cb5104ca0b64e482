//! The decoder forward pass (Qwen2 / Llama) over a batch of sequences, each
//! with its own KV cache.

use super::{Arch, ModelConfig, TensorMap};
use crate::backend::{AttnMask, AttnShape, Backend, Rope};

struct Layer<T> {
    input_norm: T,
    q: T,
    k: T,
    v: T,
    q_bias: Option<T>,
    k_bias: Option<T>,
    v_bias: Option<T>,
    o: T,
    post_norm: T,
    gate: T,
    up: T,
    down: T,
}

/// A decoder-only transformer on backend `B`.
pub struct Model<B: Backend> {
    pub config: ModelConfig,
    backend: B,
    embed: B::Tensor,
    layers: Vec<Layer<B::Tensor>>,
    norm: B::Tensor,
    /// `None` when the embedding doubles as the lm-head.
    lm_head: Option<B::Tensor>,
    rope: Rope,
}

/// Keys and values of every layer for one sequence, oldest position first.
pub struct KvCache<B: Backend> {
    layers: Vec<(B::Tensor, B::Tensor)>,
    len: usize,
}

impl<B: Backend> KvCache<B> {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// New tokens of one sequence for one forward call.
pub struct SeqStep<'a, B: Backend> {
    pub tokens: &'a [u32],
    /// Position id of each token; `None` continues from the cache length.
    pub positions: Option<&'a [usize]>,
    pub cache: &'a mut KvCache<B>,
}

/// Which rows of the output get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// Every new token of every sequence, in order.
    All,
    /// The last new token of each sequence (generation).
    Last,
}

impl<B: Backend> Model<B> {
    /// Uploads host weights (names and shapes already checked by the loader).
    pub fn from_tensors(config: ModelConfig, mut tensors: TensorMap, backend: B) -> Model<B> {
        let mut take = |name: &str| {
            let t = tensors
                .remove(name)
                .unwrap_or_else(|| panic!("weights were checked, yet `{name}` is missing"));
            backend.upload(&t)
        };
        let layers = (0..config.num_layers)
            .map(|l| {
                let p = format!("model.layers.{l}");
                let bias = config.attention_bias;
                Layer {
                    input_norm: take(&format!("{p}.input_layernorm.weight")),
                    q: take(&format!("{p}.self_attn.q_proj.weight")),
                    k: take(&format!("{p}.self_attn.k_proj.weight")),
                    v: take(&format!("{p}.self_attn.v_proj.weight")),
                    q_bias: bias.then(|| take(&format!("{p}.self_attn.q_proj.bias"))),
                    k_bias: bias.then(|| take(&format!("{p}.self_attn.k_proj.bias"))),
                    v_bias: bias.then(|| take(&format!("{p}.self_attn.v_proj.bias"))),
                    o: take(&format!("{p}.self_attn.o_proj.weight")),
                    post_norm: take(&format!("{p}.post_attention_layernorm.weight")),
                    gate: take(&format!("{p}.mlp.gate_proj.weight")),
                    up: take(&format!("{p}.mlp.up_proj.weight")),
                    down: take(&format!("{p}.mlp.down_proj.weight")),
                }
            })
            .collect();
        let embed = take("model.embed_tokens.weight");
        let norm = take("model.norm.weight");
        let lm_head = (!config.tie_word_embeddings).then(|| take("lm_head.weight"));
        let rope = Rope::new(config.head_dim, config.rope_theta);
        debug_assert!(matches!(config.arch, Arch::Qwen2 | Arch::Llama));
        Model {
            config,
            backend,
            embed,
            layers,
            norm,
            lm_head,
            rope,
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn new_cache(&self) -> KvCache<B> {
        let kv = self.config.num_kv_heads * self.config.head_dim;
        KvCache {
            layers: (0..self.config.num_layers)
                .map(|_| (self.backend.empty_rows(kv), self.backend.empty_rows(kv)))
                .collect(),
            len: 0,
        }
    }

    /// Runs the new tokens of every sequence through the decoder, appending
    /// their keys/values to each sequence's cache, and returns logits
    /// `[rows, vocab]` for the rows chosen by `rows`.
    ///
    /// All sequences share the GEMMs (their tokens are stacked); attention
    /// runs per sequence over its own cache with a causal mask.
    pub fn forward(&self, steps: &mut [SeqStep<'_, B>], rows: LogitRows) -> B::Tensor {
        let b = &self.backend;
        let c = &self.config;
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut bounds = Vec::with_capacity(steps.len());
        for s in steps.iter() {
            assert!(
                !s.tokens.is_empty(),
                "forward: a sequence with no new tokens"
            );
            let start = ids.len();
            ids.extend_from_slice(s.tokens);
            match s.positions {
                Some(p) => {
                    assert_eq!(p.len(), s.tokens.len(), "forward: one position per token");
                    positions.extend_from_slice(p);
                }
                None => positions.extend(s.cache.len..s.cache.len + s.tokens.len()),
            }
            bounds.push(start..ids.len());
        }
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= c.vocab_size) {
            panic!(
                "forward: token id {bad} is outside the vocabulary ({})",
                c.vocab_size
            );
        }
        let shape = AttnShape {
            n_heads: c.num_heads,
            n_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        };
        let mut x = b.embedding(&self.embed, &ids);
        for (l, layer) in self.layers.iter().enumerate() {
            let h = b.rms_norm(&x, &layer.input_norm, c.rms_norm_eps);
            let mut q = b.linear(&h, &layer.q, layer.q_bias.as_ref());
            let mut k = b.linear(&h, &layer.k, layer.k_bias.as_ref());
            let v = b.linear(&h, &layer.v, layer.v_bias.as_ref());
            b.rope(&mut q, &positions, &self.rope);
            b.rope(&mut k, &positions, &self.rope);
            let mut outs = Vec::with_capacity(steps.len());
            for (s, range) in steps.iter_mut().zip(&bounds) {
                let (kc, vc) = &mut s.cache.layers[l];
                let offset = s.cache.len;
                b.append_rows(kc, &b.slice_rows(&k, range.clone()));
                b.append_rows(vc, &b.slice_rows(&v, range.clone()));
                let qs = b.slice_rows(&q, range.clone());
                outs.push(b.attention(&qs, kc, vc, shape, &AttnMask::Causal { offset }));
            }
            let attn = if outs.len() == 1 {
                outs.pop().unwrap()
            } else {
                b.concat_rows(&outs)
            };
            let o = b.linear(&attn, &layer.o, None);
            b.add_assign(&mut x, &o);
            let h = b.rms_norm(&x, &layer.post_norm, c.rms_norm_eps);
            let gate = b.linear(&h, &layer.gate, None);
            let up = b.linear(&h, &layer.up, None);
            let mlp = b.linear(&b.swiglu(&gate, &up), &layer.down, None);
            b.add_assign(&mut x, &mlp);
        }
        for (s, range) in steps.iter_mut().zip(&bounds) {
            s.cache.len += range.len();
        }
        let x = match rows {
            LogitRows::All => x,
            LogitRows::Last => {
                let last: Vec<usize> = bounds.iter().map(|r| r.end - 1).collect();
                b.gather_rows(&x, &last)
            }
        };
        let h = b.rms_norm(&x, &self.norm, c.rms_norm_eps);
        b.linear(&h, self.lm_head.as_ref().unwrap_or(&self.embed), None)
    }
}
