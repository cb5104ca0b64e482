// Token embedding. Forward: out[i] = table[ids[i]].
// Backward, deterministic: the host groups the rows by token id (ascending id,
// rows ascending inside a group: `EmbeddingGrads` in kernels/src/lib.rs), and
// one block per distinct id adds that id's dy rows into dtable in row order,
// the same order as the CPU's sequential loop. No atomics, so the same inputs
// always give the same bits.

extern "C" __global__ void embedding_fwd(bf16* __restrict__ out, const bf16* __restrict__ table,
                                         const int* __restrict__ ids, int n, int d) {
    IGPO_GRID_STRIDE(t, (long long)n * d) {
        const long long r = t / d, c = t % d;
        out[t] = table[(size_t)ids[r] * d + c];
    }
}

// grid.x = distinct ids (one group each); threads stride over the d columns.
// uniq[g] is the group's token id; its rows are rows[starts[g] .. starts[g+1]).
extern "C" __global__ void embedding_bwd(float* __restrict__ dtable, const bf16* __restrict__ dy,
                                         const int* __restrict__ uniq,
                                         const int* __restrict__ starts,
                                         const int* __restrict__ rows, int groups, int d) {
    const int g = blockIdx.x;
    if (g >= groups) return;
    float* dst = dtable + (size_t)uniq[g] * d;
    const int r0 = starts[g], r1 = starts[g + 1];
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float acc = dst[c];
        for (int j = r0; j < r1; ++j) acc += to_f32(dy[(size_t)rows[j] * d + c]);
        dst[c] = acc;
    }
}
