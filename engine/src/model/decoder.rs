//! The decoder forward pass (Qwen2 / Llama / Qwen3) over a batch of
//! sequences, each with its own KV cache: a contiguous one per sequence
//! ([`KvCache`], `forward`; what the logit tests, `bench forward` and the
//! comparisons with the paged cache use) or a sequence of a paged cache
//! ([`crate::kv::PagedKv`], `forward_paged`; what generation and the agent
//! use).

use std::borrow::Cow;

use super::{ModelConfig, TensorMap};
use crate::backend::{AttnShape, Backend, Rope};
use crate::kv::{KvConfig, KvError, PagedKv, SeqId};

/// Indices into [`Model::params`] of one layer's tensors.
#[derive(Clone, Debug)]
pub(crate) struct LayerParams {
    pub input_norm: usize,
    pub q: usize,
    pub k: usize,
    pub v: usize,
    pub q_bias: Option<usize>,
    pub k_bias: Option<usize>,
    pub v_bias: Option<usize>,
    /// Qwen3's per-head RMSNorm weights of q and k (applied before RoPE).
    pub q_norm: Option<usize>,
    pub k_norm: Option<usize>,
    pub o: usize,
    pub post_norm: usize,
    pub gate: usize,
    pub up: usize,
    pub down: usize,
}

impl LayerParams {
    /// Every index of the layer's tensors.
    pub fn indices(&self) -> Vec<usize> {
        let fixed = [
            self.input_norm,
            self.q,
            self.k,
            self.v,
            self.o,
            self.post_norm,
            self.gate,
            self.up,
            self.down,
        ];
        let optional = [
            self.q_bias,
            self.k_bias,
            self.v_bias,
            self.q_norm,
            self.k_norm,
        ];
        fixed
            .into_iter()
            .chain(optional.into_iter().flatten())
            .collect()
    }
}

/// A decoder-only transformer on backend `B`.
///
/// Parameters live in one vector in checkpoint order
/// ([`ModelConfig::tensor_shapes`]), so gradients and optimizer state are
/// vectors of the same layout.
pub struct Model<B: Backend> {
    pub config: ModelConfig,
    pub(crate) backend: B,
    pub(crate) params: Vec<B::Tensor>,
    pub(crate) names: Vec<String>,
    pub(crate) layers: Vec<LayerParams>,
    pub(crate) embed: usize,
    pub(crate) norm: usize,
    /// Equals `embed` when the embedding doubles as the lm-head.
    pub(crate) lm_head: usize,
    pub(crate) rope: Rope,
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

/// New tokens of one sequence of a [`PagedKv`] for [`Model::forward_paged`]
/// (positions continue from the sequence's cached length).
pub struct PagedStep<'a> {
    pub tokens: &'a [u32],
    pub seq: SeqId,
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
        let shapes = config.tensor_shapes();
        let names: Vec<String> = shapes.iter().map(|(n, _)| n.clone()).collect();
        let params = names
            .iter()
            .map(|name| {
                let t = tensors
                    .remove(name)
                    .unwrap_or_else(|| panic!("weights were checked, yet `{name}` is missing"));
                backend.upload(&t)
            })
            .collect();
        let idx = |name: &str| {
            names
                .iter()
                .position(|n| n == name)
                .unwrap_or_else(|| panic!("no parameter `{name}`"))
        };
        let layers = (0..config.num_layers)
            .map(|l| {
                let p = format!("model.layers.{l}");
                let bias = config.attention_bias;
                let qk_norm = config.arch.has_qk_norm();
                LayerParams {
                    input_norm: idx(&format!("{p}.input_layernorm.weight")),
                    q: idx(&format!("{p}.self_attn.q_proj.weight")),
                    k: idx(&format!("{p}.self_attn.k_proj.weight")),
                    v: idx(&format!("{p}.self_attn.v_proj.weight")),
                    q_bias: bias.then(|| idx(&format!("{p}.self_attn.q_proj.bias"))),
                    k_bias: bias.then(|| idx(&format!("{p}.self_attn.k_proj.bias"))),
                    v_bias: bias.then(|| idx(&format!("{p}.self_attn.v_proj.bias"))),
                    q_norm: qk_norm.then(|| idx(&format!("{p}.self_attn.q_norm.weight"))),
                    k_norm: qk_norm.then(|| idx(&format!("{p}.self_attn.k_norm.weight"))),
                    o: idx(&format!("{p}.self_attn.o_proj.weight")),
                    post_norm: idx(&format!("{p}.post_attention_layernorm.weight")),
                    gate: idx(&format!("{p}.mlp.gate_proj.weight")),
                    up: idx(&format!("{p}.mlp.up_proj.weight")),
                    down: idx(&format!("{p}.mlp.down_proj.weight")),
                }
            })
            .collect();
        let embed = idx("model.embed_tokens.weight");
        let norm = idx("model.norm.weight");
        let lm_head = if config.tie_word_embeddings {
            embed
        } else {
            idx("lm_head.weight")
        };
        let rope = config.rope(0);
        Model {
            config,
            backend,
            params,
            names,
            layers,
            embed,
            norm,
            lm_head,
            rope,
        }
    }

    /// Parameter names in checkpoint order (the layout of gradients).
    pub fn param_names(&self) -> &[String] {
        &self.names
    }

    pub fn params(&self) -> &[B::Tensor] {
        &self.params
    }

    pub fn params_mut(&mut self) -> &mut [B::Tensor] {
        &mut self.params
    }

    /// Host copies of every parameter, by name (for saving).
    pub fn to_tensor_map(&self) -> TensorMap {
        self.names
            .iter()
            .zip(&self.params)
            .map(|(n, p)| (n.clone(), self.backend.download(p)))
            .collect()
    }

    /// The lm-head matrix `[vocab, hidden]` (the embedding when tied).
    pub fn lm_head(&self) -> &B::Tensor {
        &self.params[self.lm_head]
    }

    /// The RoPE tables for a forward over `positions`: the model's own,
    /// except with `dynamic` scaling past `max_position_embeddings`
    /// (see [`super::RopeScaling::Dynamic`]).
    pub(crate) fn rope_at(&self, positions: &[usize]) -> Cow<'_, Rope> {
        match &self.config.rope_scaling {
            Some(s) if s.is_dynamic() => {
                let len = positions.iter().max().map_or(0, |p| p + 1);
                Cow::Owned(self.config.rope(len))
            }
            _ => Cow::Borrowed(&self.rope),
        }
    }

    /// Qwen3's per-head RMSNorm of q or k (`norm` is `None` for the other
    /// families: `x` unchanged).
    pub(crate) fn qk_norm(&self, x: B::Tensor, norm: Option<usize>) -> B::Tensor {
        match norm {
            Some(w) => self
                .backend
                .head_rms_norm(&x, self.p(w), self.config.rms_norm_eps),
            None => x,
        }
    }

    pub(crate) fn p(&self, i: usize) -> &B::Tensor {
        &self.params[i]
    }

    pub(crate) fn attn_shape(&self) -> AttnShape {
        AttnShape {
            n_heads: self.config.num_heads,
            n_kv_heads: self.config.num_kv_heads,
            head_dim: self.config.head_dim,
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

    /// A paged KV cache for this model (see [`crate::kv`]).
    pub fn new_kv(&self, cfg: KvConfig) -> PagedKv<B> {
        let kv = self.config.num_kv_heads * self.config.head_dim;
        PagedKv::new(self.backend.clone(), self.config.num_layers, kv, cfg)
    }

    /// Runs the new tokens of every sequence through the decoder, appending
    /// their keys/values to each sequence's cache, and returns logits
    /// `[rows, vocab]` for the rows chosen by `rows`.
    ///
    /// All sequences share the GEMMs (their tokens are stacked); attention
    /// (`Backend::cached_attention`) appends each sequence's keys and values
    /// to its own cache and attends causally over it.
    pub fn forward(&self, steps: &mut [SeqStep<'_, B>], rows: LogitRows) -> B::Tensor {
        let b = &self.backend;
        let tokens: Vec<&[u32]> = steps.iter().map(|s| s.tokens).collect();
        let mut positions = Vec::new();
        for s in steps.iter() {
            match s.positions {
                Some(p) => {
                    assert_eq!(p.len(), s.tokens.len(), "forward: one position per token");
                    positions.extend_from_slice(p);
                }
                None => positions.extend(s.cache.len..s.cache.len + s.tokens.len()),
            }
        }
        let out = self.forward_with(&tokens, &positions, rows, |l, q, k, v, bounds| {
            let mut caches: Vec<_> = steps
                .iter_mut()
                .map(|s| {
                    let (kc, vc) = &mut s.cache.layers[l];
                    (kc, vc)
                })
                .collect();
            b.cached_attention(q, k, v, &mut caches, bounds, self.attn_shape())
        });
        for s in steps.iter_mut() {
            s.cache.len += s.tokens.len();
        }
        out
    }

    /// [`Model::forward`] over a paged KV cache: each step's tokens continue
    /// its sequence (positions from its cached length); their keys and
    /// values go into the sequence's blocks ([`Backend::write_kv`]) and its
    /// queries attend over its block table ([`Backend::paged_attention`]).
    /// Blocks are reserved for the whole batch first: when the cache cannot
    /// take them this is [`KvError::Exhausted`] and nothing has changed.
    pub fn forward_paged(
        &self,
        kv: &mut PagedKv<B>,
        steps: &[PagedStep<'_>],
        rows: LogitRows,
    ) -> Result<B::Tensor, KvError> {
        let b = &self.backend;
        let seqs: Vec<SeqId> = steps.iter().map(|s| s.seq).collect();
        let adds: Vec<usize> = steps.iter().map(|s| s.tokens.len()).collect();
        let mut positions = Vec::new();
        let mut key_lens = Vec::with_capacity(steps.len());
        for s in steps {
            let len = kv.len(s.seq)?;
            positions.extend(len..len + s.tokens.len());
            key_lens.push(len + s.tokens.len());
        }
        let slots: Vec<usize> = kv.reserve(&seqs, &adds)?.concat();
        let keys: Vec<Vec<usize>> = seqs
            .iter()
            .zip(&key_lens)
            .map(|(&s, &n)| kv.key_slots(s, n))
            .collect();
        let tokens: Vec<&[u32]> = steps.iter().map(|s| s.tokens).collect();
        let out = self.forward_with(&tokens, &positions, rows, |l, q, k, v, bounds| {
            let (kp, vp) = kv.pools_mut(l);
            b.write_kv(kp, vp, &slots, k, v);
            b.paged_attention(q, kp, vp, &keys, bounds, self.attn_shape())
        });
        kv.commit(&seqs, &adds);
        Ok(out)
    }

    /// The decoder over the stacked `tokens` of several sequences at
    /// `positions`; `attend(layer, q, k, v, bounds)` is each layer's
    /// attention (sequence `s` owns rows `bounds[s]`). Runs where the
    /// backend issues ops cheapest ([`Backend::in_pool`]).
    fn forward_with(
        &self,
        tokens: &[&[u32]],
        positions: &[usize],
        rows: LogitRows,
        attend: impl FnMut(usize, &B::Tensor, &B::Tensor, &B::Tensor, &[std::ops::Range<usize>]) -> B::Tensor
            + Send,
    ) -> B::Tensor {
        self.backend
            .in_pool(|| self.forward_in_place(tokens, positions, rows, attend))
    }

    fn forward_in_place(
        &self,
        tokens: &[&[u32]],
        positions: &[usize],
        rows: LogitRows,
        mut attend: impl FnMut(
            usize,
            &B::Tensor,
            &B::Tensor,
            &B::Tensor,
            &[std::ops::Range<usize>],
        ) -> B::Tensor,
    ) -> B::Tensor {
        let b = &self.backend;
        let c = &self.config;
        let mut ids = Vec::new();
        let mut bounds = Vec::with_capacity(tokens.len());
        for t in tokens {
            assert!(!t.is_empty(), "forward: a sequence with no new tokens");
            let start = ids.len();
            ids.extend_from_slice(t);
            bounds.push(start..ids.len());
        }
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= c.vocab_size) {
            panic!(
                "forward: token id {bad} is outside the vocabulary ({})",
                c.vocab_size
            );
        }
        let rope = self.rope_at(positions);
        let mut x = b.embedding(self.p(self.embed), &ids);
        for (l, layer) in self.layers.iter().enumerate() {
            let (x_out, _) = self.layer_body(layer, x, (positions, &rope), false, |q, k, v| {
                (attend(l, q, k, v, &bounds), Vec::new())
            });
            x = x_out;
        }
        let x = match rows {
            LogitRows::All => x,
            LogitRows::Last => {
                let last: Vec<usize> = bounds.iter().map(|r| r.end - 1).collect();
                b.gather_rows(&x, &last)
            }
        };
        let h = b.rms_norm(&x, self.p(self.norm), c.rms_norm_eps);
        b.linear(&h, self.lm_head(), None)
    }
}
