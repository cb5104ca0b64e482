// A small CUDA emulator for checking kernel *logic* on a machine without a
// GPU. Every CUDA thread of a block is a fiber (ucontext) on one OS thread;
// a scheduler runs each fiber until it reaches a barrier (__syncthreads,
// __syncwarp, a warp shuffle), releases a barrier once every live thread of
// the block (or warp) waits at it, and reports a deadlock when threads wait
// at different barriers (divergent __syncthreads or shuffles) instead of
// hanging. Fibers are swept in alternating order (0..n, then n..0) so that a
// missing barrier shows up as a wrong result. __shared__ is a static (blocks
// run one after the other). It compiles the real kernel sources
// (src/cu/*.cu) with g++ and says nothing about speed or the GPU memory model.
//
// Tensor-core primitives (the functions common.cuh writes in inline PTX for
// the GPU): `mma_bf16_16816` (mma.sync m16n8k16 bf16 -> f32, the PTX ISA's
// fragment layout), `ldmatrix_x{1,2,4}[_trans]`, `cp_async_16` with deferred
// completion (a copy lands in shared memory only at the `cp_async_wait<N>` /
// `cp_async_wait_all` that retires its group; until then the destination
// holds NaN garbage, so a missing wait gives a wrong result) and dynamic
// shared memory (`IGPO_DYNAMIC_SMEM`, filled with NaN garbage per block).
// The warp-collective ones exchange all 32 lanes' registers through a
// barrier, like the shuffles. `emu_plant` plants a known bug in them (test
// mode: the attention checks must then fail).
#pragma once
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <ucontext.h>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct uint4 {
    unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict

using std::isfinite;
template <class T>
inline T min(T a, T b) { return b < a ? b : a; }
template <class T>
inline T max(T a, T b) { return a < b ? b : a; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __int_as_float(unsigned v) {
    float f;
    std::memcpy(&f, &v, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned v;
    std::memcpy(&v, &f, 4);
    return v;
}

// ---- the fibers of the running block
enum EmuState { EMU_RUNNABLE, EMU_WAIT_BLOCK, EMU_WAIT_WARP, EMU_DONE };
// One 16-byte cp.async: the bytes read at issue, written at the wait.
struct EmuCopy {
    void* dst;
    unsigned char bytes[16];
};
struct EmuFiber {
    ucontext_t ctx;
    char* stack = nullptr;
    EmuState state = EMU_RUNNABLE;
    std::vector<EmuCopy> cp_open;                 // issued, not yet committed
    std::deque<std::vector<EmuCopy>> cp_groups;   // committed, oldest first
};
// Registers a warp-collective op exchanges: up to 16 words per lane.
using EmuWarpWords = std::array<std::array<uint32_t, 16>, 32>;
struct EmuBlock {
    int threads = 0;
    std::vector<EmuFiber> fibers;
    std::vector<std::array<uint64_t, 32>> slots;
    std::vector<EmuWarpWords> words;
    std::vector<uint4> dynamic_smem;
    ucontext_t sched;
    int or_flag = 0;
};
// Bugs the emulated primitives can plant (emu_test `planted` mode).
enum EmuPlant {
    EMU_PLANT_NONE,
    EMU_PLANT_MMA_A_LAYOUT,    // A registers 1 and 2 swapped (rows 8-15 <-> cols 8-15)
    EMU_PLANT_MMA_B_LAYOUT,    // B registers 0 and 1 swapped (k 0-7 <-> k 8-15)
    EMU_PLANT_LDMATRIX_TRANS,  // .trans ignored
    EMU_PLANT_CP_ASYNC_NO_WAIT, // cp.async.wait_group does nothing
    // Bugs planted in kernel code through IGPO_PLANTED(NAME) (common.cuh):
    EMU_PLANT_PAGED_KEY_LIMIT,   // paged_attention.cu: each split drops its last key
    EMU_PLANT_PAGED_BLOCK_TABLE, // paged_attention.cu: key j read from pool row j
    EMU_PLANT_PAGED_MERGE_RESCALE // paged_attention.cu: the merge skips e^(m_s - M)
};
inline EmuPlant emu_plant = EMU_PLANT_NONE;
#define IGPO_PLANTED(bug) (emu_plant == EMU_PLANT_##bug)
inline EmuBlock* emu_block = nullptr;
inline int emu_tid = 0;
inline std::function<void()>* emu_kernel = nullptr;

// The running fiber waits in `state` until the scheduler releases it.
inline void emu_wait(EmuState state) {
    EmuFiber& f = emu_block->fibers[emu_tid];
    f.state = state;
    swapcontext(&f.ctx, &emu_block->sched);
}

inline void __syncthreads() { emu_wait(EMU_WAIT_BLOCK); }
inline int __syncthreads_or(int p) {
    __syncthreads();
    if (emu_tid == 0) emu_block->or_flag = 0;
    __syncthreads();
    if (p) emu_block->or_flag = 1;
    __syncthreads();
    return emu_block->or_flag;
}
inline void __syncwarp(unsigned = 0xffffffffu) { emu_wait(EMU_WAIT_WARP); }

template <class T>
inline T emu_exchange(T v, int src_lane) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    const int warp = emu_tid / 32, lane = emu_tid % 32;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    emu_block->slots[warp][lane] = bits;
    __syncwarp();
    T r;
    const uint64_t got = emu_block->slots[warp][src_lane];
    std::memcpy(&r, &got, sizeof(T));
    __syncwarp();
    return r;
}
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int mask) {
    return emu_exchange(v, (emu_tid % 32) ^ mask);
}
template <class T>
inline T __shfl_up_sync(unsigned, T v, int delta) {
    const int lane = emu_tid % 32;
    T r = emu_exchange(v, lane >= delta ? lane - delta : lane);
    return lane >= delta ? r : v;
}

// One OS thread: atomics are plain read-modify-writes.
template <class T>
inline T atomicAdd(T* p, T v) {
    const T old = *p;
    *p = old + v;
    return old;
}
inline int atomicMin(int* p, int v) {
    const int old = *p;
    if (v < old) *p = v;
    return old;
}
inline int atomicMax(int* p, int v) {
    const int old = *p;
    if (v > old) *p = v;
    return old;
}

// ---- tensor-core primitives (see the top of this file)
inline uint16_t emu_half(uint32_t word, int hi) { return (uint16_t)(hi ? word >> 16 : word & 0xffffu); }
inline float emu_bf16_bits(uint16_t b) { return __int_as_float((unsigned)b << 16); }

// This lane's `n` words to the warp's exchange area; returns the area once
// every lane of the warp has written (the caller reads, then __syncwarp()).
inline const EmuWarpWords& emu_warp_put(const uint32_t* w, int n) {
    EmuWarpWords& all = emu_block->words[emu_tid / 32];
    for (int i = 0; i < n; ++i) all[emu_tid % 32][i] = w[i];
    __syncwarp();
    return all;
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, PTX ISA fragment
// layout (groupID = lane >> 2, threadID_in_group = lane % 4):
//   A 16x16: reg r of lane L holds A[row][col], A[row][col+1] with
//     row = groupID + 8 * (r & 1), col = 2 * threadID_in_group + 8 * (r >> 1);
//   B 16x8: reg r holds B[k][n], B[k+1][n], k = 2 * threadID_in_group + 8 * r,
//     n = groupID;
//   C/D 16x8: c0, c1 at row groupID, cols 2 * threadID_in_group + {0, 1};
//     c2, c3 at row groupID + 8.
// Products are summed in f32 in k order onto c.
inline float emu_mma_a(const EmuWarpWords& w, int row, int k) {
    int reg = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
    if (emu_plant == EMU_PLANT_MMA_A_LAYOUT) reg = (row >= 8 ? 2 : 0) + (k >= 8 ? 1 : 0);
    const int lane = (row % 8) * 4 + (k % 8) / 2;
    return emu_bf16_bits(emu_half(w[lane][reg], k & 1));
}
inline float emu_mma_b(const EmuWarpWords& w, int k, int n) {
    const int lane = n * 4 + (k % 8) / 2;
    const int reg = emu_plant == EMU_PLANT_MMA_B_LAYOUT ? 1 - k / 8 : k / 8;
    return emu_bf16_bits(emu_half(w[lane][4 + reg], k & 1));
}
inline void mma_bf16_16816(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    const uint32_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    const float cin[4] = {c[0], c[1], c[2], c[3]};  // d may alias c
    const EmuWarpWords& w = emu_warp_put(mine, 6);
    const int lane = emu_tid % 32, g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
        float acc = cin[i];
        for (int k = 0; k < 16; ++k) acc = std::fma(emu_mma_a(w, row, k), emu_mma_b(w, k, col), acc);
        d[i] = acc;
    }
    __syncwarp();
}

// ldmatrix.sync.aligned.m8n8.xN[.trans].shared.b16: lanes 8i .. 8i+7 give
// the row addresses of matrix i; lane L gets in r[i] the elements
// (L / 4, 2 * (L % 4)) and (L / 4, 2 * (L % 4) + 1) of matrix i, or with
// .trans (2 * (L % 4), L / 4) and (2 * (L % 4) + 1, L / 4).
template <int N, bool TRANS>
inline void emu_ldmatrix(unsigned* r, const void* p) {
    const uintptr_t mine = (uintptr_t)p;
    const uint32_t w2[2] = {(uint32_t)mine, (uint32_t)((uint64_t)mine >> 32)};
    const EmuWarpWords& w = emu_warp_put(w2, 2);
    const int lane = emu_tid % 32;
    const bool trans = TRANS && emu_plant != EMU_PLANT_LDMATRIX_TRANS;
    auto at = [&](int matrix, int row, int col) {
        const int src = 8 * matrix + row;
        const uint16_t* base = (const uint16_t*)(uintptr_t)(w[src][0] | (uint64_t)w[src][1] << 32);
        return base[col];
    };
    for (int i = 0; i < N; ++i) {
        uint16_t lo, hi;
        if (trans) {
            lo = at(i, 2 * (lane % 4), lane / 4);
            hi = at(i, 2 * (lane % 4) + 1, lane / 4);
        } else {
            lo = at(i, lane / 4, 2 * (lane % 4));
            hi = at(i, lane / 4, 2 * (lane % 4) + 1);
        }
        r[i] = (unsigned)lo | (unsigned)hi << 16;
    }
    __syncwarp();
}
inline void ldmatrix_x1(unsigned r[1], const void* p) { emu_ldmatrix<1, false>(r, p); }
inline void ldmatrix_x2(unsigned r[2], const void* p) { emu_ldmatrix<2, false>(r, p); }
inline void ldmatrix_x4(unsigned r[4], const void* p) { emu_ldmatrix<4, false>(r, p); }
inline void ldmatrix_x1_trans(unsigned r[1], const void* p) { emu_ldmatrix<1, true>(r, p); }
inline void ldmatrix_x2_trans(unsigned r[2], const void* p) { emu_ldmatrix<2, true>(r, p); }
inline void ldmatrix_x4_trans(unsigned r[4], const void* p) { emu_ldmatrix<4, true>(r, p); }

// cp.async.cg.shared.global, 16 bytes (zeros when !valid: src-size 0).
inline void cp_async_16(void* dst, const void* src, bool valid) {
    EmuCopy c;
    c.dst = dst;
    if (valid) std::memcpy(c.bytes, src, 16);
    else std::memset(c.bytes, 0, 16);
    std::memset(dst, 0xff, 16);  // not there yet: NaN until the wait
    emu_block->fibers[emu_tid].cp_open.push_back(c);
}
inline void cp_async_commit() {
    EmuFiber& f = emu_block->fibers[emu_tid];
    f.cp_groups.push_back(std::move(f.cp_open));
    f.cp_open.clear();
}
// cp.async.wait_group N: all but the N most recent committed groups landed.
template <int N>
inline void cp_async_wait() {
    if (emu_plant == EMU_PLANT_CP_ASYNC_NO_WAIT) return;
    EmuFiber& f = emu_block->fibers[emu_tid];
    while ((int)f.cp_groups.size() > N) {
        for (const EmuCopy& c : f.cp_groups.front()) std::memcpy(c.dst, c.bytes, 16);
        f.cp_groups.pop_front();
    }
}
inline void cp_async_wait_all() {
    cp_async_commit();
    cp_async_wait<0>();
}

// extern __shared__: the launch's dynamic shared memory.
inline unsigned char* emu_dynamic_smem() { return (unsigned char*)emu_block->dynamic_smem.data(); }
#define IGPO_DYNAMIC_SMEM(name) unsigned char* name = emu_dynamic_smem()

inline void emu_fiber_main() {
    (*emu_kernel)();
    emu_block->fibers[emu_tid].state = EMU_DONE;
    swapcontext(&emu_block->fibers[emu_tid].ctx, &emu_block->sched);
}

inline void emu_set_thread(int t) {
    emu_tid = t;
    threadIdx = dim3{(unsigned)t % blockDim.x, (unsigned)(t / blockDim.x) % blockDim.y,
                     (unsigned)(t / (blockDim.x * blockDim.y))};
}

// Runs `kernel` (a callable taking no arguments) over the grid, block by
// block, with `dynamic_smem` bytes of dynamic shared memory.
template <class F>
void emu_launch(dim3 grid, dim3 block, F kernel, size_t dynamic_smem = 0) {
    constexpr size_t STACK = 256 * 1024;
    gridDim = grid;
    blockDim = block;
    const int n = (int)(block.x * block.y * block.z);
    const int warps = (n + 31) / 32;
    std::function<void()> k = kernel;
    emu_kernel = &k;
    EmuBlock b;
    b.threads = n;
    b.fibers.resize(n);
    b.slots.resize(warps);
    b.words.resize(warps);
    b.dynamic_smem.resize((dynamic_smem + 15) / 16);
    for (auto& f : b.fibers) f.stack = (char*)std::malloc(STACK);
    emu_block = &b;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                blockIdx = dim3{bx, by, bz};
                std::memset(b.dynamic_smem.data(), 0xff, b.dynamic_smem.size() * 16);
                for (auto& f : b.fibers) {
                    f.cp_open.clear();
                    f.cp_groups.clear();
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = f.stack;
                    f.ctx.uc_stack.ss_size = STACK;
                    f.ctx.uc_link = nullptr;
                    makecontext(&f.ctx, emu_fiber_main, 0);
                    f.state = EMU_RUNNABLE;
                }
                bool forward = true;
                for (;;) {
                    for (int s = 0; s < n; ++s) {
                        const int t = forward ? s : n - 1 - s;
                        if (b.fibers[t].state != EMU_RUNNABLE) continue;
                        emu_set_thread(t);
                        swapcontext(&b.sched, &b.fibers[t].ctx);
                    }
                    forward = !forward;
                    // Everyone waits or is done: release what can be released.
                    int live = 0, at_block = 0;
                    bool released = false;
                    for (int w = 0; w < warps; ++w) {
                        int wl = 0, at_warp = 0;
                        for (int t = 32 * w; t < std::min(n, 32 * w + 32); ++t) {
                            const EmuState st = b.fibers[t].state;
                            if (st == EMU_DONE) continue;
                            ++wl;
                            at_warp += st == EMU_WAIT_WARP;
                            at_block += st == EMU_WAIT_BLOCK;
                        }
                        live += wl;
                        if (wl > 0 && at_warp == wl) {
                            for (int t = 32 * w; t < std::min(n, 32 * w + 32); ++t)
                                if (b.fibers[t].state == EMU_WAIT_WARP) b.fibers[t].state = EMU_RUNNABLE;
                            released = true;
                        }
                    }
                    if (live == 0) break;
                    if (!released && at_block == live) {
                        for (auto& f : b.fibers)
                            if (f.state == EMU_WAIT_BLOCK) f.state = EMU_RUNNABLE;
                        released = true;
                    }
                    if (!released) {
                        std::fprintf(stderr,
                                     "emu: deadlock in block (%u,%u,%u): %d live threads, %d at "
                                     "__syncthreads, the rest at a warp barrier or shuffle with "
                                     "lanes waiting elsewhere (divergent barrier)\n",
                                     bx, by, bz, live, at_block);
                        std::abort();
                    }
                }
            }
    for (auto& f : b.fibers) std::free(f.stack);
    emu_block = nullptr;
}
