// Elementwise ops and RMSNorm. Mirrors engine/src/backend/cpu/mod.rs:
// rms_norm: out = x * (1 / sqrt(mean(x^2) + eps)) * w
// rms_norm_backward: dx = r*w*dy - (r^3/d) * x * sum(x*dy*w);  dw += sum_rows dy*x*r
// Row kernels: one block per row, blockDim a multiple of 32 (256 is typical).
// head_rmsnorm_*: the same RMSNorm on every head of q or k (Qwen3's q_norm /
// k_norm; CPU: `head_rms_norm` in engine/src/backend/cpu/norm.rs), one warp per head.

extern "C" __global__ void rmsnorm_fwd(bf16* __restrict__ out, float* __restrict__ rstd,
                                       const bf16* __restrict__ x, const bf16* __restrict__ w,
                                       int rows, int d, float eps) {
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    if (row >= rows) return;
    const bf16* xr = x + (size_t)row * d;
    bf16* orow = out + (size_t)row * d;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float v = to_f32(xr[i]);
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / (float)d + eps);
    if (rstd != nullptr && threadIdx.x == 0) rstd[row] = inv;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        orow[i] = to_bf16(to_f32(xr[i]) * inv * to_f32(w[i]));
    }
}

// Fused residual add + RMSNorm: resid += y (stored bf16), out = rmsnorm(resid).
extern "C" __global__ void residual_rmsnorm_fwd(bf16* __restrict__ resid, bf16* __restrict__ out,
                                                float* __restrict__ rstd,
                                                const bf16* __restrict__ y,
                                                const bf16* __restrict__ w, int rows, int d,
                                                float eps) {
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    if (row >= rows) return;
    bf16* xr = resid + (size_t)row * d;
    const bf16* yr = y + (size_t)row * d;
    bf16* orow = out + (size_t)row * d;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        // Round the sum to bf16 first: the norm sees exactly what is stored.
        bf16 s = to_bf16(to_f32(xr[i]) + to_f32(yr[i]));
        xr[i] = s;
        float v = to_f32(s);
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / (float)d + eps);
    if (rstd != nullptr && threadIdx.x == 0) rstd[row] = inv;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        orow[i] = to_bf16(to_f32(xr[i]) * inv * to_f32(w[i]));
    }
}

// dx for every row, and r = 1/rms per row into `rstd` (the dw kernel reads it).
extern "C" __global__ void rmsnorm_bwd_dx(bf16* __restrict__ dx, float* __restrict__ rstd,
                                          const bf16* __restrict__ x, const bf16* __restrict__ w,
                                          const bf16* __restrict__ dy, int rows, int d,
                                          float eps) {
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    if (row >= rows) return;
    const bf16* xr = x + (size_t)row * d;
    const bf16* gr = dy + (size_t)row * d;
    float ss = 0.0f, dot = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float xv = to_f32(xr[i]);
        ss += xv * xv;
        dot += xv * to_f32(gr[i]) * to_f32(w[i]);
    }
    ss = block_sum(ss, scratch);
    dot = block_sum(dot, scratch);
    const float r = 1.0f / sqrtf(ss / (float)d + eps);
    const float c = r * r * r * dot / (float)d;
    if (threadIdx.x == 0) rstd[row] = r;
    bf16* orow = dx + (size_t)row * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        orow[i] = to_bf16(r * to_f32(w[i]) * to_f32(gr[i]) - c * to_f32(xr[i]));
    }
}

// ---- per-head RMSNorm (Qwen3 q_norm / k_norm), mirrors engine/src/backend/cpu/norm.rs:
// x is `groups` contiguous heads of `d` values sharing the weight w[d]:
//   out = x * r * w,  r = 1 / sqrt(mean(x^2) + eps) per head
//   dx  = r*w*dy - (r^3/d) * x * sum(x*dy*w);  dw += sum over heads of dy*x*r
// One warp per head (blockDim.x = 32 * heads per block); a warp whose head is
// past the end leaves as a whole, so every shuffle has all 32 lanes.
extern "C" __global__ void head_rmsnorm_fwd(bf16* __restrict__ out, const bf16* __restrict__ x,
                                            const bf16* __restrict__ w, int groups, int d,
                                            float eps) {
    const int g = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (g >= groups) return;
    const bf16* xh = x + (size_t)g * d;
    bf16* oh = out + (size_t)g * d;
    float ss = 0.0f;
    for (int i = lane; i < d; i += 32) {
        const float v = to_f32(xh[i]);
        ss += v * v;
    }
    const float r = 1.0f / sqrtf(warp_sum(ss) / (float)d + eps);
    for (int i = lane; i < d; i += 32) oh[i] = to_bf16(to_f32(xh[i]) * r * to_f32(w[i]));
}

// dx of every head, and r per head into `rstd` (rmsnorm_bwd_dw_partial reads
// it with rows = groups for dw).
extern "C" __global__ void head_rmsnorm_bwd_dx(bf16* __restrict__ dx, float* __restrict__ rstd,
                                               const bf16* __restrict__ x,
                                               const bf16* __restrict__ w,
                                               const bf16* __restrict__ dy, int groups, int d,
                                               float eps) {
    const int g = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (g >= groups) return;
    const bf16* xh = x + (size_t)g * d;
    const bf16* gh = dy + (size_t)g * d;
    float ss = 0.0f, dot = 0.0f;
    for (int i = lane; i < d; i += 32) {
        const float xv = to_f32(xh[i]);
        ss += xv * xv;
        dot += xv * to_f32(gh[i]) * to_f32(w[i]);
    }
    const float r = 1.0f / sqrtf(warp_sum(ss) / (float)d + eps);
    const float c = r * r * r * warp_sum(dot) / (float)d;
    if (lane == 0) rstd[g] = r;
    bf16* oh = dx + (size_t)g * d;
    for (int i = lane; i < d; i += 32) {
        oh[i] = to_bf16(r * to_f32(w[i]) * to_f32(gh[i]) - c * to_f32(xh[i]));
    }
}

// dw partials: block (x: column tile, y: row chunk) sums dy*x*r over its rows
// in row order into partial[chunk, d]. `colsum_f32` then adds the chunks in
// order into dw: deterministic, no atomics.
extern "C" __global__ void rmsnorm_bwd_dw_partial(float* __restrict__ partial,
                                                  const bf16* __restrict__ x,
                                                  const bf16* __restrict__ dy,
                                                  const float* __restrict__ rstd, int rows,
                                                  int d, int rows_per_chunk) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    const int chunk = blockIdx.y;
    if (col >= d) return;
    const int r0 = chunk * rows_per_chunk;
    const int r1 = min(rows, r0 + rows_per_chunk);
    float acc = 0.0f;
    for (int r = r0; r < r1; ++r) {
        acc += to_f32(dy[(size_t)r * d + col]) * to_f32(x[(size_t)r * d + col]) * rstd[r];
    }
    partial[(size_t)chunk * d + col] = acc;
}

// Column sums of a bf16 matrix by row chunks (bias gradients): partial[chunk, d].
extern "C" __global__ void colsum_partial_bf16(float* __restrict__ partial,
                                               const bf16* __restrict__ y, int rows, int d,
                                               int rows_per_chunk) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    const int chunk = blockIdx.y;
    if (col >= d) return;
    const int r0 = chunk * rows_per_chunk;
    const int r1 = min(rows, r0 + rows_per_chunk);
    float acc = 0.0f;
    for (int r = r0; r < r1; ++r) acc += to_f32(y[(size_t)r * d + col]);
    partial[(size_t)chunk * d + col] = acc;
}

// dst[col] += sum over chunks (in chunk order) of partial[chunk, col].
extern "C" __global__ void colsum_f32(float* __restrict__ dst, const float* __restrict__ partial,
                                      int chunks, int d) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= d) return;
    float acc = 0.0f;
    for (int c = 0; c < chunks; ++c) acc += partial[(size_t)c * d + col];
    dst[col] += acc;
}

// ---- elementwise

extern "C" __global__ void add_assign_bf16(bf16* __restrict__ x, const bf16* __restrict__ y,
                                           long long n) {
    IGPO_GRID_STRIDE(i, n) { x[i] = to_bf16(to_f32(x[i]) + to_f32(y[i])); }
}

extern "C" __global__ void add_assign_f32(float* __restrict__ x, const float* __restrict__ y,
                                          long long n) {
    IGPO_GRID_STRIDE(i, n) { x[i] += y[i]; }
}

// out[r, c] += bias[c] (linear layers with a bias, after the GEMM).
extern "C" __global__ void add_bias_bf16(bf16* __restrict__ out, const bf16* __restrict__ bias,
                                         int rows, int cols) {
    IGPO_GRID_STRIDE(i, (long long)rows * cols) {
        out[i] = to_bf16(to_f32(out[i]) + to_f32(bias[i % cols]));
    }
}

extern "C" __global__ void scale_f32(float* __restrict__ x, float s, long long n) {
    IGPO_GRID_STRIDE(i, n) { x[i] *= s; }
}

extern "C" __global__ void scale_bf16(bf16* __restrict__ x, float s, long long n) {
    IGPO_GRID_STRIDE(i, n) { x[i] = to_bf16(to_f32(x[i]) * s); }
}

extern "C" __global__ void cast_f32_to_bf16(bf16* __restrict__ out, const float* __restrict__ x,
                                            long long n) {
    IGPO_GRID_STRIDE(i, n) { out[i] = to_bf16(x[i]); }
}

extern "C" __global__ void cast_bf16_to_f32(float* __restrict__ out, const bf16* __restrict__ x,
                                            long long n) {
    IGPO_GRID_STRIDE(i, n) { out[i] = to_f32(x[i]); }
}

// Row gather: out[i] = x[rows[i]] (rows of `cols` bf16 values).
extern "C" __global__ void gather_rows_bf16(bf16* __restrict__ out, const bf16* __restrict__ x,
                                            const int* __restrict__ rows, int n_rows, int cols) {
    IGPO_GRID_STRIDE(i, (long long)n_rows * cols) {
        const long long r = i / cols, c = i % cols;
        out[i] = x[(size_t)rows[r] * cols + c];
    }
}

extern "C" __global__ void gather_rows_f32(float* __restrict__ out, const float* __restrict__ x,
                                           const int* __restrict__ rows, int n_rows, int cols) {
    IGPO_GRID_STRIDE(i, (long long)n_rows * cols) {
        const long long r = i / cols, c = i % cols;
        out[i] = x[(size_t)rows[r] * cols + c];
    }
}

// Global-norm clipping, pass 1: partial[block] = sum of x^2 over a grid-stride
// slice, f64 accumulation (mirrors the CPU's f64 sum_squares).
extern "C" __global__ void sum_squares_partial(double* __restrict__ partial,
                                               const float* __restrict__ x, long long n) {
    __shared__ double scratch[32];
    double acc = 0.0;
    IGPO_GRID_STRIDE(i, n) {
        const double v = (double)x[i];
        acc += v * v;
    }
    acc = block_sum_f64(acc, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// Pass 2 (one block): out[0] = sum of the partials, in a fixed order.
extern "C" __global__ void sum_f64(double* __restrict__ out, const double* __restrict__ partial,
                                   int count) {
    __shared__ double scratch[32];
    double acc = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
    acc = block_sum_f64(acc, scratch);
    if (threadIdx.x == 0) out[0] = acc;
}
