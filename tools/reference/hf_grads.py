#!/usr/bin/env python3
"""Reference gradients from PyTorch autograd on the tiny models of hf_logits.py.

Produces tests/fixtures/hf/<model>-grads.json for tiny-qwen2, tiny-llama and (see GRAD_MODELS) the
RoPE-scaling and Qwen3 models of hf_logits.py, which
the Rust engine's backward-pass tests compare against. The models, configs and weights are exactly
those of hf_logits.py (imported from it: same closed-form WEIGHTS_RULE, eager attention); the float32
rule weights are then converted to float64 (`model.double()`), so the gradients are exact (to f64
rounding) for those f32 weights.

Batch: the 4 prompts of hf_logits.py, token ids taken from the committed logits fixture rows
single_1..single_4, each run as its own sequence (batch size 1, no padding, positions 0..L-1),
per-sequence causal attention.

Variants (two separate backward passes, grads zeroed in between):
  token_mean          L  = (1/N)  * sum_s sum_{t=0..len_s-2} -log softmax(logits_s[t])[ids_s[t+1]]
  token_mean_from_t2  L' = (1/N') * same sum restricted to positions t >= 2 (a loss mask)
N / N' = number of predicted positions counted.

Per parameter (HF names; with tied embeddings only model.embed_tokens.weight, which receives both the
input-embedding and the lm-head contributions) it records the gradient's L2 norm, max |g| and the
values at flat indices (k * 1000003 + 17) % numel, k = 0..15. For model.embed_tokens.weight it also
records `input_row_indices/values`: 16 entries inside rows of tokens that occur in the inputs (for an
untied model the sampled indices above almost all land on rows with zero gradient).

Self-check: central finite differences on 3 scalar parameters (float64) vs autograd, 1e-6 relative.

Usage:
    python tools/reference/hf_grads.py --fixtures tests/fixtures/hf --out tests/fixtures/hf
"""

import argparse
import json
import os
import sys

import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama import modeling_llama
from transformers.models.qwen2 import modeling_qwen2
from transformers.models.qwen3 import modeling_qwen3

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_logits  # noqa: E402  (build_models, fill_weights, WEIGHTS_RULE)

GENERATOR = "tools/reference/hf_grads.py"
N_SAMPLES = 16
FD_REL_TOL = 1e-6
LOSS_DEFINITION = (
    "L = (1/N) * sum over sequences s, positions t in [t0, len_s-2] of -log softmax(logits_s[t])[ids_s[t+1]], "
    "N = number of such (s,t); each sequence run alone (positions 0..len_s-1, causal, no padding); "
    "variant token_mean: t0=0; variant token_mean_from_t2: t0=2 (loss mask)"
)
VARIANTS = [("token_mean", 0), ("token_mean_from_t2", 2)]
# `linear` scaling is the plain path with other frequencies; every other model has a gradient fixture.
GRAD_MODELS = ["tiny-qwen2", "tiny-llama", "tiny-llama31", "tiny-llama-dynamic", "tiny-llama-yarn", "tiny-qwen3",
               "tiny-qwen3-untied"]


# --- true float64 forward ---------------------------------------------------------------------------
# transformers computes three things in float32 even after model.double(): RMSNorm
# (hidden_states.to(torch.float32)), the eager attention softmax (softmax(..., dtype=torch.float32)) and
# the RoPE cos/sin tables (inv_freq and positions .float()). The first two depend on the weights, so
# finite differences would see f32 noise and the "exact" gradients would carry f32 rounding. These
# replacements are the same math, kept in the input dtype (float64). Only this script's process is
# affected; hf_logits.py (float32 fixtures) is untouched.
CALLS = {"rmsnorm": 0, "attention": 0, "rope": 0}


def rmsnorm_forward_f64(self, hidden_states):
    CALLS["rmsnorm"] += 1
    assert hidden_states.dtype == torch.float64
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def rope_forward_f64(self, x, position_ids):
    CALLS["rope"] += 1
    cfg = self.config
    scaling = 1.0
    if self.rope_type == "default":
        base = cfg.rope_parameters["rope_theta"]
        dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    else:
        # Scaled RoPE: transformers' own frequencies (float32) and cos/sin factor; dynamic NTK for
        # this forward's length, as a freshly-built model computes it (no state across calls).
        seq_len = int(position_ids.max()) + 1 if self.rope_type == "dynamic" else None
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[self.rope_type](cfg, None, seq_len=seq_len)
        inv_freq = inv_freq.to(torch.float64)
    freqs = position_ids[..., None].to(torch.float64) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * scaling).to(x.dtype), (emb.sin() * scaling).to(x.dtype)


def norms_per_forward(config):
    """RMSNorm calls in one forward: 2 per layer + the final one, and Qwen3's q_norm / k_norm."""
    per_layer = 4 if config.model_type == "qwen3" else 2
    return per_layer * config.num_hidden_layers + 1


def make_eager_attention_f64(mod):
    repeat_kv = mod.repeat_kv

    def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        CALLS["attention"] += 1
        assert query.dtype == torch.float64 and dropout == 0.0
        key_states = repeat_kv(key, module.num_key_value_groups)
        value_states = repeat_kv(value, module.num_key_value_groups)
        attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
        if attention_mask is not None:
            attn_weights = attn_weights + attention_mask
        attn_weights = torch.nn.functional.softmax(attn_weights, dim=-1)
        attn_output = torch.matmul(attn_weights, value_states)
        return attn_output.transpose(1, 2).contiguous(), attn_weights

    return eager_attention_forward


def force_float64(model):
    model.double()
    for mod in (modeling_qwen2, modeling_llama, modeling_qwen3):
        mod.eager_attention_forward = make_eager_attention_f64(mod)
    n_norm = n_rope = 0
    for m in model.modules():
        cname = type(m).__name__
        if cname.endswith("RMSNorm"):
            m.forward = rmsnorm_forward_f64.__get__(m)
            n_norm += 1
        elif cname.endswith("RotaryEmbedding"):
            m.forward = rope_forward_f64.__get__(m)
            n_rope += 1
    L = model.config.num_hidden_layers
    assert n_norm == norms_per_forward(model.config) and n_rope == 1, (n_norm, n_rope)
    return model


def sample_indices(numel):
    return [(k * 1000003 + 17) % numel for k in range(N_SAMPLES)]


def load_sequences(fixtures_dir, name):
    with open(os.path.join(fixtures_dir, f"{name}.json"), encoding="utf-8") as f:
        data = json.load(f)
    cases = {c["name"]: c for c in data["cases"]}
    seqs = [cases[f"single_{k}"]["rows"][0]["ids"] for k in range(1, 5)]
    for k, ids in enumerate(seqs):
        assert cases[f"single_{k + 1}"]["rows"][0]["positions"] == list(range(len(ids)))
    return seqs


def loss_fn(model, seqs, t0, check_hf_loss=False):
    """Returns (loss tensor, N). Sum of per-sequence NLL sums over positions t >= t0, divided by N."""
    total = None
    n = 0
    hf_check = 0.0
    for ids in seqs:
        T = len(ids)
        input_ids = torch.tensor([ids])
        pos = torch.arange(T).unsqueeze(0)
        kw = {"labels": input_ids} if check_hf_loss else {}
        out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                    position_ids=pos, use_cache=False, **kw)
        logits = out.logits[0]  # [T, V] float64
        assert logits.dtype == torch.float64
        logp = torch.log_softmax(logits[t0:T - 1], dim=-1)
        tgt = torch.tensor(ids[t0 + 1:T])
        nll = -logp.gather(1, tgt.unsqueeze(1)).squeeze(1)
        s = nll.sum()
        total = s if total is None else total + s
        n += T - 1 - t0
        if check_hf_loss:
            hf_check += out.loss.item() * (T - 1)
    loss = total / n
    L = model.config.num_hidden_layers
    for k, per_seq in (("rmsnorm", norms_per_forward(model.config)), ("attention", L), ("rope", 1)):
        assert CALLS[k] == per_seq * len(seqs), ("float64 patch not in effect", k, CALLS)
        CALLS[k] = 0
    if check_hf_loss:
        assert t0 == 0
        d = abs(hf_check / n - loss.item())
        # HF's ForCausalLMLoss upcasts logits with .float(), i.e. to float32: agreement is f32-level only.
        print(f"    check vs HF labels= loss (HF computes it in float32): |diff| = {d:.3e}")
        assert d < 1e-5 * max(1.0, abs(loss.item())), d
    return loss, n


def grad_record(g, extra_rows=None):
    flat = g.reshape(-1)
    idx = sample_indices(flat.numel())
    rec = {
        "norm": torch.linalg.vector_norm(flat).item(),
        "max_abs": flat.abs().max().item(),
        "indices": idx,
        "values": [flat[i].item() for i in idx],
    }
    if extra_rows is not None:
        rows, H = extra_rows
        eidx = [rows[k % len(rows)] * H + (k * 13 + 5) % H for k in range(N_SAMPLES)]
        rec["input_row_indices"] = eidx
        rec["input_row_values"] = [flat[i].item() for i in eidx]
    return rec


def finite_diff(model, seqs, t0, param, flat_idx, eps):
    flat = param.data.view(-1)
    orig = flat[flat_idx].item()
    with torch.no_grad():
        flat[flat_idx] = orig + eps
        lp = loss_fn(model, seqs, t0)[0].item()
        flat[flat_idx] = orig - eps
        lm = loss_fn(model, seqs, t0)[0].item()
        flat[flat_idx] = orig
    assert flat[flat_idx].item() == orig
    return (lp - lm) / (2 * eps)


def fd_checks(model, seqs, t0, grads, input_rows):
    """Central differences at the largest-|grad| element of 3 parameters (deterministic choice)."""
    params = dict(model.named_parameters())
    picks = []
    for name in ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.input_layernorm.weight"]:
        picks.append((name, int(grads[name].reshape(-1).abs().argmax())))
    # embedding: largest |grad| among the rows of input tokens (input-embedding path exercised)
    H = params["model.embed_tokens.weight"].shape[1]
    g = grads["model.embed_tokens.weight"]
    sub = g[input_rows]
    r, c = divmod(int(sub.reshape(-1).abs().argmax()), H)
    picks.append(("model.embed_tokens.weight", input_rows[r] * H + c))
    ok = True
    for name, i in picks:
        a = grads[name].reshape(-1)[i].item()
        fds = {eps: finite_diff(model, seqs, t0, params[name], i, eps) for eps in (1e-4, 1e-5)}
        best = min(abs(v - a) / abs(a) for v in fds.values())
        status = "ok" if best <= FD_REL_TOL else "FAIL"
        ok &= best <= FD_REL_TOL
        fd_str = ", ".join(f"eps={eps:g}: {v!r}" for eps, v in fds.items())
        print(f"    FD {name}[{i}]: autograd={a!r}; {fd_str}; best rel err={best:.2e} {status}")
    return ok


def run_model(name, cls, cfg, seqs):
    torch.manual_seed(0)
    model = cls(cfg).to(torch.float32).eval()  # eval: no dropout (configs have none anyway)
    assert model.config._attn_implementation == "eager", model.config._attn_implementation
    hf_logits.fill_weights(model)
    model = force_float64(model)
    tied = bool(model.config.tie_word_embeddings)
    if tied:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "untied by .double()"
    assert all(p.dtype == torch.float64 for p in model.parameters())

    H = model.config.hidden_size
    input_rows = []
    for ids in seqs:
        for t in ids:
            if t not in input_rows:
                input_rows.append(t)

    variants = []
    all_ok = True
    for vname, t0 in VARIANTS:
        print(f"[{name}] variant {vname}")
        model.zero_grad(set_to_none=True)
        loss, n = loss_fn(model, seqs, t0, check_hf_loss=(t0 == 0))
        loss.backward()
        grads = {pn: p.grad.detach().clone() for pn, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        assert ("lm_head.weight" in grads) == (not tied)
        print(f"    loss={loss.item()!r} N={n} params={len(grads)}")
        recs = {}
        for pn, g in grads.items():
            assert torch.isfinite(g).all(), pn
            recs[pn] = grad_record(g, (input_rows, H) if pn == "model.embed_tokens.weight" else None)
        all_ok &= fd_checks(model, seqs, t0, grads, input_rows)
        variants.append({"name": vname, "first_position": t0, "loss": loss.item(), "n_tokens": n,
                         "grads": recs})
    if not all_ok:
        print(f"[{name}] FINITE-DIFFERENCE CHECK FAILED", file=sys.stderr)
        sys.exit(1)

    return {
        "model": name,
        "generator": GENERATOR,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": "float64 (weights are the float32 rule values)",
        "weights_rule": hf_logits.WEIGHTS_RULE,
        "tied_embeddings": tied,
        "loss_definition": LOSS_DEFINITION,
        "sample_indices": "(k * 1000003 + 17) % numel for k in 0..15",
        "sequences": seqs,
        "variants": variants,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", default="tests/fixtures/hf",
                    help="folder with the hf_logits.py fixtures (token ids are read from them)")
    ap.add_argument("--out", required=True, help="output folder (e.g. tests/fixtures/hf)")
    ap.add_argument("--only", default=None, help="only this model name")
    args = ap.parse_args()

    torch.set_num_threads(1)  # bitwise-reproducible CPU reductions
    torch.use_deterministic_algorithms(True)

    os.makedirs(args.out, exist_ok=True)
    for name, cls, cfg in hf_logits.build_models():
        if name not in GRAD_MODELS or (args.only and name != args.only):
            continue
        seqs = load_sequences(args.fixtures, name)
        data = run_model(name, cls, cfg, seqs)
        path = os.path.join(args.out, f"{name}-grads.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
