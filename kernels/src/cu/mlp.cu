// SwiGLU: out = silu(gate) * up. Mirrors engine/src/backend/cpu/mod.rs:
//   forward  out = g / (1 + exp(-g)) * u
//   backward sig = 1 / (1 + exp(-g));  du = dy * g * sig;
//            dg = dy * u * sig * (1 + g * (1 - sig))
// `gate` and `up` may be two halves of one fused [rows, 2*cols] GEMM output:
// ld_in is their row stride (cols when they are separate matrices).

extern "C" __global__ void swiglu_fwd(bf16* __restrict__ out, const bf16* __restrict__ gate,
                                      const bf16* __restrict__ up, int rows, int cols,
                                      int ld_in) {
    IGPO_GRID_STRIDE(t, (long long)rows * cols) {
        const long long r = t / cols, c = t % cols;
        const size_t at = (size_t)r * ld_in + c;
        const float g = to_f32(gate[at]), u = to_f32(up[at]);
        out[t] = to_bf16(g / (1.0f + expf(-g)) * u);
    }
}

extern "C" __global__ void swiglu_bwd(bf16* __restrict__ dgate, bf16* __restrict__ dup,
                                      const bf16* __restrict__ gate, const bf16* __restrict__ up,
                                      const bf16* __restrict__ dy, int rows, int cols,
                                      int ld_in) {
    IGPO_GRID_STRIDE(t, (long long)rows * cols) {
        const long long r = t / cols, c = t % cols;
        const size_t at = (size_t)r * ld_in + c;
        const float g = to_f32(gate[at]), u = to_f32(up[at]), d = to_f32(dy[t]);
        const float sig = 1.0f / (1.0f + expf(-g));
        dup[at] = to_bf16(d * g * sig);
        dgate[at] = to_bf16(d * u * sig * (1.0f + g * (1.0f - sig)));
    }
}
