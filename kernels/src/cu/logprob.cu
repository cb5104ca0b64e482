// Fused lm-head log-prob of chosen tokens, one vocabulary chunk at a time.
// The host runs, for each chunk [lo, lo + c) of the vocabulary:
//   z = h[rows, d] @ W[lo:lo+c, d]^T   (cuBLAS, f32 output [rows, c])
//   logprob_chunk_fwd(z)               (online log-sum-exp, entropy terms, target logit)
// and `logprob_finalize` at the end, so the [rows x vocab] logits never exist.
// Mirrors engine/src/backend/cpu/logprob.rs: running max, sum exp(z - max) and
// sum exp(z - max) * z per row (f64), rescaled when the max grows;
//   lse = max + ln(sum);  logp = min(z_target - lse, 0);
//   entropy = max(lse - zsum / sum, 0).
// Backward, per chunk: recompute z (cuBLAS), `logprob_chunk_bwd` turns it into
//   dz = dlogp (onehot - p) - dentropy * p (log p + entropy)
// and cuBLAS adds dh += dz W_c and dW_c += dz^T h.
// One block per row; blockDim a multiple of 32.

// Running statistics of every row, reset before the first chunk.
extern "C" __global__ void logprob_init(float* __restrict__ run_max, double* __restrict__ run_sum,
                                        double* __restrict__ run_zsum,
                                        float* __restrict__ target_logit, int rows) {
    IGPO_GRID_STRIDE(r, rows) {
        run_max[r] = IGPO_NEG_INF;
        run_sum[r] = 0.0;
        run_zsum[r] = 0.0;
        target_logit[r] = 0.0f;
    }
}

// z[rows, c] (row stride ldz): logits of vocabulary ids lo .. lo + c.
extern "C" __global__ void logprob_chunk_fwd(float* __restrict__ run_max,
                                             double* __restrict__ run_sum,
                                             double* __restrict__ run_zsum,
                                             float* __restrict__ target_logit,
                                             const float* __restrict__ z,
                                             const int* __restrict__ targets, int rows, int c,
                                             int ldz, int lo) {
    __shared__ float fscratch[32];
    __shared__ double dscratch[32];
    const int row = blockIdx.x;
    if (row >= rows) return;
    const float* zr = z + (size_t)row * ldz;
    float cmax = IGPO_NEG_INF;
    for (int j = threadIdx.x; j < c; j += blockDim.x) cmax = fmaxf(cmax, zr[j]);
    cmax = block_max(cmax, fscratch);
    const float old_max = run_max[row];
    const float new_max = fmaxf(old_max, cmax);
    double s = 0.0, zs = 0.0;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        const float v = zr[j];
        const double e = (double)expf(v - new_max);
        s += e;
        zs += e * (double)v;
    }
    s = block_sum_f64(s, dscratch);
    zs = block_sum_f64(zs, dscratch);
    if (threadIdx.x == 0) {
        const double rescale = old_max == IGPO_NEG_INF ? 0.0 : exp((double)(old_max - new_max));
        run_sum[row] = run_sum[row] * rescale + s;
        run_zsum[row] = run_zsum[row] * rescale + zs;
        run_max[row] = new_max;
        const int t = targets[row];
        if (t >= lo && t < lo + c) target_logit[row] = zr[t - lo];
    }
}

// lse, logp (clamped to <= 0) and, when `entropy` is not null, the entropy.
// Counts rows whose log-prob came out non-finite or positive before the clamp
// into violations[0] (the engine logs it; DESIGN: log-probs are <= 0, finite).
extern "C" __global__ void logprob_finalize(float* __restrict__ logp, float* __restrict__ lse,
                                            float* __restrict__ entropy,
                                            int* __restrict__ violations,
                                            const float* __restrict__ run_max,
                                            const double* __restrict__ run_sum,
                                            const double* __restrict__ run_zsum,
                                            const float* __restrict__ target_logit, int rows) {
    IGPO_GRID_STRIDE(r, rows) {
        const float l = run_max[r] + (float)log(run_sum[r]);
        lse[r] = l;
        const float lp = target_logit[r] - l;
        if (violations != nullptr && !(lp <= 1e-6f && isfinite(lp))) atomicAdd(violations, 1);
        logp[r] = fminf(lp, 0.0f);
        if (entropy != nullptr) {
            const double h = (double)l - run_zsum[r] / run_sum[r];
            entropy[r] = (float)(h > 0.0 ? h : 0.0);
        }
    }
}

// dz[rows, c] (bf16, row stride lddz) from the recomputed logits z of chunk lo.
// `entropy` and `dentropy` are both null or both given.
extern "C" __global__ void logprob_chunk_bwd(bf16* __restrict__ dz, const float* __restrict__ z,
                                             const int* __restrict__ targets,
                                             const float* __restrict__ lse,
                                             const float* __restrict__ dlogp,
                                             const float* __restrict__ entropy,
                                             const float* __restrict__ dentropy, int rows, int c,
                                             int ldz, int lddz, int lo) {
    const int row = blockIdx.x;
    if (row >= rows) return;
    const float l = lse[row], g = dlogp[row];
    const bool ent = entropy != nullptr && dentropy != nullptr;
    const float e = ent ? entropy[row] : 0.0f, ge = ent ? dentropy[row] : 0.0f;
    const int t = targets[row] - lo;
    const float* zr = z + (size_t)row * ldz;
    bf16* out = dz + (size_t)row * lddz;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        const float lp = zr[j] - l;
        const float p = expf(lp);
        float d = -g * p;
        if (j == t) d += g;
        if (ent) d -= ge * p * (lp + e);
        out[j] = to_bf16(d);
    }
}
