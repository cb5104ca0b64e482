//! Attention on the GPU (`Backend::attention`, `cached_attention`,
//! `attention_train`, `attention_backward`): the tensor-core kernels by
//! default, the scalar ones with `IGPO_ATTENTION=scalar` (see the backend's
//! module doc).

use std::ops::Range;

use cudarc::driver::DevicePtr;
use igpo_kernels::launch::{AttnGrads, KvAppend};

use super::{attn_args, ok, varlen_seqs, AttnMask, AttnShape, Backend, Cuda, CudaTensor, Data};

pub(super) fn attention(
    gpu: &Cuda,
    q: &CudaTensor,
    k: &CudaTensor,
    v: &CudaTensor,
    shape: AttnShape,
    mask: &AttnMask,
) -> CudaTensor {
    gpu.attention_train(q, k, v, shape, mask).0
}

pub(super) fn cached_attention(
    gpu: &Cuda,
    q: &CudaTensor,
    k: &CudaTensor,
    v: &CudaTensor,
    caches: &mut [(&mut CudaTensor, &mut CudaTensor)],
    bounds: &[Range<usize>],
    s: AttnShape,
) -> CudaTensor {
    assert_eq!(
        caches.len(),
        bounds.len(),
        "cached_attention: one cache per sequence"
    );
    let kv_cols = s.n_kv_heads * s.head_dim;
    let total = q.rows();
    assert!(
        bounds.first().is_some_and(|r| r.start == 0)
            && bounds.windows(2).all(|w| w[0].end == w[1].start)
            && bounds.last().is_some_and(|r| r.end == total),
        "cached_attention: sequences must own consecutive rows 0..{total}: {bounds:?}"
    );
    assert_eq!(
        (k.rows(), k.cols(), v.rows(), v.cols()),
        (total, kv_cols, total, kv_cols),
        "cached_attention: k and v must be [{total}, {kv_cols}]"
    );
    let rows: Vec<usize> = bounds.iter().map(|r| r.len()).collect();
    let mut keys = Vec::with_capacity(rows.len());
    let (mut k_ptrs, mut v_ptrs) = (
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
    );
    for ((kc, vc), &add) in caches.iter_mut().zip(&rows) {
        assert!(
            kc.cols() == kv_cols && vc.cols() == kv_cols && kc.rows() == vc.rows(),
            "cached_attention: a cache is not [len, {kv_cols}]"
        );
        gpu.reserve_rows(kc, add);
        gpu.reserve_rows(vc, add);
        keys.push(kc.rows() + add);
        for (cache, ptrs) in [(&**kc, &mut k_ptrs), (&**vc, &mut v_ptrs)] {
            if let Data::Bf16(buf) = &cache.data {
                ptrs.push(buf.device_ptr(gpu.stream()).0);
            }
        }
    }
    let mut out = gpu.new_bf16(&[total, s.n_heads * s.head_dim]);
    // The kernel writes each row's log-sum-exp too; decode does not use it.
    let mut lse = ok("cached_attention", gpu.k.zeros::<f32>(total * s.n_heads));
    if let Data::Bf16(o) = &mut out.data {
        // SAFETY: every pointer is a bf16 cache of this backend's stream,
        // reserved above for `keys[b]` rows and borrowed mutably by
        // `caches` for the whole call (one stream, so the dropped
        // `device_ptr` guards order nothing that the stream does not).
        ok("cached_attention", unsafe {
            gpu.k.cached_attention(
                o,
                &mut lse,
                &gpu.bf(q),
                &KvAppend {
                    k_new: &gpu.bf(k),
                    v_new: &gpu.bf(v),
                    k_ptrs: &k_ptrs,
                    v_ptrs: &v_ptrs,
                },
                &varlen_seqs(&rows, &keys, s),
            )
        });
    }
    for ((kc, vc), &n) in caches.iter_mut().zip(&keys) {
        kc.shape = vec![n, kv_cols];
        vc.shape = vec![n, kv_cols];
    }
    out
}

pub(super) fn attention_train(
    gpu: &Cuda,
    q: &CudaTensor,
    k: &CudaTensor,
    v: &CudaTensor,
    s: AttnShape,
    mask: &AttnMask,
) -> (CudaTensor, CudaTensor) {
    let dims = Cuda::dims(q, k, s);
    let dm = gpu.mask(mask, dims.m, dims.n);
    let mut out = gpu.new_bf16(&[dims.m, s.n_heads * s.head_dim]);
    let mut lse = ok("attention", gpu.k.zeros::<f32>(dims.m * s.n_heads));
    if let Data::Bf16(o) = &mut out.data {
        ok(
            "attention",
            gpu.k.attention(
                o,
                &mut lse,
                &attn_args((&gpu.bf(q), &gpu.bf(k), &gpu.bf(v)), dims, &dm),
            ),
        );
    }
    (out, gpu.f32_out(lse, &[dims.m, s.n_heads]))
}

pub(super) fn attention_backward(
    gpu: &Cuda,
    (q, k, v): (&CudaTensor, &CudaTensor, &CudaTensor),
    (out, lse): (&CudaTensor, &CudaTensor),
    dout: &CudaTensor,
    s: AttnShape,
    mask: &AttnMask,
) -> (CudaTensor, CudaTensor, CudaTensor) {
    let dims = Cuda::dims(q, k, s);
    let dm = gpu.mask(mask, dims.m, dims.n);
    let (mut dq, mut dk, mut dv) = (
        gpu.new_bf16(&q.shape),
        gpu.new_bf16(&k.shape),
        gpu.new_bf16(&v.shape),
    );
    if let (Data::Bf16(a), Data::Bf16(b), Data::Bf16(c)) =
        (&mut dq.data, &mut dk.data, &mut dv.data)
    {
        ok(
            "attention_backward",
            gpu.k.attention_backward(
                AttnGrads {
                    dq: a,
                    dk: b,
                    dv: c,
                },
                &attn_args((&gpu.bf(q), &gpu.bf(k), &gpu.bf(v)), dims, &dm),
                &gpu.bf(out),
                &gpu.f32v(lse),
                &gpu.bf(dout),
            ),
        );
    }
    (dq, dk, dv)
}
