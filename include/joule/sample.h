/* joule/sample.h — choosing the next token and generating text with the KV cache. */
#ifndef JOULE_SAMPLE_H
#define JOULE_SAMPLE_H

#include <stdint.h>

#include "joule/common.h"
#include "joule/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    float temperature; /* 0 = greedy (argmax, ties to the lower token) */
    int top_k;         /* keep the k most likely; 0 = all */
    float top_p;       /* keep the smallest set with mass >= top_p; 1 = all */
} joule_sampler;

/* Next token from logits[V]. scratch holds 2*V floats. Deterministic given rng. */
int32_t joule_sample(const float *logits, int V, const joule_sampler *s, joule_rng *rng, float *scratch);

/* Feeds prompt[0..n_prompt) and generates n_gen tokens, calling on_token for each
 * generated one (stop early by returning non-zero). When the context fills, the cache is
 * rebuilt from the most recent ctx/2 tokens (a sliding window), so any n_gen works.
 * n_prompt may be 0 (generation then starts from the end-of-document byte 0). */
int joule_generate(const joule_model *m, const uint8_t *prompt, int n_prompt, int n_gen,
                   const joule_sampler *s, uint64_t seed,
                   int (*on_token)(void *ctx, int32_t token), void *ctx);

#ifdef __cplusplus
}
#endif
#endif
