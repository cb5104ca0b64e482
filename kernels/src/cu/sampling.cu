// Next-token sampling on the GPU: greedy, or temperature / top-k / top-p with
// one uniform draw per row that the host's seeded Rng supplies (so a seed
// reproduces a run on either backend). Mirrors engine/src/backend/cpu/sampling.rs:
//   temperature <= 0: argmax, lowest id on ties;
//   otherwise z = logit / temperature, candidates ordered by (z desc, id asc),
//   keep the first top_k (0 = all), p = softmax over the kept, keep the
//   shortest prefix whose mass reaches top_p, renormalize, and return the
//   first candidate whose cumulative probability exceeds u.
// No sort: every "first prefix of the order whose weight reaches a target"
// is found by a 4-pass radix select over the order-preserving bits of z
// (256-bucket histograms), then one pass over the tied z in id order. Mass is
// exp(z - max) in 32.32 fixed point added with 64-bit integer atomics, so the
// result is deterministic (integer sums do not depend on the order of
// additions). Probabilities below 2^-32 of the largest count as 0. NaN
// logits count as -inf. One block per row; blockDim a multiple of 32, <= 1024.

typedef unsigned long long u64;

#define IGPO_MASS_ONE 4294967296.0f  // 2^32

// Larger z -> larger key (total order on floats).
__device__ __forceinline__ unsigned int order_key(float z) {
    const unsigned int b = __float_as_uint(z);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// A prefix of the order (key desc, id asc): every element up to and including
// (key, id); `all` means the whole vocabulary.
struct Cut {
    unsigned int key;
    int id;
    bool all;
};

__device__ __forceinline__ bool in_cut(unsigned int key, int id, const Cut& c) {
    return c.all || key > c.key || (key == c.key && id <= c.id);
}

__device__ __forceinline__ float scaled_logit(const float* row, int i, float temperature) {
    const float z = row[i] / temperature;
    return z == z ? z : IGPO_NEG_INF;
}

// Weight of one candidate: 1 (counting) or its unnormalized mass.
__device__ __forceinline__ u64 weight(float z, float zmax, bool mass) {
    if (!mass) return 1ull;
    return (u64)(expf(z - zmax) * IGPO_MASS_ONE);
}

__device__ __forceinline__ u64 warp_sum_u64(u64 v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(IGPO_FULL_MASK, v, o);
    return v;
}

__device__ u64 block_sum_u64(u64 v, u64* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum_u64(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0ull;
    return warp_sum_u64(v);
}

// Inclusive scan over the block in thread order; *total gets the block sum.
__device__ u64 block_scan_u64(u64 v, u64* scratch, u64* total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int o = 1; o < 32; o <<= 1) {
        const u64 up = __shfl_up_sync(IGPO_FULL_MASK, v, o);
        if (lane >= o) v += up;
    }
    __syncthreads();
    if (lane == 31) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        u64 w = lane < warps ? scratch[lane] : 0ull;
        for (int o = 1; o < 32; o <<= 1) {
            const u64 up = __shfl_up_sync(IGPO_FULL_MASK, w, o);
            if (lane >= o) w += up;
        }
        if (lane < warps) scratch[lane] = w;
    }
    __syncthreads();
    const u64 before = warp > 0 ? scratch[warp - 1] : 0ull;
    *total = scratch[warps - 1];
    return v + before;
}

struct SampleShared {
    u64 hist[256];
    u64 scratch[32];
    u64 acc;
    u64 cum;
    unsigned int digit;
    int id;
};

// The first element of the order, among those inside `limit`, at which the
// inclusive running weight reaches `target` (1 <= target <= total weight).
// Returns its cut; *cum gets the running weight there.
__device__ Cut select_first(const float* row, int vocab, float temperature, float zmax, bool mass,
                            u64 target, const Cut& limit, SampleShared& sh, u64* cum) {
    unsigned int prefix = 0, pmask = 0;
    u64 consumed = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) sh.hist[b] = 0ull;
        __syncthreads();
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            const float z = scaled_logit(row, i, temperature);
            const unsigned int key = order_key(z);
            if ((key & pmask) != prefix || !in_cut(key, i, limit)) continue;
            const u64 w = weight(z, zmax, mass);
            if (w != 0ull) atomicAdd(&sh.hist[(key >> shift) & 255u], w);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            u64 acc = 0ull;
            unsigned int chosen = 0u;
            bool found = false;
            unsigned int last_nonempty = 0u;
            for (int d = 255; d >= 0; --d) {
                if (sh.hist[d] == 0ull) continue;
                last_nonempty = (unsigned int)d;
                if (acc + sh.hist[d] >= target) {
                    chosen = (unsigned int)d;
                    found = true;
                    break;
                }
                acc += sh.hist[d];
            }
            if (!found) {
                // Rounding left the target above the total: take the last bucket.
                chosen = last_nonempty;
                acc -= sh.hist[last_nonempty];
            }
            sh.digit = chosen;
            sh.acc = acc;
        }
        __syncthreads();
        prefix |= sh.digit << shift;
        pmask |= 255u << shift;
        target -= sh.acc;
        consumed += sh.acc;
        __syncthreads();
    }
    // Elements with exactly this key, in id order.
    if (threadIdx.x == 0) sh.id = -1;
    u64 run = 0ull;
    int last_id = -1;
    for (int base = 0; base < vocab; base += blockDim.x) {
        const int i = base + threadIdx.x;
        u64 w = 0ull;
        if (i < vocab) {
            const float z = scaled_logit(row, i, temperature);
            const unsigned int key = order_key(z);
            if (key == prefix && in_cut(key, i, limit)) w = weight(z, zmax, mass);
        }
        u64 total;
        const u64 incl = block_scan_u64(w, sh.scratch, &total);
        if (w != 0ull) last_id = i;
        if (w != 0ull && run + incl >= target && run + incl - w < target) {
            sh.id = i;
            sh.cum = consumed + run + incl;
        }
        __syncthreads();
        if (sh.id >= 0) break;
        run += total;
    }
    if (sh.id < 0) {
        // Rounding left the target above the tied weight: take the last tied id.
        __shared__ int best;
        if (threadIdx.x == 0) {
            best = -1;
            sh.cum = consumed + run;
        }
        __syncthreads();
        if (last_id >= 0) atomicMax(&best, last_id);
        __syncthreads();
        if (threadIdx.x == 0) sh.id = best;
        __syncthreads();
    }
    Cut c;
    c.key = prefix;
    c.id = sh.id;
    c.all = false;
    *cum = sh.cum;
    __syncthreads();
    return c;
}

// log p(id) under softmax(z) over the whole row, z = logit / temperature and
// zmax = max z: the rollout's record of the distribution it sampled from
// (before the top-k / top-p cut; greedy counts as temperature 1). Mirrors
// engine/src/backend/cpu/sampling.rs `sampled_logprob`. Every thread calls it.
__device__ float row_logprob(const float* row, int vocab, float temperature, float zmax, int id,
                             double* dscratch) {
    double s = 0.0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x)
        s += (double)expf(scaled_logit(row, i, temperature) - zmax);
    s = block_sum_f64(s, dscratch);
    const double lp = (double)(scaled_logit(row, id, temperature) - zmax) - log(s);
    return (float)(lp < 0.0 ? lp : 0.0);
}

// out[r] = sampled id of row r of logits[rows, vocab] (row stride ld) and
// out_logprob[r] its log-probability (see row_logprob). uniforms[r] in [0, 1)
// from the host Rng (ignored when greedy).
extern "C" __global__ void sample_rows(int* __restrict__ out, float* __restrict__ out_logprob,
                                       const float* __restrict__ logits,
                                       const double* __restrict__ uniforms, int rows, int vocab,
                                       int ld, float temperature, int top_k, float top_p) {
    __shared__ SampleShared sh;
    __shared__ float fscratch[32];
    __shared__ double dscratch[32];
    __shared__ int iscratch[32];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* row = logits + (size_t)r * ld;
    if (!(temperature > 0.0f)) {
        // argmax, lowest id on ties
        float best = IGPO_NEG_INF;
        int best_id = vocab;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            const float v = row[i];
            if (v > best) {
                best = v;
                best_id = i;
            }
        }
        const float m = block_max(best, fscratch);
        int cand = best == m ? best_id : vocab;
        for (int o = 16; o > 0; o >>= 1) cand = min(cand, __shfl_xor_sync(IGPO_FULL_MASK, cand, o));
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
        __syncthreads();
        if (lane == 0) iscratch[warp] = cand;
        __syncthreads();
        if (warp == 0) {
            cand = lane < warps ? iscratch[lane] : vocab;
            for (int o = 16; o > 0; o >>= 1)
                cand = min(cand, __shfl_xor_sync(IGPO_FULL_MASK, cand, o));
            if (lane == 0) sh.id = cand < vocab ? cand : 0;
        }
        __syncthreads();
        const int id = sh.id;
        const float lp = row_logprob(row, vocab, 1.0f, m, id, dscratch);
        if (threadIdx.x == 0) {
            out[r] = id;
            out_logprob[r] = lp;
        }
        return;
    }
    float zmax = IGPO_NEG_INF;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x)
        zmax = fmaxf(zmax, scaled_logit(row, i, temperature));
    zmax = block_max(zmax, fscratch);
    Cut limit;
    limit.key = 0u;
    limit.id = 0;
    limit.all = true;
    u64 cum = 0ull;
    if (top_k > 0 && top_k < vocab) {
        limit = select_first(row, vocab, temperature, zmax, false, (u64)top_k, limit, sh, &cum);
    }
    // Total mass of the kept candidates.
    u64 total = 0ull;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float z = scaled_logit(row, i, temperature);
        if (in_cut(order_key(z), i, limit)) total += weight(z, zmax, true);
    }
    total = block_sum_u64(total, sh.scratch);
    if (top_p < 1.0f) {
        u64 target = (u64)ceil((double)top_p * (double)total);
        target = target < 1ull ? 1ull : (target > total ? total : target);
        limit = select_first(row, vocab, temperature, zmax, true, target, limit, sh, &cum);
        total = cum;
    }
    u64 t = (u64)floor(uniforms[r] * (double)total);
    if (t >= total) t = total - 1ull;
    const Cut pick = select_first(row, vocab, temperature, zmax, true, t + 1ull, limit, sh, &cum);
    const float lp = row_logprob(row, vocab, temperature, zmax, pick.id, dscratch);
    if (threadIdx.x == 0) {
        out[r] = pick.id;
        out_logprob[r] = lp;
    }
}
