/* Live retrieval state of one generated sequence (retro_live.c): the history on its chunk
 * grid, and the searches that hand the decoder each completed chunk's neighbours. Shared by
 * joule_retro_generate and the scheduler's feeder (joule_retro_feeder), so both decode a
 * sequence the same way. Internal to retro/. */
#ifndef JOULE_RETRO_LIVE_H
#define JOULE_RETRO_LIVE_H

#include "joule/retro.h"
#include "joule/retro_db.h"

typedef struct {
    joule_decoder *d;
    joule_retro_db *db; /* NULL: retrieval off */
    int m, k;
    int32_t *hist;   /* every token so far [cap] */
    uint8_t *ends;   /* per token: 2 when it ends a retrieved chunk, 1 another chunk end */
    size_t n, cap;   /* tokens in hist, room */
    size_t w0;       /* history index of cache position 0 */
    joule_retro_grid grid;
    int32_t *nbr;    /* [k*2m] */
    int64_t *ids;    /* [k] */
    joule_retro_gen_stats *stats; /* retrievals and their time accumulate here */
} retro_live;

/* phase: tokens of the first chunk before the stream (joule_retro_generate). Frees what it
 * allocated on failure; retro_live_free otherwise. */
int retro_live_init(retro_live *g, joule_decoder *d, joule_retro_db *db, int phase, size_t cap,
                    joule_retro_gen_stats *stats);
void retro_live_free(retro_live *g);
/* Appends a token (the caller keeps n < cap). */
void retro_live_append(retro_live *g, int32_t tok);
/* Before the last appended token is fed at d->pos: searches the chunk it ends, if retrieved. */
int retro_live_before_step(retro_live *g);
/* After a reset, before hist[*w0 ..) is prefilled: the window starts at the first chunk
 * end at or after `from` (as training windows do), and every chunk its rows read is
 * searched and handed first. */
int retro_live_before_window(retro_live *g, size_t from, size_t *w0);

#endif
