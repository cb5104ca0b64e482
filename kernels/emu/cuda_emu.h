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
#pragma once
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cstdint>
#include <cstring>
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
struct EmuFiber {
    ucontext_t ctx;
    char* stack = nullptr;
    EmuState state = EMU_RUNNABLE;
};
struct EmuBlock {
    int threads = 0;
    std::vector<EmuFiber> fibers;
    std::vector<std::array<uint64_t, 32>> slots;
    ucontext_t sched;
    int or_flag = 0;
};
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

// Runs `kernel` (a callable taking no arguments) over the grid, block by block.
template <class F>
void emu_launch(dim3 grid, dim3 block, F kernel) {
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
    for (auto& f : b.fibers) f.stack = (char*)std::malloc(STACK);
    emu_block = &b;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                blockIdx = dim3{bx, by, bz};
                for (auto& f : b.fibers) {
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
