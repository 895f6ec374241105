/* The scheduler's feeder for RETRO with live retrieval: one retro_live per sequence, so a
 * batched sequence searches and hands neighbours exactly where joule_retro_generate would. */
#include <stdlib.h>

#include "retro_live.h"

static void *begin(void *ctx, joule_decoder *d, size_t cap) {
    joule_retro_feed *f = ctx;
    retro_live *g = malloc(sizeof *g);
    if (!g) return NULL;
    if (retro_live_init(g, d, f->db, 0, cap, &f->stats)) {
        free(g);
        return NULL;
    }
    return g;
}

static void end(void *seq) {
    retro_live_free(seq);
    free(seq);
}

static void append(void *seq, int32_t token) { retro_live_append(seq, token); }

static int before_step(void *seq, joule_decoder *d) {
    (void)d; /* the sequence's own decoder, held since begin */
    return retro_live_before_step(seq);
}

static int before_window(void *seq, joule_decoder *d, size_t from, size_t *w0) {
    (void)d;
    return retro_live_before_window(seq, from, w0);
}

void joule_retro_feeder(joule_sched_feeder *f, joule_retro_feed *feed) {
    *f = (joule_sched_feeder){.ctx = feed, .begin = begin, .end = end, .append = append, .before_step = before_step,
                              .before_window = before_window};
}
