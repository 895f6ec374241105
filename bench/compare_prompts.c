/* Metrics on the same prompts: exact match of the next n bytes under greedy decoding (the
 * discontinuous one), and on the very same prompts the smooth ones (per-byte accuracy and
 * mean log-probability under teacher forcing, edit distance of the greedy continuation)
 * and the pass rate of S sampled continuations. An all-or-nothing metric can sit near 0
 * and jump while the smooth ones improve steadily (Schaeffer et al. 2023); pass rates
 * feed the GPT-4 report's capability prediction (bench/compare_predict.c). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "joule/compare.h"
#include "joule/ext.h"
#include "joule/retro.h"
#include "joule/sample.h"

int joule_edit_distance(const uint8_t *a, int na, const uint8_t *b, int nb) {
    if (na < 0 || nb < 0 || na > JOULE_PROMPT_MAX_BYTES || nb > JOULE_PROMPT_MAX_BYTES) return -1;
    int row[JOULE_PROMPT_MAX_BYTES + 1];
    for (int j = 0; j <= nb; j++) row[j] = j;
    for (int i = 1; i <= na; i++) {
        int diag = row[0]; /* distance of a[0..i-1) to b[0..j-1) before row j is overwritten */
        row[0] = i;
        for (int j = 1; j <= nb; j++) {
            int best = diag + (a[i - 1] != b[j - 1]);
            if (row[j] + 1 < best) best = row[j] + 1;         /* delete a[i-1] */
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1; /* insert b[j-1] */
            diag = row[j];
            row[j] = best;
        }
    }
    return row[nb];
}

void joule_teacher_forced(const float *logits, int V, const uint8_t *target, int n, int *correct, double *logprob) {
    int hits = 0;
    double sum = 0;
    for (int i = 0; i < n; i++) {
        const float *row = logits + (size_t)i * (size_t)V;
        int best = 0;
        for (int v = 1; v < V; v++)
            if (row[v] > row[best]) best = v; /* strict: ties to the lower byte, as greedy */
        double z = 0;
        for (int v = 0; v < V; v++) z += exp((double)row[v] - row[best]);
        sum += (double)row[target[i]] - row[best] - log(z);
        hits += best == target[i];
    }
    *correct = hits;
    *logprob = n > 0 ? sum / n : 0;
}

/* splitmix64's finaliser over the triple: seeds of different prompts and samples are
 * unrelated streams, and the same triple always gives the same one */
uint64_t joule_prompt_seed(uint64_t seed, int w, int j) {
    uint64_t x = seed + 0x9E3779B97F4A7C15ull * ((uint64_t)w + 1) + 0xD1B54A32D192ED03ull * ((uint64_t)j + 1);
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Teacher forcing: windows of the prompt and the target's first n-1 bytes, batched; row
 * prompt-1+i of a window predicts target byte i. */
static int teacher_pass(joule_model *m, struct joule_retro_data *rd, const joule_tokens *t, const joule_prompt_opts *o,
                        joule_prompt_score *sc) {
    const int B = m->max_batch, T = o->prompt + o->n - 1, V = m->cfg.vocab;
    if (B < 1) return joule_fail(JOULE_ERR_ARG, "prompt metrics: the model has no training buffers");
    int32_t *in = malloc((size_t)B * (size_t)T * sizeof *in);
    uint64_t *starts = malloc((size_t)B * sizeof *starts);
    int rc = in && starts ? JOULE_OK : joule_fail(JOULE_ERR_NOMEM, "out of memory");
    for (int g = 0; g < o->windows && !rc; g += B) {
        const int nb = o->windows - g < B ? o->windows - g : B;
        for (int b = 0; b < nb; b++) {
            starts[b] = sc[g + b].start;
            for (int i = 0; i < T; i++) in[(size_t)b * T + i] = t->tok[starts[b] + (uint64_t)i];
        }
        if (rd && (rc = joule_retro_prepare(rd, m, t, starts, nb, T))) break;
        if ((rc = joule_model_forward(m, in, NULL, nb, T, NULL))) break;
        const float *logits = joule_model_logits(m);
        for (int b = 0; b < nb; b++)
            joule_teacher_forced(logits + ((size_t)b * T + (size_t)o->prompt - 1) * (size_t)V, V,
                                 t->tok + starts[b] + (uint64_t)o->prompt, o->n, &sc[g + b].tf_correct,
                                 &sc[g + b].logprob);
    }
    free(in);
    free(starts);
    return rc;
}

/* One continuation of n bytes from the decoder's state after the prompt (logits: the
 * prompt's last), into out; with want, stops at the first byte that differs from it.
 * Returns the bytes produced. */
static int continue_from(joule_decoder *d, const float *logits, const joule_sampler *s, joule_rng *rng, float *scratch,
                         int n, const uint8_t *want, uint8_t *out, int *rc) {
    for (int i = 0; i < n; i++) {
        const int32_t tok = joule_sample(logits, d->m->cfg.vocab, s, rng, scratch);
        out[i] = (uint8_t)tok;
        if (want && tok != want[i]) return i + 1;
        if (i < n - 1 && (*rc = joule_decoder_step(d, tok, &logits))) return i + 1;
    }
    return n;
}

/* Greedy decoding and samples without retrieval: one prefill per prompt, each continuation
 * decoded from it (joule_decoder_truncate), so S samples cost S x n steps, not S prefills. */
static int decode_pass(const joule_model *m, const joule_tokens *t, const joule_prompt_opts *o, joule_prompt_score *sc) {
    const int V = m->cfg.vocab;
    joule_decoder *d = NULL;
    int rc = joule_decoder_create(&d, m);
    if (rc) return rc;
    int32_t *in = malloc((size_t)o->prompt * sizeof *in);
    float *l0 = malloc((size_t)V * sizeof *l0), *scratch = malloc(2 * (size_t)V * sizeof *scratch);
    if (!in || !l0 || !scratch) rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
    const joule_sampler greedy = {0.0f, 0, 1.0f}, hot = {o->temperature, 0, 1.0f};
    uint8_t out[JOULE_PROMPT_MAX_BYTES];
    for (int w = 0; w < o->windows && !rc; w++) {
        const uint8_t *p = t->tok + sc[w].start, *want = p + o->prompt;
        for (int i = 0; i < o->prompt; i++) in[i] = p[i];
        const float *logits;
        joule_decoder_reset(d);
        if ((rc = joule_decoder_prefill(d, in, o->prompt, &logits))) break;
        memcpy(l0, logits, (size_t)V * sizeof *l0);
        joule_rng rng;
        joule_rng_seed(&rng, 1); /* greedy draws nothing from it */
        continue_from(d, l0, &greedy, &rng, scratch, o->n, NULL, out, &rc);
        sc[w].edit = joule_edit_distance(out, o->n, want, o->n);
        sc[w].passes = 0;
        for (int j = 0; j < o->samples && !rc; j++) {
            joule_rng_seed(&rng, joule_prompt_seed(o->seed, w, j));
            if ((rc = joule_decoder_truncate(d, o->prompt))) break;
            int got = continue_from(d, l0, &hot, &rng, scratch, o->n, want, out, &rc);
            sc[w].passes += got == o->n && out[o->n - 1] == want[o->n - 1];
        }
    }
    free(in);
    free(l0);
    free(scratch);
    joule_decoder_free(d);
    return rc;
}

/* Continuation 0 of a prompt is the greedy one, kept whole; 1 .. S the samples, each
 * stopped at its first byte that differs from the target. */
typedef struct {
    const uint8_t *want;
    uint8_t out[JOULE_PROMPT_MAX_BYTES];
    int got, sample_got, passes, n;
} collect_state;

static int on_token(void *ctx, int seq, int32_t token) {
    collect_state *s = ctx;
    if (seq == 0) {
        s->out[s->got++] = (uint8_t)token;
        return 0;
    }
    if (token != s->want[s->sample_got]) { /* a sample that missed: no need to go on */
        s->sample_got = 0;
        return 1;
    }
    if (++s->sample_got == s->n) { /* all n bytes right: it passed */
        s->passes++;
        s->sample_got = 0;
    }
    return 0;
}

/* The same with live retrieval (RETRO), on the prompt's place in its document's chunk grid,
 * as generation retrieves: the greedy continuation and the samples from one prefill of the
 * prompt (joule_retro_generate_each). */
static int retro_decode_pass(const joule_model *m, struct joule_retro_data *rd, const joule_tokens *t,
                             const joule_prompt_opts *o, joule_prompt_score *sc) {
    struct joule_retro_db *db = rd ? joule_retro_data_db(rd) : NULL;
    const int S = o->samples;
    joule_sampler *samplers = malloc((size_t)(S + 1) * sizeof *samplers);
    uint64_t *seeds = malloc((size_t)(S + 1) * sizeof *seeds);
    int rc = samplers && seeds ? JOULE_OK : joule_fail(JOULE_ERR_NOMEM, "out of memory");
    for (int w = 0; w < o->windows && !rc; w++) {
        const uint64_t start = sc[w].start;
        const uint8_t *p = t->tok + start;
        const int phase = (int)((start - t->doc_offsets[joule_tokens_doc_at(t, start)]) % (uint64_t)m->cfg.retro.chunk);
        samplers[0] = (joule_sampler){0.0f, 0, 1.0f};
        seeds[0] = 1; /* greedy draws nothing from it */
        for (int j = 0; j < S; j++) {
            samplers[j + 1] = (joule_sampler){o->temperature, 0, 1.0f};
            seeds[j + 1] = joule_prompt_seed(o->seed, w, j);
        }
        collect_state cs = {.want = p + o->prompt, .n = o->n};
        joule_retro_gen_stats st;
        rc = joule_retro_generate_each(m, db, p, o->prompt, phase, o->n, S + 1, samplers, seeds, on_token, &cs, &st);
        sc[w].edit = joule_edit_distance(cs.out, cs.got, cs.want, o->n);
        sc[w].passes = cs.passes;
    }
    free(samplers);
    free(seeds);
    return rc;
}

static int check_opts(const joule_model *m, const joule_tokens *t, const joule_prompt_opts *o) {
    if (o->prompt < 1 || o->windows < 1 || o->n < 1 || o->n > JOULE_PROMPT_MAX_BYTES || o->samples < 0)
        return joule_fail(JOULE_ERR_ARG,
                          "prompt metrics need a prompt of >= 1 byte, >= 1 prompt, 1..%d target bytes and >= 0 samples "
                          "(got %d, %d, %d, %d)",
                          JOULE_PROMPT_MAX_BYTES, o->prompt, o->windows, o->n, o->samples);
    if (o->samples > 0 && !(o->temperature > 0))
        return joule_fail(JOULE_ERR_ARG, "prompt metrics: samples need a temperature > 0 (got %g)", o->temperature);
    if (o->prompt + o->n > m->cfg.ctx)
        return joule_fail(JOULE_ERR_ARG, "prompt metrics: prompt %d + %d bytes exceed the model's context %d", o->prompt,
                          o->n, m->cfg.ctx);
    if (t->n_tokens < (uint64_t)o->prompt + (uint64_t)o->n)
        return joule_fail(JOULE_ERR_ARG, "%llu tokens is too short for one prompt of %d + %d bytes",
                          (unsigned long long)t->n_tokens, o->prompt, o->n);
    return JOULE_OK;
}

int joule_prompt_metrics(joule_model *m, struct joule_retro_data *rd, const joule_tokens *t, const joule_prompt_opts *o,
                         joule_prompt_score *scores, joule_prompt_means *means) {
    int rc = check_opts(m, t, o);
    if (rc) return rc;
    const uint64_t span = (uint64_t)o->prompt + (uint64_t)o->n, room = t->n_tokens - span;
    for (int w = 0; w < o->windows; w++) { /* evenly spaced: the same prompts for every model */
        memset(&scores[w], 0, sizeof scores[w]);
        scores[w].start = o->windows > 1 ? room * (uint64_t)w / (uint64_t)(o->windows - 1) : 0;
    }
    if ((rc = teacher_pass(m, rd, t, o, scores))) return rc;
    rc = joule_config_has_cca(&m->cfg) ? retro_decode_pass(m, rd, t, o, scores) : decode_pass(m, t, o, scores);
    if (rc) return rc;
    double em = 0, acc = 0, lp = 0, ed = 0, pass = 0;
    for (int w = 0; w < o->windows; w++) {
        em += scores[w].edit == 0;
        acc += (double)scores[w].tf_correct / o->n;
        lp += scores[w].logprob;
        ed += scores[w].edit;
        pass += o->samples ? (double)scores[w].passes / o->samples : 0;
    }
    const double W = o->windows;
    *means = (joule_prompt_means){em / W, acc / W, lp / W, ed / W, o->samples ? pass / W : NAN};
    return JOULE_OK;
}
