/* Shared by core/decode.c and core/rows_kernel.c; not installed.
 *
 * A few activation rows times a weight matrix, the shape of a batched decode step:
 * out[n,OC] = in[n,IC] W[OC,IC]^T + beta out, for n of about 2 to 64. OpenBLAS's sgemm
 * repacks W at every call (its own copy, about three passes over the weights), which at
 * a decode step's few rows costs more than the product; these kernels read W from a copy
 * packed once (joule_rows_pack), JOULE_ROWS_PANEL outputs at a time with k running down
 * the panel, so every output is one fused multiply-add chain over k = 0 .. IC-1 in order,
 * then beta * out added by one more. That order does not depend on n, the row tiling, the
 * thread count or the instruction set (AVX-512, AVX2 and the scalar fallback give the same
 * bits): a row's result is the same whatever else is in the batch. */
#ifndef JOULE_ROWS_KERNEL_H
#define JOULE_ROWS_KERNEL_H
#include <stddef.h>

#define JOULE_ROWS_PANEL 32

/* W[OC,IC] packed as ceil(OC/32) panels of [IC][32] floats (outputs past OC are zero). */
typedef struct {
    const float *W; /* the matrix this packs (the lookup key) */
    int IC, OC;
    float *p;       /* owned; joule_alloc'ed */
} joule_rows_packed;

/* Floats a packed copy of an [OC, IC] matrix takes (0 on overflow). */
size_t joule_rows_pack_floats(int IC, int OC);
/* Packs W into dst (joule_rows_pack_floats(IC, OC) floats). */
void joule_rows_pack(float *dst, const float *W, int IC, int OC);
/* out[n,OC] = in[n,IC] W^T + beta out with W packed in pk; beta 0 ignores out's contents.
 * Counts 2 n IC OC FLOPs; output panels share the threads. */
void joule_rows_matmul(float *out, const float *in, const joule_rows_packed *pk, int n, float beta);
#endif
