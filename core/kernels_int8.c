/* int8 weights x int8 activations: AVX512-VNNI (vpdpbusd) where the CPU has it, else a
 * portable loop. Both compute the exact int32 dot product of the same int8 values and
 * scale it with the same float operations, so their results are bit-identical. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "joule/quant.h"
#include "par.h"
#include "quant_internal.h"

float joule_i8_quantize_row(int8_t *q, const float *x, int n) {
    float amax = 0.0f;
    /* not fmaxf: GCC calls libm for it (2% of an int8 decode); a NaN is skipped either way */
    for (int k = 0; k < n; k++) {
        const float a = fabsf(x[k]);
        amax = a > amax ? a : amax;
    }
    if (!(amax > 0.0f) || !isfinite(amax)) {
        memset(q, 0, (size_t)n);
        return 0.0f;
    }
    const float inv = 127.0f / amax;
    for (int k = 0; k < n; k++) {
        float v = nearbyintf(x[k] * inv);
        q[k] = (int8_t)(v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v);
    }
    return amax / 127.0f;
}

static void store(float *y, int32_t dot, float sx, float sw, float beta) {
    const float v = (float)dot * (sx * sw);
    *y = beta != 0.0f ? v + beta * *y : v;
}

/* Output o of every row. */
static void portable_output(float *out, const int8_t *xq, const float *sx, const int8_t *W, const float *ws, int r,
                            int IC, int OC, float beta, int o) {
    const int8_t *w = W + (size_t)o * IC;
    for (int i = 0; i < r; i++) {
        const int8_t *x = xq + (size_t)i * IC;
        int32_t dot = 0;
        for (int k = 0; k < IC; k++) dot += (int32_t)x[k] * (int32_t)w[k];
        store(out + (size_t)i * OC + o, dot, sx[i], ws[o], beta);
    }
}

static void block_portable(float *out, const int8_t *xq, const float *sx, const int8_t *W, const float *ws, int r,
                           int IC, int OC, float beta) {
    JOULE_PAR_FOR(joule_par_worth((uint64_t)r * IC * OC, JOULE_QUANT_PAR_WORK + 1), o, OC,
                  portable_output(out, xq, sx, W, ws, r, IC, OC, beta, o));
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))

/* vpdpbusd multiplies unsigned by signed bytes, so the activations enter as q + 128 and
 * each row's sum of weights times 128 comes off afterwards: exact in int32. */
/* Four rows with named accumulators, so they stay in registers (same sums as dot4). */
VNNI_TARGET static void dot4_full(int32_t *dot, const uint8_t *xu, const int8_t *w, int32_t wsum, int IC) {
    __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512(), a2 = _mm512_setzero_si512(),
            a3 = _mm512_setzero_si512();
    const uint8_t *x0 = xu, *x1 = xu + IC, *x2 = xu + 2 * (size_t)IC, *x3 = xu + 3 * (size_t)IC;
    for (int k = 0; k < IC; k += 64) {
        const __mmask64 mk = IC - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (IC - k)) - 1);
        const __m512i wv = _mm512_maskz_loadu_epi8(mk, w + k);
        a0 = _mm512_dpbusd_epi32(a0, _mm512_maskz_loadu_epi8(mk, x0 + k), wv);
        a1 = _mm512_dpbusd_epi32(a1, _mm512_maskz_loadu_epi8(mk, x1 + k), wv);
        a2 = _mm512_dpbusd_epi32(a2, _mm512_maskz_loadu_epi8(mk, x2 + k), wv);
        a3 = _mm512_dpbusd_epi32(a3, _mm512_maskz_loadu_epi8(mk, x3 + k), wv);
    }
    dot[0] = _mm512_reduce_add_epi32(a0) - 128 * wsum;
    dot[1] = _mm512_reduce_add_epi32(a1) - 128 * wsum;
    dot[2] = _mm512_reduce_add_epi32(a2) - 128 * wsum;
    dot[3] = _mm512_reduce_add_epi32(a3) - 128 * wsum;
}

VNNI_TARGET static void dot4(int32_t *dot, const uint8_t *xu, int r, const int8_t *w, int32_t wsum, int IC) {
    if (r == 4) {
        dot4_full(dot, xu, w, wsum, IC);
        return;
    }
    __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                      _mm512_setzero_si512()};
    for (int k = 0; k < IC; k += 64) {
        const __mmask64 mk = IC - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (IC - k)) - 1);
        const __m512i wv = _mm512_maskz_loadu_epi8(mk, w + k);
        for (int i = 0; i < r; i++) {
            const __m512i xv = _mm512_maskz_loadu_epi8(mk, xu + (size_t)i * IC + k);
            acc[i] = _mm512_dpbusd_epi32(acc[i], xv, wv);
        }
    }
    for (int i = 0; i < r; i++) dot[i] = _mm512_reduce_add_epi32(acc[i]) - 128 * wsum;
}

/* The four accumulators' totals in one vector: a transpose-and-add tree (9 shuffles and
 * adds for four outputs, where four _mm512_reduce_add_epi32 take ~40; at d 384 a row's
 * reduction cost more than its six vpdpbusd). Exact integers: same totals. */
VNNI_TARGET static __m128i hsum4(__m512i a0, __m512i a1, __m512i a2, __m512i a3) {
    const __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(a0, a1), _mm512_unpackhi_epi32(a0, a1));
    const __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(a2, a3), _mm512_unpackhi_epi32(a2, a3));
    /* each 128-bit lane: partial sums of a0, a1, a2, a3 */
    const __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
    const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/* One row against four weight rows: four independent accumulator chains, so a GEMV is not
 * bound by the latency of one chain of vpdpbusd (exact integers: same result as dot4).
 * Full 64-byte steps unmasked, the tail masked. */
VNNI_TARGET static void gemv4(int32_t *dot, const uint8_t *x, const int8_t *w, const int32_t *wsum, int IC) {
    __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512(), a2 = _mm512_setzero_si512(),
            a3 = _mm512_setzero_si512();
    const int8_t *w1 = w + IC, *w2 = w + 2 * (size_t)IC, *w3 = w + 3 * (size_t)IC;
    int k = 0;
    for (; k + 64 <= IC; k += 64) {
        const __m512i xv = _mm512_loadu_si512(x + k);
        a0 = _mm512_dpbusd_epi32(a0, xv, _mm512_loadu_si512(w + k));
        a1 = _mm512_dpbusd_epi32(a1, xv, _mm512_loadu_si512(w1 + k));
        a2 = _mm512_dpbusd_epi32(a2, xv, _mm512_loadu_si512(w2 + k));
        a3 = _mm512_dpbusd_epi32(a3, xv, _mm512_loadu_si512(w3 + k));
    }
    if (k < IC) {
        const __mmask64 mk = ((__mmask64)1 << (IC - k)) - 1;
        const __m512i xv = _mm512_maskz_loadu_epi8(mk, x + k);
        a0 = _mm512_dpbusd_epi32(a0, xv, _mm512_maskz_loadu_epi8(mk, w + k));
        a1 = _mm512_dpbusd_epi32(a1, xv, _mm512_maskz_loadu_epi8(mk, w1 + k));
        a2 = _mm512_dpbusd_epi32(a2, xv, _mm512_maskz_loadu_epi8(mk, w2 + k));
        a3 = _mm512_dpbusd_epi32(a3, xv, _mm512_maskz_loadu_epi8(mk, w3 + k));
    }
    const __m128i off = _mm_slli_epi32(_mm_loadu_si128((const __m128i *)wsum), 7); /* 128 * wsum */
    _mm_storeu_si128((__m128i *)dot, _mm_sub_epi32(hsum4(a0, a1, a2, a3), off));
}

/* Four activation rows x four weight rows: 16 accumulators, each weight and activation
 * vector loaded once for four products; out rows i0..i0+3, columns o0..o0+3. */
VNNI_TARGET static void tile4x4(float *out, const uint8_t *xu, const float *sx, const int8_t *W, const float *ws,
                                const int32_t *wsum, int IC, int OC, int o0, float beta) {
    __m512i a[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) a[i][j] = _mm512_setzero_si512();
    const int8_t *w = W + (size_t)o0 * IC;
    for (int k = 0; k < IC; k += 64) {
        const __mmask64 mk = IC - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (IC - k)) - 1);
        __m512i wv[4];
        for (int j = 0; j < 4; j++) wv[j] = _mm512_maskz_loadu_epi8(mk, w + (size_t)j * IC + k);
        for (int i = 0; i < 4; i++) {
            const __m512i xv = _mm512_maskz_loadu_epi8(mk, xu + (size_t)i * IC + k);
            for (int j = 0; j < 4; j++) a[i][j] = _mm512_dpbusd_epi32(a[i][j], xv, wv[j]);
        }
    }
    const __m128i off = _mm_slli_epi32(_mm_loadu_si128((const __m128i *)(wsum + o0)), 7);
    for (int i = 0; i < 4; i++) {
        int32_t dot[4];
        _mm_storeu_si128((__m128i *)dot, _mm_sub_epi32(hsum4(a[i][0], a[i][1], a[i][2], a[i][3]), off));
        for (int j = 0; j < 4; j++) store(out + (size_t)i * OC + o0 + j, dot[j], sx[i], ws[o0 + j], beta);
    }
}

/* Outputs 4 ob .. 4 ob + 3 of one row. */
VNNI_TARGET static void gemv_outputs(float *out, const uint8_t *xu, float sx, const int8_t *W, const float *ws,
                                     const int32_t *wsum, int IC, int OC, float beta, int ob) {
    const int o0 = 4 * ob, no = OC - o0 < 4 ? OC - o0 : 4;
    int32_t dot[4];
    if (no == 4) gemv4(dot, xu, W + (size_t)o0 * IC, wsum + o0, IC);
    else
        for (int j = 0; j < no; j++) dot4(dot + j, xu, 1, W + (size_t)(o0 + j) * IC, wsum[o0 + j], IC);
    for (int j = 0; j < no; j++) store(out + o0 + j, dot[j], sx, ws[o0 + j], beta);
}

VNNI_TARGET static void gemv_vnni(float *out, const uint8_t *xu, float sx, const int8_t *W, const float *ws,
                                  const int32_t *wsum, int IC, int OC, float beta) {
    JOULE_PAR_FOR(joule_par_worth((uint64_t)IC * OC, JOULE_QUANT_PAR_WORK + 1), ob, (OC + 3) / 4,
                  gemv_outputs(out, xu, sx, W, ws, wsum, IC, OC, beta, ob));
}

/* Outputs 4 b .. 4 b + 3 of every row: blocks of four weight rows; the rows past a
 * multiple of 4 (activations or weights) one weight row at a time. */
VNNI_TARGET static void block_outputs(float *out, const uint8_t *xu, const float *sx, const int8_t *W,
                                      const float *ws, const int32_t *wsum, int r, int IC, int OC, float beta, int b) {
    const int r4 = r & ~3, o0 = 4 * b, no = OC - o0 < 4 ? OC - o0 : 4;
    if (no == 4)
        for (int i0 = 0; i0 < r4; i0 += 4)
            tile4x4(out + (size_t)i0 * OC, xu + (size_t)i0 * IC, sx + i0, W, ws, wsum, IC, OC, o0, beta);
    for (int o = o0; o < o0 + no; o++) {
        int32_t dot[4];
        for (int i0 = no == 4 ? r4 : 0; i0 < r; i0 += 4) {
            const int rr = r - i0 < 4 ? r - i0 : 4;
            dot4(dot, xu + (size_t)i0 * IC, rr, W + (size_t)o * IC, wsum[o], IC);
            for (int i = 0; i < rr; i++) store(out + (size_t)(i0 + i) * OC + o, dot[i], sx[i0 + i], ws[o], beta);
        }
    }
}

VNNI_TARGET static void block_vnni(float *out, const uint8_t *xu, const float *sx, const int8_t *W, const float *ws,
                                   const int32_t *wsum, int r, int IC, int OC, float beta) {
    if (r == 1) {
        gemv_vnni(out, xu, sx[0], W, ws, wsum, IC, OC, beta);
        return;
    }
    const int ob = (OC + 3) / 4;
    JOULE_PAR_FOR(joule_par_worth((uint64_t)r * IC * OC, JOULE_QUANT_PAR_WORK + 1), b, ob,
                  block_outputs(out, xu, sx, W, ws, wsum, r, IC, OC, beta, b));
}

static bool have_vnni(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
}
#else
static bool have_vnni(void) { return false; }
#endif

bool joule_quant_native_vnni(void) { return !joule_quant_portable_forced() && have_vnni(); }

void joule_i8_matmul(float *out, const float *in, const int8_t *W, const float *ws, const int32_t *wsum, int n,
                     int IC, int OC, float beta) {
    int8_t xq[JOULE_QUANT_ROWS * JOULE_QUANT_MAX_IC];
    float sx[JOULE_QUANT_ROWS];
    const bool native = joule_quant_native_vnni();
    for (int i0 = 0; i0 < n; i0 += JOULE_QUANT_ROWS) {
        const int r = n - i0 < JOULE_QUANT_ROWS ? n - i0 : JOULE_QUANT_ROWS;
        for (int i = 0; i < r; i++) sx[i] = joule_i8_quantize_row(xq + (size_t)i * IC, in + (size_t)(i0 + i) * IC, IC);
        float *o = out + (size_t)i0 * OC;
#if defined(__x86_64__) && defined(__GNUC__)
        if (native) {
            uint8_t *xu = (uint8_t *)xq; /* q + 128 in place: the same bytes, offset */
            for (size_t k = 0; k < (size_t)r * IC; k++) xu[k] = (uint8_t)(xq[k] + 128);
            block_vnni(o, xu, sx, W, ws, wsum, r, IC, OC, beta);
            continue;
        }
#endif
        block_portable(o, xq, sx, W, ws, r, IC, OC, beta);
    }
}
