/* tests/mpi_train_local.c — joule_train without data_parallel under mpirun (2 ranks): each
 * rank trains its own run, different in length, with no collective at all, as a caller
 * that spreads different runs over ranks (joule compare) needs; and its weights equal a
 * second run of the same options on the same rank (no other rank's gradient leaked in). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "joule/common.h"
#include "joule/data.h"
#include "joule/dist.h"
#include "joule/model.h"
#include "joule/train.h"

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            char m[512];                                                                 \
            snprintf(m, sizeof m, "%s:%d: check failed: %s (%s)", __FILE__, __LINE__, #cond, \
                     joule_last_error());                                                \
            joule_dist_abort(1, m);                                                      \
        }                                                                                \
    } while (0)

static void write_tokens(const char *path) {
    joule_token_writer *w;
    CHECK(joule_token_writer_open(&w, path) == JOULE_OK);
    for (int d = 0; d < 40; d++) {
        char text[128];
        int n = snprintf(text, sizeof text, "document %d: the quick brown fox %d jumps over %d lazy dogs.", d, d * 7, d % 5);
        CHECK(joule_token_writer_begin_doc(w, (uint64_t)d) == JOULE_OK);
        CHECK(joule_token_writer_append(w, (const uint8_t *)text, (size_t)n) == JOULE_OK);
        CHECK(joule_token_writer_end_doc(w) == JOULE_OK);
    }
    CHECK(joule_token_writer_commit(w) == JOULE_OK);
}

/* Trains a fresh tiny model for `steps` steps; the caller frees it. */
static joule_model *train(const char *dir, const char *tokens, int steps, const char *name) {
    joule_config c = joule_config_default(1, 16, 2, 32, 16);
    joule_model *m;
    CHECK(joule_model_create(&m, &c) == JOULE_OK);
    joule_model_init(m, 3);
    CHECK(joule_model_alloc_train(m, 2) == JOULE_OK);
    char out[512];
    snprintf(out, sizeof out, "%s/%s.safetensors", dir, name);
    joule_train_opts o;
    joule_train_opts_init(&o);
    o.train_path = tokens;
    o.out_path = out;
    o.batch = 2;
    o.max_steps = (uint64_t)steps;
    joule_train_progress last;
    CHECK(joule_train(m, &o, &last) == JOULE_OK);
    CHECK(last.step == (uint64_t)steps && last.tokens == (uint64_t)steps * 2 * 16);
    return m;
}

int main(int argc, char **argv) {
    CHECK(joule_dist_init(&argc, &argv) == JOULE_OK);
    const int rank = joule_dist_rank();
    char dir[] = "/tmp/joule_mpi_train_local.XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char tokens[600];
    snprintf(tokens, sizeof tokens, "%s/train.bin", dir);
    write_tokens(tokens);
    joule_dist_stats_reset();
    /* rank r: 2 + r steps, twice */
    joule_model *a = train(dir, tokens, 2 + rank, "a"), *b = train(dir, tokens, 2 + rank, "b");
    CHECK(joule_dist_get_stats()->calls[JOULE_DIST_ALLREDUCE] == 0);
    CHECK(memcmp(a->params, b->params, a->n_params * sizeof(float)) == 0);
    joule_model_free(a);
    joule_model_free(b);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
    CHECK(joule_dist_barrier() == JOULE_OK);
    if (rank == 0) printf("mpi_train_local: %d ranks trained their own runs, no all-reduce\n", joule_dist_size());
    joule_dist_finalize();
    return 0;
}
