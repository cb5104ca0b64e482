#line 2 "attention_tc.cu"
// Tensor-core attention (FlashAttention-2 style), appended to attention.cu in
// the Attention family (kernels/src/lib.rs): the same interface and mask
// semantics as the scalar kernels there (`Mask`, `visible`, `row_bounds`,
// D in {64, 128}, GQA, a row that sees no key gets out = 0, lse = -inf), the
// math on bf16 `mma.sync` m16n8k16 with f32 accumulation.
//
// Block: 4 warps. Tiles live in dynamic shared memory, loaded with 16-byte
// `cp.async` (double-buffered: tile i+1 streams in while tile i is used) and
// read into fragments with `ldmatrix` (.trans for operands whose reduction
// runs over the tile's rows). A tile row is D bf16 = D/8 chunks of 16 bytes;
// chunk c of row r sits at chunk c ^ (r % 8) (XOR swizzle: the 8 rows an
// ldmatrix reads hit 8 different bank groups).
//
//   forward  attn_tc_fwd_dD / attn_tc_fwd_varlen_dD: a block owns 64 query
//     rows (16 per warp) of one head and walks 64-key tiles from the first
//     tile any of its rows sees; S = Q K^T and the online softmax stay in
//     registers, the probabilities P (f32 accumulators rounded to bf16) are
//     reused in place as the A operand of P V. Masks are applied only on the
//     tiles that need them (causal: the diagonal and the ragged end; span
//     masks: every tile, through `visible`). Causal grids run the longest
//     (last) query tiles first.
//   backward attn_tc_bwd_dq_dD: dQ per (64-row tile, head), walking key
//     tiles like the forward; attn_tc_bwd_dkdv_dD: dK, dV per (64-key tile,
//     KV head), summing the query heads of the group in head order and the
//     32-row query tiles in row order: deterministic, no atomics.
//     Both read delta from attn_bwd_delta (attention.cu).
//
// Batch invariance: a query row's forward depends only on its own q, the
// keys and its mask; the key tiles always start at a multiple of 64 and a
// tile none of a row's keys falls in changes nothing in it (p = 0, corr = 1),
// so a row gets the same bits decoded, prefilled or scored, alone or in any
// batch (the varlen entry runs the same code per sequence).

#define TC_THREADS 128
#define TC_BQ 64   // query rows per forward / dq block (16 per warp)
#define TC_BK 64   // keys per tile (forward, dq); keys per dkdv block
#define TC_BQB 32  // query rows per dkdv tile
#define TC_LOG2E 1.4426950408889634f

// Element (r, c) of a swizzled [rows][D] tile; c % 8 == 0 for row addresses.
template <int D>
__device__ __forceinline__ int tc_swz(int r, int c) {
    return r * D + (((c >> 3) ^ (r & 7)) << 3) + (c & 7);
}

// Issues the cp.async copies of `ROWS` rows of D bf16 (global row stride
// `ld`, from row r0, column offset col) into a swizzled tile; rows at or past
// `limit` become zeros.
template <int D, int ROWS>
__device__ __forceinline__ void tc_load_tile(bf16* dst, const bf16* src, int r0, int limit, int ld,
                                             int col) {
    constexpr int CH = D / 8;
    for (int t = threadIdx.x; t < ROWS * CH; t += TC_THREADS) {
        const int r = t / CH, c = (t % CH) * 8;
        const bool ok = r0 + r < limit;
        cp_async_16(dst + tc_swz<D>(r, c), src + (size_t)(ok ? r0 + r : 0) * ld + col + c, ok);
    }
}

// A operand (16 rows x 16 of the reduction dim, from column k) of the 16
// rows starting at r0 of a swizzled tile.
template <int D>
__device__ __forceinline__ void tc_frag_a(unsigned a[4], const bf16* tile, int r0, int k) {
    const int lane = threadIdx.x & 31;
    ldmatrix_x4(a, tile + tc_swz<D>(r0 + (lane & 15), k + (lane >> 4) * 8));
}

// B operands of two n-tiles (rows n0 .. n0+15 of the tile are the n index,
// columns k .. k+15 the reduction): b[0..1] for n0.., b[2..3] for n0+8..
template <int D>
__device__ __forceinline__ void tc_frag_b(unsigned b[4], const bf16* tile, int n0, int k) {
    const int lane = threadIdx.x & 31;
    ldmatrix_x4(b, tile + tc_swz<D>(n0 + (lane >> 4) * 8 + (lane & 7), k + ((lane >> 3) & 1) * 8));
}

// B operands of two n-tiles where the tile's rows are the reduction (k0 ..
// k0+15) and its columns the n index (n0 .. n0+15): ldmatrix .trans.
template <int D>
__device__ __forceinline__ void tc_frag_bt(unsigned b[4], const bf16* tile, int k0, int n0) {
    const int lane = threadIdx.x & 31;
    ldmatrix_x4_trans(b, tile + tc_swz<D>(k0 + ((lane >> 3) & 1) * 8 + (lane & 7), n0 + (lane >> 4) * 8));
}

// Accumulators of 16 rows x 16 columns (n-tiles 2j, 2j+1) as the A operand
// of the next product (bf16).
__device__ __forceinline__ void tc_acc_to_a(unsigned a[4], const float lo[4], const float hi[4]) {
    a[0] = pack_bf16x2(lo[0], lo[1]);
    a[1] = pack_bf16x2(lo[2], lo[3]);
    a[2] = pack_bf16x2(hi[0], hi[1]);
    a[3] = pack_bf16x2(hi[2], hi[3]);
}

// acc[NT][4] += (16 rows of `a_tile` from row ar0) x (NT*8 rows of `b_tile`
// from row br0)^T over D columns.
template <int D, int NT>
__device__ __forceinline__ void tc_qk(float acc[NT][4], const bf16* a_tile, int ar0,
                                      const bf16* b_tile, int br0) {
#pragma unroll
    for (int kk = 0; kk < D; kk += 16) {
        unsigned a[4];
        tc_frag_a<D>(a, a_tile, ar0, kk);
#pragma unroll
        for (int j = 0; j < NT / 2; ++j) {
            unsigned b[4];
            tc_frag_b<D>(b, b_tile, br0 + 16 * j, kk);
            mma_bf16_16816(acc[2 * j], a, b, acc[2 * j]);
            mma_bf16_16816(acc[2 * j + 1], a, b + 2, acc[2 * j + 1]);
        }
    }
}

// out[D/8][4] += P (16 x KT, accumulator layout) x tile rows r0 .. r0+KT-1.
template <int D, int KT>
__device__ __forceinline__ void tc_pv(float out[D / 8][4], float p[KT / 8][4],
                                      const bf16* tile, int r0) {
#pragma unroll
    for (int kk = 0; kk < KT / 16; ++kk) {
        unsigned a[4];
        tc_acc_to_a(a, p[2 * kk], p[2 * kk + 1]);
#pragma unroll
        for (int j = 0; j < D / 16; ++j) {
            unsigned b[4];
            tc_frag_bt<D>(b, tile, r0 + 16 * kk, 16 * j);
            mma_bf16_16816(out[2 * j], a, b, out[2 * j]);
            mma_bf16_16816(out[2 * j + 1], a, b + 2, out[2 * j + 1]);
        }
    }
}

// Keys [*lo, *hi) that bound what rows q0 .. q0+rows-1 (< m) see; *lo >= *hi
// when none sees a key. Whole block.
__device__ __forceinline__ void tc_block_bounds(const Mask& mk, int q0, int rows, int m, int n,
                                                int* lo, int* hi) {
    __shared__ int s_lo, s_hi;
    if (threadIdx.x == 0) {
        s_lo = n;
        s_hi = 0;
    }
    __syncthreads();
    for (int r = threadIdx.x; r < rows; r += TC_THREADS) {
        int a = n, b = 0;
        if (q0 + r < m) row_bounds(mk, q0 + r, n, &a, &b);
        if (a < b) {
            atomicMin(&s_lo, a);
            atomicMax(&s_hi, b);
        }
    }
    __syncthreads();
    *lo = s_lo;
    *hi = s_hi;
    __syncthreads();
}

// Sets to -inf the scores of s[NT][4] (rows row0 + groupID (+8), columns
// col0 + 8 * tile + 2 * threadID_in_group (+1)) that the mask hides. With
// `rows_are_keys` the roles swap (dkdv: rows are keys, columns queries).
// Rows or columns past the query count are left alone (never stored).
template <int NT>
__device__ __forceinline__ void tc_mask(float s[NT][4], const Mask& mk, int row0, int col0, int m,
                                        int n, bool rows_are_keys) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int r = row0 + g + 8 * (e >> 1), c = col0 + 8 * j + 2 * t + (e & 1);
            const int query = rows_are_keys ? c : r, key = rows_are_keys ? r : c;
            if (query < m && (key >= n || !visible(mk, query, key))) s[j][e] = IGPO_NEG_INF;
        }
    }
}

// ---------------------------------------------------------------- forward
// grid (ceil(m / TC_BQ), H), block TC_THREADS, dynamic smem
// (TC_BQ + 4 * TC_BK) * D * 2 bytes. `tile` is the query tile this block owns.
template <int D>
__device__ void attn_tc_fwd(bf16* __restrict__ out, float* __restrict__ lse,
                            const bf16* __restrict__ q, const bf16* __restrict__ k,
                            const bf16* __restrict__ v, int m, int n, int n_heads, int n_kv_heads,
                            Mask mk, int tile) {
    IGPO_DYNAMIC_SMEM(smem);
    bf16* qs = reinterpret_cast<bf16*>(smem);
    bf16* ks = qs + TC_BQ * D;      // 2 stages
    bf16* vs = ks + 2 * TC_BK * D;  // 2 stages
    const int h = blockIdx.y, kvh = h / (n_heads / n_kv_heads);
    const int q_cols = n_heads * D, kv_cols = n_kv_heads * D;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int q0 = tile * TC_BQ, wr0 = q0 + 16 * warp;
    const float scale = rsqrtf((float)D), sl2 = scale * TC_LOG2E;

    int lo, hi;
    tc_block_bounds(mk, q0, TC_BQ, m, n, &lo, &hi);
    const int k_begin = lo < hi ? (lo / TC_BK) * TC_BK : 0, k_end = lo < hi ? hi : 0;

    tc_load_tile<D, TC_BQ>(qs, q, q0, m, q_cols, h * D);
    if (k_begin < k_end) {
        tc_load_tile<D, TC_BK>(ks, k, k_begin, n, kv_cols, kvh * D);
        tc_load_tile<D, TC_BK>(vs, v, k_begin, n, kv_cols, kvh * D);
    }
    cp_async_commit();

    float o[D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float mx[2] = {IGPO_NEG_INF, IGPO_NEG_INF}, l[2] = {0.0f, 0.0f};  // l: this lane's part
    int stage = 0;
    for (int k0 = k_begin; k0 < k_end; k0 += TC_BK, stage ^= 1) {
        if (k0 + TC_BK < k_end) {
            tc_load_tile<D, TC_BK>(ks + (stage ^ 1) * TC_BK * D, k, k0 + TC_BK, n, kv_cols, kvh * D);
            tc_load_tile<D, TC_BK>(vs + (stage ^ 1) * TC_BK * D, v, k0 + TC_BK, n, kv_cols, kvh * D);
        }
        cp_async_commit();
        cp_async_wait<1>();  // everything but the prefetch just issued
        __syncthreads();
        const bf16* kt = ks + stage * TC_BK * D;
        const bf16* vt = vs + stage * TC_BK * D;

        float s[TC_BK / 8][4];
#pragma unroll
        for (int j = 0; j < TC_BK / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
        tc_qk<D, TC_BK / 8>(s, qs, 16 * warp, kt, 0);
        // Causal: only the tiles that cross this warp's diagonal or the end.
        const bool full = mk.causal && k0 + TC_BK - 1 <= mk.offset + wr0 && k0 + TC_BK <= n;
        if (!full) tc_mask<TC_BK / 8>(s, mk, wr0, k0, m, n, false);

        // Online softmax: lane holds rows g (e = 0, 1) and g + 8 (e = 2, 3);
        // the 4 lanes of a group share a row.
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            float tmax = IGPO_NEG_INF;
#pragma unroll
            for (int j = 0; j < TC_BK / 8; ++j)
                tmax = fmaxf(tmax, fmaxf(s[j][2 * half], s[j][2 * half + 1]));
            tmax = fmaxf(tmax, __shfl_xor_sync(IGPO_FULL_MASK, tmax, 1));
            tmax = fmaxf(tmax, __shfl_xor_sync(IGPO_FULL_MASK, tmax, 2));
            const float m_new = fmaxf(mx[half], tmax);
            // While the row has seen no key, m_new is -inf: exponents use 0
            // instead, so every p and corr is exp2(-inf) = 0 (no NaN).
            const float m_use = m_new == IGPO_NEG_INF ? 0.0f : m_new;
            const float corr = exp2f((mx[half] - m_use) * sl2);
            const float off = m_use * sl2;
            float sum = 0.0f;
#pragma unroll
            for (int j = 0; j < TC_BK / 8; ++j) {
#pragma unroll
                for (int e = 2 * half; e < 2 * half + 2; ++e) {
                    s[j][e] = exp2f(fmaf(s[j][e], sl2, -off));
                    sum += s[j][e];
                }
            }
            l[half] = l[half] * corr + sum;
            mx[half] = m_new;
#pragma unroll
            for (int j = 0; j < D / 8; ++j) {
                o[j][2 * half] *= corr;
                o[j][2 * half + 1] *= corr;
            }
        }
        tc_pv<D, TC_BK>(o, s, vt, 0);
        __syncthreads();  // this stage is read: the next prefetch may overwrite it
    }
    cp_async_wait_all();

#pragma unroll
    for (int half = 0; half < 2; ++half) {
        float sum = l[half];
        sum += __shfl_xor_sync(IGPO_FULL_MASK, sum, 1);
        sum += __shfl_xor_sync(IGPO_FULL_MASK, sum, 2);
        const int row = wr0 + g + 8 * half;
        if (row >= m) continue;
        const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
        bf16* orow = out + (size_t)row * q_cols + h * D + 2 * t;
#pragma unroll
        for (int j = 0; j < D / 8; ++j)
            *reinterpret_cast<unsigned*>(orow + 8 * j) =
                pack_bf16x2(o[j][2 * half] * inv, o[j][2 * half + 1] * inv);
        if (t == 0) lse[(size_t)row * n_heads + h] = sum > 0.0f ? mx[half] * scale + logf(sum) : IGPO_NEG_INF;
    }
}

// The query tile of block x among `tiles`: causal grids start with the last
// (longest) tiles so that the heaviest blocks are scheduled first.
__device__ __forceinline__ int tc_tile(const Mask& mk, int tiles) {
    return mk.causal ? tiles - 1 - (int)blockIdx.x : (int)blockIdx.x;
}

// Varlen forward (see attn_fwd_varlen in attention.cu for the layout):
// grid (ceil(max_b m_b / TC_BQ), H, B).
template <int D>
__device__ void attn_tc_fwd_varlen(bf16* __restrict__ out, float* __restrict__ lse,
                                   const bf16* __restrict__ q, const bf16* const* __restrict__ k_ptrs,
                                   const bf16* const* __restrict__ v_ptrs,
                                   const int* __restrict__ q_start, const int* __restrict__ n_keys,
                                   int n_heads, int n_kv_heads) {
    const int b = blockIdx.z;
    const int r0 = q_start[b], m = q_start[b + 1] - r0, n = n_keys[b];
    const int tiles = (m + TC_BQ - 1) / TC_BQ;
    if ((int)blockIdx.x >= tiles) return;  // the whole block: no row of this sequence
    const size_t qc = (size_t)n_heads * D;
    Mask mk = {1, n - m, nullptr, nullptr};
    attn_tc_fwd<D>(out + (size_t)r0 * qc, lse + (size_t)r0 * n_heads, q + (size_t)r0 * qc,
                   k_ptrs[b], v_ptrs[b], m, n, n_heads, n_kv_heads, mk, tc_tile(mk, tiles));
}

// ------------------------------------------------------------ backward
// Row r's lse in log2 units for p = exp2(s * sl2 - lse2); rows past m and
// rows that see no key get +inf (p = 0).
__device__ __forceinline__ float tc_lse2(const float* lse, int row, int m, int n_heads, int h) {
    const float x = row < m ? lse[(size_t)row * n_heads + h] : IGPO_NEG_INF;
    return x == IGPO_NEG_INF ? IGPO_POS_INF : x * TC_LOG2E;
}

// grid (ceil(m / TC_BQ), H), block TC_THREADS, dynamic smem
// (2 * TC_BQ + 4 * TC_BK) * D * 2 bytes: dq of one query tile and head.
template <int D>
__device__ void attn_tc_bwd_dq(bf16* __restrict__ dq, const bf16* __restrict__ q,
                               const bf16* __restrict__ k, const bf16* __restrict__ v,
                               const bf16* __restrict__ dout, const float* __restrict__ lse,
                               const float* __restrict__ delta, int m, int n, int n_heads,
                               int n_kv_heads, Mask mk) {
    IGPO_DYNAMIC_SMEM(smem);
    bf16* qs = reinterpret_cast<bf16*>(smem);
    bf16* dos = qs + TC_BQ * D;
    bf16* ks = dos + TC_BQ * D;     // 2 stages
    bf16* vs = ks + 2 * TC_BK * D;  // 2 stages
    const int h = blockIdx.y, kvh = h / (n_heads / n_kv_heads);
    const int q_cols = n_heads * D, kv_cols = n_kv_heads * D;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int q0 = tc_tile(mk, (m + TC_BQ - 1) / TC_BQ) * TC_BQ, wr0 = q0 + 16 * warp;
    const float scale = rsqrtf((float)D), sl2 = scale * TC_LOG2E;

    int lo, hi;
    tc_block_bounds(mk, q0, TC_BQ, m, n, &lo, &hi);
    const int k_begin = lo < hi ? (lo / TC_BK) * TC_BK : 0, k_end = lo < hi ? hi : 0;

    tc_load_tile<D, TC_BQ>(qs, q, q0, m, q_cols, h * D);
    tc_load_tile<D, TC_BQ>(dos, dout, q0, m, q_cols, h * D);
    if (k_begin < k_end) {
        tc_load_tile<D, TC_BK>(ks, k, k_begin, n, kv_cols, kvh * D);
        tc_load_tile<D, TC_BK>(vs, v, k_begin, n, kv_cols, kvh * D);
    }
    cp_async_commit();
    float lse2[2], dlt[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int row = wr0 + g + 8 * half;
        lse2[half] = tc_lse2(lse, row, m, n_heads, h);
        dlt[half] = row < m ? delta[(size_t)row * n_heads + h] : 0.0f;
    }

    float acc[D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
    int stage = 0;
    for (int k0 = k_begin; k0 < k_end; k0 += TC_BK, stage ^= 1) {
        if (k0 + TC_BK < k_end) {
            tc_load_tile<D, TC_BK>(ks + (stage ^ 1) * TC_BK * D, k, k0 + TC_BK, n, kv_cols, kvh * D);
            tc_load_tile<D, TC_BK>(vs + (stage ^ 1) * TC_BK * D, v, k0 + TC_BK, n, kv_cols, kvh * D);
        }
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const bf16* kt = ks + stage * TC_BK * D;
        const bf16* vt = vs + stage * TC_BK * D;

        float s[TC_BK / 8][4], dp[TC_BK / 8][4];
#pragma unroll
        for (int j = 0; j < TC_BK / 8; ++j) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
            dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.0f;
        }
        tc_qk<D, TC_BK / 8>(s, qs, 16 * warp, kt, 0);
        const bool full = mk.causal && k0 + TC_BK - 1 <= mk.offset + wr0 && k0 + TC_BK <= n;
        if (!full) tc_mask<TC_BK / 8>(s, mk, wr0, k0, m, n, false);
        tc_qk<D, TC_BK / 8>(dp, dos, 16 * warp, vt, 0);
        // dS = P * (dP - delta), in place of s.
#pragma unroll
        for (int j = 0; j < TC_BK / 8; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float p = exp2f(fmaf(s[j][e], sl2, -lse2[e >> 1]));
                s[j][e] = p * (dp[j][e] - dlt[e >> 1]);
            }
        }
        tc_pv<D, TC_BK>(acc, s, kt, 0);
        __syncthreads();
    }
    cp_async_wait_all();
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int row = wr0 + g + 8 * half;
        if (row >= m) continue;
        bf16* drow = dq + (size_t)row * q_cols + h * D + 2 * t;
#pragma unroll
        for (int j = 0; j < D / 8; ++j)
            *reinterpret_cast<unsigned*>(drow + 8 * j) =
                pack_bf16x2(acc[j][2 * half] * scale, acc[j][2 * half + 1] * scale);
    }
}

// Query rows [*first, *last] that see a key of [k0, k1); *first > *last when
// none does. Whole block.
__device__ __forceinline__ void tc_query_range(const Mask& mk, int k0, int k1, int m, int n,
                                               int* first, int* last) {
    if (mk.causal) {  // row j sees keys 0 ..= offset + j
        *first = max(0, k0 - mk.offset);
        *last = m - 1;
        return;
    }
    __shared__ int s_first, s_last;
    if (threadIdx.x == 0) {
        s_first = m;
        s_last = -1;
    }
    __syncthreads();
    for (int r = threadIdx.x; r < m; r += TC_THREADS) {
        int a, b;
        row_bounds(mk, r, n, &a, &b);
        if (a < b && a < k1 && b > k0) {
            atomicMin(&s_first, r);
            atomicMax(&s_last, r);
        }
    }
    __syncthreads();
    *first = s_first;
    *last = s_last;
    __syncthreads();
}

// Loads the query-side tiles of step `it` (head = it / tiles, query tile
// first_tile + it % tiles) into stage `st`: q, dout, lse2 and delta.
template <int D>
__device__ __forceinline__ void tc_dkdv_load(bf16* qs, bf16* dos, float* lse_s, float* delta_s,
                                             const bf16* q, const bf16* dout, const float* lse,
                                             const float* delta, int it, int tiles, int first_tile,
                                             int kvh, int group, int m, int n_heads) {
    const int h = kvh * group + it / tiles, r0 = (first_tile + it % tiles) * TC_BQB;
    tc_load_tile<D, TC_BQB>(qs, q, r0, m, n_heads * D, h * D);
    tc_load_tile<D, TC_BQB>(dos, dout, r0, m, n_heads * D, h * D);
    for (int r = threadIdx.x; r < TC_BQB; r += TC_THREADS) {
        lse_s[r] = tc_lse2(lse, r0 + r, m, n_heads, h);
        delta_s[r] = r0 + r < m ? delta[(size_t)(r0 + r) * n_heads + h] : 0.0f;
    }
}

// grid (ceil(n / TC_BK), KV), block TC_THREADS, dynamic smem
// (2 * TC_BK + 4 * TC_BQB) * D * 2 + 4 * TC_BQB * 4 bytes: dK, dV of one key
// tile and KV head. Warp w owns keys k0 + 16w .. +15; the products run
// transposed (S^T = K Q^T, dP^T = V dO^T) so that P^T and dS^T come out in
// the accumulator layout the A operand of dV += P^T dO, dK += dS^T Q takes.
template <int D>
__device__ void attn_tc_bwd_dkdv(bf16* __restrict__ dk, bf16* __restrict__ dv,
                                 const bf16* __restrict__ q, const bf16* __restrict__ k,
                                 const bf16* __restrict__ v, const bf16* __restrict__ dout,
                                 const float* __restrict__ lse, const float* __restrict__ delta,
                                 int m, int n, int n_heads, int n_kv_heads, Mask mk) {
    IGPO_DYNAMIC_SMEM(smem);
    bf16* ks = reinterpret_cast<bf16*>(smem);
    bf16* vs = ks + TC_BK * D;
    bf16* qs = vs + TC_BK * D;         // 2 stages
    bf16* dos = qs + 2 * TC_BQB * D;   // 2 stages
    float* lse_s = reinterpret_cast<float*>(dos + 2 * TC_BQB * D);  // 2 stages
    float* delta_s = lse_s + 2 * TC_BQB;                             // 2 stages
    const int kvh = blockIdx.y, group = n_heads / n_kv_heads;
    const int kv_cols = n_kv_heads * D;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int k0 = blockIdx.x * TC_BK, kw0 = k0 + 16 * warp;
    const float scale = rsqrtf((float)D), sl2 = scale * TC_LOG2E;

    int first, last;
    tc_query_range(mk, k0, min(n, k0 + TC_BK), m, n, &first, &last);
    const int first_tile = first / TC_BQB;
    const int tiles = first <= last ? last / TC_BQB - first_tile + 1 : 0;
    const int steps = tiles * group;  // (head, query tile), heads in order

    tc_load_tile<D, TC_BK>(ks, k, k0, n, kv_cols, kvh * D);
    tc_load_tile<D, TC_BK>(vs, v, k0, n, kv_cols, kvh * D);
    if (steps > 0)
        tc_dkdv_load<D>(qs, dos, lse_s, delta_s, q, dout, lse, delta, 0, tiles, first_tile, kvh,
                        group, m, n_heads);
    cp_async_commit();

    float dka[D / 8][4], dva[D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
        dka[j][0] = dka[j][1] = dka[j][2] = dka[j][3] = 0.0f;
        dva[j][0] = dva[j][1] = dva[j][2] = dva[j][3] = 0.0f;
    }
    for (int it = 0; it < steps; ++it) {
        const int st = it & 1;
        if (it + 1 < steps)
            tc_dkdv_load<D>(qs + (st ^ 1) * TC_BQB * D, dos + (st ^ 1) * TC_BQB * D,
                            lse_s + (st ^ 1) * TC_BQB, delta_s + (st ^ 1) * TC_BQB, q, dout, lse,
                            delta, it + 1, tiles, first_tile, kvh, group, m, n_heads);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();  // also publishes the lse / delta stores of this stage
        const bf16* qt = qs + st * TC_BQB * D;
        const bf16* dot = dos + st * TC_BQB * D;
        const float* ls = lse_s + st * TC_BQB;
        const float* ds = delta_s + st * TC_BQB;
        const int r0 = (first_tile + it % tiles) * TC_BQB;

        float p[TC_BQB / 8][4], dp[TC_BQB / 8][4];
#pragma unroll
        for (int j = 0; j < TC_BQB / 8; ++j) {
            p[j][0] = p[j][1] = p[j][2] = p[j][3] = 0.0f;
            dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.0f;
        }
        tc_qk<D, TC_BQB / 8>(p, ks, 16 * warp, qt, 0);  // S^T: rows keys, columns queries
        // Causal: every query of the tile sees every key of the warp.
        const bool full = mk.causal && kw0 + 15 <= mk.offset + r0;
        if (!full) tc_mask<TC_BQB / 8>(p, mk, kw0, r0, m, n, true);
#pragma unroll
        for (int j = 0; j < TC_BQB / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                p[j][e] = exp2f(fmaf(p[j][e], sl2, -ls[8 * j + 2 * t + (e & 1)]));
        tc_pv<D, TC_BQB>(dva, p, dot, 0);                  // dV += P^T dO
        tc_qk<D, TC_BQB / 8>(dp, vs, 16 * warp, dot, 0);  // dP^T = V dO^T
#pragma unroll
        for (int j = 0; j < TC_BQB / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) p[j][e] *= dp[j][e] - ds[8 * j + 2 * t + (e & 1)];
        tc_pv<D, TC_BQB>(dka, p, qt, 0);  // dK += dS^T Q
        __syncthreads();
    }
    cp_async_wait_all();
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int key = kw0 + g + 8 * half;
        if (key >= n) continue;
        const size_t at = (size_t)key * kv_cols + kvh * D + 2 * t;
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
            *reinterpret_cast<unsigned*>(dk + at + 8 * j) =
                pack_bf16x2(dka[j][2 * half] * scale, dka[j][2 * half + 1] * scale);
            *reinterpret_cast<unsigned*>(dv + at + 8 * j) =
                pack_bf16x2(dva[j][2 * half], dva[j][2 * half + 1]);
        }
    }
}

// ------------------------------------------------------ entry points
#define IGPO_ATTN_TC_ENTRIES(D)                                                                    \
    extern "C" __global__ void __launch_bounds__(TC_THREADS) attn_tc_fwd_d##D(                    \
        bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int m, int n,         \
        int n_heads, int n_kv_heads, int causal, int offset, const int* span_ptr,                 \
        const int* spans) {                                                                        \
        Mask mk = {causal, offset, span_ptr, spans};                                               \
        attn_tc_fwd<D>(out, lse, q, k, v, m, n, n_heads, n_kv_heads, mk,                           \
                       tc_tile(mk, (m + TC_BQ - 1) / TC_BQ));                                      \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(TC_THREADS) attn_tc_fwd_varlen_d##D(             \
        bf16* out, float* lse, const bf16* q, const bf16* const* k_ptrs,                          \
        const bf16* const* v_ptrs, const int* q_start, const int* n_keys, int n_heads,            \
        int n_kv_heads) {                                                                          \
        attn_tc_fwd_varlen<D>(out, lse, q, k_ptrs, v_ptrs, q_start, n_keys, n_heads, n_kv_heads); \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(TC_THREADS) attn_tc_bwd_dkdv_d##D(               \
        bf16* dk, bf16* dv, const bf16* q, const bf16* k, const bf16* v, const bf16* dout,        \
        const float* lse, const float* delta, int m, int n, int n_heads, int n_kv_heads,          \
        int causal, int offset, const int* span_ptr, const int* spans) {                          \
        Mask mk = {causal, offset, span_ptr, spans};                                               \
        attn_tc_bwd_dkdv<D>(dk, dv, q, k, v, dout, lse, delta, m, n, n_heads, n_kv_heads, mk);    \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(TC_THREADS) attn_tc_bwd_dq_d##D(                 \
        bf16* dq, const bf16* q, const bf16* k, const bf16* v, const bf16* dout,                  \
        const float* lse, const float* delta, int m, int n, int n_heads, int n_kv_heads,          \
        int causal, int offset, const int* span_ptr, const int* spans) {                          \
        Mask mk = {causal, offset, span_ptr, spans};                                               \
        attn_tc_bwd_dq<D>(dq, q, k, v, dout, lse, delta, m, n, n_heads, n_kv_heads, mk);          \
    }

IGPO_ATTN_TC_ENTRIES(64)
IGPO_ATTN_TC_ENTRIES(128)
