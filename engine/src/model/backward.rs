//! Training passes: a forward that keeps what the backward needs, and the
//! explicit backward of every layer (llm.c style, no autograd).
//!
//! The final normed hidden states are the boundary: the caller turns them
//! into a loss with the fused log-prob op ([`Model::token_logprobs`]) and
//! hands back their gradient.

use super::decoder::LayerParams;
use super::Model;
use crate::backend::{AttnMask, Backend, LogProbs, Rope};

/// One sequence of a training batch. Sequences are packed for the GEMMs;
/// attention runs per sequence under its own mask (causal for plain
/// sequences, a segment mask for packed ground-truth probes).
#[derive(Clone, Debug)]
pub struct TrainSeq<'a> {
    pub tokens: &'a [u32],
    pub positions: &'a [usize],
    pub mask: AttnMask,
}

impl<'a> TrainSeq<'a> {
    /// A plain causal sequence at positions `positions` (usually `0..len`).
    pub fn causal(tokens: &'a [u32], positions: &'a [usize]) -> TrainSeq<'a> {
        TrainSeq {
            tokens,
            positions,
            mask: AttnMask::Causal { offset: 0 },
        }
    }
}

pub(crate) struct LayerActs<T> {
    x_in: T,
    h1: T,
    /// q and k before Qwen3's per-head norm (`None` without one).
    q_raw: Option<T>,
    k_raw: Option<T>,
    q: T,
    k: T,
    v: T,
    attn: T,
    lse: Vec<T>,
    x_mid: T,
    h2: T,
    gate: T,
    up: T,
    act: T,
}

/// What a layer kept: everything, or only its input (recomputed in backward).
enum Saved<T> {
    Full(Box<LayerActs<T>>),
    Input(T),
}

/// What one training forward kept for its backward.
pub struct Activations<B: Backend> {
    ids: Vec<u32>,
    positions: Vec<usize>,
    bounds: Vec<std::ops::Range<usize>>,
    masks: Vec<AttnMask>,
    layers: Vec<Saved<B::Tensor>>,
    x_final: B::Tensor,
    /// The final normed hidden states `[tokens, hidden]`.
    pub hidden: B::Tensor,
}

/// What [`Model::backward_handing_over`] calls with each group of
/// parameter indices whose gradients (the slice) it is done with.
pub type HandOver<'a, T> = dyn FnMut(&[usize], &mut [T]) + 'a;

/// Two distinct mutable elements of a slice.
fn two_mut<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    assert_ne!(a, b);
    if a < b {
        let (l, r) = v.split_at_mut(b);
        (&mut l[a], &mut r[0])
    } else {
        let (l, r) = v.split_at_mut(a);
        (&mut r[0], &mut l[b])
    }
}

impl<B: Backend> Model<B> {
    /// Zero gradients, one per parameter, same layout as [`Model::params`].
    pub fn zero_grads(&self) -> Vec<B::Tensor> {
        self.params
            .iter()
            .map(|p| self.backend.zeros(self.backend.shape(p)))
            .collect()
    }

    /// Gradients not allocated yet, one per parameter: the backward
    /// allocates each (zeros) when it first adds into it. With ZeRO-2's
    /// buckets, which free each gradient once it is sent, a rank's only
    /// backward of a step then never holds every gradient at once.
    pub fn empty_grads(&self) -> Vec<B::Tensor> {
        self.params
            .iter()
            .map(|_| self.backend.zeros(&[0]))
            .collect()
    }

    /// Allocates (zeros) the gradients `indices` still empty
    /// ([`Model::empty_grads`]).
    fn allocate_grads(&self, indices: &[usize], grads: &mut [B::Tensor]) {
        let b = &self.backend;
        for &i in indices {
            if b.shape(&grads[i]) != b.shape(&self.params[i]) {
                grads[i] = b.zeros(b.shape(&self.params[i]));
            }
        }
    }

    /// Training forward over packed sequences; returns the activations, whose
    /// `hidden` field holds the final normed hidden states.
    pub fn forward_train(&self, seqs: &[TrainSeq<'_>]) -> Activations<B> {
        self.forward_train_with(seqs, false)
    }

    /// [`Model::forward_train`]; with `recompute` only each layer's input is
    /// kept and the layer's activations are recomputed during the backward
    /// (about one extra forward of compute for a fraction of the memory).
    pub fn forward_train_with(&self, seqs: &[TrainSeq<'_>], recompute: bool) -> Activations<B> {
        let b = &self.backend;
        let c = &self.config;
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut bounds = Vec::new();
        for s in seqs {
            assert_eq!(
                s.tokens.len(),
                s.positions.len(),
                "forward_train: one position per token"
            );
            assert!(!s.tokens.is_empty(), "forward_train: empty sequence");
            let start = ids.len();
            ids.extend_from_slice(s.tokens);
            positions.extend_from_slice(s.positions);
            bounds.push(start..ids.len());
        }
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= c.vocab_size) {
            panic!(
                "forward_train: token id {bad} is outside the vocabulary ({})",
                c.vocab_size
            );
        }
        let masks: Vec<AttnMask> = seqs.iter().map(|s| s.mask.clone()).collect();
        let rope = self.rope_at(&positions);
        let mut x = b.embedding(self.p(self.embed), &ids);
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let (acts, x_out) = self.layer_forward(layer, x, &positions, &rope, &bounds, &masks);
            x = x_out;
            layers.push(if recompute {
                Saved::Input(acts.x_in)
            } else {
                Saved::Full(Box::new(acts))
            });
        }
        let hidden = b.rms_norm(&x, self.p(self.norm), c.rms_norm_eps);
        Activations {
            ids,
            positions,
            bounds,
            masks,
            layers,
            x_final: x,
            hidden,
        }
    }

    /// One decoder layer, keeping everything its backward needs: attention
    /// per sequence under its mask.
    fn layer_forward(
        &self,
        layer: &LayerParams,
        x: B::Tensor,
        positions: &[usize],
        rope: &Rope,
        bounds: &[std::ops::Range<usize>],
        masks: &[AttnMask],
    ) -> (LayerActs<B::Tensor>, B::Tensor) {
        let b = &self.backend;
        let shape = self.attn_shape();
        let (x_out, acts) = self.layer_body(layer, x, (positions, rope), true, |q, k, v| {
            let mut outs = Vec::with_capacity(bounds.len());
            let mut lse = Vec::with_capacity(bounds.len());
            for (mask, r) in masks.iter().zip(bounds) {
                let (o, l) = b.attention_train(
                    &b.slice_rows(q, r.clone()),
                    &b.slice_rows(k, r.clone()),
                    &b.slice_rows(v, r.clone()),
                    shape,
                    mask,
                );
                outs.push(o);
                lse.push(l);
            }
            (b.concat_rows(&outs), lse)
        });
        (acts.expect("kept"), x_out)
    }

    /// One decoder layer's forward, the one body inference
    /// ([`Model::forward`], over a KV cache) and training share: RMSNorm,
    /// q/k/v (with biases), Qwen3's per-head q/k norm, RoPE at `positions`,
    /// `attend(q, k, v)` -> the attention output and what its backward needs
    /// (the log-sum-exps; nothing at inference), the o-projection and its
    /// residual, RMSNorm, the SwiGLU MLP and its residual. Returns the
    /// layer's output and, with `keep`, its activations for the backward.
    pub(crate) fn layer_body(
        &self,
        layer: &LayerParams,
        x: B::Tensor,
        (positions, rope): (&[usize], &Rope),
        keep: bool,
        attend: impl FnOnce(&B::Tensor, &B::Tensor, &B::Tensor) -> (B::Tensor, Vec<B::Tensor>),
    ) -> (B::Tensor, Option<LayerActs<B::Tensor>>) {
        let b = &self.backend;
        let eps = self.config.rms_norm_eps;
        let bias = |i: Option<usize>| i.map(|i| self.p(i));
        let h1 = b.rms_norm(&x, self.p(layer.input_norm), eps);
        let q = b.linear(&h1, self.p(layer.q), bias(layer.q_bias));
        let k = b.linear(&h1, self.p(layer.k), bias(layer.k_bias));
        let v = b.linear(&h1, self.p(layer.v), bias(layer.v_bias));
        let q_raw = layer.q_norm.filter(|_| keep).map(|_| q.clone());
        let k_raw = layer.k_norm.filter(|_| keep).map(|_| k.clone());
        let mut q = self.qk_norm(q, layer.q_norm);
        let mut k = self.qk_norm(k, layer.k_norm);
        b.rope(&mut q, positions, rope);
        b.rope(&mut k, positions, rope);
        let (attn, lse) = attend(&q, &k, &v);
        // o + x: the same bits as x + o (addition commutes exactly).
        let mut x_mid = b.linear(&attn, self.p(layer.o), None);
        b.add_assign(&mut x_mid, &x);
        let h2 = b.rms_norm(&x_mid, self.p(layer.post_norm), eps);
        let gate = b.linear(&h2, self.p(layer.gate), None);
        let up = b.linear(&h2, self.p(layer.up), None);
        let act = b.swiglu(&gate, &up);
        let mut x_out = b.linear(&act, self.p(layer.down), None);
        b.add_assign(&mut x_out, &x_mid);
        let acts = keep.then(|| LayerActs {
            x_in: x,
            h1,
            q_raw,
            k_raw,
            q,
            k,
            v,
            attn,
            lse,
            x_mid,
            h2,
            gate,
            up,
            act,
        });
        (x_out, acts)
    }

    /// Backward from `d_hidden` (gradient of the final normed hidden states)
    /// to every parameter; adds into `grads` (layout of [`Model::params`]).
    pub fn backward(&self, acts: &Activations<B>, d_hidden: &B::Tensor, grads: &mut [B::Tensor]) {
        self.backward_handing_over(acts, d_hidden, grads, &mut |_, _| {});
    }

    /// The groups of parameters in the order [`Model::backward`] finishes
    /// their gradients: the final norm (and an untied lm-head, whose
    /// gradient [`Model::token_logprobs_backward`] made before), each layer
    /// from the last to the first, the embedding. Each parameter once.
    pub fn grad_ready_order(&self) -> Vec<Vec<usize>> {
        let mut first = vec![self.norm];
        if self.lm_head != self.embed {
            first.push(self.lm_head);
        }
        let mut order = vec![first];
        order.extend(self.layers.iter().rev().map(LayerParams::indices));
        order.push(vec![self.embed]);
        order
    }

    /// [`Model::backward`], calling `ready` with each group of
    /// [`Model::grad_ready_order`] as soon as the backward is done with its
    /// gradients (so a data-parallel step sums them while the rest runs:
    /// `dist::buckets`).
    pub fn backward_handing_over(
        &self,
        acts: &Activations<B>,
        d_hidden: &B::Tensor,
        grads: &mut [B::Tensor],
        ready: &mut HandOver<'_, B::Tensor>,
    ) {
        let b = &self.backend;
        let eps = self.config.rms_norm_eps;
        let shape = self.attn_shape();
        let rope = self.rope_at(&acts.positions);
        assert_eq!(
            grads.len(),
            self.params.len(),
            "backward: one gradient per parameter"
        );
        let mut order = self.grad_ready_order().into_iter();
        let first = order.next().expect("the final norm's group");
        self.allocate_grads(&first, grads);
        let mut dx = b.rms_norm_backward(
            &acts.x_final,
            self.p(self.norm),
            d_hidden,
            eps,
            &mut grads[self.norm],
        );
        ready(&first, grads);
        for (layer, saved) in self.layers.iter().zip(&acts.layers).rev() {
            let group = order.next().expect("a group per layer");
            self.allocate_grads(&group, grads);
            let recomputed;
            let a = match saved {
                Saved::Full(a) => a.as_ref(),
                Saved::Input(x_in) => {
                    recomputed = self
                        .layer_forward(
                            layer,
                            x_in.clone(),
                            &acts.positions,
                            &rope,
                            &acts.bounds,
                            &acts.masks,
                        )
                        .0;
                    &recomputed
                }
            };
            // MLP: x_out = x_mid + down(swiglu(gate(h2), up(h2))), h2 = norm(x_mid)
            let d_act = b.linear_backward(
                &a.act,
                self.p(layer.down),
                &dx,
                &mut grads[layer.down],
                None,
            );
            let (d_gate, d_up) = b.swiglu_backward(&a.gate, &a.up, &d_act);
            let mut dh2 = b.linear_backward(
                &a.h2,
                self.p(layer.gate),
                &d_gate,
                &mut grads[layer.gate],
                None,
            );
            b.add_assign(
                &mut dh2,
                &b.linear_backward(&a.h2, self.p(layer.up), &d_up, &mut grads[layer.up], None),
            );
            let d_norm2 = b.rms_norm_backward(
                &a.x_mid,
                self.p(layer.post_norm),
                &dh2,
                eps,
                &mut grads[layer.post_norm],
            );
            b.add_assign(&mut dx, &d_norm2);
            // Attention: x_mid = x_in + o(attn(q, k, v)), q/k/v from h1 = norm(x_in)
            let d_attn =
                b.linear_backward(&a.attn, self.p(layer.o), &dx, &mut grads[layer.o], None);
            let (mut dqs, mut dks, mut dvs) = (vec![], vec![], vec![]);
            for (i, r) in acts.bounds.iter().enumerate() {
                let (dq, dk, dv) = b.attention_backward(
                    (
                        &b.slice_rows(&a.q, r.clone()),
                        &b.slice_rows(&a.k, r.clone()),
                        &b.slice_rows(&a.v, r.clone()),
                    ),
                    (&b.slice_rows(&a.attn, r.clone()), &a.lse[i]),
                    &b.slice_rows(&d_attn, r.clone()),
                    shape,
                    &acts.masks[i],
                );
                dqs.push(dq);
                dks.push(dk);
                dvs.push(dv);
            }
            let (mut dq, mut dk, dv) = (
                b.concat_rows(&dqs),
                b.concat_rows(&dks),
                b.concat_rows(&dvs),
            );
            b.rope_backward(&mut dq, &acts.positions, &rope);
            b.rope_backward(&mut dk, &acts.positions, &rope);
            let dq = self.qk_norm_backward(a.q_raw.as_ref(), layer.q_norm, dq, grads);
            let dk = self.qk_norm_backward(a.k_raw.as_ref(), layer.k_norm, dk, grads);
            let mut dh1 = self.linear_bwd(&a.h1, layer.q, layer.q_bias, &dq, grads);
            b.add_assign(
                &mut dh1,
                &self.linear_bwd(&a.h1, layer.k, layer.k_bias, &dk, grads),
            );
            b.add_assign(
                &mut dh1,
                &self.linear_bwd(&a.h1, layer.v, layer.v_bias, &dv, grads),
            );
            let d_norm1 = b.rms_norm_backward(
                &a.x_in,
                self.p(layer.input_norm),
                &dh1,
                eps,
                &mut grads[layer.input_norm],
            );
            b.add_assign(&mut dx, &d_norm1);
            ready(&group, grads);
        }
        let last = order.next().expect("the embedding's group");
        self.allocate_grads(&last, grads);
        b.embedding_backward(&acts.ids, &dx, &mut grads[self.embed]);
        ready(&last, grads);
    }

    /// Backward of [`Model::qk_norm`]: `dy` itself without a norm.
    fn qk_norm_backward(
        &self,
        raw: Option<&B::Tensor>,
        norm: Option<usize>,
        dy: B::Tensor,
        grads: &mut [B::Tensor],
    ) -> B::Tensor {
        match (raw, norm) {
            (Some(x), Some(w)) => self.backend.head_rms_norm_backward(
                x,
                self.p(w),
                &dy,
                self.config.rms_norm_eps,
                &mut grads[w],
            ),
            _ => dy,
        }
    }

    fn linear_bwd(
        &self,
        x: &B::Tensor,
        w: usize,
        bias: Option<usize>,
        dy: &B::Tensor,
        grads: &mut [B::Tensor],
    ) -> B::Tensor {
        match bias {
            Some(bi) => {
                let (dw, db) = two_mut(grads, w, bi);
                self.backend.linear_backward(x, self.p(w), dy, dw, Some(db))
            }
            None => self
                .backend
                .linear_backward(x, self.p(w), dy, &mut grads[w], None),
        }
    }

    /// Fused `log p(target)` of every row of `hidden` through the lm-head.
    pub fn token_logprobs(
        &self,
        hidden: &B::Tensor,
        targets: &[u32],
        chunk: usize,
        entropy: bool,
    ) -> LogProbs<B::Tensor> {
        self.backend
            .token_logprobs(hidden, self.lm_head(), targets, chunk, entropy)
    }

    /// Backward of [`Model::token_logprobs`]: returns `d_hidden` and adds the
    /// lm-head gradient (the embedding's, when tied) into `grads`.
    pub fn token_logprobs_backward(
        &self,
        hidden: &B::Tensor,
        targets: &[u32],
        out: &LogProbs<B::Tensor>,
        (dlogp, dentropy): (&B::Tensor, Option<&B::Tensor>),
        chunk: usize,
        grads: &mut [B::Tensor],
    ) -> B::Tensor {
        self.allocate_grads(&[self.lm_head], grads);
        self.backend.token_logprobs_backward(
            (hidden, self.lm_head()),
            targets,
            out,
            (dlogp, dentropy),
            chunk,
            &mut grads[self.lm_head],
        )
    }
}
