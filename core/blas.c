/* The one gateway to BLAS: every matmul joule does passes here and is counted. */
#include "joule/ops.h"

#include <cblas.h>
#include <omp.h>
#include <stdatomic.h>

static _Atomic uint64_t g_flops;

uint64_t joule_flops_counted(void) { return atomic_load(&g_flops); }
void joule_flops_reset(void) { atomic_store(&g_flops, 0); }
void joule_flops_add(uint64_t flops) { atomic_fetch_add_explicit(&g_flops, flops, memory_order_relaxed); }

void joule_sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A,
                 int lda, const float *B, int ldb, float beta, float *Cm, int ldc) {
    if (M <= 0 || N <= 0) return;
    joule_flops_add(2ull * (uint64_t)M * (uint64_t)N * (uint64_t)K);
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, Cm, ldc);
}

void joule_sgemv(int M, int N, float alpha, const float *A, int lda, const float *x, float beta,
                 float *y) {
    if (M <= 0) return;
    joule_flops_add(2ull * (uint64_t)M * (uint64_t)N);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, M, N, alpha, A, lda, x, 1, beta, y, 1);
}

void joule_linear_forward(float *out, const float *in, const float *W, int N, int IC, int OC) {
    joule_sgemm(false, true, N, OC, IC, 1.0f, in, IC, W, IC, 0.0f, out, OC);
}

void joule_linear_backward(float *din, float *dW, const float *dout, const float *in,
                           const float *W, int N, int IC, int OC, bool accumulate_din) {
    if (dW) joule_sgemm(true, false, OC, IC, N, 1.0f, dout, OC, in, IC, 1.0f, dW, IC);
    if (din)
        joule_sgemm(false, false, N, IC, OC, 1.0f, dout, OC, W, IC, accumulate_din ? 1.0f : 0.0f,
                    din, IC);
}

void joule_set_threads(int n) {
    if (n < 1) n = 1;
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

int joule_get_threads(void) { return omp_get_max_threads(); }

const char *joule_blas_corename(void) { return openblas_get_corename(); }

const char *joule_blas_threading(void) {
    switch (openblas_get_parallel()) {
    case 0: return "sequential";
    case 1: return "pthreads";
    case 2: return "openmp";
    default: return "unknown";
    }
}
