/* Token files (.bin + .idx): writing, validated memory-mapped reading, batches.
 * The formats are specified in include/joule/data.h. */
#define _GNU_SOURCE
#include "joule/data.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The index arrays are written and mapped as raw u64 arrays. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "token files are little-endian");

static const char TOK_MAGIC[8] = {'J', 'O', 'U', 'L', 'E', 'T', 'O', 'K'};
static const char IDX_MAGIC[8] = {'J', 'O', 'U', 'L', 'E', 'I', 'D', 'X'};

enum { WRITE_BUF_BYTES = 1 << 20 };

static void put_u32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get_u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static void tok_header(uint8_t h[JOULE_DATA_HEADER_BYTES], uint64_t n_tokens, uint64_t n_docs) {
    memset(h, 0, JOULE_DATA_HEADER_BYTES);
    memcpy(h, TOK_MAGIC, 8);
    put_u32(h + 8, JOULE_DATA_FORMAT_VERSION);
    put_u32(h + 12, 1);
    put_u64(h + 16, n_tokens);
    put_u64(h + 24, n_docs);
}

static void idx_header(uint8_t h[JOULE_DATA_HEADER_BYTES], uint64_t n_docs) {
    memset(h, 0, JOULE_DATA_HEADER_BYTES);
    memcpy(h, IDX_MAGIC, 8);
    put_u32(h + 8, JOULE_DATA_FORMAT_VERSION);
    put_u64(h + 16, n_docs);
}

/* "<stem>.bin" -> "<stem>.idx" (malloc'd). */
static int idx_path_for(const char *bin_path, char **idx_path) {
    *idx_path = NULL;
    size_t n = strlen(bin_path);
    if (n < 4 || strcmp(bin_path + n - 4, ".bin") != 0)
        return joule_fail(JOULE_ERR_ARG, "%s: token file name must end in .bin", bin_path);
    char *p = strdup(bin_path);
    if (!p) return joule_fail(JOULE_ERR_NOMEM, "%s: out of memory", bin_path);
    memcpy(p + n - 4, ".idx", 4);
    *idx_path = p;
    return JOULE_OK;
}

/* ======================================================================
 * Writer
 * ==================================================================== */

typedef struct {
    uint64_t *v;
    size_t n, cap;
} u64vec;

static int u64vec_push(u64vec *a, uint64_t x) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 1024;
        uint64_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) return joule_fail(JOULE_ERR_NOMEM, "out of memory for the document index");
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return JOULE_OK;
}

struct joule_token_writer {
    joule_atomic_file bin;
    char *idx_path;
    uint8_t *buf;       /* tokens not yet written to the file */
    size_t buf_len;
    uint64_t n_tokens;  /* including buffered ones */
    u64vec starts;      /* token offset of each document */
    u64vec ids;
    int in_doc;
};

static void writer_free(joule_token_writer *w) {
    free(w->idx_path);
    free(w->buf);
    free(w->starts.v);
    free(w->ids.v);
    free(w);
}

int joule_token_writer_open(joule_token_writer **out, const char *bin_path) {
    *out = NULL;
    joule_token_writer *w = calloc(1, sizeof *w);
    if (!w) return joule_fail(JOULE_ERR_NOMEM, "%s: out of memory", bin_path);
    w->bin.fd = -1;
    int rc = idx_path_for(bin_path, &w->idx_path);
    if (!rc) {
        w->buf = malloc(WRITE_BUF_BYTES);
        rc = w->buf ? joule_atomic_open(&w->bin, bin_path)
                    : joule_fail(JOULE_ERR_NOMEM, "%s: out of memory", bin_path);
    }
    if (rc) {
        writer_free(w);
        return rc;
    }
    /* Placeholder header; the real one is written at commit when the counts are known. */
    uint8_t h[JOULE_DATA_HEADER_BYTES];
    tok_header(h, 0, 0);
    rc = joule_atomic_write(&w->bin, h, sizeof h);
    if (rc) {
        joule_token_writer_abort(w);
        return rc;
    }
    *out = w;
    return JOULE_OK;
}

static int writer_flush(joule_token_writer *w) {
    int rc = joule_atomic_write(&w->bin, w->buf, w->buf_len);
    w->buf_len = 0;
    return rc;
}

static int writer_put(joule_token_writer *w, const uint8_t *bytes, size_t len) {
    if (w->buf_len + len > WRITE_BUF_BYTES) {
        int rc = writer_flush(w);
        if (rc) return rc;
        if (len > WRITE_BUF_BYTES) {
            w->n_tokens += len;
            return joule_atomic_write(&w->bin, bytes, len);
        }
    }
    memcpy(w->buf + w->buf_len, bytes, len);
    w->buf_len += len;
    w->n_tokens += len;
    return JOULE_OK;
}

int joule_token_writer_begin_doc(joule_token_writer *w, uint64_t doc_id) {
    if (w->in_doc) return joule_fail(JOULE_ERR_ARG, "%s: document %llu begun inside another",
                                     w->bin.path, (unsigned long long)doc_id);
    int rc = u64vec_push(&w->starts, w->n_tokens);
    if (!rc) rc = u64vec_push(&w->ids, doc_id);
    if (rc) return rc;
    w->in_doc = 1;
    return JOULE_OK;
}

int joule_token_writer_append(joule_token_writer *w, const uint8_t *bytes, size_t len) {
    if (!w->in_doc) return joule_fail(JOULE_ERR_ARG, "%s: append outside a document", w->bin.path);
    return writer_put(w, bytes, len);
}

int joule_token_writer_end_doc(joule_token_writer *w) {
    if (!w->in_doc) return joule_fail(JOULE_ERR_ARG, "%s: end of a document never begun", w->bin.path);
    const uint8_t eod = JOULE_EOD_TOKEN;
    w->in_doc = 0;
    return writer_put(w, &eod, 1);
}

uint64_t joule_token_writer_tokens(const joule_token_writer *w) { return w->n_tokens; }
uint64_t joule_token_writer_docs(const joule_token_writer *w) { return w->starts.n; }

/* Copy tokens [start, end) of from's file (flushed) to `to`, without the final EOD. */
static int copy_doc_body(joule_token_writer *from, uint64_t start, uint64_t end, joule_token_writer *to) {
    int fd = open(from->bin.tmp_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return joule_fail(JOULE_ERR_IO, "%s: cannot reopen: %s", from->bin.tmp_path, strerror(errno));
    uint8_t *chunk = malloc(WRITE_BUF_BYTES);
    int rc = chunk ? JOULE_OK : joule_fail(JOULE_ERR_NOMEM, "out of memory");
    uint64_t pos = start, body_end = end - 1;
    while (!rc && pos < body_end) {
        size_t want = body_end - pos < WRITE_BUF_BYTES ? (size_t)(body_end - pos) : WRITE_BUF_BYTES;
        ssize_t got = pread(fd, chunk, want, (off_t)(JOULE_DATA_HEADER_BYTES + pos));
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            rc = joule_fail(JOULE_ERR_IO, "%s: read back failed", from->bin.tmp_path);
            break;
        }
        rc = joule_token_writer_append(to, chunk, (size_t)got);
        pos += (uint64_t)got;
    }
    free(chunk);
    close(fd);
    return rc;
}

int joule_token_writer_move_last_doc(joule_token_writer *from, joule_token_writer *to) {
    if (from == to) return joule_fail(JOULE_ERR_ARG, "%s: cannot move a document to its own file", from->bin.path);
    if (from->in_doc || to->in_doc || from->starts.n == 0)
        return joule_fail(JOULE_ERR_ARG, "%s: no complete document to move", from->bin.path);
    uint64_t start = from->starts.v[from->starts.n - 1];
    uint64_t id = from->ids.v[from->ids.n - 1];
    int rc = writer_flush(from);
    if (!rc) rc = joule_token_writer_begin_doc(to, id);
    if (!rc) rc = copy_doc_body(from, start, from->n_tokens, to);
    if (!rc) rc = joule_token_writer_end_doc(to);
    if (rc) return rc;
    off_t keep = (off_t)(JOULE_DATA_HEADER_BYTES + start);
    if (ftruncate(from->bin.fd, keep) != 0 || lseek(from->bin.fd, keep, SEEK_SET) != keep)
        return joule_fail(JOULE_ERR_IO, "%s: truncate failed: %s", from->bin.path, strerror(errno));
    from->n_tokens = start;
    from->starts.n--;
    from->ids.n--;
    return JOULE_OK;
}

static int write_idx(joule_token_writer *w) {
    joule_atomic_file f;
    int rc = joule_atomic_open(&f, w->idx_path);
    if (rc) return rc;
    uint64_t n_docs = w->starts.n;
    uint8_t h[JOULE_DATA_HEADER_BYTES];
    idx_header(h, n_docs);
    rc = joule_atomic_write(&f, h, sizeof h);
    if (!rc) rc = joule_atomic_write(&f, w->starts.v, n_docs * sizeof(uint64_t));
    if (!rc) rc = joule_atomic_write(&f, &w->n_tokens, sizeof(uint64_t));
    if (!rc) rc = joule_atomic_write(&f, w->ids.v, n_docs * sizeof(uint64_t));
    if (rc) {
        joule_atomic_abort(&f);
        return rc;
    }
    return joule_atomic_commit(&f);
}

int joule_token_writer_commit(joule_token_writer *w) {
    if (w->in_doc) {
        int rc = joule_fail(JOULE_ERR_ARG, "%s: commit inside an unfinished document", w->bin.path);
        joule_token_writer_abort(w);
        return rc;
    }
    int rc = writer_flush(w);
    if (!rc) {
        uint8_t h[JOULE_DATA_HEADER_BYTES];
        tok_header(h, w->n_tokens, w->starts.n);
        if (pwrite(w->bin.fd, h, sizeof h, 0) != (ssize_t)sizeof h)
            rc = joule_fail(JOULE_ERR_IO, "%s: header write failed: %s", w->bin.path, strerror(errno));
    }
    if (rc) {
        joule_token_writer_abort(w);
        return rc;
    }
    rc = joule_atomic_commit(&w->bin);
    if (!rc) rc = write_idx(w);
    writer_free(w);
    return rc;
}

void joule_token_writer_abort(joule_token_writer *w) {
    if (!w) return;
    joule_atomic_abort(&w->bin);
    writer_free(w);
}

/* ======================================================================
 * Reader
 * ==================================================================== */

static int check_bin(joule_tokens *t, const char *path) {
    const uint8_t *p = t->bin_map.data;
    size_t size = t->bin_map.size;
    if (size < JOULE_DATA_HEADER_BYTES)
        return joule_fail(JOULE_ERR_FORMAT, "%s: too small for a token file header (%zu bytes)", path, size);
    if (memcmp(p, TOK_MAGIC, 8) != 0)
        return joule_fail(JOULE_ERR_FORMAT, "%s: not a joule token file (bad magic)", path);
    uint32_t version = get_u32(p + 8);
    if (version != JOULE_DATA_FORMAT_VERSION)
        return joule_fail(JOULE_ERR_FORMAT, "%s: unsupported token file version %u (expected %u)", path,
                          version, JOULE_DATA_FORMAT_VERSION);
    uint32_t width = get_u32(p + 12);
    if (width != 1)
        return joule_fail(JOULE_ERR_FORMAT, "%s: %u bytes per token, only 1 is supported", path, width);
    t->n_tokens = get_u64(p + 16);
    t->n_docs = get_u64(p + 24);
    if (t->n_tokens != size - JOULE_DATA_HEADER_BYTES)
        return joule_fail(JOULE_ERR_FORMAT, "%s: header says %llu tokens but the file holds %zu (truncated?)",
                          path, (unsigned long long)t->n_tokens, size - JOULE_DATA_HEADER_BYTES);
    t->tok = p + JOULE_DATA_HEADER_BYTES;
    return JOULE_OK;
}

static int check_idx_header(joule_tokens *t, const char *idx_path) {
    const uint8_t *p = t->idx_map.data;
    size_t size = t->idx_map.size;
    if (size < JOULE_DATA_HEADER_BYTES)
        return joule_fail(JOULE_ERR_FORMAT, "%s: too small for a document index header (%zu bytes)",
                          idx_path, size);
    if (memcmp(p, IDX_MAGIC, 8) != 0)
        return joule_fail(JOULE_ERR_FORMAT, "%s: not a joule document index (bad magic)", idx_path);
    uint32_t version = get_u32(p + 8);
    if (version != JOULE_DATA_FORMAT_VERSION)
        return joule_fail(JOULE_ERR_FORMAT, "%s: unsupported document index version %u (expected %u)",
                          idx_path, version, JOULE_DATA_FORMAT_VERSION);
    uint64_t n_docs = get_u64(p + 16);
    if (n_docs != t->n_docs)
        return joule_fail(JOULE_ERR_FORMAT, "%s: %llu documents but %s says %llu", idx_path,
                          (unsigned long long)n_docs, t->path, (unsigned long long)t->n_docs);
    /* Bound n_docs before multiplying so a hostile count cannot overflow the size. */
    uint64_t body = size - JOULE_DATA_HEADER_BYTES;
    if (n_docs > body / 16 || body != 16 * n_docs + 8)
        return joule_fail(JOULE_ERR_FORMAT, "%s: size %zu does not match %llu documents (truncated?)",
                          idx_path, size, (unsigned long long)n_docs);
    t->doc_offsets = (const uint64_t *)(p + JOULE_DATA_HEADER_BYTES);
    t->doc_ids = t->doc_offsets + n_docs + 1;
    return JOULE_OK;
}

static int check_idx_contents(const joule_tokens *t, const char *idx_path) {
    const uint64_t *off = t->doc_offsets;
    if (off[0] != 0)
        return joule_fail(JOULE_ERR_FORMAT, "%s: first document offset is %llu, not 0", idx_path,
                          (unsigned long long)off[0]);
    if (off[t->n_docs] != t->n_tokens)
        return joule_fail(JOULE_ERR_FORMAT, "%s: last document offset %llu != %llu tokens in %s", idx_path,
                          (unsigned long long)off[t->n_docs], (unsigned long long)t->n_tokens, t->path);
    for (uint64_t i = 0; i < t->n_docs; i++) {
        if (off[i + 1] <= off[i] || off[i + 1] > t->n_tokens)
            return joule_fail(JOULE_ERR_FORMAT, "%s: document offsets not increasing at document %llu",
                              idx_path, (unsigned long long)i);
        /* Catches a .bin paired with another corpus's .idx of the same shape. */
        if (t->tok[off[i + 1] - 1] != JOULE_EOD_TOKEN)
            return joule_fail(JOULE_ERR_FORMAT, "%s: document %llu does not end with the EOD token in %s",
                              idx_path, (unsigned long long)i, t->path);
        if (i > 0 && t->doc_ids[i] <= t->doc_ids[i - 1])
            return joule_fail(JOULE_ERR_FORMAT, "%s: document ids not increasing at document %llu", idx_path,
                              (unsigned long long)i);
    }
    return JOULE_OK;
}

int joule_tokens_open(joule_tokens *t, const char *bin_path) {
    memset(t, 0, sizeof *t);
    char *idx_path;
    int rc = idx_path_for(bin_path, &idx_path);
    if (rc) return rc;
    t->path = strdup(bin_path);
    if (!t->path) rc = joule_fail(JOULE_ERR_NOMEM, "%s: out of memory", bin_path);
    if (!rc) rc = joule_mmap_open(&t->bin_map, bin_path);
    if (!rc) rc = check_bin(t, bin_path);
    if (!rc) rc = joule_mmap_open(&t->idx_map, idx_path);
    if (!rc) rc = check_idx_header(t, idx_path);
    if (!rc) rc = check_idx_contents(t, idx_path);
    free(idx_path);
    if (rc) joule_tokens_close(t);
    return rc;
}

void joule_tokens_close(joule_tokens *t) {
    joule_mmap_close(&t->bin_map);
    joule_mmap_close(&t->idx_map);
    free(t->path);
    memset(t, 0, sizeof *t);
}

uint64_t joule_tokens_doc_at(const joule_tokens *t, uint64_t pos) {
    if (pos >= t->n_tokens) return UINT64_MAX;
    /* Invariant: doc_offsets[lo] <= pos < doc_offsets[hi]. */
    uint64_t lo = 0, hi = t->n_docs;
    while (hi - lo > 1) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (t->doc_offsets[mid] <= pos) lo = mid;
        else hi = mid;
    }
    return lo;
}

/* ======================================================================
 * Batches
 * ==================================================================== */

static void copy_window(const uint8_t *w, int T, int32_t *inputs, int32_t *targets) {
    for (int i = 0; i < T; i++) {
        inputs[i] = w[i];
        targets[i] = w[i + 1];
    }
}

int joule_batch_sample(const joule_tokens *t, uint64_t seed, uint64_t step, int micro, int B, int T,
                       int32_t *inputs, int32_t *targets) {
    return joule_batch_sample_aligned(t, seed, step, micro, B, T, 1, inputs, targets, NULL);
}

int joule_batch_sample_aligned(const joule_tokens *t, uint64_t seed, uint64_t step, int micro, int B, int T,
                               int align, int32_t *inputs, int32_t *targets, uint64_t *starts) {
    if (align < 1) return joule_fail(JOULE_ERR_ARG, "window alignment %d must be >= 1", align);
    if (B < 1 || T < 1)
        return joule_fail(JOULE_ERR_ARG, "batch size %d and context %d must be positive", B, T);
    if (t->n_tokens < (uint64_t)T + 1)
        return joule_fail(JOULE_ERR_ARG, "%s: %llu tokens, fewer than context + 1 = %d", t->path,
                          (unsigned long long)t->n_tokens, T + 1);
    joule_rng rng;
    joule_rng_seed(&rng, joule_mix64(joule_mix64(seed, step), (uint64_t)(int64_t)micro));
    uint64_t n_starts = (t->n_tokens - (uint64_t)T - 1) / (uint64_t)align + 1; /* starts 0 .. n_tokens - T - 1 */
    for (int b = 0; b < B; b++) {
        uint64_t start = joule_rng_below(&rng, n_starts) * (uint64_t)align;
        if (starts) starts[b] = start;
        if (inputs) copy_window(t->tok + start, T, inputs + (size_t)b * T, targets + (size_t)b * T);
    }
    return JOULE_OK;
}

int joule_batch_windows(const joule_tokens *t, const uint64_t *starts, int B, int T, int32_t *inputs,
                        int32_t *targets) {
    for (int b = 0; b < B; b++) {
        if (T < 1 || starts[b] >= t->n_tokens || t->n_tokens - starts[b] < (uint64_t)T + 1)
            return joule_fail(JOULE_ERR_ARG, "%s: window at %llu of %d tokens runs past the end (%llu tokens)",
                              t->path, (unsigned long long)starts[b], T, (unsigned long long)t->n_tokens);
        copy_window(t->tok + starts[b], T, inputs + (size_t)b * T, targets + (size_t)b * T);
    }
    return JOULE_OK;
}

uint64_t joule_eval_windows(const joule_tokens *t, int T) {
    if (T < 1 || t->n_tokens == 0) return 0;
    return (t->n_tokens - 1) / (uint64_t)T;
}

void joule_eval_window(const joule_tokens *t, int T, uint64_t w, int32_t *inputs, int32_t *targets) {
    copy_window(t->tok + w * (uint64_t)T, T, inputs, targets);
}
