// C ABI of the hetero-qwen CPU kernels (loaded with ctypes by hetero_qwen/kernels/cpp.py):
// runtime ISA choice, a persistent thread pool, activation preparation, and the entry points.
// All pointers are raw, contiguous, and validated by the Python side before every call (each entry
// point is declared once in hetero_qwen/kernels/abi.py); outputs are preallocated.
#include "hq_api.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HQ_PAUSE() _mm_pause()
#else
#define HQ_PAUSE() std::this_thread::yield()
#endif

namespace {

// ------------------------------------------------------------------------------ ISA choice
const HqIsa* g_isa = nullptr;

int isa_supported(int isa) {
    if (isa == 0) return 1;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
#ifdef HQ_HAVE_AVX2
    if (isa == 1) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
#endif
#ifdef HQ_HAVE_AVX512
    if (isa == 2)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
#endif
#ifdef HQ_HAVE_AVX512BF16
    if (isa == 3) return isa_supported(2) && __builtin_cpu_supports("avx512bf16") ? 1 : 0;
#endif
#endif
    return 0;
}

const HqIsa* isa_table(int isa) {
#ifdef HQ_HAVE_AVX512BF16
    if (isa == 3) return &hq_isa_avx512bf16;
#endif
#ifdef HQ_HAVE_AVX512
    if (isa == 2) return &hq_isa_avx512;
#endif
#ifdef HQ_HAVE_AVX2
    if (isa == 1) return &hq_isa_avx2;
#endif
    return &hq_isa_scalar;
}

const HqIsa* isa() {
    if (!g_isa) {
        // avx512bf16 (3) is opt-in (hq_force_isa): it rounds bf16-format activations to bf16
        // and measured no cold-weight gain over avx512 on Zen 4 (only L3-hot, +30%).
        int best = isa_supported(2) ? 2 : isa_supported(1) ? 1 : 0;
        g_isa = isa_table(best);
    }
    return g_isa;
}

// ----------------------------------------------------------------------------- thread pool
// n-1 workers plus the calling thread. Workers spin briefly on a generation counter (a decode
// step issues dispatches back to back), then sleep on a condition variable.
typedef void (*TaskFn)(void* ctx, int tid);
int64_t g_spin_us = 500;  // worker spin before sleeping, microseconds (hq_tune 2)

inline int64_t now_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::steady_clock::now().time_since_epoch()).count();
}

class Pool {
public:
    ~Pool() { /* workers are detached at exit; never joined from a static destructor */ }
    int size() const { return n_; }
    void resize(int n) {
        if (n < 1) n = 1;
        if (n == n_) return;
        stop_workers();
        n_ = n;
        stop_ = false;
        const uint64_t g0 = gen_.load(std::memory_order_acquire);  // workers wait for the next one
        for (int i = 1; i < n_; i++) threads_.emplace_back([this, i, g0] { worker(i, g0); });
    }
    // fn must be work-sharing (threads take chunks from shared counters until none are left),
    // so the caller alone can finish it: it never waits for a worker that has not started
    // (a busy core must not stall the call); it only waits for workers already inside fn.
    void run(TaskFn fn, void* ctx) {
        if (n_ == 1) { fn(ctx, 0); return; }
        fn_ = fn; ctx_ = ctx;
        closed_.store(false, std::memory_order_seq_cst);
        {
            std::lock_guard<std::mutex> lk(mu_);
            gen_.fetch_add(1, std::memory_order_seq_cst);
        }
        cv_.notify_all();
        fn(ctx, 0);
        closed_.store(true, std::memory_order_seq_cst);
        for (long spins = 0; inside_.load(std::memory_order_seq_cst) != 0; spins++) {
            if (spins < 2000) HQ_PAUSE(); else std::this_thread::yield();
        }
    }

private:
    void worker(int id, uint64_t seen) {
        for (;;) {
            uint64_t g;
            // spin (a decode step issues kernels back to back), then sleep
            long spins = 0;
            int64_t t0 = now_us();
            while ((g = gen_.load(std::memory_order_acquire)) == seen) {
                if (stop_.load(std::memory_order_acquire)) return;
                HQ_PAUSE();
                if ((++spins & 63) || now_us() - t0 < g_spin_us) continue;
                std::unique_lock<std::mutex> lk(mu_);
                cv_.wait(lk, [&] { return gen_.load(std::memory_order_acquire) != seen || stop_.load(); });
                t0 = now_us();
            }
            if (stop_.load(std::memory_order_acquire)) return;
            seen = g;
            inside_.fetch_add(1, std::memory_order_seq_cst);
            if (!closed_.load(std::memory_order_seq_cst)) fn_(ctx_, id);  // else: call already done
            inside_.fetch_sub(1, std::memory_order_seq_cst);
        }
    }
    void stop_workers() {
        {
            std::lock_guard<std::mutex> lk(mu_);
            stop_.store(true);
        }
        cv_.notify_all();
        for (auto& t : threads_) t.join();
        threads_.clear();
    }
    int n_ = 1;
    std::vector<std::thread> threads_;
    std::atomic<uint64_t> gen_{0};
    std::atomic<int> inside_{0};
    std::atomic<bool> closed_{true};
    std::atomic<bool> stop_{false};
    std::mutex mu_;
    std::condition_variable cv_;
    TaskFn fn_ = nullptr;
    void* ctx_ = nullptr;
};

Pool& pool() {
    static Pool* p = new Pool();  // leaked on purpose: no thread joins during interpreter exit
    return *p;
}

std::mutex g_call_mu;  // one kernel call at a time (ctypes releases the GIL)

// --------------------------------------------------------------------- rows over the pool
// Each thread streams one contiguous block of rows (equal bytes per thread): interleaved rows
// would defeat the hardware prefetcher and our linear software prefetch. A block is consumed
// front to back in a few chunks through its own atomic counter, so a thread that finishes early
// (or a worker that wakes late) takes the remaining chunks of the other blocks. Matrices below
// g_min_split bytes per thread run on fewer threads (no wake-up for tiny ones).
int64_t g_pf_dist = 8192;            // software prefetch distance, bytes (hq_tune 0)
int64_t g_min_split = 256 * 1024;    // bytes per thread below which a matrix is not split (hq_tune 1)
int64_t g_pf_long = 16384;           // row blocks above this use per-row prefetch streams (hq_tune 3)
int64_t g_pf_l2_row = 2048;          // rows above this many bytes are prefetched into L2 only (hq_tune 4)
int64_t g_rows1 = 0;                 // rows per block at batch 1, 0 = per-format default (hq_tune 5)
int64_t g_rowsn = 0;                 // rows per block at batch 2..8, 0 = per-format default (hq_tune 6)

constexpr int MAXT = 64;
struct alignas(64) Range {
    std::atomic<int64_t> next{0};
    int64_t hi = 0, chunk = 0;
};

struct Split {
    int n = 1;
    Range r[MAXT];
    void init(int64_t rows, int64_t bytes_per_row, int threads) {
        int64_t total = rows * bytes_per_row;
        int64_t want = total / (g_min_split > 0 ? g_min_split : 1);
        n = (int)(want < threads ? (want < 1 ? 1 : want) : threads);
        if (n > MAXT) n = MAXT;
        int64_t per = (rows + n - 1) / n;
        per = (per + 7) / 8 * 8;  // whole 8-row blocks per thread
        for (int i = 0; i < n; i++) {
            int64_t lo = i * per < rows ? i * per : rows, hi = lo + per < rows ? lo + per : rows;
            r[i].next.store(lo, std::memory_order_relaxed);
            r[i].hi = hi;
            int64_t c = (hi - lo + 3) / 4;  // 4 chunks per block
            c = (c + 7) / 8 * 8;
            r[i].chunk = c < 16 ? 16 : c;
        }
    }
    // next chunk for thread tid: its own block first, then the others'. False when all done.
    bool grab(int tid, int64_t& r0, int64_t& r1, int64_t& hi) {
        for (int j = 0; j < n; j++) {
            Range& R = r[(tid + j) % n];
            if (R.next.load(std::memory_order_relaxed) >= R.hi) continue;
            int64_t a = R.next.fetch_add(R.chunk, std::memory_order_relaxed);
            if (a >= R.hi) continue;
            r0 = a; r1 = a + R.chunk < R.hi ? a + R.chunk : R.hi; hi = R.hi;
            return true;
        }
        return false;
    }
};

int64_t row_bytes(const Gemv& g) {
    return g.fmt == HQ_BF16 ? 2 * g.in : g.fmt == HQ_INT8 ? g.in : g.groups * (HQ_G / 2);
}

// Rows [r0, r1) of g into y, prefetching up to row `hi` (the end of the block).
void rows_range(const Gemv& g0, int64_t r0, int64_t r1, int64_t hi, float* y, int64_t ldy) {
    Gemv g = g0;
    g.pf_end = (const char*)g.w + hi * row_bytes(g);
    g.pf_dist = g_pf_dist;
    g.pf_long = g_pf_long;
    g.pf_l2_row = g_pf_l2_row;
    g.rows1 = g_rows1;
    g.rowsn = g_rowsn;
    isa()->rows(g, r0, r1, y, ldy);
}

struct RowsTask {
    Gemv g;
    float* y;
    int64_t ldy;
    Split split;
};

void rows_task(void* ctx, int tid) {
    RowsTask* t = (RowsTask*)ctx;
    int64_t r0, r1, hi;
    while (t->split.grab(tid, r0, r1, hi)) rows_range(t->g, r0, r1, hi, t->y, t->ldy);
}

void run_split(TaskFn fn, void* ctx, int n) {
    if (n <= 1) fn(ctx, 0);
    else pool().run(fn, ctx);
}

RowsTask g_rows_task;  // calls are serialized by g_call_mu

void run_rows(const Gemv& g, int64_t rows, float* y, int64_t ldy) {
    RowsTask& t = g_rows_task;
    t.g = g; t.y = y; t.ldy = ldy;
    t.split.init(rows, row_bytes(g), pool().size());
    run_split(rows_task, &t, t.split.n);
}

// ------------------------------------------------------------- activation preparation
struct Prep {
    std::vector<float> xe, xo, xs, xsum;
    std::vector<uint16_t> xb;
    std::vector<int8_t> xq;
};
Prep g_prep[2];  // [0]: linear / ffn input, [1]: ffn hidden (down projection input)

inline float bf16f(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; std::memcpy(&f, &u, 4); return f; }
inline uint16_t f2bf16(float f) {  // round to nearest even, as torch's .to(bfloat16)
    uint32_t u; std::memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1)) >> 16);
}
// 1 / rms(x[0:n]) with eps: the scale every rmsnorm here applies.
inline float rms_inv(const float* x, int64_t n, float eps) {
    float ss = 0.f;
    for (int64_t j = 0; j < n; j++) ss += x[j] * x[j];
    return 1.f / std::sqrt(ss / (float)n + eps);
}

void prepare(Gemv& g, int fmt, const float* x, int B, int64_t in, Prep& p) {
    g.fmt = fmt; g.in = in; g.B = B; g.x = x;
    g.xe = g.xo = g.xs = g.xsum = nullptr; g.xq = nullptr; g.xb = nullptr;
    g.groups = (in + HQ_G - 1) / HQ_G;
    if (fmt == HQ_BF16 && isa()->bf16dot) {  // x rounded to bf16, nearest-even (as torch)
        const int64_t n = (int64_t)B * in;
        p.xb.resize((size_t)n + 1);
        uint16_t* d = p.xb.data();
        for (int64_t i = 0; i < n; i++) d[i] = f2bf16(x[i]);
        g.xb = d;
    } else if (fmt == HQ_BF16) {
        const int64_t half = in / 2;
        p.xe.resize((size_t)B * half + 1); p.xo.resize((size_t)B * half + 1);
        for (int b = 0; b < B; b++)
            for (int64_t i = 0; i < half; i++) {
                p.xe[b * half + i] = x[b * in + 2 * i];
                p.xo[b * half + i] = x[b * in + 2 * i + 1];
            }
        g.xe = p.xe.data(); g.xo = p.xo.data();
    } else if (fmt == HQ_INT4 || (fmt == HQ_INT8 && isa()->int8dot)) {  // int8: VNNI ISAs
        const int64_t lq = hq_xq_ld(in), ls = hq_xs_ld(in);
        p.xq.assign((size_t)B * lq + 1, 0); p.xs.assign((size_t)B * ls + 1, 0.f); p.xsum.assign((size_t)B * ls + 1, 0.f);
        for (int b = 0; b < B; b++)
            isa()->int4_prep(x + b * in, in, p.xq.data() + b * lq, p.xs.data() + b * ls, p.xsum.data() + b * ls);
        g.xq = p.xq.data(); g.xs = p.xs.data(); g.xsum = p.xsum.data();
    }
}

// ------------------------------------------------------------------------------ FFN task
// Per chunk of hidden rows: gate rows into h, up rows into u, then h = silu(h) * u there.
struct FfnTask {
    Gemv gate, up;
    int64_t I;
    float *h, *u;  // [B, I]
    Split split;
};

inline float silu(float v) { return v / (1.f + std::exp(-v)); }

void ffn_gate_up_task(void* ctx, int tid) {
    FfnTask* t = (FfnTask*)ctx;
    const int B = t->gate.B;
    int64_t r0, r1, hi;
    while (t->split.grab(tid, r0, r1, hi)) {
        rows_range(t->gate, r0, r1, hi, t->h, t->I);
        rows_range(t->up, r0, r1, hi, t->u, t->I);
        for (int b = 0; b < B; b++) {
            float* hb = t->h + b * t->I;
            const float* ub = t->u + b * t->I;
            for (int64_t i = r0; i < r1; i++) hb[i] = silu(hb[i]) * ub[i];
        }
    }
}
FfnTask g_ffn_task;
std::vector<float> g_up;

// ------------------------------------------------------------------------- DeltaNet task
struct DnTask {
    int B, K, S_len, Hk, Hv;
    int64_t conv_dim, Dk, Dv;
    const float *mixed, *a, *b, *conv_w, *A_log, *dt_bias;
    float *conv_state, *state, *out, *qkv;
    std::atomic<int64_t> next{0};
};

void dn_conv_task(void* ctx, int) {
    DnTask* t = (DnTask*)ctx;
    const int64_t total = (int64_t)t->B * t->conv_dim, chunk = 1024;
    const int K = t->K, L = t->S_len;
    for (;;) {
        int64_t c0 = t->next.fetch_add(chunk, std::memory_order_relaxed);
        if (c0 >= total) break;
        int64_t c1 = c0 + chunk < total ? c0 + chunk : total;
        for (int64_t bc = c0; bc < c1; bc++) {
            const int64_t c = bc % t->conv_dim;
            float* st = t->conv_state + bc * L;
            const float* wc = t->conv_w + c * K;
            const float xin = t->mixed[bc];
            // window = last K of [state..., x]
            float acc = 0.f;
            for (int j = 0; j < K - 1; j++) acc += wc[j] * st[L - (K - 1) + j];
            acc += wc[K - 1] * xin;
            t->qkv[bc] = silu(acc);
            for (int j = 0; j + 1 < L; j++) st[j] = st[j + 1];
            if (L > 0) st[L - 1] = xin;
        }
    }
}

void dn_head_task(void* ctx, int) {
    DnTask* t = (DnTask*)ctx;
    const HqIsa* is = isa();
    const int64_t Dk = t->Dk, Dv = t->Dv, key_dim = t->Hk * Dk, total = (int64_t)t->B * t->Hv;
    const int rep = t->Hv / t->Hk;
    std::vector<float> qn(Dk), kn(Dk);
    const float inv_sqrt_dk = 1.f / std::sqrt((float)Dk);
    for (;;) {
        int64_t bh = t->next.fetch_add(1, std::memory_order_relaxed);
        if (bh >= total) break;
        const int64_t b = bh / t->Hv, h = bh % t->Hv, kh = h / rep;
        const float* row = t->qkv + b * t->conv_dim;
        const float *q = row + kh * Dk, *k = row + key_dim + kh * Dk, *v = row + 2 * key_dim + h * Dv;
        float sq = 0.f, sk = 0.f;
        for (int64_t i = 0; i < Dk; i++) { sq += q[i] * q[i]; sk += k[i] * k[i]; }
        const float rq = 1.f / std::sqrt(sq + 1e-6f), rk = 1.f / std::sqrt(sk + 1e-6f);
        float kq = 0.f;
        for (int64_t i = 0; i < Dk; i++) {
            qn[i] = q[i] * rq * inv_sqrt_dk;
            kn[i] = k[i] * rk;
            kq += kn[i] * qn[i];
        }
        const float beta = 1.f / (1.f + std::exp(-t->b[bh]));
        const float z = t->a[bh] + t->dt_bias[h];
        const float sp = z > 20.f ? z : std::log1p(std::exp(z));
        const float eg = std::exp(-std::exp(t->A_log[h]) * sp);
        is->deltanet_head(t->state + bh * Dk * Dv, kn.data(), qn.data(), v, eg, beta, kq, Dk, Dv,
                          t->out + bh * Dv);
    }
}

std::vector<float> g_qkv;

// ------------------------------------------------------------------- attention decode
// One token of gated attention after the q/k/v projections: q/k rmsnorm (1 + w weights), RoPE
// (rotate-half on the first rd dims), the new K/V written to the cache, softmax attention of each
// query head over its KV head's keys 0..pos, and the sigmoid output gate. KV heads are shared out
// over the pool, each with its group of query heads (the cache is read once per token; the inner
// loops are per ISA, hq_attn.h).

void norm_rope(float* x, int64_t D, int64_t rd, const float* w1, float eps, const float* cs, const float* sn) {
    const float inv = rms_inv(x, D, eps);
    for (int64_t j = 0; j < D; j++) x[j] = x[j] * inv * w1[j];
    const int64_t half = rd / 2;
    for (int64_t i = 0; i < half; i++) {
        const float a = x[i], b = x[i + half];
        x[i] = a * cs[i] - b * sn[i];
        x[i + half] = b * cs[i + half] + a * sn[i + half];
    }
}

struct AttnTask {
    int nh, nkv, bf16;
    int64_t D, rd, qld, cap, len;
    const float *q, *qw1, *cs, *sn;
    float eps, scale;
    const void *Kc, *Vc;
    int gated;
    float* out;
    std::atomic<int> next{0};
};

void attn_task(void* ctx, int) {
    AttnTask* t = (AttnTask*)ctx;
    const HqIsa* is = isa();
    const int64_t D = t->D, L = t->len;
    const int G = t->nh / t->nkv;  // query heads per KV head: one task reads their cache rows once
    std::vector<float> qn(G * D), p(G * L);
    for (;;) {
        const int kvh = t->next.fetch_add(1, std::memory_order_relaxed);
        if (kvh >= t->nkv) break;
        const int h0 = kvh * G;
        for (int g = 0; g < G; g++) {
            const float* qh = t->q + (h0 + g) * t->qld;
            for (int64_t j = 0; j < D; j++) qn[g * D + j] = qh[j];
            norm_rope(qn.data() + g * D, D, t->rd, t->qw1, t->eps, t->cs, t->sn);
        }
        const size_t esz = t->bf16 ? 2 : 4, base = (size_t)kvh * t->cap * D * esz;
        is->attn_scores(qn.data(), G, (const char*)t->Kc + base, t->bf16, L, D, t->scale, p.data());
        for (int g = 0; g < G; g++) {  // softmax per head
            float* pg = p.data() + g * L;
            float mx = -INFINITY, sum = 0.f;
            for (int64_t s = 0; s < L; s++) mx = pg[s] > mx ? pg[s] : mx;
            for (int64_t s = 0; s < L; s++) { pg[s] = std::exp(pg[s] - mx); sum += pg[s]; }
            const float inv = 1.f / sum;
            for (int64_t s = 0; s < L; s++) pg[s] *= inv;
        }
        float* o = t->out + h0 * D;  // the group's G output rows are consecutive
        for (int64_t j = 0; j < G * D; j++) o[j] = 0.f;
        is->attn_values(p.data(), G, (const char*)t->Vc + base, t->bf16, L, D, o);
        if (t->gated)
            for (int g = 0; g < G; g++) {
                const float* qh = t->q + (h0 + g) * t->qld;
                for (int64_t j = 0; j < D; j++) o[g * D + j] *= 1.f / (1.f + std::exp(-qh[D + j]));
            }
    }
}

}  // namespace

extern "C" {

int hq_abi_version() { return 2; }
// Every entry point's argument and return types, exactly as hetero_qwen/kernels/abi.py declares
// them (i32 int, i64 int64_t, f32 float, ptr a pointer, str const char*): Python refuses a library
// whose text differs (a stale build), tests/test_kernel_boundary.py checks it against this file.
const char* hq_abi_signature() {
    return
    "hq_abi_version()->i32;"
    "hq_abi_signature()->str;"
    "hq_group_size()->i32;"
    "hq_isa_name()->str;"
    "hq_isa_supported(i32)->i32;"
    "hq_isa_int8dot()->i32;"
    "hq_force_isa(i32)->i32;"
    "hq_set_threads(i32)->i32;"
    "hq_get_threads()->i32;"
    "hq_tune(i32,i64)->i64;"
    "hq_linear(i32,ptr,ptr,i64,i64,ptr,i32,ptr)->i32;"
    "hq_ffn(i32,ptr,ptr,ptr,ptr,ptr,ptr,i64,i64,ptr,i32,ptr,ptr)->i32;"
    "hq_attn_decode(i32,i32,i64,i64,ptr,i64,ptr,ptr,ptr,ptr,f32,ptr,ptr,ptr,ptr,i32,i64,i64,f32,i32,ptr)->i32;"
    "hq_deltanet_step(i32,i64,i32,i32,ptr,ptr,ptr,ptr,ptr,ptr,ptr,i32,i32,i64,i64,ptr,ptr)->i32;"
    "hq_rmsnorm(i64,i64,ptr,i64,ptr,f32,ptr)->i32;"
    "hq_gated_rmsnorm(i64,i64,ptr,ptr,ptr,f32,ptr)->i32";
}
int hq_group_size() { return HQ_G; }
const char* hq_isa_name() { return isa()->name; }
int hq_isa_supported(int which) { return isa_supported(which); }
int hq_isa_int8dot() { return isa()->int8dot; }  // int8 weights take int8 activations (VNNI)

// which: 0 scalar, 1 avx2, 2 avx512 (+VNNI), 3 avx512 + BF16 dot products (opt-in), -1 best. Returns 0, or -1 when unsupported here.
int hq_force_isa(int which) {
    std::lock_guard<std::mutex> lk(g_call_mu);
    if (which < 0) { g_isa = nullptr; isa(); return 0; }
    if (!isa_supported(which)) return -1;
    g_isa = isa_table(which);
    return 0;
}

int hq_set_threads(int n) {
    std::lock_guard<std::mutex> lk(g_call_mu);
    pool().resize(n);
    return pool().size();
}
int hq_get_threads() { return pool().size(); }

// Tuning knobs for benchmarks: 0 prefetch distance (bytes, 0 = off), 1 min bytes per thread
// before a matrix is split, 2 worker spin before sleeping (microseconds), 3 row-block bytes
// above which rows are prefetched as separate streams, 4 row bytes above which prefetches go to
// L2 only, 5 rows per block at batch 1 (0: default), 6 rows per block at batch 2..8 (0: default).
// Returns the old value.
int64_t hq_tune(int key, int64_t value) {
    std::lock_guard<std::mutex> lk(g_call_mu);
    int64_t* p = key == 0 ? &g_pf_dist : key == 1 ? &g_min_split : key == 2 ? &g_spin_us : key == 3 ? &g_pf_long
                 : key == 4 ? &g_pf_l2_row : key == 5 ? &g_rows1 : key == 6 ? &g_rowsn : nullptr;
    if (!p) return -1;
    int64_t old = *p;
    if (value >= 0) *p = value;
    return old;
}

// y[B, n_out] = x[B, n_in] @ W^T (W in format fmt). Returns 0.
int hq_linear(int fmt, const void* w, const void* meta, int64_t n_out, int64_t n_in, const float* x,
              int B, float* y) {
    std::lock_guard<std::mutex> lk(g_call_mu);
    Gemv g;
    prepare(g, fmt, x, B, n_in, g_prep[0]);
    g.w = w; g.meta = meta;
    run_rows(g, n_out, y, n_out);
    return 0;
}

// y[B, H] = down(silu(gate x) * up x); h[B, I] is caller-provided scratch (holds the hidden).
int hq_ffn(int fmt, const void* gw, const void* gm, const void* uw, const void* um, const void* dw,
           const void* dm, int64_t H, int64_t I, const float* x, int B, float* h, float* y) {
    std::lock_guard<std::mutex> lk(g_call_mu);
    FfnTask& t = g_ffn_task;
    prepare(t.gate, fmt, x, B, H, g_prep[0]);
    t.up = t.gate;
    t.gate.w = gw; t.gate.meta = gm; t.up.w = uw; t.up.meta = um;
    if (g_up.size() < (size_t)B * I) g_up.resize((size_t)B * I);
    t.I = I; t.h = h; t.u = g_up.data();
    t.split.init(I, 2 * row_bytes(t.gate), pool().size());
    run_split(ffn_gate_up_task, &t, t.split.n);
    Gemv d;
    prepare(d, fmt, h, B, I, g_prep[1]);
    d.w = dw; d.meta = dm;
    run_rows(d, H, y, H);
    return 0;
}

// One decode token of gated attention (see attn_task). q [nh rows of qld floats: q, then the
// gate when gated], k / v [nkv, D] fp32; the cache [nkv, cap, D] (bf16 when cache_bf16, else
// fp32) receives k (normed, rotated) and v at index pos; attends over keys 0..pos; out [nh, D].
int hq_attn_decode(int nh, int nkv, int64_t D, int64_t rd, const float* q, int64_t qld, const float* k,
                   const float* v, const float* qw1, const float* kw1, float eps, const float* cs,
                   const float* sn, void* Kc, void* Vc, int cache_bf16, int64_t cap, int64_t pos,
                   float scale, int gated, float* out) {
    std::lock_guard<std::mutex> lk(g_call_mu);
    if (nkv <= 0 || nh % nkv != 0 || pos >= cap || rd > D || rd % 2) return -1;
    std::vector<float> kn(D);
    for (int j = 0; j < nkv; j++) {
        for (int64_t d = 0; d < D; d++) kn[d] = k[j * D + d];
        norm_rope(kn.data(), D, rd, kw1, eps, cs, sn);
        const int64_t at = (j * cap + pos) * D;
        for (int64_t d = 0; d < D; d++) {
            if (cache_bf16) { ((uint16_t*)Kc)[at + d] = f2bf16(kn[d]); ((uint16_t*)Vc)[at + d] = f2bf16(v[j * D + d]); }
            else { ((float*)Kc)[at + d] = kn[d]; ((float*)Vc)[at + d] = v[j * D + d]; }
        }
    }
    AttnTask t;
    t.nh = nh; t.nkv = nkv; t.bf16 = cache_bf16; t.D = D; t.rd = rd; t.qld = qld; t.cap = cap; t.len = pos + 1;
    t.q = q; t.qw1 = qw1; t.cs = cs; t.sn = sn; t.eps = eps; t.scale = scale; t.Kc = Kc; t.Vc = Vc;
    t.gated = gated; t.out = out;
    run_split(attn_task, &t, t.len * D * nkv * 4 > (256 << 10) ? pool().size() : 1);  // long contexts: all threads
    return 0;
}

// One DeltaNet decode token, in place on conv_state [B, conv_dim, S_len] and state
// [B, Hv, Dk, Dv]; out [B, Hv, Dv]. All fp32.
int hq_deltanet_step(int B, int64_t conv_dim, int K, int S_len, const float* mixed, const float* a,
                     const float* b, const float* conv_w, float* conv_state, const float* A_log,
                     const float* dt_bias, int Hk, int Hv, int64_t Dk, int64_t Dv, float* state,
                     float* out) {
    std::lock_guard<std::mutex> lk(g_call_mu);
    if (S_len < K - 1 || Hv % Hk != 0 || conv_dim != 2 * Hk * Dk + Hv * Dv) return -1;
    g_qkv.resize((size_t)B * conv_dim);
    DnTask t;
    t.B = B; t.K = K; t.S_len = S_len; t.Hk = Hk; t.Hv = Hv;
    t.conv_dim = conv_dim; t.Dk = Dk; t.Dv = Dv;
    t.mixed = mixed; t.a = a; t.b = b; t.conv_w = conv_w; t.A_log = A_log; t.dt_bias = dt_bias;
    t.conv_state = conv_state; t.state = state; t.out = out; t.qkv = g_qkv.data();
    // a small state (tiny and test models) is cheaper on this thread than handed to the pool
    const int n = (int64_t)B * Hv * Dk * Dv * 4 >= 2 * g_min_split ? pool().size() : 1;
    run_split(dn_conv_task, &t, n);
    t.next.store(0);
    run_split(dn_head_task, &t, n);
    return 0;
}

// Row-wise RMSNorm of x [rows, n] into out: out = x * rsqrt(mean(x^2) + eps) * w (w [n] fp32;
// the model's zero-centred norms pass 1 + weight). Single-threaded: rows * n is a hidden state.
// Row r of x starts at x + r * ldx (ldx >= n: e.g. q heads interleaved with their gates).
int hq_rmsnorm(int64_t rows, int64_t n, const float* x, int64_t ldx, const float* w, float eps, float* out) {
    for (int64_t r = 0; r < rows; r++) {
        const float* xr = x + r * ldx;
        float* o = out + r * n;
        const float inv = rms_inv(xr, n, eps);
        for (int64_t j = 0; j < n; j++) o[j] = xr[j] * inv * w[j];
    }
    return 0;
}

// DeltaNet output norm per head: out = w * rmsnorm(x) * silu(z), x / z / out [rows, n], w [n].
int hq_gated_rmsnorm(int64_t rows, int64_t n, const float* x, const float* z, const float* w, float eps,
                     float* out) {
    for (int64_t r = 0; r < rows; r++) {
        const float* xr = x + r * n;
        const float* zr = z + r * n;
        float* o = out + r * n;
        const float inv = rms_inv(xr, n, eps);
        for (int64_t j = 0; j < n; j++) o[j] = w[j] * (xr[j] * inv) * (zr[j] / (1.f + std::exp(-zr[j])));
    }
    return 0;
}

}  // extern "C"
