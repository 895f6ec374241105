/* Shared by core/quant.c and the kernel files; not installed. */
#ifndef JOULE_QUANT_INTERNAL_H
#define JOULE_QUANT_INTERNAL_H
#include <stdbool.h>

#include "joule/quant.h"

/* Activation rows converted per block (on the caller's stack) and the widest input the
 * kernels take; wider products stay fp32 (joule_quant_matmul returns false). */
#define JOULE_QUANT_ROWS 16
#define JOULE_QUANT_MAX_IC 8192
/* bf16 products of at least this many rows run as fp32 sgemm on the dequantised arena
 * (joule_quant_matmul declines them): measured at 1 thread on the reference model's
 * shapes (docs/BENCH.md, "Large products"), OpenBLAS's sgemm matched the bf16 kernel at
 * 32-64 rows and beat it by up to 1.3x from 128. int8's kernel was faster at every row
 * count measured (1-256), so int8 has no such threshold. */
#define JOULE_QUANT_BF16_SGEMM_ROWS 128
/* Multiply-adds below which a product runs on one thread (a thread team costs more). */
#define JOULE_QUANT_PAR_WORK 65536

bool joule_quant_native_bf16(void);
/* Empty tables and buffers for precision p over m's tensors (core/quant.c). */
int joule_quant_new(joule_quant **out, const joule_model *m, joule_precision p);
/* Derived tables (int8 row sums) once the quantised values are in place. */
void joule_quant_finish(joule_quant *q, const joule_model *m);
bool joule_quant_native_vnni(void);
#endif
