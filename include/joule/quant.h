/* joule/quant.h — bf16 and int8 weights for inference (docs/FORMATS.md, "Quantised models").
 *
 * What is quantised: every matrix (2-D tensor) that is not an embedding, i.e. all of the
 * layers' matrices (attention, SwiGLU, MoE router and experts, RETRO encoder and CCA).
 * tok_emb, an untied lm_head and every norm gain stay fp32.
 *   bf16: each weight rounded to nearest even bfloat16.
 *   int8: per output channel (row) o, scale s_o = max_k |w_ok| / 127 and
 *         q_ok = round(w_ok / s_o) in [-127, 127]; w ~ q * s.
 *
 * A loaded quantised model keeps two copies: the fp32 arena holds the dequantised weights
 * (what extensions, attention and training-shaped code read), and a joule_quant holds the
 * quantised ones at the same element offsets, which joule_quant_matmul uses for the core's
 * layer products, attention q/k/v/o and the dense SwiGLU (decode, prefill, batched steps and
 * the evaluation forward; MoE experts and RETRO's encoder and CCA use the fp32 arena, and so
 * do bf16 products of 128 rows or more, where sgemm measured faster):
 *   bf16: activations rounded to bf16, products summed in fp32 (AVX512-BF16 vdpbf16ps or
 *         the portable loop);
 *   int8: each activation row quantised to int8 with its own scale (max |x| / 127), exact
 *         int32 dot products (AVX512-VNNI vpdpbusd or the portable loop), times both scales.
 * The int8 kernels give bit-identical results on both paths; the bf16 ones differ only in
 * the order of fp32 sums (|difference| <= 1e-5 * sum_k |x_k w_k| is what the tests check).
 * JOULE_KERNELS=portable in the environment forces the portable loops.
 *
 * Ownership: a joule_quant belongs to its model (m->quant) and is freed with it.
 */
#ifndef JOULE_QUANT_H
#define JOULE_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "joule/common.h"
#include "joule/model.h"
#include "joule/train.h" /* joule_tokens, joule_eval_result */

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { JOULE_PREC_F32 = 0, JOULE_PREC_BF16 = 1, JOULE_PREC_INT8 = 2 } joule_precision;

/* "fp32", "bf16", "int8". */
const char *joule_precision_name(joule_precision p);
/* Parses "fp32" (or "f32"), "bf16", "int8"; JOULE_ERR_ARG otherwise. */
int joule_precision_parse(const char *s, joule_precision *out);
/* Bytes per quantised weight: 4, 2, 1 (int8's per-row scales are extra). */
double joule_precision_bytes(joule_precision p);

typedef struct joule_quant {
    joule_precision prec;
    uint16_t *bf16;     /* [n_params] at the arena's offsets (bf16 models) */
    int8_t *i8;         /* [n_params] at the arena's offsets (int8 models) */
    float *scale;       /* int8: per row of the quantised tensors, in tensor order */
    int32_t *wsum;      /* int8: sum of each row's q (the VNNI kernel's unsigned offset) */
    size_t *row_base;   /* [n_tensors]: index of the tensor's first row in scale/wsum */
    bool *quantised;    /* [n_tensors] */
    size_t n_rows;
} joule_quant;

/* Is tensor t quantised by this rule (a non-embedding matrix)? */
bool joule_quant_applies(const joule_param_info *t);

/* Quantises m's fp32 weights into a new joule_quant (caller frees it with
 * joule_quant_free, or hands it to the model as m->quant) and writes the dequantised
 * values back into m's arena, so the arena holds exactly what the file will say. */
int joule_quant_from_model(joule_quant **out, joule_model *m, joule_precision p);
void joule_quant_free(joule_quant *q);

/* Bytes of weights a batch-1 decode step reads: the quantised matrices at their precision
 * (plus int8 scales), one row of tok_emb, the norms and the lm_head in fp32. */
uint64_t joule_quant_decode_weight_bytes(const joule_model *m);

/* out[n, OC] = in[n, IC] W^T + beta out, W the [OC, IC] matrix at arena pointer W of m,
 * through the quantised kernels. Returns false (touching nothing) when m has no quant, the
 * range is not quantised, or the product is one the fp32 path does faster (bf16 with
 * n >= 128 rows: sgemm on the dequantised arena, i.e. bf16 weights, fp32 activations):
 * the caller then runs its fp32 product. Counts 2 n IC OC FLOPs like joule_sgemm. */
bool joule_quant_matmul(const joule_model *m, const float *W, float *out, const float *in, int n, int IC, int OC,
                        float beta);

/* ---- files (core/quant_io.c) ---- */
/* Writes m (which must have m->quant) as a quantised checkpoint, atomically: metadata
 * format, format_version, config as for fp32 checkpoints plus "precision" and
 * "quantization" (a one-line description); no training state. */
int joule_quant_save(const joule_model *m, const char *path);
struct joule_st_file;
/* The file's "precision" metadata (absent: fp32); JOULE_ERR_FORMAT for another value. */
int joule_quant_file_precision(const struct joule_st_file *f, joule_precision *p);
/* Checks that the file holds exactly description d's tensors at precision p (bf16/int8). */
int joule_quant_check_file(const struct joule_st_file *f, const joule_model *d, joule_precision p);
/* Fills m's arena (dequantised) and m->quant from a checked file. */
int joule_quant_load_file(const struct joule_st_file *f, joule_model *m, joule_precision p);

/* ---- quality (core/quant_eval.c) ---- */
/* joule_evaluate of m over the windows of t, and over the same windows the mean
 * KL(reference || m) of the next-token distributions (nats per token, in *kl_nats) and the
 * reference's mean loss (*ref_loss). Both models need training buffers (joule_model_alloc_train);
 * r's wall time and counted FLOPs are m's forwards only. */
int joule_evaluate_kl(joule_model *m, joule_model *ref, const joule_tokens *t, int T, int B,
                      uint64_t max_windows, joule_eval_result *r, double *kl_nats, double *ref_loss,
                      void (*progress)(void *ctx, uint64_t done, uint64_t total), void *ctx);
/* The same with a batch hook (RETRO: joule_retro_prepare) that hands both models each
 * batch's extra inputs before their forwards; prepare NULL is joule_evaluate_kl. */
int joule_evaluate_kl_prepared(joule_model *m, joule_model *ref, const joule_tokens *t, int T, int B,
                               uint64_t max_windows, joule_batch_prepare_fn prepare, void *prepare_ctx,
                               joule_eval_result *r, double *kl_nats, double *ref_loss);

/* ---- kernels (core/kernels_bf16.c, core/kernels_int8.c) ---- */
/* Which kernel family runs: "avx512bf16" / "avx512vnni" or "portable". */
const char *joule_quant_kernel_name(joule_precision p);
/* Forces (true) or releases the portable kernels (tests); JOULE_KERNELS=portable does it
 * for a process. */
void joule_quant_force_portable(bool on);
bool joule_quant_portable_forced(void);

uint16_t joule_f32_to_bf16(float x);
float joule_bf16_to_f32(uint16_t b);
void joule_bf16_matmul(float *out, const float *in, const uint16_t *W, int n, int IC, int OC, float beta);
/* int8 weights with per-row scale ws and row sums wsum. */
void joule_i8_matmul(float *out, const float *in, const int8_t *W, const float *ws, const int32_t *wsum, int n,
                     int IC, int OC, float beta);
/* One activation row to int8: q = round(x * 127 / max|x|); returns the row's scale max|x|/127
 * (0 for a zero row, q all 0). Shared by both int8 paths so they quantise identically. */
float joule_i8_quantize_row(int8_t *q, const float *x, int n);

#ifdef __cplusplus
}
#endif
#endif
