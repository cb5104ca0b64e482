// Fused AdamW on f32 master weights, refreshing the bf16 working copy in the
// same pass. Mirrors `adamw` in engine/src/backend/cpu/mod.rs exactly:
//   g = grad * grad_scale
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p = p * (1 - lr wd) - lr * (m / bc1) / (sqrt(v / bc2) + eps)
// Global-norm clipping: `sum_squares_partial` + `sum_f64` (norm.cu) give the
// squared norm; the clip factor folds into grad_scale. When the factor must
// stay on the device (no host sync), `clip_factor` writes it and `scale_dev`
// passes it in (it multiplies grad_scale; null means 1). A gradient whose
// norm is not finite makes the factor NaN, and a step whose scale is not
// finite changes nothing (the trainer skips that update).

extern "C" __global__ void adamw_step(float* __restrict__ master, bf16* __restrict__ param_bf16,
                                      const float* __restrict__ grad, float* __restrict__ m,
                                      float* __restrict__ v, const float* __restrict__ scale_dev,
                                      long long n, float lr, float beta1, float beta2, float eps,
                                      float weight_decay, float bias_correction1,
                                      float bias_correction2, float grad_scale) {
    const float gs = grad_scale * (scale_dev != nullptr ? scale_dev[0] : 1.0f);
    if (!isfinite(gs)) return;  // the same for every thread: no barrier below
    const float decay = 1.0f - lr * weight_decay;
    IGPO_GRID_STRIDE(i, n) {
        const float g = grad[i] * gs;
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        const float mhat = mi / bias_correction1;
        const float vhat = vi / bias_correction2;
        const float p = master[i] * decay - lr * mhat / (sqrtf(vhat) + eps);
        master[i] = p;
        if (param_bf16 != nullptr) param_bf16[i] = to_bf16(p);
    }
}

// The gradient scale on the device, as engine/src/train/optim.rs computes it:
// norm = sqrt(sumsq) * avg; clip = max_norm / (norm + 1e-6) when
// max_norm > 0 and norm > max_norm, else 1; out = avg * clip (NaN when the
// norm is not finite). Also writes the
// pre-clip norm (for the metrics) when `norm_out` is not null.
extern "C" __global__ void clip_factor(float* __restrict__ out, double* __restrict__ norm_out,
                                       const double* __restrict__ sumsq, double avg,
                                       double max_norm) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        const double norm = sqrt(sumsq[0]) * avg;
        const double clip = (max_norm > 0.0 && norm > max_norm) ? max_norm / (norm + 1e-6) : 1.0;
        out[0] = isfinite(norm) ? (float)(avg * clip) : IGPO_NAN;
        if (norm_out != nullptr) norm_out[0] = norm;
    }
}
