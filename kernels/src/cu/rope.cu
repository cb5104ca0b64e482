// RoPE, Hugging Face "rotate half" layout, explicit position per row. Mirrors
// `rotate` in engine/src/backend/cpu/mod.rs: for pair (i, i + d/2) of every head,
//   angle = pos * inv_freq[i];  a' = a cos - b sin;  b' = b cos + a sin
// with sin negated (sign = -1) for the backward, which rotates gradients back.
// cos and sin are multiplied by `scale` (`Rope::attention_scaling`: yarn's
// attention factor, else 1), forward and backward alike (the transpose of
// scale * R is scale * R^T).
// In place on x[rows, cols], cols = heads * head_dim. One thread per pair.

extern "C" __global__ void rope_bf16(bf16* __restrict__ x, const int* __restrict__ positions,
                                     const float* __restrict__ inv_freq, int rows, int cols,
                                     int head_dim, float sign,
                                     float scale) {
    const int half = head_dim / 2;
    const int heads = cols / head_dim;
    const long long pairs = (long long)rows * heads * half;
    IGPO_GRID_STRIDE(t, pairs) {
        const int i = (int)(t % half);
        const long long rh = t / half;
        const int head = (int)(rh % heads);
        const long long row = rh / heads;
        const float angle = (float)positions[row] * inv_freq[i];
        float s, c;
        sincosf(angle, &s, &c);
        s *= sign * scale;
        c *= scale;
        bf16* h = x + (size_t)row * cols + (size_t)head * head_dim;
        const float a = to_f32(h[i]), b = to_f32(h[i + half]);
        h[i] = to_bf16(a * c - b * s);
        h[i + half] = to_bf16(b * c + a * s);
    }
}

// Q and K of one layer in one launch (they share positions and frequencies).
extern "C" __global__ void rope_qk_bf16(bf16* __restrict__ q, bf16* __restrict__ k,
                                        const int* __restrict__ positions,
                                        const float* __restrict__ inv_freq, int rows,
                                        int q_cols, int k_cols, int head_dim, float sign,
                                        float scale) {
    const int half = head_dim / 2;
    const int qh = q_cols / head_dim, kh = k_cols / head_dim;
    const int heads = qh + kh;
    const long long pairs = (long long)rows * heads * half;
    IGPO_GRID_STRIDE(t, pairs) {
        const int i = (int)(t % half);
        const long long rh = t / half;
        const int head = (int)(rh % heads);
        const long long row = rh / heads;
        const float angle = (float)positions[row] * inv_freq[i];
        float s, c;
        sincosf(angle, &s, &c);
        s *= sign * scale;
        c *= scale;
        bf16* h = head < qh ? q + (size_t)row * q_cols + (size_t)head * head_dim
                            : k + (size_t)row * k_cols + (size_t)(head - qh) * head_dim;
        const float a = to_f32(h[i]), b = to_f32(h[i + half]);
        h[i] = to_bf16(a * c - b * s);
        h[i + half] = to_bf16(b * c + a * s);
    }
}
