// A small CUDA emulator for checking kernel *logic* on a machine without a
// GPU: every CUDA thread of a block is an OS thread, __syncthreads and warp
// shuffles are barriers, __shared__ is a static (blocks run one at a time).
// It compiles the real kernel sources (src/cu/*.cu) with g++. It says nothing
// about speed, and little about memory-model subtleties; it does catch wrong
// indexing, masks, reductions, races on shared memory that a barrier misses
// (as wrong results), and deadlocks from divergent barriers.
#pragma once
#include <algorithm>
#include <array>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
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

// ---- one block's synchronization state
struct EmuBlock {
    int threads = 0;
    std::unique_ptr<std::barrier<>> bar;
    std::vector<std::unique_ptr<std::barrier<>>> warp_bar;
    std::vector<std::array<uint64_t, 32>> slots;
    int or_flag = 0;
};
inline thread_local EmuBlock* emu_block = nullptr;
inline thread_local int emu_tid = 0;

inline void __syncthreads() { emu_block->bar->arrive_and_wait(); }
inline int __syncthreads_or(int p) {
    emu_block->bar->arrive_and_wait();
    if (emu_tid == 0) emu_block->or_flag = 0;
    emu_block->bar->arrive_and_wait();
    if (p) __atomic_store_n(&emu_block->or_flag, 1, __ATOMIC_SEQ_CST);
    emu_block->bar->arrive_and_wait();
    return __atomic_load_n(&emu_block->or_flag, __ATOMIC_SEQ_CST);
}
inline void __syncwarp(unsigned = 0xffffffffu) { emu_block->warp_bar[emu_tid / 32]->arrive_and_wait(); }

template <class T>
inline T emu_exchange(T v, int src_lane) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    const int warp = emu_tid / 32, lane = emu_tid % 32;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    emu_block->slots[warp][lane] = bits;
    emu_block->warp_bar[warp]->arrive_and_wait();
    T r;
    const uint64_t got = emu_block->slots[warp][src_lane];
    std::memcpy(&r, &got, sizeof(T));
    emu_block->warp_bar[warp]->arrive_and_wait();
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

template <class T>
inline T atomicAdd(T* p, T v) {
    return std::atomic_ref<T>(*p).fetch_add(v);
}
inline int atomicMin(int* p, int v) {
    std::atomic_ref<int> a(*p);
    int old = a.load();
    while (v < old && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
inline int atomicMax(int* p, int v) {
    std::atomic_ref<int> a(*p);
    int old = a.load();
    while (v > old && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}

// Runs `kernel` (a callable taking no arguments) over the grid, one block at
// a time: blockDim OS threads, reused for every block, with a barrier between
// blocks (so `static` shared memory is never used by two blocks at once).
template <class F>
void emu_launch(dim3 grid, dim3 block, F kernel) {
    gridDim = grid;
    blockDim = block;
    const int n = (int)(block.x * block.y * block.z);
    const int warps = (n + 31) / 32;
    const size_t blocks = (size_t)grid.x * grid.y * grid.z;
    std::vector<EmuBlock> bs(blocks);
    for (auto& b : bs) {
        b.threads = n;
        b.bar = std::make_unique<std::barrier<>>(n);
        for (int w = 0; w < warps; ++w)
            b.warp_bar.push_back(std::make_unique<std::barrier<>>(std::min(32, n - 32 * w)));
        b.slots.resize(warps);
    }
    std::barrier<> between(n);
    std::vector<std::thread> ts;
    ts.reserve(n);
    for (int t = 0; t < n; ++t) {
        ts.emplace_back([&, t] {
            emu_tid = t;
            threadIdx = dim3{(unsigned)t % block.x, (unsigned)(t / block.x) % block.y,
                             (unsigned)(t / (block.x * block.y))};
            for (size_t i = 0; i < blocks; ++i) {
                EmuBlock& b = bs[i];
                emu_block = &b;
                blockIdx = dim3{(unsigned)(i % grid.x), (unsigned)((i / grid.x) % grid.y),
                                (unsigned)(i / ((size_t)grid.x * grid.y))};
                kernel();
                // An exited thread no longer takes part in this block's barriers.
                b.warp_bar[t / 32]->arrive_and_drop();
                b.bar->arrive_and_drop();
                between.arrive_and_wait();
            }
        });
    }
    for (auto& th : ts) th.join();
}
