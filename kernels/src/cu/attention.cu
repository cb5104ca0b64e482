// Attention in the FlashAttention style: tiled over keys with an online
// softmax, no [queries x keys] matrix in memory. Mirrors
// engine/src/backend/cpu/attention.rs: q[m, H*D], k, v[n, KV*D] (bf16, row
// major), query head h reads KV head h / (H / KV) (GQA), scores scaled by
// 1/sqrt(D), lse[m, H] (f32) = log-sum-exp of each row's visible scores.
// Positions enter through RoPE before these kernels; the mask is in key
// indices, exactly as `AttnMask`:
//   causal (causal != 0): query row j sees keys 0 ..= offset + j;
//   spans  (causal == 0): query row j sees the union of the key ranges
//     spans[2s] .. spans[2s+1] for s in span_ptr[j] .. span_ptr[j+1]
//   (the IGPO scoring block mask: a shared prefix plus each probe's own keys).
// A row that sees no key gets out = 0 and lse = -inf.
// Layout rules the launch wrappers check: D in {64, 128}; row strides and
// base pointers 16-byte aligned (D % 8 == 0). Backward: `attn_bwd_delta`,
// then `attn_bwd_dkdv_*` (one block per key tile and KV head, summing the
// query heads of the group in head order: deterministic, no atomics) and
// `attn_bwd_dq_*`. Decode: `kv_append` then `attn_fwd_varlen_*` over every
// sequence of the batch (bitwise the same numbers as the forward, for batch
// invariance) or `attn_decode_*` (keys split over warps: faster on long
// caches, not bitwise equal to the forward).

#define ATT_GROUP 8    // threads that share one query (or key) row
#define ATT_ROWS 16    // query rows per forward / dq block, key rows per dkdv block
#define ATT_THREADS (ATT_GROUP * ATT_ROWS)
#define ATT_BK 64      // keys per tile (forward, dq)
#define ATT_BQ 64      // queries per tile (dkdv)

struct Mask {
    int causal;
    int offset;
    const int* span_ptr;
    const int* spans;
};

__device__ __forceinline__ bool visible(const Mask& mk, int row, int key) {
    if (mk.causal) return key <= mk.offset + row;
    for (int s = mk.span_ptr[row]; s < mk.span_ptr[row + 1]; ++s) {
        if (key >= mk.spans[2 * s] && key < mk.spans[2 * s + 1]) return true;
    }
    return false;
}

// Keys [lo, hi) that bound what row `row` can see (hi <= n).
__device__ __forceinline__ void row_bounds(const Mask& mk, int row, int n, int* lo, int* hi) {
    if (mk.causal) {
        *lo = 0;
        *hi = min(n, mk.offset + row + 1);
        return;
    }
    int a = n, b = 0;
    for (int s = mk.span_ptr[row]; s < mk.span_ptr[row + 1]; ++s) {
        a = min(a, mk.spans[2 * s]);
        b = max(b, mk.spans[2 * s + 1]);
    }
    *lo = a;
    *hi = min(b, n);
}

// Sum over the ATT_GROUP consecutive lanes that share a row.
__device__ __forceinline__ float group_sum(float v) {
    v += __shfl_xor_sync(IGPO_FULL_MASK, v, 1);
    v += __shfl_xor_sync(IGPO_FULL_MASK, v, 2);
    v += __shfl_xor_sync(IGPO_FULL_MASK, v, 4);
    return v;
}

__device__ __forceinline__ float group_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(IGPO_FULL_MASK, v, 1));
    v = fmaxf(v, __shfl_xor_sync(IGPO_FULL_MASK, v, 2));
    v = fmaxf(v, __shfl_xor_sync(IGPO_FULL_MASK, v, 4));
    return v;
}

// Copies `rows` rows of D bf16 (global row stride `ld`, from row r0, column
// offset col) into dst[rows][D] in shared memory, 16 bytes at a time; rows
// past `limit` become zeros.
template <int D>
__device__ __forceinline__ void load_tile(bf16* dst, const bf16* src, int r0, int rows, int limit,
                                          int ld, int col) {
    const int vecs = rows * (D / 8);
    for (int t = threadIdx.x; t < vecs; t += blockDim.x) {
        const int r = t / (D / 8), c = (t % (D / 8)) * 8;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (r0 + r < limit)
            v = *reinterpret_cast<const uint4*>(src + (size_t)(r0 + r) * ld + col + c);
        *reinterpret_cast<uint4*>(dst + r * D + c) = v;
    }
}

// ---------------------------------------------------------------- forward
// grid (ceil(m / ATT_ROWS), H), block ATT_THREADS. Thread g of a row's group
// owns dims g, g + 8, g + 16, ... (interleaved: conflict-free smem reads).
template <int D>
__device__ void attn_fwd(bf16* __restrict__ out, float* __restrict__ lse,
                         const bf16* __restrict__ q, const bf16* __restrict__ k,
                         const bf16* __restrict__ v, int m, int n, int n_heads, int n_kv_heads,
                         Mask mk) {
    constexpr int DPT = D / ATT_GROUP;
    __shared__ __align__(16) bf16 ks[ATT_BK * D];
    __shared__ __align__(16) bf16 vs[ATT_BK * D];
    __shared__ float ss[ATT_ROWS][ATT_BK];
    __shared__ int tile_lo, tile_hi;
    const int h = blockIdx.y, kvh = h / (n_heads / n_kv_heads);
    const int q_cols = n_heads * D, kv_cols = n_kv_heads * D;
    const int lr = threadIdx.x / ATT_GROUP, g = threadIdx.x % ATT_GROUP;
    const int row = blockIdx.x * ATT_ROWS + lr;
    const bool live = row < m;
    const float scale = rsqrtf((float)D);

    float qr[DPT], o[DPT];
#pragma unroll
    for (int t = 0; t < DPT; ++t) {
        qr[t] = live ? to_f32(q[(size_t)row * q_cols + h * D + t * ATT_GROUP + g]) : 0.0f;
        o[t] = 0.0f;
    }
    int lo = n, hi = 0;
    if (live) row_bounds(mk, row, n, &lo, &hi);
    if (threadIdx.x == 0) {
        tile_lo = n;
        tile_hi = 0;
    }
    __syncthreads();
    if (g == 0 && lo < hi) {
        atomicMin(&tile_lo, lo);
        atomicMax(&tile_hi, hi);
    }
    __syncthreads();
    const int k_begin = (tile_lo / ATT_BK) * ATT_BK, k_end = tile_hi;

    float mx = IGPO_NEG_INF, l = 0.0f;
    for (int k0 = k_begin; k0 < k_end; k0 += ATT_BK) {
        __syncthreads();
        load_tile<D>(ks, k, k0, ATT_BK, n, kv_cols, kvh * D);
        load_tile<D>(vs, v, k0, ATT_BK, n, kv_cols, kvh * D);
        __syncthreads();
        // Scores of this row against the tile; lane (j % 8) stores key j.
        for (int j = 0; j < ATT_BK; ++j) {
            float part = 0.0f;
#pragma unroll
            for (int t = 0; t < DPT; ++t) part += qr[t] * to_f32(ks[j * D + t * ATT_GROUP + g]);
            const float s = group_sum(part) * scale;
            const int key = k0 + j;
            if (g == (j & (ATT_GROUP - 1)))
                ss[lr][j] = (live && key < n && visible(mk, row, key)) ? s : IGPO_NEG_INF;
        }
        __syncwarp();
        float tmax = IGPO_NEG_INF;
        for (int j = g; j < ATT_BK; j += ATT_GROUP) tmax = fmaxf(tmax, ss[lr][j]);
        tmax = group_max(tmax);
        // No branch on the row's state: every lane must reach the shuffles.
        // While a row has seen no visible key, m_new is -inf and all p are 0.
        const float m_new = fmaxf(mx, tmax);
        const float corr = mx == IGPO_NEG_INF ? 0.0f : expf(mx - m_new);
        float psum = 0.0f;
        for (int j = g; j < ATT_BK; j += ATT_GROUP) {
            const float s = ss[lr][j];
            const float p = s == IGPO_NEG_INF ? 0.0f : expf(s - m_new);
            ss[lr][j] = p;
            psum += p;
        }
        psum = group_sum(psum);
        __syncwarp();
        l = l * corr + psum;
        mx = m_new;
#pragma unroll
        for (int t = 0; t < DPT; ++t) o[t] *= corr;
        for (int j = 0; j < ATT_BK; ++j) {
            const float p = ss[lr][j];
#pragma unroll
            for (int t = 0; t < DPT; ++t) o[t] += p * to_f32(vs[j * D + t * ATT_GROUP + g]);
        }
        __syncwarp();
    }
    if (!live) return;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
    for (int t = 0; t < DPT; ++t)
        out[(size_t)row * q_cols + h * D + t * ATT_GROUP + g] = to_bf16(o[t] * inv);
    if (g == 0) lse[(size_t)row * n_heads + h] = l > 0.0f ? mx + logf(l) : IGPO_NEG_INF;
}

// Varlen forward: several sequences in one launch, each with its own KV cache
// and its query rows at the end of it (causal, offset n_b - m_b): decode
// (m_b = 1) and batched prefill. Sequence b owns rows q_start[b] ..
// q_start[b+1] of the packed q / out / lse and keys k_ptrs[b], v_ptrs[b]
// ([n_keys[b], KV*D]). Every row runs exactly attn_fwd's code (same key tiles
// from key 0, same order of operations), so a row gets the same bits whether it
// is decoded, prefilled or scored, alone or in any batch: the log-probs seen at
// rollout are the ones recomputed for the loss (DESIGN: batch invariance). The
// launch wrappers send every causal forward here (one sequence: B = 1) and
// only span masks to attn_fwd_*, so equality never rests on two kernels
// compiling the same arithmetic the same way.
// grid (ceil(max_b m_b / ATT_ROWS), H, B), block ATT_THREADS.
template <int D>
__device__ void attn_fwd_varlen(bf16* __restrict__ out, float* __restrict__ lse,
                                const bf16* __restrict__ q, const bf16* const* __restrict__ k_ptrs,
                                const bf16* const* __restrict__ v_ptrs,
                                const int* __restrict__ q_start, const int* __restrict__ n_keys,
                                int n_heads, int n_kv_heads) {
    const int b = blockIdx.z;
    const int r0 = q_start[b], m = q_start[b + 1] - r0, n = n_keys[b];
    if ((int)blockIdx.x * ATT_ROWS >= m) return;  // the whole block: no row of this sequence
    const size_t qc = (size_t)n_heads * D;
    Mask mk = {1, n - m, nullptr, nullptr};
    attn_fwd<D>(out + (size_t)r0 * qc, lse + (size_t)r0 * n_heads, q + (size_t)r0 * qc, k_ptrs[b],
                v_ptrs[b], m, n, n_heads, n_kv_heads, mk);
}

// KV-cache append for the sequences of one varlen launch, in one launch:
// packed row r of k_new / v_new ([q_start[batch], cols] bf16) belongs to the
// sequence b with q_start[b] <= r < q_start[b+1] and lands at row
// n_keys[b] - m_b + (r - q_start[b]) of its cache (k_ptrs[b], v_ptrs[b]), so
// after it every cache holds n_keys[b] rows, the new ones last: exactly what
// attn_fwd_varlen then reads. The host reserved the capacity. Sequences with
// no rows are allowed (equal starts).
extern "C" __global__ void kv_append(bf16* const* __restrict__ k_ptrs,
                                     bf16* const* __restrict__ v_ptrs,
                                     const int* __restrict__ q_start,
                                     const int* __restrict__ n_keys,
                                     const bf16* __restrict__ k_new,
                                     const bf16* __restrict__ v_new, int batch, int cols) {
    const long long total = (long long)q_start[batch] * cols;
    IGPO_GRID_STRIDE(i, total) {
        const int r = (int)(i / cols), c = (int)(i % cols);
        // The last sequence whose first row is <= r (skips empty sequences).
        int lo = 0, hi = batch - 1;
        while (lo < hi) {
            const int mid = (lo + hi + 1) >> 1;
            if (q_start[mid] <= r) lo = mid;
            else hi = mid - 1;
        }
        const int m_b = q_start[lo + 1] - q_start[lo];
        const long long row = (long long)n_keys[lo] - m_b + (r - q_start[lo]);
        k_ptrs[lo][row * cols + c] = k_new[i];
        v_ptrs[lo][row * cols + c] = v_new[i];
    }
}

// ------------------------------------------------------------ backward
// delta[i, h] = sum_d dout[i, h*D + d] * out[i, h*D + d]; one warp per (i, h).
extern "C" __global__ void attn_bwd_delta(float* __restrict__ delta, const bf16* __restrict__ out,
                                          const bf16* __restrict__ dout, int m, int n_heads,
                                          int head_dim) {
    const long long w = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (w >= (long long)m * n_heads) return;
    const size_t base = (size_t)w * head_dim;  // row i, head h: (i * H + h) * D
    float acc = 0.0f;
    for (int d = lane; d < head_dim; d += 32) acc += to_f32(dout[base + d]) * to_f32(out[base + d]);
    acc = warp_sum(acc);
    if (lane == 0) delta[w] = acc;
}

// grid (ceil(n / ATT_ROWS), KV), block ATT_THREADS: each group owns one key
// row j of KV head kvh and sums over the query heads of its group, in order,
// and over every query tile that can see the block's keys.
template <int D>
__device__ void attn_bwd_dkdv(bf16* __restrict__ dk, bf16* __restrict__ dv,
                              const bf16* __restrict__ q, const bf16* __restrict__ k,
                              const bf16* __restrict__ v, const bf16* __restrict__ dout,
                              const float* __restrict__ lse, const float* __restrict__ delta, int m,
                              int n, int n_heads, int n_kv_heads, Mask mk) {
    constexpr int DPT = D / ATT_GROUP;
    __shared__ __align__(16) bf16 qs[ATT_BQ * D];
    __shared__ __align__(16) bf16 dos[ATT_BQ * D];
    __shared__ float lse_s[ATT_BQ], delta_s[ATT_BQ];
    const int kvh = blockIdx.y, group = n_heads / n_kv_heads;
    const int q_cols = n_heads * D, kv_cols = n_kv_heads * D;
    const int lr = threadIdx.x / ATT_GROUP, g = threadIdx.x % ATT_GROUP;
    const int k0 = blockIdx.x * ATT_ROWS;
    const int key = k0 + lr;
    const bool live = key < n;
    const int k1 = min(n, k0 + ATT_ROWS);
    const float scale = rsqrtf((float)D);

    float kr[DPT], vr[DPT], dkr[DPT], dvr[DPT];
#pragma unroll
    for (int t = 0; t < DPT; ++t) {
        const size_t at = (size_t)key * kv_cols + kvh * D + t * ATT_GROUP + g;
        kr[t] = live ? to_f32(k[at]) : 0.0f;
        vr[t] = live ? to_f32(v[at]) : 0.0f;
        dkr[t] = 0.0f;
        dvr[t] = 0.0f;
    }
    for (int hi = 0; hi < group; ++hi) {
        const int h = kvh * group + hi;
        for (int q0 = 0; q0 < m; q0 += ATT_BQ) {
            // Skip query tiles whose rows cannot see any key of this block.
            bool any = false;
            for (int r = threadIdx.x; r < ATT_BQ; r += blockDim.x) {
                if (q0 + r < m) {
                    int lo, hh;
                    row_bounds(mk, q0 + r, n, &lo, &hh);
                    any = any || (lo < k1 && hh > k0 && lo < hh);
                }
            }
            if (!__syncthreads_or(any)) continue;
            load_tile<D>(qs, q, q0, ATT_BQ, m, q_cols, h * D);
            load_tile<D>(dos, dout, q0, ATT_BQ, m, q_cols, h * D);
            for (int r = threadIdx.x; r < ATT_BQ; r += blockDim.x) {
                const bool ok = q0 + r < m;
                lse_s[r] = ok ? lse[(size_t)(q0 + r) * n_heads + h] : IGPO_NEG_INF;
                delta_s[r] = ok ? delta[(size_t)(q0 + r) * n_heads + h] : 0.0f;
            }
            __syncthreads();
            const int rows = min(ATT_BQ, m - q0);
            for (int i = 0; i < rows; ++i) {
                float sp = 0.0f, dpp = 0.0f;
#pragma unroll
                for (int t = 0; t < DPT; ++t) {
                    sp += to_f32(qs[i * D + t * ATT_GROUP + g]) * kr[t];
                    dpp += to_f32(dos[i * D + t * ATT_GROUP + g]) * vr[t];
                }
                const float s = group_sum(sp) * scale;
                const float dp = group_sum(dpp);
                const float li = lse_s[i];
                const bool vis = live && li != IGPO_NEG_INF && visible(mk, q0 + i, key);
                const float p = vis ? expf(s - li) : 0.0f;
                const float ds = p * (dp - delta_s[i]);
#pragma unroll
                for (int t = 0; t < DPT; ++t) {
                    dvr[t] += p * to_f32(dos[i * D + t * ATT_GROUP + g]);
                    dkr[t] += ds * to_f32(qs[i * D + t * ATT_GROUP + g]);
                }
            }
            __syncthreads();
        }
    }
    if (!live) return;
#pragma unroll
    for (int t = 0; t < DPT; ++t) {
        const size_t at = (size_t)key * kv_cols + kvh * D + t * ATT_GROUP + g;
        dk[at] = to_bf16(dkr[t] * scale);
        dv[at] = to_bf16(dvr[t]);
    }
}

// grid (ceil(m / ATT_ROWS), H), block ATT_THREADS: dq of each query row.
template <int D>
__device__ void attn_bwd_dq(bf16* __restrict__ dq, const bf16* __restrict__ q,
                            const bf16* __restrict__ k, const bf16* __restrict__ v,
                            const bf16* __restrict__ dout, const float* __restrict__ lse,
                            const float* __restrict__ delta, int m, int n, int n_heads,
                            int n_kv_heads, Mask mk) {
    constexpr int DPT = D / ATT_GROUP;
    __shared__ __align__(16) bf16 ks[ATT_BK * D];
    __shared__ __align__(16) bf16 vs[ATT_BK * D];
    __shared__ int tile_lo, tile_hi;
    const int h = blockIdx.y, kvh = h / (n_heads / n_kv_heads);
    const int q_cols = n_heads * D, kv_cols = n_kv_heads * D;
    const int lr = threadIdx.x / ATT_GROUP, g = threadIdx.x % ATT_GROUP;
    const int row = blockIdx.x * ATT_ROWS + lr;
    const bool live = row < m;
    const float scale = rsqrtf((float)D);

    float qr[DPT], dor[DPT], dqr[DPT];
#pragma unroll
    for (int t = 0; t < DPT; ++t) {
        const size_t at = (size_t)row * q_cols + h * D + t * ATT_GROUP + g;
        qr[t] = live ? to_f32(q[at]) : 0.0f;
        dor[t] = live ? to_f32(dout[at]) : 0.0f;
        dqr[t] = 0.0f;
    }
    const float li = live ? lse[(size_t)row * n_heads + h] : IGPO_NEG_INF;
    const float di = live ? delta[(size_t)row * n_heads + h] : 0.0f;
    int lo = n, hi = 0;
    if (live) row_bounds(mk, row, n, &lo, &hi);
    if (threadIdx.x == 0) {
        tile_lo = n;
        tile_hi = 0;
    }
    __syncthreads();
    if (g == 0 && lo < hi) {
        atomicMin(&tile_lo, lo);
        atomicMax(&tile_hi, hi);
    }
    __syncthreads();
    const int k_begin = (tile_lo / ATT_BK) * ATT_BK, k_end = tile_hi;
    for (int k0 = k_begin; k0 < k_end; k0 += ATT_BK) {
        __syncthreads();
        load_tile<D>(ks, k, k0, ATT_BK, n, kv_cols, kvh * D);
        load_tile<D>(vs, v, k0, ATT_BK, n, kv_cols, kvh * D);
        __syncthreads();
        for (int j = 0; j < ATT_BK; ++j) {
            float sp = 0.0f, dpp = 0.0f;
#pragma unroll
            for (int t = 0; t < DPT; ++t) {
                sp += qr[t] * to_f32(ks[j * D + t * ATT_GROUP + g]);
                dpp += dor[t] * to_f32(vs[j * D + t * ATT_GROUP + g]);
            }
            const float s = group_sum(sp) * scale;
            const float dp = group_sum(dpp);
            const int key = k0 + j;
            const bool vis = live && key < n && li != IGPO_NEG_INF && visible(mk, row, key);
            const float p = vis ? expf(s - li) : 0.0f;
            const float ds = p * (dp - di);
#pragma unroll
            for (int t = 0; t < DPT; ++t) dqr[t] += ds * to_f32(ks[j * D + t * ATT_GROUP + g]);
        }
    }
    if (!live) return;
#pragma unroll
    for (int t = 0; t < DPT; ++t)
        dq[(size_t)row * q_cols + h * D + t * ATT_GROUP + g] = to_bf16(dqr[t] * scale);
}

// --------------------------------------------------------------- decode
// One new query per sequence against its KV cache: q[B, H*D]; sequence b's
// cache is k_ptrs[b], v_ptrs[b] ([lens[b], KV*D] bf16, row major); it sees
// all of its lens[b] keys (the query is the last position). grid (B, H),
// block 128 (4 warps): warps take keys round-robin with their own online
// softmax; lanes own dims lane, lane + 32, ...; warps merge at the end.
template <int D>
__device__ void attn_decode(bf16* __restrict__ out, const bf16* __restrict__ q,
                            const bf16* const* __restrict__ k_ptrs,
                            const bf16* const* __restrict__ v_ptrs, const int* __restrict__ lens,
                            int n_heads, int n_kv_heads) {
    constexpr int DPL = D / 32;
    constexpr int WARPS = 4;
    __shared__ float wm[WARPS], wl[WARPS];
    __shared__ float wo[WARPS][D];
    const int b = blockIdx.x, h = blockIdx.y, kvh = h / (n_heads / n_kv_heads);
    const int q_cols = n_heads * D, kv_cols = n_kv_heads * D;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const float scale = rsqrtf((float)D);
    const bf16* kb = k_ptrs[b];
    const bf16* vb = v_ptrs[b];
    const int len = lens[b];
    float qr[DPL], o[DPL];
#pragma unroll
    for (int t = 0; t < DPL; ++t) {
        qr[t] = to_f32(q[(size_t)b * q_cols + h * D + t * 32 + lane]);
        o[t] = 0.0f;
    }
    float mx = IGPO_NEG_INF, l = 0.0f;
    for (int j = warp; j < len; j += WARPS) {
        const bf16* kr = kb + (size_t)j * kv_cols + kvh * D;
        const bf16* vr = vb + (size_t)j * kv_cols + kvh * D;
        float part = 0.0f;
#pragma unroll
        for (int t = 0; t < DPL; ++t) part += qr[t] * to_f32(kr[t * 32 + lane]);
        const float s = warp_sum(part) * scale;
        const float m_new = fmaxf(mx, s);
        const float corr = mx == IGPO_NEG_INF ? 0.0f : expf(mx - m_new);
        const float p = expf(s - m_new);
        l = l * corr + p;
#pragma unroll
        for (int t = 0; t < DPL; ++t) o[t] = o[t] * corr + p * to_f32(vr[t * 32 + lane]);
        mx = m_new;
    }
    if (lane == 0) {
        wm[warp] = mx;
        wl[warp] = l;
    }
#pragma unroll
    for (int t = 0; t < DPL; ++t) wo[warp][t * 32 + lane] = o[t];
    __syncthreads();
    if (warp != 0) return;
    float gm = IGPO_NEG_INF;
    for (int w = 0; w < WARPS; ++w) gm = fmaxf(gm, wm[w]);
    float gl = 0.0f, f[WARPS];
    for (int w = 0; w < WARPS; ++w) {
        f[w] = wm[w] == IGPO_NEG_INF ? 0.0f : expf(wm[w] - gm);
        gl += wl[w] * f[w];
    }
    const float inv = gl > 0.0f ? 1.0f / gl : 0.0f;
#pragma unroll
    for (int t = 0; t < DPL; ++t) {
        float acc = 0.0f;
        for (int w = 0; w < WARPS; ++w) acc += wo[w][t * 32 + lane] * f[w];
        out[(size_t)b * q_cols + h * D + t * 32 + lane] = to_bf16(acc * inv);
    }
}

// ------------------------------------------------------ entry points
#define IGPO_ATTN_ENTRIES(D)                                                                       \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS) attn_fwd_d##D(                      \
        bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int m, int n,         \
        int n_heads, int n_kv_heads, int causal, int offset, const int* span_ptr,                 \
        const int* spans) {                                                                        \
        Mask mk = {causal, offset, span_ptr, spans};                                               \
        attn_fwd<D>(out, lse, q, k, v, m, n, n_heads, n_kv_heads, mk);                             \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS) attn_fwd_varlen_d##D(               \
        bf16* out, float* lse, const bf16* q, const bf16* const* k_ptrs,                          \
        const bf16* const* v_ptrs, const int* q_start, const int* n_keys, int n_heads,            \
        int n_kv_heads) {                                                                          \
        attn_fwd_varlen<D>(out, lse, q, k_ptrs, v_ptrs, q_start, n_keys, n_heads, n_kv_heads);    \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS) attn_bwd_dkdv_d##D(                 \
        bf16* dk, bf16* dv, const bf16* q, const bf16* k, const bf16* v, const bf16* dout,        \
        const float* lse, const float* delta, int m, int n, int n_heads, int n_kv_heads,          \
        int causal, int offset, const int* span_ptr, const int* spans) {                          \
        Mask mk = {causal, offset, span_ptr, spans};                                               \
        attn_bwd_dkdv<D>(dk, dv, q, k, v, dout, lse, delta, m, n, n_heads, n_kv_heads, mk);       \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS) attn_bwd_dq_d##D(                   \
        bf16* dq, const bf16* q, const bf16* k, const bf16* v, const bf16* dout,                  \
        const float* lse, const float* delta, int m, int n, int n_heads, int n_kv_heads,          \
        int causal, int offset, const int* span_ptr, const int* spans) {                          \
        Mask mk = {causal, offset, span_ptr, spans};                                               \
        attn_bwd_dq<D>(dq, q, k, v, dout, lse, delta, m, n, n_heads, n_kv_heads, mk);             \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) attn_decode_d##D(                           \
        bf16* out, const bf16* q, const bf16* const* k_ptrs, const bf16* const* v_ptrs,           \
        const int* lens, int n_heads, int n_kv_heads) {                                            \
        attn_decode<D>(out, q, k_ptrs, v_ptrs, lens, n_heads, n_kv_heads);                         \
    }

IGPO_ATTN_ENTRIES(64)
IGPO_ATTN_ENTRIES(128)
