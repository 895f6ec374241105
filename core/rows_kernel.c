/* Packed few-row products (core/rows_kernel.h). The microkernel keeps R rows x one 32-wide
 * output panel in registers: each k loads the panel's 32 weights once and broadcasts one
 * input value per row (an outer product), so there are no horizontal sums and the weights
 * are read from memory once per tile of R rows.
 *
 * From 8 rows on the product is compute-bound, and the first tile over a panel would wait
 * on memory while later tiles find it cached; so every tile over a panel also prefetches
 * a share of the next panel, which keeps memory busy for the panel's whole time (16 rows
 * on the reference model: 1.80 instead of 2.47 ms per step's products, docs/BENCH.md). Below
 * 8 rows the hardware prefetcher keeps up, and software prefetches only cost issue slots. */
#include "rows_kernel.h"
#include "par.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "joule/common.h"
#include "joule/ops.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#define RMAX 12 /* 24 accumulators of 32 registers */
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define RMAX 3 /* 12 accumulators of 16 registers */
#else
#define RMAX 4
#endif
#define PREFETCH_MIN_ROWS 8

size_t joule_rows_pack_floats(int IC, int OC) {
    if (IC < 1 || OC < 1) return 0;
    const size_t panels = ((size_t)OC + JOULE_ROWS_PANEL - 1) / JOULE_ROWS_PANEL;
    if ((size_t)IC > SIZE_MAX / JOULE_ROWS_PANEL / panels) return 0;
    return panels * (size_t)IC * JOULE_ROWS_PANEL;
}

void joule_rows_pack(float *dst, const float *W, int IC, int OC) {
    const int panels = (OC + JOULE_ROWS_PANEL - 1) / JOULE_ROWS_PANEL;
    for (int p = 0; p < panels; p++) {
        float *d = dst + (size_t)p * IC * JOULE_ROWS_PANEL;
        for (int k = 0; k < IC; k++)
            for (int j = 0; j < JOULE_ROWS_PANEL; j++) {
                const int o = p * JOULE_ROWS_PANEL + j;
                d[(size_t)k * JOULE_ROWS_PANEL + j] = o < OC ? W[(size_t)o * IC + k] : 0.0f;
            }
    }
}

/* Cache lines of the next panel that a tile prefetches at step k: pf (NULL: none) is this
 * tile's share, one line per k, or the whole panel (two per k) when the panel is one tile. */
static inline __attribute__((always_inline)) void prefetch(const char *pf, int IC, int whole, int k) {
#if defined(__AVX2__) || defined(__AVX512F__)
    if (!pf) return;
    _mm_prefetch(pf + (size_t)k * 64, _MM_HINT_T1);
    if (whole) _mm_prefetch(pf + ((size_t)IC + (size_t)k) * 64, _MM_HINT_T1);
#else
    (void)pf, (void)IC, (void)whole, (void)k;
#endif
}

/* R rows (R <= RMAX, a constant after inlining) against panel pp; cols <= 32 outputs kept. */
static inline __attribute__((always_inline)) void tile(float *out, const float *in, const float *pp, int R, int IC,
                                                       int OC, int cols, float beta, const char *pf, int whole) {
#if defined(__AVX512F__)
    __m512 a[RMAX][2];
    for (int r = 0; r < R; r++) a[r][0] = a[r][1] = _mm512_setzero_ps();
    for (int k = 0; k < IC; k++) {
        prefetch(pf, IC, whole, k);
        const __m512 w0 = _mm512_load_ps(pp + (size_t)k * 32), w1 = _mm512_load_ps(pp + (size_t)k * 32 + 16);
        for (int r = 0; r < R; r++) {
            const __m512 x = _mm512_set1_ps(in[(size_t)r * IC + k]);
            a[r][0] = _mm512_fmadd_ps(x, w0, a[r][0]);
            a[r][1] = _mm512_fmadd_ps(x, w1, a[r][1]);
        }
    }
    float buf[32] __attribute__((aligned(64)));
    for (int r = 0; r < R; r++) {
        _mm512_store_ps(buf, a[r][0]);
        _mm512_store_ps(buf + 16, a[r][1]);
        float *o = out + (size_t)r * OC;
        for (int j = 0; j < cols; j++) o[j] = beta != 0.0f ? fmaf(beta, o[j], buf[j]) : buf[j];
    }
#elif defined(__AVX2__) && defined(__FMA__)
    __m256 a[RMAX][4];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < 4; v++) a[r][v] = _mm256_setzero_ps();
    for (int k = 0; k < IC; k++) {
        prefetch(pf, IC, whole, k);
        const float *w = pp + (size_t)k * 32;
        const __m256 w0 = _mm256_load_ps(w), w1 = _mm256_load_ps(w + 8), w2 = _mm256_load_ps(w + 16),
                     w3 = _mm256_load_ps(w + 24);
        for (int r = 0; r < R; r++) {
            const __m256 x = _mm256_set1_ps(in[(size_t)r * IC + k]);
            a[r][0] = _mm256_fmadd_ps(x, w0, a[r][0]);
            a[r][1] = _mm256_fmadd_ps(x, w1, a[r][1]);
            a[r][2] = _mm256_fmadd_ps(x, w2, a[r][2]);
            a[r][3] = _mm256_fmadd_ps(x, w3, a[r][3]);
        }
    }
    float buf[32] __attribute__((aligned(32)));
    for (int r = 0; r < R; r++) {
        for (int v = 0; v < 4; v++) _mm256_store_ps(buf + 8 * v, a[r][v]);
        float *o = out + (size_t)r * OC;
        for (int j = 0; j < cols; j++) o[j] = beta != 0.0f ? fmaf(beta, o[j], buf[j]) : buf[j];
    }
#else
    (void)pf, (void)whole;
    for (int r = 0; r < R; r++) {
        float acc[32] = {0};
        for (int k = 0; k < IC; k++) {
            const float x = in[(size_t)r * IC + k];
            for (int j = 0; j < 32; j++) acc[j] = fmaf(x, pp[(size_t)k * 32 + j], acc[j]);
        }
        float *o = out + (size_t)r * OC;
        for (int j = 0; j < cols; j++) o[j] = beta != 0.0f ? fmaf(beta, o[j], acc[j]) : acc[j];
    }
#endif
}

/* One panel against all n rows in ceil(n / RMAX) tiles of even size (16 rows: 8 + 8, not
 * 12 + 4, whose short tile is latency-bound); every R is a constant in its case. The first
 * two tiles prefetch the next panel (NULL: none), half each, or all of it when alone. */
static void panel(float *out, const float *in, const float *pp, int n, int IC, int OC, int cols, float beta,
                  const float *next) {
    const int tiles = (n + RMAX - 1) / RMAX;
    if (n < PREFETCH_MIN_ROWS) next = NULL;
    for (int i = 0, j = 0; j < tiles; j++) {
        const int R = (n - i + tiles - j - 1) / (tiles - j);
        float *o = out + (size_t)i * OC;
        const float *x = in + (size_t)i * IC;
        const char *pf = next && j < 2 ? (const char *)next + (size_t)j * IC * 64 : NULL;
        switch (R) {
#define TILE(r) \
    case r: tile(o, x, pp, r, IC, OC, cols, beta, pf, tiles == 1); break;
            TILE(1) TILE(2) TILE(3)
#if RMAX > 3
            TILE(4)
#endif
#if RMAX > 4
            TILE(5) TILE(6) TILE(7) TILE(8) TILE(9) TILE(10) TILE(11) TILE(12)
#endif
#undef TILE
        default: break;
        }
        i += R;
    }
}

/* Output panel p of the product: its columns of out, prefetching panel p + 1. */
static void panel_of(float *out, const float *in, const joule_rows_packed *pk, int n, int p, float beta) {
    const int IC = pk->IC, OC = pk->OC, panels = (OC + JOULE_ROWS_PANEL - 1) / JOULE_ROWS_PANEL;
    const int o0 = p * JOULE_ROWS_PANEL, cols = OC - o0 < JOULE_ROWS_PANEL ? OC - o0 : JOULE_ROWS_PANEL;
    const float *pp = pk->p + (size_t)p * IC * JOULE_ROWS_PANEL;
    panel(out + o0, in, pp, n, IC, OC, cols, beta, p + 1 < panels ? pp + (size_t)IC * JOULE_ROWS_PANEL : NULL);
}

void joule_rows_matmul(float *out, const float *in, const joule_rows_packed *pk, int n, float beta) {
    const int IC = pk->IC, OC = pk->OC, panels = (OC + JOULE_ROWS_PANEL - 1) / JOULE_ROWS_PANEL;
    if (n < 1) return;
    joule_flops_add(2ull * (uint64_t)n * (uint64_t)IC * (uint64_t)OC);
    /* A thread team costs tens of microseconds: worth it from about a million multiply-adds. */
    JOULE_PAR_FOR(joule_par_worth((uint64_t)n * (uint64_t)IC * (uint64_t)OC, 1u << 20), p, panels,
                  panel_of(out, in, pk, n, p, beta));
}
