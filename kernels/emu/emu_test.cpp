// Runs the real kernels (src/cu/*.cu) in the CPU emulator (cuda_emu.h) on
// small inputs and compares them with plain reference loops that mirror the
// CPU backend (engine/src/backend/cpu, engine/src/rollout/sampler.rs).
// Build and run: `cargo xtask kernels` (g++ -std=c++20 -O1).
// Exit status 1 when any check fails.
#include "cuda_emu.h"

#include "../src/cu/common.cuh"
#include "../src/cu/norm.cu"
#include "../src/cu/rope.cu"
#include "../src/cu/mlp.cu"
#include "../src/cu/embedding.cu"
#include "../src/cu/optimizer.cu"
#include "../src/cu/logprob.cu"
#include "../src/cu/sampling.cu"
#include "../src/cu/attention.cu"
#include "../src/cu/attention_tc.cu"
#include "../src/cu/paged_attention.cu"

#include <cstdio>
#include <map>
#include <numeric>
#include <string>

using std::vector;

static int failures = 0;

struct Rand {
    uint64_t s;
    explicit Rand(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
    double uniform() {  // [0, 1)
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        return (double)(s >> 11) * (1.0 / 9007199254740992.0);
    }
    float sym(float a = 1.0f) { return (float)((uniform() * 2.0 - 1.0) * a); }
};

static vector<bf16> to_bf(const vector<float>& v) {
    vector<bf16> o(v.size());
    for (size_t i = 0; i < v.size(); ++i) o[i] = to_bf16(v[i]);
    return o;
}
static vector<float> from_bf(const vector<bf16>& v) {
    vector<float> o(v.size());
    for (size_t i = 0; i < v.size(); ++i) o[i] = to_f32(v[i]);
    return o;
}
// Random values already representable in bf16.
static vector<float> rnd_bf(Rand& r, size_t n, float a = 1.0f) {
    vector<float> v(n);
    for (auto& x : v) x = to_f32(to_bf16(r.sym(a)));
    return v;
}

// |got - want| <= atol + rtol * |want| everywhere.
template <class G, class W>
static void check(const std::string& name, const G& got, const W& want, double atol, double rtol) {
    double worst = 0.0, worst_excess = -1.0;
    size_t at = 0;
    bool bad = got.size() != want.size();
    for (size_t i = 0; !bad && i < got.size(); ++i) {
        const double g = (double)got[i], w = (double)want[i];
        const double err = std::fabs(g - w);
        const double excess = err - (atol + rtol * std::fabs(w));
        if (!(excess <= 0.0)) bad = true;
        if (err > worst || std::isnan(err)) worst = err;
        if (excess > worst_excess || std::isnan(excess)) {
            worst_excess = excess;
            at = i;
        }
    }
    if (bad) {
        ++failures;
        std::printf("FAIL %-44s max err %.3g (at %zu: got %.6g want %.6g)\n", name.c_str(), worst,
                    at, at < got.size() ? (double)got[at] : 0.0,
                    at < want.size() ? (double)want[at] : 0.0);
    } else {
        std::printf("ok   %-44s max err %.3g\n", name.c_str(), worst);
    }
}
static void check_true(const std::string& name, bool ok) {
    if (!ok) ++failures;
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", name.c_str());
}
static double max_abs(const vector<double>& v) {
    double m = 0.0;
    for (double x : v) m = std::max(m, std::fabs(x));
    return m;
}

// ------------------------------------------------------------------ norm
static void test_norm() {
    Rand r(1);
    const int rows = 300, d = 70;
    const float eps = 1e-6f;
    auto x = rnd_bf(r, rows * d, 2.0f), w = rnd_bf(r, d), dy = rnd_bf(r, rows * d);
    auto xb = to_bf(x), wb = to_bf(w), dyb = to_bf(dy);
    vector<bf16> out(rows * d);
    vector<float> rstd(rows);
    emu_launch({rows}, {64}, [&] { rmsnorm_fwd(out.data(), rstd.data(), xb.data(), wb.data(), rows, d, eps); });
    vector<double> want(rows * d), want_r(rows);
    for (int i = 0; i < rows; ++i) {
        double ss = 0;
        for (int j = 0; j < d; ++j) ss += (double)x[i * d + j] * x[i * d + j];
        const double inv = 1.0 / std::sqrt(ss / d + eps);
        want_r[i] = inv;
        for (int j = 0; j < d; ++j) want[i * d + j] = x[i * d + j] * inv * w[j];
    }
    check("rmsnorm_fwd out", from_bf(out), want, 1e-3, 1.0 / 128);
    check("rmsnorm_fwd rstd", rstd, want_r, 0, 1e-5);

    // residual + norm
    auto y = rnd_bf(r, rows * d);
    auto resid = xb;
    auto yb = to_bf(y);
    emu_launch({rows}, {64}, [&] {
        residual_rmsnorm_fwd(resid.data(), out.data(), nullptr, yb.data(), wb.data(), rows, d, eps);
    });
    vector<double> want_sum(rows * d);
    for (int i = 0; i < rows * d; ++i) want_sum[i] = to_f32(to_bf16(x[i] + y[i]));
    check("residual_rmsnorm_fwd resid", from_bf(resid), want_sum, 0, 0);

    // backward: dx = r w dy - r^3/d x sum(x dy w); dw += sum dy x r
    vector<bf16> dx(rows * d);
    vector<float> rs(rows);
    emu_launch({rows}, {64}, [&] {
        rmsnorm_bwd_dx(dx.data(), rs.data(), xb.data(), wb.data(), dyb.data(), rows, d, eps);
    });
    const int per = 128, chunks = (rows + per - 1) / per;
    vector<float> partial(chunks * d), dw(d, 0.5f);
    emu_launch({(unsigned)((d + 31) / 32), (unsigned)chunks}, {32}, [&] {
        rmsnorm_bwd_dw_partial(partial.data(), xb.data(), dyb.data(), rs.data(), rows, d, per);
    });
    emu_launch({(unsigned)((d + 31) / 32)}, {32}, [&] { colsum_f32(dw.data(), partial.data(), chunks, d); });
    vector<double> wdx(rows * d), wdw(d, 0.5);
    for (int i = 0; i < rows; ++i) {
        const double rr = want_r[i];
        double dot = 0;
        for (int j = 0; j < d; ++j) dot += (double)x[i * d + j] * dy[i * d + j] * w[j];
        const double c = rr * rr * rr * dot / d;
        for (int j = 0; j < d; ++j) {
            wdx[i * d + j] = rr * w[j] * dy[i * d + j] - c * x[i * d + j];
            wdw[j] += (double)dy[i * d + j] * x[i * d + j] * rr;
        }
    }
    check("rmsnorm_bwd dx", from_bf(dx), wdx, 2e-3, 1.0 / 64);
    check("rmsnorm_bwd dw", dw, wdw, 1e-3, 1e-4);

    // bias gradient column sums, sum of squares, elementwise
    vector<float> db(d, 0.0f);
    emu_launch({(unsigned)((d + 31) / 32), (unsigned)chunks}, {32}, [&] {
        colsum_partial_bf16(partial.data(), dyb.data(), rows, d, per);
    });
    emu_launch({(unsigned)((d + 31) / 32)}, {32}, [&] { colsum_f32(db.data(), partial.data(), chunks, d); });
    vector<double> wdb(d, 0.0);
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < d; ++j) wdb[j] += dy[i * d + j];
    check("colsum (bias grad)", db, wdb, 1e-4, 1e-5);

    vector<float> g(1000);
    for (auto& v : g) v = r.sym(3.0f);
    vector<double> part(4), total(1);
    emu_launch({4}, {64}, [&] { sum_squares_partial(part.data(), g.data(), (long long)g.size()); });
    emu_launch({1}, {64}, [&] { sum_f64(total.data(), part.data(), 4); });
    double ss = 0;
    for (float v : g) ss += (double)v * v;
    check("sum_squares", total, vector<double>{ss}, 0, 1e-12);

    vector<bf16> a = to_bf(vector<float>{1.5f, -2.0f, 0.25f}), b = to_bf(vector<float>{0.5f, 1.0f, 4.0f});
    emu_launch({1}, {32}, [&] { add_assign_bf16(a.data(), b.data(), 3); });
    check("add_assign_bf16", from_bf(a), vector<double>{2.0, -1.0, 4.25}, 0, 0);
    vector<int> idx{2, 0};
    vector<bf16> gathered(2 * 1);
    emu_launch({1}, {32}, [&] { gather_rows_bf16(gathered.data(), a.data(), idx.data(), 2, 1); });
    check("gather_rows_bf16", from_bf(gathered), vector<double>{4.25, 2.0}, 0, 0);
}

// ------------------------------------------------------------------ rope
static void test_rope() {
    Rand r(2);
    const int rows = 4, hd = 8, heads = 3, cols = heads * hd, half = hd / 2;
    vector<int> pos{0, 5, 17, 1000};
    vector<float> inv(half);
    for (int i = 0; i < half; ++i) inv[i] = (float)(1.0 / std::pow(10000.0, 2.0 * i / hd));
    auto x = rnd_bf(r, rows * cols);
    auto xb = to_bf(x);
    emu_launch({2}, {32}, [&] { rope_bf16(xb.data(), pos.data(), inv.data(), rows, cols, hd, 1.0f, 1.0f); });
    vector<double> want(rows * cols);
    for (int row = 0; row < rows; ++row)
        for (int h = 0; h < heads; ++h)
            for (int i = 0; i < half; ++i) {
                const float ang = (float)pos[row] * inv[i];
                const double s = std::sin(ang), c = std::cos(ang);
                const double a = x[row * cols + h * hd + i], b = x[row * cols + h * hd + i + half];
                want[row * cols + h * hd + i] = a * c - b * s;
                want[row * cols + h * hd + i + half] = b * c + a * s;
            }
    check("rope_bf16 forward", from_bf(xb), want, 2e-3, 1.0 / 128);
    emu_launch({2}, {32}, [&] { rope_bf16(xb.data(), pos.data(), inv.data(), rows, cols, hd, -1.0f, 1.0f); });
    check("rope_bf16 backward undoes forward", from_bf(xb), x, 1e-2, 1.0 / 64);

    // q and k in one launch: same as two rope_bf16 calls
    auto q = to_bf(rnd_bf(r, rows * cols)), k = to_bf(rnd_bf(r, rows * hd));
    auto q2 = q, k2 = k;
    emu_launch({3}, {32}, [&] { rope_qk_bf16(q.data(), k.data(), pos.data(), inv.data(), rows, cols, hd, hd, 1.0f, 1.0f); });
    emu_launch({2}, {32}, [&] { rope_bf16(q2.data(), pos.data(), inv.data(), rows, cols, hd, 1.0f, 1.0f); });
    emu_launch({2}, {32}, [&] { rope_bf16(k2.data(), pos.data(), inv.data(), rows, hd, hd, 1.0f, 1.0f); });
    check("rope_qk_bf16 q", from_bf(q), from_bf(q2), 0, 0);
    check("rope_qk_bf16 k", from_bf(k), from_bf(k2), 0, 0);

    // Scaled RoPE (yarn's attention factor 1.25 on cos and sin): forward
    // against the reference loop, backward (same scale) gives back x * 1.25^2.
    auto xs = to_bf(x);
    emu_launch({2}, {32}, [&] { rope_bf16(xs.data(), pos.data(), inv.data(), rows, cols, hd, 1.0f, 1.25f); });
    vector<double> want_s(want.size()), want_back(x.size());
    for (size_t i = 0; i < want.size(); ++i) want_s[i] = 1.25 * want[i];
    check("rope_bf16 scaled forward", from_bf(xs), want_s, 3e-3, 1.0 / 128);
    emu_launch({2}, {32}, [&] { rope_bf16(xs.data(), pos.data(), inv.data(), rows, cols, hd, -1.0f, 1.25f); });
    for (size_t i = 0; i < x.size(); ++i) want_back[i] = 1.5625 * x[i];
    check("rope_bf16 scaled backward", from_bf(xs), want_back, 2e-2, 1.0 / 64);
}

// ------------------------------------------------------- per-head norm
// Qwen3's q_norm / k_norm (head_rmsnorm_*, one warp per head) against a
// reference loop over every head; head_dim 40 > 32 lanes and 7 heads (not a
// multiple of the 4 heads per block) exercise the tails.
static void test_head_norm() {
    Rand r(21);
    const int rows = 3, heads = 7, d = 40, groups = rows * heads, n = groups * d;
    const float eps = 1e-6f;
    auto x = rnd_bf(r, n, 2.0f), w = rnd_bf(r, d), dy = rnd_bf(r, n);
    auto xb = to_bf(x), wb = to_bf(w), dyb = to_bf(dy);
    vector<bf16> out(n), dx(n);
    vector<float> rs(groups), dw(d, 0.25f);
    const unsigned blocks = (groups + 3) / 4;
    emu_launch({blocks}, {128}, [&] { head_rmsnorm_fwd(out.data(), xb.data(), wb.data(), groups, d, eps); });
    emu_launch({blocks}, {128}, [&] {
        head_rmsnorm_bwd_dx(dx.data(), rs.data(), xb.data(), wb.data(), dyb.data(), groups, d, eps);
    });
    const int per = 8, chunks = (groups + per - 1) / per;
    vector<float> partial(chunks * d);
    emu_launch({(unsigned)((d + 31) / 32), (unsigned)chunks}, {32}, [&] {
        rmsnorm_bwd_dw_partial(partial.data(), xb.data(), dyb.data(), rs.data(), groups, d, per);
    });
    emu_launch({(unsigned)((d + 31) / 32)}, {32}, [&] { colsum_f32(dw.data(), partial.data(), chunks, d); });
    vector<double> want(n), wdx(n), wdw(d, 0.25), want_r(groups);
    for (int g = 0; g < groups; ++g) {
        const float* xh = &x[g * d];
        double ss = 0, dot = 0;
        for (int j = 0; j < d; ++j) ss += (double)xh[j] * xh[j];
        const double rr = 1.0 / std::sqrt(ss / d + eps);
        want_r[g] = rr;
        for (int j = 0; j < d; ++j) dot += (double)xh[j] * dy[g * d + j] * w[j];
        for (int j = 0; j < d; ++j) {
            want[g * d + j] = xh[j] * rr * w[j];
            wdx[g * d + j] = rr * w[j] * dy[g * d + j] - rr * rr * rr * dot / d * xh[j];
            wdw[j] += (double)dy[g * d + j] * xh[j] * rr;
        }
    }
    check("head_rmsnorm_fwd out", from_bf(out), want, 1e-3, 1.0 / 128);
    check("head_rmsnorm_bwd_dx rstd", rs, want_r, 0, 1e-5);
    check("head_rmsnorm_bwd dx", from_bf(dx), wdx, 2e-3, 1.0 / 64);
    check("head_rmsnorm_bwd dw", dw, wdw, 1e-3, 1e-4);
}

// ------------------------------------------------------------------- mlp
static void test_mlp() {
    Rand r(3);
    const int rows = 5, cols = 37;
    auto gu = rnd_bf(r, rows * 2 * cols, 4.0f), dy = rnd_bf(r, rows * cols);
    auto gub = to_bf(gu), dyb = to_bf(dy);
    // fused [rows, 2*cols]: gate = first half of each row, up = second half
    vector<bf16> out(rows * cols), dgu(rows * 2 * cols);
    emu_launch({2}, {64}, [&] { swiglu_fwd(out.data(), gub.data(), gub.data() + cols, rows, cols, 2 * cols); });
    emu_launch({2}, {64}, [&] {
        swiglu_bwd(dgu.data(), dgu.data() + cols, gub.data(), gub.data() + cols, dyb.data(), rows, cols, 2 * cols);
    });
    vector<double> want(rows * cols), wdg(rows * 2 * cols);
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < cols; ++j) {
            const double g = gu[i * 2 * cols + j], u = gu[i * 2 * cols + cols + j], d = dy[i * cols + j];
            const double sig = 1.0 / (1.0 + std::exp(-g));
            want[i * cols + j] = g * sig * u;
            wdg[i * 2 * cols + cols + j] = d * g * sig;
            wdg[i * 2 * cols + j] = d * u * sig * (1.0 + g * (1.0 - sig));
        }
    check("swiglu_fwd (fused gate|up layout)", from_bf(out), want, 1e-3, 1.0 / 128);
    check("swiglu_bwd dgate|dup", from_bf(dgu), wdg, 1e-3, 1.0 / 128);
}

// ------------------------------------------------------------- embedding
static void test_embedding() {
    Rand r(4);
    const int vocab = 11, d = 40, n = 9;
    vector<int> ids{3, 7, 3, 0, 10, 3, 7, 1, 3};
    auto table = rnd_bf(r, vocab * d), dy = rnd_bf(r, n * d);
    auto tb = to_bf(table), dyb = to_bf(dy);
    vector<bf16> out(n * d);
    emu_launch({2}, {64}, [&] { embedding_fwd(out.data(), tb.data(), ids.data(), n, d); });
    vector<double> want(n * d);
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < d; ++j) want[i * d + j] = table[ids[i] * d + j];
    check("embedding_fwd", from_bf(out), want, 0, 0);
    // groups as EmbeddingGroups builds them (ascending id, rows ascending)
    vector<std::pair<int, int>> order;
    for (int i = 0; i < n; ++i) order.push_back({ids[i], i});
    std::sort(order.begin(), order.end());
    vector<int> uniq, starts, rows;
    for (int i = 0; i < n; ++i) {
        if (i == 0 || order[i - 1].first != order[i].first) {
            uniq.push_back(order[i].first);
            starts.push_back(i);
        }
        rows.push_back(order[i].second);
    }
    starts.push_back(n);
    vector<float> dt(vocab * d, 0.25f), ref(vocab * d, 0.25f);
    emu_launch({(unsigned)uniq.size()}, {32}, [&] {
        embedding_bwd(dt.data(), dyb.data(), uniq.data(), starts.data(), rows.data(), (int)uniq.size(), d);
    });
    for (int i = 0; i < n; ++i)  // the CPU's sequential loop, f32
        for (int j = 0; j < d; ++j) ref[ids[i] * d + j] += dy[i * d + j];
    check("embedding_bwd (bitwise, row order)", dt, ref, 0, 0);
}

// ------------------------------------------------------------- optimizer
static void test_adamw() {
    Rand r(5);
    const int n = 1000;
    vector<float> p(n), g(n), m(n), v(n);
    for (int i = 0; i < n; ++i) {
        p[i] = r.sym();
        g[i] = r.sym(0.1f);
        m[i] = r.sym(0.01f);
        v[i] = (float)r.uniform() * 1e-3f;
    }
    const float lr = 1e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f;
    const float bc1 = 1.0f - std::pow(b1, 3.0f), bc2 = 1.0f - std::pow(b2, 3.0f);
    vector<double> sumsq{0.0};
    for (float x : g) sumsq[0] += (double)x * x;
    const double avg = 0.5, max_norm = 0.3;
    vector<float> scale(1);
    vector<double> norm(1);
    emu_launch({1}, {32}, [&] { clip_factor(scale.data(), norm.data(), sumsq.data(), avg, max_norm); });
    const double wnorm = std::sqrt(sumsq[0]) * avg;
    const double clip = (max_norm > 0 && wnorm > max_norm) ? max_norm / (wnorm + 1e-6) : 1.0;
    check("clip_factor", scale, vector<double>{(float)(avg * clip)}, 0, 0);
    check("clip_factor norm", norm, vector<double>{wnorm}, 0, 1e-15);
    auto P = p, M = m, V = v;
    vector<bf16> pb(n);
    emu_launch({4}, {64}, [&] {
        adamw_step(P.data(), pb.data(), g.data(), M.data(), V.data(), scale.data(), n, lr, b1, b2, eps, wd,
                   bc1, bc2, 1.0f);
    });
    // engine/src/backend/cpu/mod.rs `adamw`, f32 operation for operation
    const float gs = 1.0f * scale[0], decay = 1.0f - lr * wd;
    vector<float> wp(n), wm(n), wv(n), wpb(n);
    for (int i = 0; i < n; ++i) {
        const float gi = g[i] * gs;
        wm[i] = b1 * m[i] + (1.0f - b1) * gi;
        wv[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
        const float mhat = wm[i] / bc1, vhat = wv[i] / bc2;
        wp[i] = p[i] * decay - lr * mhat / (std::sqrt(vhat) + eps);
        wpb[i] = to_f32(to_bf16(wp[i]));
    }
    check("adamw_step param", P, wp, 0, 1e-6);
    check("adamw_step m", M, wm, 0, 1e-6);
    check("adamw_step v", V, wv, 0, 1e-6);
    check("adamw_step bf16 copy", from_bf(pb), wpb, 0, 1.0 / 128);
    // A norm that is not finite: the factor is NaN and the step changes
    // nothing (the trainer skips the update).
    for (double bad : {std::nan(""), (double)INFINITY}) {
        vector<double> bad_sumsq{bad};
        emu_launch({1}, {32}, [&] { clip_factor(scale.data(), norm.data(), bad_sumsq.data(), avg, max_norm); });
        if (!std::isnan(scale[0]) || std::isfinite(norm[0])) {
            ++failures;
            std::printf("FAIL clip_factor with a non-finite norm: scale %g, norm %g\n", scale[0], norm[0]);
        }
        auto P2 = p, M2 = m, V2 = v;
        emu_launch({4}, {64}, [&] {
            adamw_step(P2.data(), nullptr, g.data(), M2.data(), V2.data(), scale.data(), n, lr, b1, b2, eps, wd,
                       bc1, bc2, 1.0f);
        });
        check("adamw_step skipped: param", P2, p, 0, 0);
        check("adamw_step skipped: m", M2, m, 0, 0);
        check("adamw_step skipped: v", V2, v, 0, 0);
    }
}

// --------------------------------------------------------------- logprob
static void test_logprob() {
    Rand r(6);
    const int rows = 3, vocab = 1000, chunk = 384;
    vector<float> z(rows * vocab);
    for (auto& x : z) x = r.sym(6.0f);
    z[1 * vocab + 999] = 20.0f;  // a dominant logit in the last, short chunk
    vector<int> targets{5, 999, 640};
    vector<float> mx(rows), tl(rows), logp(rows), lse(rows), ent(rows);
    vector<double> sum(rows), zsum(rows);
    vector<int> viol(1, 0);
    emu_launch({1}, {32}, [&] { logprob_init(mx.data(), sum.data(), zsum.data(), tl.data(), rows); });
    for (int lo = 0; lo < vocab; lo += chunk) {
        const int c = std::min(chunk, vocab - lo);
        emu_launch({rows}, {64}, [&] {
            logprob_chunk_fwd(mx.data(), sum.data(), zsum.data(), tl.data(), z.data() + lo, targets.data(), rows,
                              c, vocab, lo);
        });
    }
    emu_launch({1}, {32}, [&] {
        logprob_finalize(logp.data(), lse.data(), ent.data(), viol.data(), mx.data(), sum.data(), zsum.data(),
                         tl.data(), rows);
    });
    vector<double> wl(rows), wlp(rows), we(rows);
    for (int i = 0; i < rows; ++i) {
        double m = -1e300;
        for (int j = 0; j < vocab; ++j) m = std::max(m, (double)z[i * vocab + j]);
        double s = 0;
        for (int j = 0; j < vocab; ++j) s += std::exp(z[i * vocab + j] - m);
        wl[i] = m + std::log(s);
        wlp[i] = z[i * vocab + targets[i]] - wl[i];
        double h = 0;
        for (int j = 0; j < vocab; ++j) {
            const double lp = z[i * vocab + j] - wl[i];
            h -= std::exp(lp) * lp;
        }
        we[i] = h;
    }
    check("logprob lse (3 chunks)", lse, wl, 1e-5, 1e-6);
    check("logprob logp", logp, wlp, 1e-5, 1e-5);
    check("logprob entropy", ent, we, 1e-5, 1e-5);
    check_true("logprob no violations", viol[0] == 0);

    vector<float> dlogp{0.7f, -1.3f, 2.0f}, dent{0.2f, 0.0f, -0.5f};
    vector<bf16> dz(rows * vocab);
    for (int lo = 0; lo < vocab; lo += chunk) {
        const int c = std::min(chunk, vocab - lo);
        emu_launch({rows}, {64}, [&] {
            logprob_chunk_bwd(dz.data() + lo, z.data() + lo, targets.data(), lse.data(), dlogp.data(), ent.data(),
                              dent.data(), rows, c, vocab, vocab, lo);
        });
    }
    vector<double> wdz(rows * vocab);
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < vocab; ++j) {
            const double lp = z[i * vocab + j] - wl[i], p = std::exp(lp);
            double d = -dlogp[i] * p + (j == targets[i] ? dlogp[i] : 0.0);
            d -= dent[i] * p * (lp + we[i]);
            wdz[i * vocab + j] = d;
        }
    check("logprob backward dz", from_bf(dz), wdz, 1e-6, 1.0 / 128);
}

// -------------------------------------------------------------- sampling
// log softmax(logits / t)[id] over the whole row in double (t <= 0 counts as 1).
static double ref_logprob(const float* logits, int vocab, float t, int id) {
    const double tt = t > 0.0f ? (double)t : 1.0;
    double mx = -INFINITY, s = 0.0;
    for (int i = 0; i < vocab; ++i) mx = std::max(mx, logits[i] / tt);
    for (int i = 0; i < vocab; ++i) s += std::exp(logits[i] / tt - mx);
    return logits[id] / tt - mx - std::log(s);
}

// engine/src/backend/cpu/sampling.rs `sample_with_uniform`.
static int ref_sample(const float* logits, int vocab, float t, int top_k, float top_p, double u) {
    if (!(t > 0.0f)) {
        int best = 0;
        for (int i = 0; i < vocab; ++i)
            if (logits[i] > logits[best]) best = i;
        return best;
    }
    vector<std::pair<int, float>> cand;
    for (int i = 0; i < vocab; ++i) cand.push_back({i, logits[i] / t});
    // Rust's total_cmp: -0.0 sorts below +0.0 (as order_key does).
    std::sort(cand.begin(), cand.end(), [](auto& a, auto& b) {
        const unsigned ka = order_key(a.second), kb = order_key(b.second);
        return ka != kb ? ka > kb : a.first < b.first;
    });
    if (top_k > 0 && top_k < vocab) cand.resize(top_k);
    const float mx = cand[0].second;
    vector<double> p;
    for (auto& c : cand) p.push_back(std::exp((double)(c.second - mx)));
    double tot = std::accumulate(p.begin(), p.end(), 0.0);
    for (auto& x : p) x /= tot;
    if (top_p < 1.0f) {
        double acc = 0;
        size_t cut = p.size();
        for (size_t i = 0; i < p.size(); ++i) {
            acc += p[i];
            if (acc >= top_p) {
                cut = i + 1;
                break;
            }
        }
        p.resize(cut);
        tot = std::accumulate(p.begin(), p.end(), 0.0);
        for (auto& x : p) x /= tot;
    }
    double acc = 0;
    for (size_t i = 0; i < p.size(); ++i) {
        acc += p[i];
        if (u < acc) return cand[i].first;
    }
    return cand[p.size() - 1].first;
}

static void test_sampling() {
    Rand r(7);
    const int vocab = 300, rows = 40;
    vector<float> base(vocab), ties(vocab);
    for (int i = 0; i < vocab; ++i) {
        base[i] = r.sym(4.0f);
        ties[i] = std::round(r.sym(2.0f));  // many exact ties
    }
    struct Cfg {
        const char* name;
        float t;
        int k;
        float p;
    } cfgs[] = {{"greedy", 0.0f, 0, 1.0f},        {"t=1", 1.0f, 0, 1.0f},
                {"t=0.7 top_k=20", 0.7f, 20, 1.0f}, {"t=1 top_p=0.9", 1.0f, 0, 0.9f},
                {"t=1.3 k=50 p=0.8", 1.3f, 50, 0.8f}, {"top_k=1", 1.0f, 1, 1.0f},
                {"top_p=0.0001", 1.0f, 0, 0.0001f}};
    for (const auto* logits : {&base, &ties}) {
        vector<float> mat(rows * vocab);
        for (int i = 0; i < rows; ++i) std::copy(logits->begin(), logits->end(), mat.begin() + i * vocab);
        vector<double> us(rows);
        for (int i = 0; i < rows; ++i) us[i] = i < rows / 2 ? (i + 0.5) / (rows / 2) : r.uniform();
        for (const auto& c : cfgs) {
            vector<int> out(rows, -1), want(rows);
            vector<float> lp(rows, 1.0f);
            vector<double> want_lp(rows);
            emu_launch({rows}, {128}, [&] {
                sample_rows(out.data(), lp.data(), mat.data(), us.data(), rows, vocab, vocab, c.t, c.k, c.p);
            });
            for (int i = 0; i < rows; ++i) {
                want[i] = ref_sample(logits->data(), vocab, c.t, c.k, c.p, us[i]);
                want_lp[i] = ref_logprob(logits->data(), vocab, c.t, out[i] < 0 ? 0 : out[i]);
            }
            const std::string name = std::string("sample_rows ") + (logits == &ties ? "ties " : "") + c.name;
            check(name, out, want, 0, 0);
            check(name + " logprob", lp, want_lp, 1e-5, 1e-5);
        }
    }
    // The launch wrapper's block of 1024 threads (32 warps in every reduction).
    const int few = 4;
    vector<float> mat(few * vocab);
    for (int i = 0; i < few; ++i) std::copy(base.begin(), base.end(), mat.begin() + i * vocab);
    vector<double> us{0.01, 0.3, 0.77, 0.999};
    vector<int> out(few), want(few);
    vector<float> lp(few);
    vector<double> want_lp(few);
    emu_launch({few}, {1024}, [&] {
        sample_rows(out.data(), lp.data(), mat.data(), us.data(), few, vocab, vocab, 1.3f, 50, 0.8f);
    });
    for (int i = 0; i < few; ++i) {
        want[i] = ref_sample(base.data(), vocab, 1.3f, 50, 0.8f, us[i]);
        want_lp[i] = ref_logprob(base.data(), vocab, 1.3f, want[i]);
    }
    check("sample_rows 1024 threads k=50 p=0.8", out, want, 0, 0);
    check("sample_rows 1024 threads logprob", lp, want_lp, 1e-5, 1e-5);
}

// ------------------------------------------------------------- attention
struct AttnCase {
    int m, n, H, KV, D;
    bool causal;
    int offset;
    vector<int> span_ptr, spans;
};

static bool ref_visible(const AttnCase& c, int row, int key) {
    if (c.causal) return key <= c.offset + row;
    for (int s = c.span_ptr[row]; s < c.span_ptr[row + 1]; ++s)
        if (key >= c.spans[2 * s] && key < c.spans[2 * s + 1]) return true;
    return false;
}

// Dynamic shared memory of the tensor-core kernels (launch.rs computes the same).
static size_t tc_fwd_smem(int D) { return (size_t)(TC_BQ + 4 * TC_BK) * D * 2; }
static size_t tc_dq_smem(int D) { return (size_t)(2 * TC_BQ + 4 * TC_BK) * D * 2; }
static size_t tc_dkdv_smem(int D) { return (size_t)(2 * TC_BK + 4 * TC_BQB) * D * 2 + 4 * TC_BQB * 4; }
static unsigned tiles(int rows, int per) { return (unsigned)((rows + per - 1) / per); }

// `tc`: the tensor-core kernels (attention_tc.cu) instead of the scalar ones.
static void test_attention_case(const std::string& name, const AttnCase& c, uint64_t seed, bool tc = false) {
    Rand r(seed);
    const int qc = c.H * c.D, kc = c.KV * c.D, group = c.H / c.KV;
    auto q = rnd_bf(r, c.m * qc), k = rnd_bf(r, c.n * kc), v = rnd_bf(r, c.n * kc), dout = rnd_bf(r, c.m * qc);
    auto qb = to_bf(q), kb = to_bf(k), vb = to_bf(v), dob = to_bf(dout);
    vector<bf16> out(c.m * qc);
    vector<float> lse(c.m * c.H);
    const int* sp = c.causal ? nullptr : c.span_ptr.data();
    const int* ss = c.causal ? nullptr : c.spans.data();
    const dim3 qgrid{(unsigned)((c.m + ATT_ROWS - 1) / ATT_ROWS), (unsigned)c.H};
    const dim3 tc_qgrid{tiles(c.m, TC_BQ), (unsigned)c.H};
    if (tc)
        emu_launch(tc_qgrid, {TC_THREADS}, [&] {
            if (c.D == 64)
                attn_tc_fwd_d64(out.data(), lse.data(), qb.data(), kb.data(), vb.data(), c.m, c.n, c.H, c.KV,
                                c.causal, c.offset, sp, ss);
            else
                attn_tc_fwd_d128(out.data(), lse.data(), qb.data(), kb.data(), vb.data(), c.m, c.n, c.H, c.KV,
                                 c.causal, c.offset, sp, ss);
        }, tc_fwd_smem(c.D));
    else
        emu_launch(qgrid, {ATT_THREADS}, [&] {
            if (c.D == 64)
                attn_fwd_d64(out.data(), lse.data(), qb.data(), kb.data(), vb.data(), c.m, c.n, c.H, c.KV,
                             c.causal, c.offset, sp, ss);
            else
                attn_fwd_d128(out.data(), lse.data(), qb.data(), kb.data(), vb.data(), c.m, c.n, c.H, c.KV,
                              c.causal, c.offset, sp, ss);
        });
    // reference in f64
    const double scale = 1.0 / std::sqrt((double)c.D);
    vector<double> wo(c.m * qc, 0.0), wl(c.m * c.H), dq(c.m * qc, 0.0), dk(c.n * kc, 0.0), dv(c.n * kc, 0.0);
    vector<char> empty_row(c.m * c.H, 0);
    for (int h = 0; h < c.H; ++h) {
        const int g = h / group;
        for (int i = 0; i < c.m; ++i) {
            vector<double> s(c.n, 0.0), p(c.n, 0.0);
            double mx = -1e300;
            bool any = false;
            for (int j = 0; j < c.n; ++j) {
                if (!ref_visible(c, i, j)) continue;
                double dot = 0;
                for (int t = 0; t < c.D; ++t) dot += (double)q[i * qc + h * c.D + t] * k[j * kc + g * c.D + t];
                s[j] = dot * scale;
                mx = std::max(mx, s[j]);
                any = true;
            }
            if (!any) {
                empty_row[i * c.H + h] = 1;
                wl[i * c.H + h] = -INFINITY;
                continue;
            }
            double tot = 0;
            for (int j = 0; j < c.n; ++j)
                if (ref_visible(c, i, j)) tot += std::exp(s[j] - mx);
            wl[i * c.H + h] = mx + std::log(tot);
            for (int j = 0; j < c.n; ++j)
                if (ref_visible(c, i, j)) p[j] = std::exp(s[j] - wl[i * c.H + h]);
            for (int j = 0; j < c.n; ++j)
                for (int t = 0; t < c.D; ++t) wo[i * qc + h * c.D + t] += p[j] * v[j * kc + g * c.D + t];
            // gradients
            vector<double> dp(c.n, 0.0);
            double delta = 0;
            for (int t = 0; t < c.D; ++t) delta += (double)dout[i * qc + h * c.D + t] * wo[i * qc + h * c.D + t];
            for (int j = 0; j < c.n; ++j) {
                if (p[j] == 0.0) continue;
                for (int t = 0; t < c.D; ++t) {
                    dp[j] += (double)dout[i * qc + h * c.D + t] * v[j * kc + g * c.D + t];
                    dv[j * kc + g * c.D + t] += p[j] * dout[i * qc + h * c.D + t];
                }
                const double ds = p[j] * (dp[j] - delta);
                for (int t = 0; t < c.D; ++t) {
                    dq[i * qc + h * c.D + t] += scale * ds * k[j * kc + g * c.D + t];
                    dk[j * kc + g * c.D + t] += scale * ds * q[i * qc + h * c.D + t];
                }
            }
        }
    }
    check(name + " fwd out", from_bf(out), wo, 4e-3, 1.0 / 64);
    vector<double> lse_d(lse.begin(), lse.end());
    bool lse_ok = true;
    double lse_err = 0;
    for (int i = 0; i < c.m * c.H; ++i) {
        if (empty_row[i]) {
            lse_ok = lse_ok && std::isinf(lse_d[i]) && lse_d[i] < 0;
        } else {
            lse_err = std::max(lse_err, std::fabs(lse_d[i] - wl[i]));
        }
    }
    check_true(name + " fwd lse (max err " + std::to_string(lse_err) + ")", lse_ok && lse_err < 1e-4);

    // backward through the three kernels, fed the kernel's own forward
    vector<float> delta(c.m * c.H);
    const int warps = c.m * c.H;
    emu_launch({(unsigned)((warps + 3) / 4)}, {128}, [&] {
        attn_bwd_delta(delta.data(), out.data(), dob.data(), c.m, c.H, c.D);
    });
    vector<bf16> gq(c.m * qc), gk(c.n * kc), gv(c.n * kc);
    if (tc) {
        emu_launch({tiles(c.n, TC_BK), (unsigned)c.KV}, {TC_THREADS}, [&] {
            if (c.D == 64)
                attn_tc_bwd_dkdv_d64(gk.data(), gv.data(), qb.data(), kb.data(), vb.data(), dob.data(), lse.data(),
                                     delta.data(), c.m, c.n, c.H, c.KV, c.causal, c.offset, sp, ss);
            else
                attn_tc_bwd_dkdv_d128(gk.data(), gv.data(), qb.data(), kb.data(), vb.data(), dob.data(),
                                      lse.data(), delta.data(), c.m, c.n, c.H, c.KV, c.causal, c.offset, sp, ss);
        }, tc_dkdv_smem(c.D));
        emu_launch(tc_qgrid, {TC_THREADS}, [&] {
            if (c.D == 64)
                attn_tc_bwd_dq_d64(gq.data(), qb.data(), kb.data(), vb.data(), dob.data(), lse.data(),
                                   delta.data(), c.m, c.n, c.H, c.KV, c.causal, c.offset, sp, ss);
            else
                attn_tc_bwd_dq_d128(gq.data(), qb.data(), kb.data(), vb.data(), dob.data(), lse.data(),
                                    delta.data(), c.m, c.n, c.H, c.KV, c.causal, c.offset, sp, ss);
        }, tc_dq_smem(c.D));
    }
    const dim3 kgrid{(unsigned)((c.n + ATT_ROWS - 1) / ATT_ROWS), (unsigned)c.KV};
    if (!tc) emu_launch(kgrid, {ATT_THREADS}, [&] {
        if (c.D == 64)
            attn_bwd_dkdv_d64(gk.data(), gv.data(), qb.data(), kb.data(), vb.data(), dob.data(), lse.data(),
                              delta.data(), c.m, c.n, c.H, c.KV, c.causal, c.offset, sp, ss);
        else
            attn_bwd_dkdv_d128(gk.data(), gv.data(), qb.data(), kb.data(), vb.data(), dob.data(), lse.data(),
                               delta.data(), c.m, c.n, c.H, c.KV, c.causal, c.offset, sp, ss);
    });
    if (!tc) emu_launch(qgrid, {ATT_THREADS}, [&] {
        if (c.D == 64)
            attn_bwd_dq_d64(gq.data(), qb.data(), kb.data(), vb.data(), dob.data(), lse.data(), delta.data(), c.m,
                            c.n, c.H, c.KV, c.causal, c.offset, sp, ss);
        else
            attn_bwd_dq_d128(gq.data(), qb.data(), kb.data(), vb.data(), dob.data(), lse.data(), delta.data(),
                             c.m, c.n, c.H, c.KV, c.causal, c.offset, sp, ss);
    });
    check(name + " bwd dq", from_bf(gq), dq, 2e-2 * max_abs(dq), 1.0 / 32);
    check(name + " bwd dk", from_bf(gk), dk, 2e-2 * max_abs(dk), 1.0 / 32);
    check(name + " bwd dv", from_bf(gv), dv, 2e-2 * max_abs(dv), 1.0 / 32);
}

// The IGPO scoring layout over `rows` rows: a shared prefix of `prefix`
// rows, then probes of `probe` rows that each see the prefix and themselves
// causally; row `empty` sees nothing.
static AttnCase probe_spans(int rows, int prefix, int probe, int empty, int H, int KV, int D) {
    AttnCase c{rows, rows, H, KV, D, false, 0, {0}, {}};
    for (int j = 0; j < rows; ++j) {
        if (j == empty) {
            c.span_ptr.push_back(c.span_ptr.back());
            continue;
        }
        if (j < prefix) {
            c.spans.insert(c.spans.end(), {0, j + 1});
            c.span_ptr.push_back(c.span_ptr.back() + 1);
        } else {
            const int probe0 = prefix + (j - prefix) / probe * probe;
            c.spans.insert(c.spans.end(), {0, prefix, probe0, j + 1});
            c.span_ptr.push_back(c.span_ptr.back() + 2);
        }
    }
    return c;
}

static void test_attention() {
    // prefill after 8 cached keys, two key tiles, GQA 4 -> 2
    AttnCase causal{70, 78, 4, 2, 64, true, 8, {}, {}};
    test_attention_case("attention causal d64 GQA", causal, 11);
    // IGPO scoring layout: a shared prefix of 20, then probes of 5 rows that
    // each see the prefix and themselves causally; one row sees nothing.
    test_attention_case("attention spans d64 (probes, empty row)", probe_spans(40, 20, 5, 33, 2, 1, 64), 12);
    AttnCase big{33, 100, 2, 2, 128, true, 67, {}, {}};
    test_attention_case("attention causal d128", big, 13);
}


// ------------------------------------------- tensor-core primitives alone
// The PTX ISA's m16n8k16 .bf16 fragment tables, written element by element
// (a_i, b_i, c_i) as the ISA states them, independently of cuda_emu.h.
static void isa_a(int lane, int i, int* row, int* col) {  // a0 .. a7
    const int g = lane >> 2, t = lane % 4;
    *row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
    *col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
}
static void isa_b(int lane, int i, int* row, int* col) {  // b0 .. b3
    const int g = lane >> 2, t = lane % 4;
    *row = t * 2 + (i & 1) + (i >= 2 ? 8 : 0);
    *col = g;
}
static void isa_c(int lane, int i, int* row, int* col) {  // c0 .. c3
    const int g = lane >> 2, t = lane % 4;
    *row = i < 2 ? g : g + 8;
    *col = t * 2 + (i & 1);
}
static uint16_t bf_bits(float x) { return to_bf16(x).bits; }

static void test_tc_primitives() {
    Rand r(21);
    // mma: D = A B + C against a plain 16x8x16 loop.
    auto A = rnd_bf(r, 16 * 16), B = rnd_bf(r, 16 * 8), C = rnd_bf(r, 16 * 8);
    vector<float> D(16 * 8, NAN);
    emu_launch({1}, {32}, [&] {
        const int lane = threadIdx.x;
        unsigned a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
        float c[4], d[4];
        int row, col;
        for (int i = 0; i < 8; ++i) {
            isa_a(lane, i, &row, &col);
            a[i / 2] |= (unsigned)bf_bits(A[row * 16 + col]) << (16 * (i & 1));
        }
        for (int i = 0; i < 4; ++i) {
            isa_b(lane, i, &row, &col);
            b[i / 2] |= (unsigned)bf_bits(B[row * 8 + col]) << (16 * (i & 1));
        }
        for (int i = 0; i < 4; ++i) {
            isa_c(lane, i, &row, &col);
            c[i] = C[row * 8 + col];
        }
        mma_bf16_16816(d, a, b, c);
        for (int i = 0; i < 4; ++i) {
            isa_c(lane, i, &row, &col);
            D[row * 8 + col] = d[i];
        }
    });
    vector<double> want(16 * 8);
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 8; ++j) {
            double acc = C[i * 8 + j];
            for (int k = 0; k < 16; ++k) acc += (double)A[i * 16 + k] * B[k * 8 + j];
            want[i * 8 + j] = acc;
        }
    check("mma_bf16_16816 vs 16x8x16 matmul", D, want, 1e-5, 1e-5);

    // ldmatrix: four 8x8 matrices of a 16x16 tile (element value = 16 * row
    // + col); lane l passes row l % 16, column (l / 16) * 8.
    vector<bf16> tile(16 * 16);
    for (int i = 0; i < 256; ++i) tile[i] = to_bf16((float)i);
    for (int trans = 0; trans < 2; ++trans) {
        for (int num : {1, 2, 4}) {
            bool ok = true;
            emu_launch({1}, {32}, [&] {
                const int lane = threadIdx.x;
                const bf16* p = tile.data() + (lane % 16) * 16 + (lane / 16) * 8;
                unsigned reg[4] = {0, 0, 0, 0};
                if (trans) {
                    if (num == 1) ldmatrix_x1_trans(reg, p);
                    if (num == 2) ldmatrix_x2_trans(reg, p);
                    if (num == 4) ldmatrix_x4_trans(reg, p);
                } else {
                    if (num == 1) ldmatrix_x1(reg, p);
                    if (num == 2) ldmatrix_x2(reg, p);
                    if (num == 4) ldmatrix_x4(reg, p);
                }
                for (int i = 0; i < num; ++i) {
                    // matrix i: rows 8 * (i % 2) .., columns 8 * (i / 2) ..
                    const int r0 = 8 * (i % 2), c0 = 8 * (i / 2);
                    for (int e = 0; e < 2; ++e) {
                        int row = lane / 4, col = 2 * (lane % 4) + e;
                        if (trans) std::swap(row, col);
                        const float want_v = (float)((r0 + row) * 16 + c0 + col);
                        const bf16 got{(uint16_t)(reg[i] >> (16 * e))};
                        ok = ok && to_f32(got) == want_v;
                    }
                }
            });
            check_true(std::string("ldmatrix_x") + std::to_string(num) + (trans ? "_trans" : "") +
                           " distributes the 8x8 matrices as the ISA lays them out",
                       ok);
        }
    }

    // cp.async: a copy is not in shared memory before its wait, and
    // wait_group 1 retires all groups but the newest.
    vector<bf16> src(64);
    for (int i = 0; i < 64; ++i) src[i] = to_bf16((float)i);
    bool before_nan = true, first_landed = true, second_pending = true, all_landed = true;
    emu_launch({1}, {32}, [&] {
        IGPO_DYNAMIC_SMEM(smem);
        bf16* sm = reinterpret_cast<bf16*>(smem);
        const int lane = threadIdx.x;
        if (lane < 4) cp_async_16(sm + 8 * lane, src.data() + 8 * lane, true);
        cp_async_commit();
        if (lane < 4) cp_async_16(sm + 32 + 8 * lane, src.data() + 32 + 8 * lane, lane != 3);
        cp_async_commit();
        if (lane < 4) before_nan = before_nan && std::isnan(to_f32(sm[8 * lane]));
        cp_async_wait<1>();
        if (lane < 4) {
            first_landed = first_landed && to_f32(sm[8 * lane + 5]) == 8 * lane + 5;
            second_pending = second_pending && std::isnan(to_f32(sm[32 + 8 * lane]));
        }
        cp_async_wait<0>();
        if (lane < 4)
            for (int e = 0; e < 8; ++e)
                all_landed = all_landed && to_f32(sm[32 + 8 * lane + e]) == (lane == 3 ? 0.0f : 32 + 8 * lane + e);
    }, 128);
    check_true("cp.async: nothing visible before the wait", before_nan);
    check_true("cp.async: wait_group 1 lands the older group only", first_landed && second_pending);
    check_true("cp.async: wait_group 0 lands the rest (src-size 0 gives zeros)", all_landed);
}

// ------------------------------------------------- tensor-core attention
static void test_attention_tc() {
    test_attention_case("attention tc causal d64 GQA offset", {70, 78, 4, 2, 64, true, 8, {}, {}}, 31, true);
    test_attention_case("attention tc causal d64 3 q tiles", {150, 150, 2, 1, 64, true, 0, {}, {}}, 32, true);
    test_attention_case("attention tc spans d64 (probes, empty row)", probe_spans(40, 20, 5, 33, 2, 1, 64), 33,
                        true);
    test_attention_case("attention tc causal d128 GQA", {33, 100, 4, 1, 128, true, 67, {}, {}}, 34, true);
    test_attention_case("attention tc spans d128 (2 tiles, empty row)", probe_spans(90, 37, 7, 80, 2, 2, 128), 35,
                        true);
}

// Tensor-core varlen forward = attn_tc_fwd on each sequence alone, and a row
// decoded alone (m = 1 over its keys) = the same row of a whole prefill, bit
// for bit.
static void test_varlen_tc() {
    Rand r(36);
    const int H = 4, KV = 2, D = 64, qc = H * D, kc = KV * D;
    vector<int> m{1, 5, 70, 0, 2}, n{1, 40, 70, 9, 130};
    vector<int> q_start{0};
    for (int x : m) q_start.push_back(q_start.back() + x);
    const int rows = q_start.back();
    auto q = to_bf(rnd_bf(r, rows * qc));
    vector<vector<bf16>> ks, vs;
    vector<const bf16*> kp, vp;
    for (size_t b = 0; b < m.size(); ++b) {
        ks.push_back(to_bf(rnd_bf(r, n[b] * kc)));
        vs.push_back(to_bf(rnd_bf(r, n[b] * kc)));
    }
    for (size_t b = 0; b < m.size(); ++b) {
        kp.push_back(ks[b].data());
        vp.push_back(vs[b].data());
    }
    vector<bf16> out(rows * qc);
    vector<float> lse(rows * H);
    emu_launch({tiles(70, TC_BQ), (unsigned)H, (unsigned)m.size()}, {TC_THREADS}, [&] {
        attn_tc_fwd_varlen_d64(out.data(), lse.data(), q.data(), kp.data(), vp.data(), q_start.data(), n.data(), H,
                               KV);
    }, tc_fwd_smem(D));
    vector<float> want_o, want_l;
    for (size_t b = 0; b < m.size(); ++b) {
        if (m[b] == 0) continue;
        vector<bf16> o1(m[b] * qc);
        vector<float> l1(m[b] * H);
        emu_launch({tiles(m[b], TC_BQ), (unsigned)H}, {TC_THREADS}, [&] {
            attn_tc_fwd_d64(o1.data(), l1.data(), q.data() + q_start[b] * qc, kp[b], vp[b], m[b], n[b], H, KV, 1,
                            n[b] - m[b], nullptr, nullptr);
        }, tc_fwd_smem(D));
        for (auto v : from_bf(o1)) want_o.push_back(v);
        for (auto v : l1) want_l.push_back(v);
    }
    check("attn_tc_fwd_varlen_d64 out == attn_tc_fwd per sequence", from_bf(out), want_o, 0, 0);
    check("attn_tc_fwd_varlen_d64 lse == attn_tc_fwd per sequence", lse, want_l, 0, 0);

    // Decode rows 0, 63, 64, 69 of sequence 2 (its 70-row prefill above) in
    // one batch: row j as m = 1 over the first j + 1 keys.
    vector<int> pick{0, 63, 64, 69}, dm, dn, dstart{0};
    vector<bf16> dq;
    vector<const bf16*> dkp, dvp;
    for (int j : pick) {
        dm.push_back(1);
        dn.push_back(j + 1);
        dstart.push_back(dstart.back() + 1);
        dq.insert(dq.end(), q.begin() + (q_start[2] + j) * qc, q.begin() + (q_start[2] + j + 1) * qc);
        dkp.push_back(kp[2]);
        dvp.push_back(vp[2]);
    }
    vector<bf16> dout((int)pick.size() * qc);
    vector<float> dlse((int)pick.size() * H);
    emu_launch({1, (unsigned)H, (unsigned)pick.size()}, {TC_THREADS}, [&] {
        attn_tc_fwd_varlen_d64(dout.data(), dlse.data(), dq.data(), dkp.data(), dvp.data(), dstart.data(),
                               dn.data(), H, KV);
    }, tc_fwd_smem(D));
    vector<float> po, pl;
    for (int j : pick) {
        for (int i = 0; i < qc; ++i) po.push_back(to_f32(out[(q_start[2] + j) * qc + i]));
        for (int h = 0; h < H; ++h) pl.push_back(lse[(q_start[2] + j) * H + h]);
    }
    check("attn_tc decode rows == the same rows of the prefill (out)", from_bf(dout), po, 0, 0);
    check("attn_tc decode rows == the same rows of the prefill (lse)", dlse, pl, 0, 0);
}

// ------------------------------------------------- paged split-K decode
// Pools [blocks * bs, KV*D] with random rows; every sequence's block table
// is a scattered, non-contiguous pick of pool blocks. Sequence b has keys[b]
// keys and its m[b] newest positions as query rows (packed in q in order).
struct PagedCase {
    int H, KV, D, bs, pool_blocks;
    vector<int> keys, m;
};
struct PagedData {
    PagedCase c;
    vector<float> kf, vf, qf;  // pools and queries (bf16 values)
    vector<bf16> kb, vb, qb;
    vector<vector<int>> tables;
};

static PagedData paged_data(const PagedCase& c, uint64_t seed) {
    Rand r(seed);
    PagedData p{c, {}, {}, {}, {}, {}, {}, {}};
    const int kc = c.KV * c.D, rows = c.pool_blocks * c.bs;
    p.kf = rnd_bf(r, (size_t)rows * kc, 2.0f);
    p.vf = rnd_bf(r, (size_t)rows * kc);
    p.kb = to_bf(p.kf);
    p.vb = to_bf(p.vf);
    // A shuffled list of blocks, handed out in order: tables are scattered.
    vector<int> perm(c.pool_blocks);
    std::iota(perm.begin(), perm.end(), 0);
    for (int i = c.pool_blocks - 1; i > 0; --i) std::swap(perm[i], perm[(int)(r.uniform() * (i + 1))]);
    int next = 0;
    int total_rows = 0;
    for (size_t b = 0; b < c.keys.size(); ++b) {
        vector<int> t;
        for (int j = 0; j < (c.keys[b] + c.bs - 1) / c.bs; ++j) t.push_back(perm.at(next++));
        p.tables.push_back(t);
        total_rows += c.m[b];
    }
    p.qf = rnd_bf(r, (size_t)total_rows * c.H * c.D);
    p.qb = to_bf(p.qf);
    return p;
}

// The host side of kernels/src/paged.rs (PagedMeta) for sequences `pick` of
// the case, their rows packed from row 0 in pick order.
struct PagedMetaHost {
    vector<int> ints;
    int items = 0, work = 0, off_work = 0, off_tstart = 0, off_tables = 0;
};
static PagedMetaHost paged_meta(const PagedData& p, const vector<int>& pick, int split_keys) {
    vector<int> items, work, tstart{0}, tables;
    int splits = 0, row = 0;
    for (size_t bi = 0; bi < pick.size(); ++bi) {
        const int b = pick[bi];
        for (int t : p.tables[b]) tables.push_back(t);
        tstart.push_back((int)tables.size());
        const int m = p.c.m[b], keys = p.c.keys[b];
        for (int j = 0; j < m; ++j) {
            const int n = keys - m + j + 1, item = (int)items.size() / 4;
            items.insert(items.end(), {row++, (int)bi, n, splits});
            for (int s = 0; s < (n + split_keys - 1) / split_keys; ++s) work.insert(work.end(), {item, s});
            splits += (n + split_keys - 1) / split_keys;
        }
    }
    PagedMetaHost h;
    h.items = (int)items.size() / 4;
    h.work = (int)work.size() / 2;
    h.off_work = (int)items.size();
    h.off_tstart = h.off_work + (int)work.size();
    h.off_tables = h.off_tstart + (int)tstart.size();
    h.ints = items;
    h.ints.insert(h.ints.end(), work.begin(), work.end());
    h.ints.insert(h.ints.end(), tstart.begin(), tstart.end());
    h.ints.insert(h.ints.end(), tables.begin(), tables.end());
    return h;
}

// First packed q row of each sequence of the case.
static vector<int> paged_row_starts(const PagedCase& c) {
    vector<int> st{0};
    for (int x : c.m) st.push_back(st.back() + x);
    return st;
}

// Runs split + merge over sequences `pick` (their q rows copied and packed
// in pick order); returns out [rows, H*D] as floats.
static vector<float> run_paged(const PagedData& p, const vector<int>& pick, int split_keys) {
    const PagedCase& c = p.c;
    const int qc = c.H * c.D;
    const vector<int> st = paged_row_starts(c);
    vector<bf16> q;
    for (int b : pick) q.insert(q.end(), p.qb.begin() + (size_t)st[b] * qc, p.qb.begin() + (size_t)st[b + 1] * qc);
    PagedMetaHost h = paged_meta(p, pick, split_keys);
    vector<float> ml((size_t)h.work * c.H * 2, NAN), acc((size_t)h.work * c.H * c.D, NAN);
    vector<bf16> out((size_t)h.items * qc, to_bf16(NAN));
    const int G = c.H / c.KV, chunks = (G + PA_GMAX - 1) / PA_GMAX;
    emu_launch({(unsigned)h.work, (unsigned)(c.KV * chunks)}, {PA_THREADS}, [&] {
        auto f = c.D == 64 ? paged_attn_split_d64 : paged_attn_split_d128;
        f(ml.data(), acc.data(), q.data(), p.kb.data(), p.vb.data(), h.ints.data(), h.off_work, h.off_tstart,
          h.off_tables, c.H, c.KV, c.bs, split_keys);
    });
    emu_launch({(unsigned)h.items, (unsigned)c.H}, {(unsigned)c.D}, [&] {
        paged_attn_merge(out.data(), ml.data(), acc.data(), h.ints.data(), c.H, c.D, split_keys);
    });
    return from_bf(out);
}

// Double-precision reference of every row of every sequence (packed order).
static vector<double> ref_paged(const PagedData& p) {
    const PagedCase& c = p.c;
    const int qc = c.H * c.D, kc = c.KV * c.D, G = c.H / c.KV;
    const double scale = 1.0 / std::sqrt((double)c.D);
    vector<double> want;
    int row = 0;
    for (size_t b = 0; b < c.keys.size(); ++b)
        for (int j = 0; j < c.m[b]; ++j, ++row) {
            const int n = c.keys[b] - c.m[b] + j + 1;
            vector<double> o(qc, 0.0);
            for (int h = 0; h < c.H; ++h) {
                const int g = h / G;
                vector<double> sc(n);
                double mx = -1e300;
                for (int key = 0; key < n; ++key) {
                    const size_t pr = (size_t)p.tables[b][key / c.bs] * c.bs + key % c.bs;
                    double dot = 0;
                    for (int t = 0; t < c.D; ++t) dot += (double)p.qf[(size_t)row * qc + h * c.D + t] * p.kf[pr * kc + g * c.D + t];
                    sc[key] = dot * scale;
                    mx = std::max(mx, sc[key]);
                }
                double tot = 0;
                for (double x : sc) tot += std::exp(x - mx);
                for (int key = 0; key < n; ++key) {
                    const size_t pr = (size_t)p.tables[b][key / c.bs] * c.bs + key % c.bs;
                    const double w = std::exp(sc[key] - mx) / tot;
                    for (int t = 0; t < c.D; ++t) o[h * c.D + t] += w * p.vf[pr * kc + g * c.D + t];
                }
            }
            want.insert(want.end(), o.begin(), o.end());
        }
    return want;
}

static vector<int> all_seqs(const PagedCase& c) {
    vector<int> v(c.keys.size());
    std::iota(v.begin(), v.end(), 0);
    return v;
}

// The checks of one case: against the reference; sequences `alone` run by
// themselves give the batch's bits; one split per row (split_keys past every
// key count) agrees with 256-key splits within rounding.
static void paged_case(const std::string& name, const PagedCase& c, uint64_t seed, const vector<int>& alone,
                       bool one_split) {
    const PagedData p = paged_data(c, seed);
    const vector<int> all = all_seqs(c);
    const vector<float> got = run_paged(p, all, 256);
    const vector<double> want = ref_paged(p);
    check(name + " vs reference", got, want, 4e-3, 1.0 / 64);
    const int qc = c.H * c.D;
    const vector<int> st = paged_row_starts(c);
    for (int b : alone) {
        const vector<float> solo = run_paged(p, {b}, 256);
        const vector<float> in_batch(got.begin() + (size_t)st[b] * qc, got.begin() + (size_t)st[b + 1] * qc);
        check(name + " seq " + std::to_string(b) + " (" + std::to_string(c.keys[b]) + " keys) alone == in batch",
              solo, in_batch, 0, 0);
    }
    if (one_split) {
        const vector<float> one = run_paged(p, all, 1024);
        check(name + " one split == 256-key splits", one, got, 1e-3, 1.0 / 128);
    }
}

static const PagedCase PAGED_D64{8, 2, 64, 16, 120, {1, 15, 16, 17, 300, 1000, 70}, {1, 1, 1, 1, 5, 1, 70}};

static void test_paged() {
    // D 64, GQA 4: lengths 1, 15, 16, 17, 300 (a 5-row chunk), 1000 (4
    // splits), a 70-row prompt (row j sees j + 1 keys).
    paged_case("paged_attn d64 GQA4", PAGED_D64, 51, {4, 5}, true);
    // D 128, 12 query heads over one KV head: two head chunks (8 + 4).
    paged_case("paged_attn d128 GQA12", {12, 1, 128, 16, 100, {1, 15, 16, 17, 300, 1000}, {1, 1, 1, 1, 3, 1}}, 52,
               {5}, true);
    // D 128 without GQA (one head per block), 8 positions per block.
    paged_case("paged_attn d128 MHA bs8", {2, 2, 128, 8, 80, {9, 257, 130}, {1, 2, 1}}, 53, {1}, false);
}

// scatter_rows_bf16: each row lands at its index, nothing else changes; the
// 16-byte path (cols % 8 == 0, both pools) and the element path (one pool).
static void test_scatter() {
    Rand r(54);
    for (int cols : {64, 12}) {
        const int pool_rows = 40, n = 7;
        vector<int> rows{33, 2, 17, 18, 0, 39, 5};
        const bf16 sentinel = to_bf16(7.0f);
        vector<bf16> k0((size_t)pool_rows * cols, sentinel), v0 = k0;
        auto k = to_bf(rnd_bf(r, (size_t)n * cols)), v = to_bf(rnd_bf(r, (size_t)n * cols));
        auto want_k = k0, want_v = v0;
        for (int i = 0; i < n; ++i)
            for (int c = 0; c < cols; ++c) {
                want_k[(size_t)rows[i] * cols + c] = k[(size_t)i * cols + c];
                want_v[(size_t)rows[i] * cols + c] = v[(size_t)i * cols + c];
            }
        const bool both = cols % 8 == 0;
        emu_launch({2}, {32}, [&] {
            scatter_rows_bf16(k0.data(), both ? v0.data() : nullptr, rows.data(), k.data(), both ? v.data() : nullptr,
                              n, cols);
        });
        check("scatter_rows_bf16 cols " + std::to_string(cols) + " first matrix", from_bf(k0), from_bf(want_k), 0, 0);
        if (both) check("scatter_rows_bf16 cols 64 second matrix", from_bf(v0), from_bf(want_v), 0, 0);
    }
}

// Planted bugs in the emulated primitives (fragment layouts, a missing
// cp.async wait) must make the tensor-core attention checks fail.
static void test_planted() {
    const std::pair<EmuPlant, const char*> plants[] = {
        {EMU_PLANT_MMA_A_LAYOUT, "mma A fragment layout (regs 1, 2 swapped)"},
        {EMU_PLANT_MMA_B_LAYOUT, "mma B fragment layout (regs 0, 1 swapped)"},
        {EMU_PLANT_LDMATRIX_TRANS, "ldmatrix .trans ignored"},
        {EMU_PLANT_CP_ASYNC_NO_WAIT, "cp.async wait_group missing"},
    };
    for (auto [plant, what] : plants) {
        const int before = failures;
        emu_plant = plant;
        std::printf("-- planted: %s (the checks below must FAIL)\n", what);
        test_attention_case("planted: attention tc causal d64 GQA", {40, 44, 2, 1, 64, true, 4, {}, {}}, 41, true);
        emu_plant = EMU_PLANT_NONE;
        const bool caught = failures > before;
        failures = before;
        check_true(std::string("planted bug caught: ") + what, caught);
    }
    // Bugs planted in the paged split-K kernels (and a missing cp.async
    // wait there): the paged checks must fail.
    const std::pair<EmuPlant, const char*> paged[] = {
        {EMU_PLANT_PAGED_KEY_LIMIT, "paged split drops its last key (off by one)"},
        {EMU_PLANT_PAGED_BLOCK_TABLE, "paged key read from pool row = position (block table ignored)"},
        {EMU_PLANT_PAGED_MERGE_RESCALE, "paged merge without the e^(m_s - M) rescale"},
        {EMU_PLANT_CP_ASYNC_NO_WAIT, "cp.async wait_group missing (paged)"},
    };
    const PagedCase small{4, 2, 64, 16, 64, {17, 300, 600}, {1, 2, 1}};
    for (auto [plant, what] : paged) {
        const int before = failures;
        emu_plant = plant;
        std::printf("-- planted: %s (the checks below must FAIL)\n", what);
        paged_case("planted: paged_attn d64", small, 55, {}, false);
        emu_plant = EMU_PLANT_NONE;
        const bool caught = failures > before;
        failures = before;
        check_true(std::string("planted bug caught: ") + what, caught);
    }
}

static void test_decode() {
    Rand r(14);
    const int B = 3, H = 4, KV = 2, D = 64, qc = H * D, kc = KV * D;
    vector<int> lens{1, 40, 70};
    vector<vector<bf16>> ks, vs;
    vector<vector<float>> kf, vf;
    for (int b = 0; b < B; ++b) {
        kf.push_back(rnd_bf(r, lens[b] * kc));
        vf.push_back(rnd_bf(r, lens[b] * kc));
        ks.push_back(to_bf(kf[b]));
        vs.push_back(to_bf(vf[b]));
    }
    vector<const bf16*> kp, vp;
    for (int b = 0; b < B; ++b) {
        kp.push_back(ks[b].data());
        vp.push_back(vs[b].data());
    }
    auto q = rnd_bf(r, B * qc);
    auto qb = to_bf(q);
    vector<bf16> out(B * qc);
    emu_launch({B, H}, {128}, [&] { attn_decode_d64(out.data(), qb.data(), kp.data(), vp.data(), lens.data(), H, KV); });
    vector<double> want(B * qc, 0.0);
    const double scale = 1.0 / std::sqrt((double)D);
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h) {
            const int g = h / (H / KV);
            vector<double> s(lens[b]);
            double mx = -1e300;
            for (int j = 0; j < lens[b]; ++j) {
                double dot = 0;
                for (int t = 0; t < D; ++t) dot += (double)q[b * qc + h * D + t] * kf[b][j * kc + g * D + t];
                s[j] = dot * scale;
                mx = std::max(mx, s[j]);
            }
            double tot = 0;
            for (double x : s) tot += std::exp(x - mx);
            for (int j = 0; j < lens[b]; ++j)
                for (int t = 0; t < D; ++t)
                    want[b * qc + h * D + t] += std::exp(s[j] - mx) / tot * vf[b][j * kc + g * D + t];
        }
    check("attn_decode_d64 (3 caches, GQA)", from_bf(out), want, 4e-3, 1.0 / 64);
}

// Runs the varlen forward over caches kp[b], vp[b] ([n[b], KV*D]) with m[b]
// query rows each (packed in q) and checks it equals attn_fwd on each
// sequence alone, bit for bit.
static void check_varlen(const std::string& name, const vector<bf16>& q, const vector<const bf16*>& kp,
                         const vector<const bf16*>& vp, const vector<int>& m, const vector<int>& n, int H,
                         int KV) {
    const int D = 64, qc = H * D;
    vector<int> q_start{0};
    for (int x : m) q_start.push_back(q_start.back() + x);
    const int rows = q_start.back();
    vector<bf16> out(rows * qc);
    vector<float> lse(rows * H);
    const int max_m = *std::max_element(m.begin(), m.end());
    emu_launch({(unsigned)((max_m + ATT_ROWS - 1) / ATT_ROWS), (unsigned)H, (unsigned)m.size()}, {ATT_THREADS}, [&] {
        attn_fwd_varlen_d64(out.data(), lse.data(), q.data(), kp.data(), vp.data(), q_start.data(), n.data(), H, KV);
    });
    vector<float> want_o, want_l;
    for (size_t b = 0; b < m.size(); ++b) {
        if (m[b] == 0) continue;
        vector<bf16> o1(m[b] * qc);
        vector<float> l1(m[b] * H);
        emu_launch({(unsigned)((m[b] + ATT_ROWS - 1) / ATT_ROWS), (unsigned)H}, {ATT_THREADS}, [&] {
            attn_fwd_d64(o1.data(), l1.data(), q.data() + q_start[b] * qc, kp[b], vp[b], m[b], n[b], H, KV, 1,
                         n[b] - m[b], nullptr, nullptr);
        });
        for (auto v : from_bf(o1)) want_o.push_back(v);
        for (auto v : l1) want_l.push_back(v);
    }
    check(name + " out == attn_fwd per sequence", from_bf(out), want_o, 0, 0);
    check(name + " lse == attn_fwd per sequence", lse, want_l, 0, 0);
}

// Varlen forward = attn_fwd on each sequence alone, bit for bit (decode rows,
// a prefill chunk after a cache, a fresh prompt), in one launch.
static void test_varlen() {
    Rand r(15);
    const int H = 4, KV = 2, D = 64, qc = H * D, kc = KV * D;
    vector<int> m{1, 5, 20}, n{1, 40, 20};
    const int rows = 1 + 5 + 20;
    auto q = to_bf(rnd_bf(r, rows * qc));
    vector<vector<bf16>> ks, vs;
    for (size_t b = 0; b < m.size(); ++b) {
        ks.push_back(to_bf(rnd_bf(r, n[b] * kc)));
        vs.push_back(to_bf(rnd_bf(r, n[b] * kc)));
    }
    vector<const bf16*> kp, vp;
    for (size_t b = 0; b < m.size(); ++b) {
        kp.push_back(ks[b].data());
        vp.push_back(vs[b].data());
    }
    check_varlen("attn_fwd_varlen_d64", q, kp, vp, m, n, H, KV);
}

// kv_append puts each sequence's new rows after its cached ones (an empty
// sequence in the middle), touching nothing past them; then the varlen
// forward over the appended caches equals attn_fwd on each sequence alone.
static void test_kv_append() {
    Rand r(16);
    const int H = 4, KV = 2, D = 64, qc = H * D, kc = KV * D;
    vector<int> old{3, 0, 7, 2}, m{1, 0, 4, 1};
    vector<int> q_start{0}, n;
    for (size_t b = 0; b < m.size(); ++b) {
        q_start.push_back(q_start.back() + m[b]);
        n.push_back(old[b] + m[b]);
    }
    const int rows = q_start.back(), cap = 16;
    const bf16 sentinel = to_bf(vector<float>{7.0f})[0];
    vector<vector<bf16>> ks, vs;
    for (size_t b = 0; b < m.size(); ++b) {
        ks.push_back(vector<bf16>(cap * kc, sentinel));
        vs.push_back(vector<bf16>(cap * kc, sentinel));
        auto ko = to_bf(rnd_bf(r, old[b] * kc)), vo = to_bf(rnd_bf(r, old[b] * kc));
        std::copy(ko.begin(), ko.end(), ks[b].begin());
        std::copy(vo.begin(), vo.end(), vs[b].begin());
    }
    auto want_k = ks, want_v = vs;
    auto k_new = to_bf(rnd_bf(r, rows * kc)), v_new = to_bf(rnd_bf(r, rows * kc));
    for (size_t b = 0; b < m.size(); ++b)
        for (int i = 0; i < m[b] * kc; ++i) {
            want_k[b][old[b] * kc + i] = k_new[q_start[b] * kc + i];
            want_v[b][old[b] * kc + i] = v_new[q_start[b] * kc + i];
        }
    vector<bf16*> kp, vp;
    for (size_t b = 0; b < m.size(); ++b) {
        kp.push_back(ks[b].data());
        vp.push_back(vs[b].data());
    }
    // Two blocks of 64 threads: the grid-stride loop wraps.
    emu_launch({2}, {64}, [&] {
        kv_append(kp.data(), vp.data(), q_start.data(), n.data(), k_new.data(), v_new.data(), (int)m.size(), kc);
    });
    bool same = true;
    for (size_t b = 0; b < m.size(); ++b)
        same = same && from_bf(ks[b]) == from_bf(want_k[b]) && from_bf(vs[b]) == from_bf(want_v[b]);
    check_true("kv_append: new rows after the cached ones, nothing else written", same);
    check_varlen("kv_append + attn_fwd_varlen_d64", to_bf(rnd_bf(r, rows * qc)),
                 vector<const bf16*>(kp.begin(), kp.end()), vector<const bf16*>(vp.begin(), vp.end()), m, n, H, KV);
}

int main(int argc, char** argv) {
    std::map<std::string, void (*)()> tests{{"norm", test_norm},         {"rope", test_rope}, {"head_norm", test_head_norm},
                                            {"mlp", test_mlp},           {"embedding", test_embedding},
                                            {"adamw", test_adamw},       {"logprob", test_logprob},
                                            {"sampling", test_sampling}, {"attention", test_attention},
                                            {"decode", test_decode},     {"varlen", test_varlen},
                                            {"kv_append", test_kv_append}, {"tc_primitives", test_tc_primitives},
                                            {"attention_tc", test_attention_tc}, {"varlen_tc", test_varlen_tc},
                                            {"paged", test_paged},       {"scatter", test_scatter}};
    // `planted` (not part of the default run): each planted primitive bug
    // must make the tensor-core attention check fail.
    if (argc > 1 && std::string(argv[1]) == "planted") tests = {{"planted", test_planted}};
    for (auto& [name, f] : tests) {
        if (argc > 1 && name != argv[1]) continue;
        f();
    }
    std::printf("%s: %d failing checks\n", failures ? "FAILED" : "passed", failures);
    return failures ? 1 : 0;
}
