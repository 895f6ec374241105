/* bf16 weight products: AVX512-BF16 (vdpbf16ps) where the CPU has it, else a portable loop
 * that rounds the same way and differs only in the order of the fp32 sums. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "joule/quant.h"
#include "par.h"
#include "quant_internal.h"

uint16_t joule_f32_to_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest, ties to even */
    return (uint16_t)(u >> 16);
}

float joule_bf16_to_f32(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* Rows [0, r) of in, rounded to bf16 into xb (stride IC). */
static void round_rows(uint16_t *xb, const float *in, int r, int IC) {
    for (int i = 0; i < r; i++)
        for (int k = 0; k < IC; k++) xb[(size_t)i * IC + k] = joule_f32_to_bf16(in[(size_t)i * IC + k]);
}

/* Output o of every row. */
static void portable_output(float *out, const uint16_t *xb, const uint16_t *W, int r, int IC, int OC, float beta,
                            int o) {
    const uint16_t *w = W + (size_t)o * IC;
    for (int i = 0; i < r; i++) {
        const uint16_t *x = xb + (size_t)i * IC;
        float acc = 0.0f;
        for (int k = 0; k < IC; k++) acc += joule_bf16_to_f32(x[k]) * joule_bf16_to_f32(w[k]);
        float *y = out + (size_t)i * OC + o;
        *y = beta != 0.0f ? acc + beta * *y : acc;
    }
}

static void block_portable(float *out, const uint16_t *xb, const uint16_t *W, int r, int IC, int OC, float beta) {
    JOULE_PAR_FOR(joule_par_worth((uint64_t)r * IC * OC, JOULE_QUANT_PAR_WORK + 1), o, OC,
                  portable_output(out, xb, W, r, IC, OC, beta, o));
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

/* Up to 4 rows against one weight row: each weight vector is loaded once for all rows. */
/* Four rows with named accumulators, so they stay in registers (same sums as dot4). */
BF16_TARGET static void dot4_full(float *acc_out, const uint16_t *xb, const uint16_t *w, int IC) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    const uint16_t *x0 = xb, *x1 = xb + IC, *x2 = xb + 2 * (size_t)IC, *x3 = xb + 3 * (size_t)IC;
    for (int k = 0; k < IC; k += 32) {
        const __mmask32 mk = IC - k >= 32 ? ~(__mmask32)0 : (((__mmask32)1 << (IC - k)) - 1);
        const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(mk, w + k);
        a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_maskz_loadu_epi16(mk, x0 + k), wv);
        a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_maskz_loadu_epi16(mk, x1 + k), wv);
        a2 = _mm512_dpbf16_ps(a2, (__m512bh)_mm512_maskz_loadu_epi16(mk, x2 + k), wv);
        a3 = _mm512_dpbf16_ps(a3, (__m512bh)_mm512_maskz_loadu_epi16(mk, x3 + k), wv);
    }
    acc_out[0] = _mm512_reduce_add_ps(a0);
    acc_out[1] = _mm512_reduce_add_ps(a1);
    acc_out[2] = _mm512_reduce_add_ps(a2);
    acc_out[3] = _mm512_reduce_add_ps(a3);
}

BF16_TARGET static void dot4(float *acc_out, const uint16_t *xb, int r, const uint16_t *w, int IC) {
    if (r == 4) {
        dot4_full(acc_out, xb, w, IC);
        return;
    }
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int k = 0; k < IC; k += 32) {
        const __mmask32 mk = IC - k >= 32 ? ~(__mmask32)0 : (((__mmask32)1 << (IC - k)) - 1);
        const __m512i wv = _mm512_maskz_loadu_epi16(mk, w + k);
        for (int i = 0; i < r; i++) {
            const __m512i xv = _mm512_maskz_loadu_epi16(mk, xb + (size_t)i * IC + k);
            acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)xv, (__m512bh)wv);
        }
    }
    for (int i = 0; i < r; i++) acc_out[i] = _mm512_reduce_add_ps(acc[i]);
}

/* The four accumulators' totals in one vector: a transpose-and-add tree (9 shuffles and
 * adds for four outputs, where four _mm512_reduce_add_ps take ~40; at d 384 a row's
 * reduction cost as much as its twelve vdpbf16ps). The fp32 sums come in another order
 * than _mm512_reduce_add_ps's: within the kernels' stated 1e-5 sum |x w|. */
BF16_TARGET static __m128 hsum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    const __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
    const __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    const __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t1));
    const __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t1));
    /* each 128-bit lane: partial sums of a0, a1, a2, a3 */
    const __m512 u = _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(u), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(u), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* One row against four weight rows: four independent accumulator chains, so a GEMV is not
 * bound by the latency of one chain of vdpbf16ps. Full 32-element steps unmasked, the
 * tail masked. */
BF16_TARGET static void gemv4(float *acc_out, const uint16_t *x, const uint16_t *w, int IC) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    const uint16_t *w1 = w + IC, *w2 = w + 2 * (size_t)IC, *w3 = w + 3 * (size_t)IC;
    int k = 0;
    for (; k + 32 <= IC; k += 32) {
        const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + k);
        a0 = _mm512_dpbf16_ps(a0, xv, (__m512bh)_mm512_loadu_si512(w + k));
        a1 = _mm512_dpbf16_ps(a1, xv, (__m512bh)_mm512_loadu_si512(w1 + k));
        a2 = _mm512_dpbf16_ps(a2, xv, (__m512bh)_mm512_loadu_si512(w2 + k));
        a3 = _mm512_dpbf16_ps(a3, xv, (__m512bh)_mm512_loadu_si512(w3 + k));
    }
    if (k < IC) {
        const __mmask32 mk = ((__mmask32)1 << (IC - k)) - 1;
        const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(mk, x + k);
        a0 = _mm512_dpbf16_ps(a0, xv, (__m512bh)_mm512_maskz_loadu_epi16(mk, w + k));
        a1 = _mm512_dpbf16_ps(a1, xv, (__m512bh)_mm512_maskz_loadu_epi16(mk, w1 + k));
        a2 = _mm512_dpbf16_ps(a2, xv, (__m512bh)_mm512_maskz_loadu_epi16(mk, w2 + k));
        a3 = _mm512_dpbf16_ps(a3, xv, (__m512bh)_mm512_maskz_loadu_epi16(mk, w3 + k));
    }
    _mm_storeu_ps(acc_out, hsum4(a0, a1, a2, a3));
}

/* Four activation rows x four weight rows: 16 accumulators, each weight and activation
 * vector loaded once for four products; out rows 0..3, columns o0..o0+3. */
BF16_TARGET static void tile4x4(float *out, const uint16_t *xb, const uint16_t *W, int IC, int OC, int o0, float beta) {
    __m512 a[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) a[i][j] = _mm512_setzero_ps();
    const uint16_t *w = W + (size_t)o0 * IC;
    for (int k = 0; k < IC; k += 32) {
        const __mmask32 mk = IC - k >= 32 ? ~(__mmask32)0 : (((__mmask32)1 << (IC - k)) - 1);
        __m512bh wv[4];
        for (int j = 0; j < 4; j++) wv[j] = (__m512bh)_mm512_maskz_loadu_epi16(mk, w + (size_t)j * IC + k);
        for (int i = 0; i < 4; i++) {
            const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(mk, xb + (size_t)i * IC + k);
            for (int j = 0; j < 4; j++) a[i][j] = _mm512_dpbf16_ps(a[i][j], xv, wv[j]);
        }
    }
    for (int i = 0; i < 4; i++) {
        float acc[4];
        _mm_storeu_ps(acc, hsum4(a[i][0], a[i][1], a[i][2], a[i][3]));
        for (int j = 0; j < 4; j++) {
            float *y = out + (size_t)i * OC + o0 + j;
            *y = beta != 0.0f ? acc[j] + beta * *y : acc[j];
        }
    }
}

/* Outputs 4 ob .. 4 ob + 3 of one row. */
BF16_TARGET static void gemv_outputs(float *out, const uint16_t *xb, const uint16_t *W, int IC, int OC, float beta,
                                     int ob) {
    const int o0 = 4 * ob, no = OC - o0 < 4 ? OC - o0 : 4;
    float acc[4];
    if (no == 4) gemv4(acc, xb, W + (size_t)o0 * IC, IC);
    else
        for (int j = 0; j < no; j++) dot4(acc + j, xb, 1, W + (size_t)(o0 + j) * IC, IC);
    for (int j = 0; j < no; j++) out[o0 + j] = beta != 0.0f ? acc[j] + beta * out[o0 + j] : acc[j];
}

BF16_TARGET static void gemv_avx512(float *out, const uint16_t *xb, const uint16_t *W, int IC, int OC, float beta) {
    JOULE_PAR_FOR(joule_par_worth((uint64_t)IC * OC, JOULE_QUANT_PAR_WORK + 1), ob, (OC + 3) / 4,
                  gemv_outputs(out, xb, W, IC, OC, beta, ob));
}

/* Outputs 4 b .. 4 b + 3 of every row: blocks of four weight rows; the rows past a
 * multiple of 4 (activations or weights) one weight row at a time. */
BF16_TARGET static void block_outputs(float *out, const uint16_t *xb, const uint16_t *W, int r, int IC, int OC,
                                      float beta, int b) {
    const int r4 = r & ~3, o0 = 4 * b, no = OC - o0 < 4 ? OC - o0 : 4;
    if (no == 4)
        for (int i0 = 0; i0 < r4; i0 += 4) tile4x4(out + (size_t)i0 * OC, xb + (size_t)i0 * IC, W, IC, OC, o0, beta);
    for (int o = o0; o < o0 + no; o++) {
        float acc[4];
        for (int i0 = no == 4 ? r4 : 0; i0 < r; i0 += 4) {
            const int rr = r - i0 < 4 ? r - i0 : 4;
            dot4(acc, xb + (size_t)i0 * IC, rr, W + (size_t)o * IC, IC);
            for (int i = 0; i < rr; i++) {
                float *y = out + (size_t)(i0 + i) * OC + o;
                *y = beta != 0.0f ? acc[i] + beta * *y : acc[i];
            }
        }
    }
}

BF16_TARGET static void block_avx512(float *out, const uint16_t *xb, const uint16_t *W, int r, int IC, int OC,
                                     float beta) {
    if (r == 1) {
        gemv_avx512(out, xb, W, IC, OC, beta);
        return;
    }
    const int ob = (OC + 3) / 4;
    JOULE_PAR_FOR(joule_par_worth((uint64_t)r * IC * OC, JOULE_QUANT_PAR_WORK + 1), b, ob,
                  block_outputs(out, xb, W, r, IC, OC, beta, b));
}

static bool have_bf16(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
}
#else
static bool have_bf16(void) { return false; }
#endif

bool joule_quant_native_bf16(void) { return !joule_quant_portable_forced() && have_bf16(); }

void joule_bf16_matmul(float *out, const float *in, const uint16_t *W, int n, int IC, int OC, float beta) {
    uint16_t xb[JOULE_QUANT_ROWS * JOULE_QUANT_MAX_IC];
    const bool native = joule_quant_native_bf16();
    for (int i0 = 0; i0 < n; i0 += JOULE_QUANT_ROWS) {
        const int r = n - i0 < JOULE_QUANT_ROWS ? n - i0 : JOULE_QUANT_ROWS;
        round_rows(xb, in + (size_t)i0 * IC, r, IC);
        float *o = out + (size_t)i0 * OC;
#if defined(__x86_64__) && defined(__GNUC__)
        if (native) {
            block_avx512(o, xb, W, r, IC, OC, beta);
            continue;
        }
#endif
        block_portable(o, xb, W, r, IC, OC, beta);
    }
}
