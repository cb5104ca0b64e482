// Split-K decode attention over the paged KV cache (flash-decoding), and the
// scatter of new key / value rows into the pools. Mirrors the CPU backend's
// `Backend::paged_attention` (engine/src/backend/mod.rs
// `paged_attention_per_sequence`: gather each sequence's keys, then causal
// attention): out[row, h] = sum_j softmax_j(q[row, h] . k_j / sqrt(D)) v_j
// over the keys j < n_keys of the row, query head h reading KV head
// h / (H / KV) (GQA).
//
// Pools: k_pool, v_pool [pool_rows, KV*D] bf16, one row per cached position.
// Key j of sequence b lives in pool row
//   table_b[j / block_size] * block_size + j % block_size
// where table_b is sequence b's block table (int32 block ids).
//
// Everything the kernels need about the batch is in one int32 array `meta`
// (one upload per call), at offsets the host passes:
//   items  [n_items][4] at 0:  {q row, sequence, n_keys, first split}: one
//          per query row; the row sees keys 0 .. n_keys-1 (causal: row j of
//          a sequence whose cache holds n keys after adding m rows sees
//          n - m + j + 1); its splits are first .. first + splits(n_keys)-1
//          in the scratch, splits(n) = ceil(n / split_keys);
//   work   [n_work][2]  at off_work: {item, split} of each split block;
//   tstart [B + 1]      at off_tstart: sequence b's block table is
//          tables[tstart[b] .. tstart[b+1]];
//   tables              at off_tables: every sequence's block ids.
//
// Split rule (batch invariance): split s of a row covers keys
// [s * split_keys, min(n_keys, (s+1) * split_keys)); split_keys is fixed by
// the launch wrapper (256, a multiple of PA_TILE), so the number of splits
// and every key range of a row depend on that row's key count alone, never
// on the batch: a row's bits are the same alone or in any batch.
//
// paged_attn_split_d{64,128}: grid (n_work, KV * ceil(G / PA_GMAX)), block
//   PA_THREADS (4 warps). One block = one split of one query row for (up to
//   PA_GMAX of) the G query heads of one KV head: each K / V row of the range
//   is read once per group, 16 bytes per cp.async into padded shared-memory
//   tiles of PA_TILE keys. Per tile: scores (thread = one key x every other
//   head), an online softmax per head (one warp per head), then P.V (thread =
//   one dim x its heads). Writes the split's partial state to the f32
//   scratch: ml[w, h] = (running max, running sum of exp) and
//   acc[w, h, 0..D] = the un-normalized sum of p_j v_j (w = the work index).
// paged_attn_merge: grid (n_items, H), block D: merges the splits of one
//   (row, head) in split order 0, 1, ... (a fixed order, no atomics):
//   M = max m_s, L = sum l_s e^(m_s - M), out = sum acc_s e^(m_s - M) / L.
//
// Not bitwise equal to the dense forward (attention.cu / attention_tc.cu):
// within bf16 rounding of it.

#define PA_THREADS 128
#define PA_TILE 64   // keys per shared-memory tile
#define PA_GMAX 8    // query heads per block (a GQA group or a chunk of one)
#define PA_PAD 8     // bf16 of padding per tile row: 16-byte reads conflict-free

template <int D>
__device__ void paged_attn_split(float* __restrict__ part_ml, float* __restrict__ part_acc,
                                 const bf16* __restrict__ q, const bf16* __restrict__ k_pool,
                                 const bf16* __restrict__ v_pool, const int* __restrict__ meta,
                                 int off_work, int off_tstart, int off_tables, int n_heads,
                                 int n_kv_heads, int block_size, int split_keys) {
    constexpr int DC = D / 8;               // 16-byte chunks per row
    constexpr int LD = D + PA_PAD;          // tile row stride (bf16)
    constexpr int HLP = PA_THREADS / D;     // head lanes of the P.V stage (1 or 2)
    constexpr int PH = PA_GMAX / HLP;       // heads per thread in P.V
    constexpr int SH = PA_GMAX / 2;         // heads per thread in the scores
    constexpr int WH = PA_GMAX / (PA_THREADS / 32);  // heads per warp in the softmax
    __shared__ __align__(16) bf16 ks[PA_TILE * LD];
    __shared__ __align__(16) bf16 vs[PA_TILE * LD];
    __shared__ __align__(16) float qs[PA_GMAX * D];
    __shared__ float ss[PA_GMAX][PA_TILE];
    // p of key j for head h at ps[j][(h % HLP) * PH + h / HLP]: each P.V
    // thread reads its PH heads as consecutive floats.
    __shared__ __align__(16) float ps[PA_TILE][PA_GMAX];
    __shared__ float corr_s[PA_GMAX];
    __shared__ int rows_s[PA_TILE];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int w = blockIdx.x;
    const int item = meta[off_work + 2 * w], split = meta[off_work + 2 * w + 1];
    const int row = meta[4 * item], seq = meta[4 * item + 1], n = meta[4 * item + 2];
    const int group = n_heads / n_kv_heads;
    const int chunks = (group + PA_GMAX - 1) / PA_GMAX;
    const int kvh = blockIdx.y / chunks, hg0 = (blockIdx.y % chunks) * PA_GMAX;
    const int nh = min(PA_GMAX, group - hg0);
    const int h0 = kvh * group + hg0;  // first query head of the block
    const int lo = split * split_keys;
    const int hi = min(n, lo + split_keys) - (IGPO_PLANTED(PAGED_KEY_LIMIT) ? 1 : 0);
    const int* table = meta + off_tables + meta[off_tstart + seq];
    const size_t q_cols = (size_t)n_heads * D, kv_cols = (size_t)n_kv_heads * D;
    const float scale = rsqrtf((float)D);

    for (int t = tid; t < PA_GMAX * D; t += PA_THREADS) {
        const int hh = t / D, d = t % D;
        qs[t] = hh < nh ? to_f32(q[(size_t)row * q_cols + (size_t)(h0 + hh) * D + d]) : 0.0f;
    }
    for (int t = tid; t < PA_TILE * PA_GMAX; t += PA_THREADS) ps[t / PA_GMAX][t % PA_GMAX] = 0.0f;

    float m_run[WH], l_run[WH], acc[PH];
#pragma unroll
    for (int i = 0; i < WH; ++i) {
        m_run[i] = IGPO_NEG_INF;
        l_run[i] = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < PH; ++i) acc[i] = 0.0f;

    for (int k0 = lo; k0 < hi; k0 += PA_TILE) {
        // Pool rows of the tile's keys (-1 past the range: zeros).
        if (tid < PA_TILE) {
            const int key = k0 + tid;
            int r = -1;
            if (key < hi) {
                r = table[key / block_size] * block_size + key % block_size;
                if (IGPO_PLANTED(PAGED_BLOCK_TABLE)) r = key;
            }
            rows_s[tid] = r;
        }
        __syncthreads();  // rows_s ready; the last tile's P.V is done with vs
        for (int t = tid; t < PA_TILE * DC; t += PA_THREADS) {
            const int r = t / DC, c = (t % DC) * 8, pr = rows_s[r];
            cp_async_16(ks + r * LD + c, k_pool + (size_t)max(pr, 0) * kv_cols + kvh * D + c, pr >= 0);
        }
        cp_async_commit();
        for (int t = tid; t < PA_TILE * DC; t += PA_THREADS) {
            const int r = t / DC, c = (t % DC) * 8, pr = rows_s[r];
            cp_async_16(vs + r * LD + c, v_pool + (size_t)max(pr, 0) * kv_cols + kvh * D + c, pr >= 0);
        }
        cp_async_commit();
        cp_async_wait<1>();  // K landed (V may still be in flight)
        __syncthreads();

        // Scores: thread = key j of the tile x heads hl, hl + 2, ...
        {
            const int j = tid % PA_TILE, hl = tid / PA_TILE;
            float sacc[SH];
#pragma unroll
            for (int i = 0; i < SH; ++i) sacc[i] = 0.0f;
#pragma unroll 4
            for (int c = 0; c < DC; ++c) {
                const uint4 raw = *reinterpret_cast<const uint4*>(ks + j * LD + c * 8);
                const bf16* kb = reinterpret_cast<const bf16*>(&raw);
                float kf[8];
#pragma unroll
                for (int e = 0; e < 8; ++e) kf[e] = to_f32(kb[e]);
#pragma unroll
                for (int i = 0; i < SH; ++i) {
                    const int h = hl + 2 * i;
                    if (h < nh) {
                        const float* qh = qs + h * D + c * 8;
#pragma unroll
                        for (int e = 0; e < 8; ++e) sacc[i] += qh[e] * kf[e];
                    }
                }
            }
            const bool valid = k0 + j < hi;
#pragma unroll
            for (int i = 0; i < SH; ++i) {
                const int h = hl + 2 * i;
                if (h < nh) ss[h][j] = valid ? sacc[i] * scale : IGPO_NEG_INF;
            }
        }
        __syncthreads();

        // Online softmax: warp `warp` owns heads warp, warp + 4; lane owns
        // keys lane and lane + 32 of the tile.
#pragma unroll
        for (int i = 0; i < WH; ++i) {
            const int h = warp + (PA_THREADS / 32) * i;
            if (h < nh) {
                const float a = ss[h][lane], b = ss[h][lane + 32];
                const float tmax = warp_max(fmaxf(a, b));  // finite: k0 < hi
                const float m_new = fmaxf(m_run[i], tmax);
                const float corr = m_run[i] == IGPO_NEG_INF ? 0.0f : expf(m_run[i] - m_new);
                const float pa = a == IGPO_NEG_INF ? 0.0f : expf(a - m_new);
                const float pb = b == IGPO_NEG_INF ? 0.0f : expf(b - m_new);
                const float psum = warp_sum(pa + pb);
                l_run[i] = l_run[i] * corr + psum;
                m_run[i] = m_new;
                const int slot = (h % HLP) * PH + h / HLP;
                ps[lane][slot] = pa;
                ps[lane + 32][slot] = pb;
                if (lane == 0) corr_s[h] = corr;
            }
        }
        cp_async_wait<0>();  // V landed
        __syncthreads();

        // P.V: thread = dim d x heads hs, hs + HLP, ...
        {
            const int d = tid % D, hs = tid / D;
#pragma unroll
            for (int i = 0; i < PH; ++i) {
                const int h = hs + HLP * i;
                acc[i] *= h < nh ? corr_s[h] : 0.0f;
            }
            const int jn = min(PA_TILE, hi - k0);
            for (int j = 0; j < jn; ++j) {
                const float vv = to_f32(vs[j * LD + d]);
                const float* p = &ps[j][hs * PH];
#pragma unroll
                for (int i = 0; i < PH; ++i) acc[i] += p[i] * vv;
            }
        }
    }

    // The split's partial state (every (w, h) of the block, so the merge
    // never reads an unwritten value).
    if (lane == 0) {
#pragma unroll
        for (int i = 0; i < WH; ++i) {
            const int h = warp + (PA_THREADS / 32) * i;
            if (h < nh) {
                const size_t at = ((size_t)w * n_heads + h0 + h) * 2;
                part_ml[at] = m_run[i];
                part_ml[at + 1] = l_run[i];
            }
        }
    }
    {
        const int d = tid % D, hs = tid / D;
#pragma unroll
        for (int i = 0; i < PH; ++i) {
            const int h = hs + HLP * i;
            if (h < nh) part_acc[((size_t)w * n_heads + h0 + h) * D + d] = acc[i];
        }
    }
}

// grid (n_items, H), block D threads (64 or 128): thread d of (row, head).
extern "C" __global__ void paged_attn_merge(bf16* __restrict__ out, const float* __restrict__ part_ml,
                                           const float* __restrict__ part_acc,
                                           const int* __restrict__ meta, int n_heads, int head_dim,
                                           int split_keys) {
    const int i = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
    const int row = meta[4 * i], n = meta[4 * i + 2], first = meta[4 * i + 3];
    const int splits = (n + split_keys - 1) / split_keys;
    float mx = IGPO_NEG_INF;
    for (int s = 0; s < splits; ++s) mx = fmaxf(mx, part_ml[((size_t)(first + s) * n_heads + h) * 2]);
    float l = 0.0f, o = 0.0f;
    for (int s = 0; s < splits; ++s) {
        const size_t at = (size_t)(first + s) * n_heads + h;
        const float ms = part_ml[at * 2];
        float f = ms == IGPO_NEG_INF ? 0.0f : expf(ms - mx);
        if (IGPO_PLANTED(PAGED_MERGE_RESCALE)) f = 1.0f;
        l += part_ml[at * 2 + 1] * f;
        o += part_acc[at * head_dim + d] * f;
    }
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    out[(size_t)row * n_heads * head_dim + (size_t)h * head_dim + d] = to_bf16(o * inv);
}

// Row scatter: row r of src0 (and of src1 when given) goes to row rows[r]
// of dst0 (dst1): `Backend::write_kv` (a forward's new keys and values into
// their pool rows, both pools in one launch) and the gather path's output
// rows. Rows must be distinct. 16 bytes at a time when cols % 8 == 0.
extern "C" __global__ void scatter_rows_bf16(bf16* __restrict__ dst0, bf16* __restrict__ dst1,
                                            const int* __restrict__ rows,
                                            const bf16* __restrict__ src0,
                                            const bf16* __restrict__ src1, int n_rows, int cols) {
    if ((cols & 7) == 0) {
        const int c8 = cols >> 3;
        IGPO_GRID_STRIDE(i, (long long)n_rows * c8) {
            const long long r = i / c8, c = (i % c8) * 8;
            const size_t to = (size_t)rows[r] * cols + c, from = (size_t)r * cols + c;
            *reinterpret_cast<uint4*>(dst0 + to) = *reinterpret_cast<const uint4*>(src0 + from);
            if (dst1) *reinterpret_cast<uint4*>(dst1 + to) = *reinterpret_cast<const uint4*>(src1 + from);
        }
    } else {
        IGPO_GRID_STRIDE(i, (long long)n_rows * cols) {
            const long long r = i / cols, c = i % cols;
            const size_t to = (size_t)rows[r] * cols + c;
            dst0[to] = src0[i];
            if (dst1) dst1[to] = src1[i];
        }
    }
}

#define IGPO_PAGED_ENTRIES(D)                                                                      \
    extern "C" __global__ void __launch_bounds__(PA_THREADS) paged_attn_split_d##D(               \
        float* part_ml, float* part_acc, const bf16* q, const bf16* k_pool, const bf16* v_pool,   \
        const int* meta, int off_work, int off_tstart, int off_tables, int n_heads,               \
        int n_kv_heads, int block_size, int split_keys) {                                          \
        paged_attn_split<D>(part_ml, part_acc, q, k_pool, v_pool, meta, off_work, off_tstart,     \
                            off_tables, n_heads, n_kv_heads, block_size, split_keys);              \
    }

IGPO_PAGED_ENTRIES(64)
IGPO_PAGED_ENTRIES(128)
