//! The fused lm-head log-probabilities (`Backend::token_logprobs` and its
//! backward): one vocabulary chunk of logits at a time, never `[rows, vocab]`.

use half::bf16;
use igpo_kernels::launch::LogprobChunk;

use super::{ok, Cuda, CudaTensor, Data, LogProbs};

pub(super) fn token_logprobs(
    gpu: &Cuda,
    h: &CudaTensor,
    w: &CudaTensor,
    targets: &[u32],
    chunk: usize,
    want_entropy: bool,
) -> LogProbs<CudaTensor> {
    let (rows, d, vocab) = (targets.len(), h.cols(), w.rows());
    assert_eq!(h.rows(), rows, "logprob: one target per row");
    assert!(chunk > 0, "logprob: chunk must be positive");
    if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
        panic!("logprob: target id {t} is outside the vocabulary ({vocab})");
    }
    let (hb, wb) = (gpu.bf(h), gpu.bf(w));
    let td = gpu.ids(targets);
    let chunk = chunk.min(vocab.max(1));
    let mut z = ok("logprob", gpu.k.zeros::<f32>(rows * chunk));
    let mut st = ok("logprob", gpu.k.logprob_state(rows));
    for lo in (0..vocab).step_by(chunk) {
        let c = chunk.min(vocab - lo);
        gpu.chunk_logits(&mut z, &hb, &wb, (rows, d, lo, c));
        ok(
            "logprob",
            gpu.k.logprob_chunk(
                &mut st,
                &LogprobChunk {
                    z: &z,
                    targets: &td,
                    rows,
                    c,
                    lo,
                },
            ),
        );
    }
    let zeros = || ok("logprob", gpu.k.zeros::<f32>(rows));
    let (mut logp, mut lse) = (zeros(), zeros());
    let mut entropy = want_entropy.then(zeros);
    let mut viol = ok("logprob", gpu.k.zeros::<i32>(1));
    ok(
        "logprob",
        gpu.k
            .logprob_finalize(&mut logp, &mut lse, entropy.as_mut(), &mut viol, &st, rows),
    );
    if cfg!(debug_assertions) {
        let bad = ok("logprob", gpu.k.download(&viol))[0];
        assert_eq!(
            bad, 0,
            "log-probs must be finite and <= 0 ({bad} rows were not)"
        );
    }
    LogProbs {
        logp: gpu.f32_out(logp, &[rows]),
        lse: gpu.f32_out(lse, &[rows]),
        entropy: entropy.map(|e| gpu.f32_out(e, &[rows])),
    }
}

pub(super) fn token_logprobs_backward(
    gpu: &Cuda,
    (h, w): (&CudaTensor, &CudaTensor),
    targets: &[u32],
    out: &LogProbs<CudaTensor>,
    (dlogp, dentropy): (&CudaTensor, Option<&CudaTensor>),
    chunk: usize,
    dw: &mut CudaTensor,
) -> CudaTensor {
    let (rows, d, vocab) = (targets.len(), h.cols(), w.rows());
    let (hb, wb) = (gpu.bf(h), gpu.bf(w));
    let td = gpu.ids(targets);
    let lse = gpu.f32v(&out.lse);
    let dl = gpu.f32v(dlogp);
    let ent = dentropy.map(|de| {
        let e = out
            .entropy
            .as_ref()
            .expect("token_logprobs_backward: dentropy needs the forward's entropy");
        (gpu.f32v(e), gpu.f32v(de))
    });
    let Data::F32(dws) = &mut dw.data else {
        panic!("token_logprobs_backward: the lm-head gradient must be f32 (made by zeros)")
    };
    let chunk = chunk.min(vocab.max(1));
    let mut z = ok("logprob backward", gpu.k.zeros::<f32>(rows * chunk));
    let mut dz = ok("logprob backward", gpu.k.zeros::<bf16>(rows * chunk));
    let mut dh = ok("logprob backward", gpu.k.zeros::<f32>(rows * d));
    for lo in (0..vocab).step_by(chunk) {
        let c = chunk.min(vocab - lo);
        gpu.chunk_logits(&mut z, &hb, &wb, (rows, d, lo, c));
        ok(
            "logprob backward",
            gpu.k.logprob_chunk_backward(
                &mut dz,
                &LogprobChunk {
                    z: &z,
                    targets: &td,
                    rows,
                    c,
                    lo,
                },
                &lse,
                &dl,
                ent.as_ref().map(|(e, de)| (&**e, &**de)),
            ),
        );
        let wc = wb.slice(lo * d..(lo + c) * d);
        let dzc = dz.slice(..rows * c);
        // dh += dz W_c ; dW_c += dz^T h
        ok(
            "logprob backward dh",
            gpu.blas
                .gemm(&mut dh, &dzc, &wc, (rows, d, c), (false, false), (1.0, 1.0)),
        );
        let mut dwc = dws.slice_mut(lo * d..(lo + c) * d);
        ok(
            "logprob backward dW",
            gpu.blas.gemm(
                &mut dwc,
                &dzc,
                &*hb,
                (c, d, rows),
                (true, false),
                (1.0, 1.0),
            ),
        );
    }
    gpu.f32_out(dh, &h.shape)
}
