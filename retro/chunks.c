/* retro/chunks.c — cutting token files into RETRO entries (chunk + continuation + document
 * id) and the memory-mapped chunk store chunks.bin (docs/FORMATS.md). */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "joule/retro_db.h"
#include "retro_internal.h"

static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

void joule_chunk_store_header(uint8_t *hdr, int m, uint64_t n) {
    memset(hdr, 0, JOULE_CHUNKS_HEADER);
    memcpy(hdr, JOULE_CHUNKS_MAGIC, 8);
    uint32_t v = JOULE_CHUNKS_VERSION, mm = (uint32_t)m, rec = (uint32_t)joule_chunk_record_bytes(m);
    memcpy(hdr + 8, &v, 4);
    memcpy(hdr + 12, &mm, 4);
    memcpy(hdr + 16, &n, 8);
    memcpy(hdr + 24, &rec, 4);
}

int joule_chunk_store_open(joule_chunk_store *s, const char *path, int m, uint64_t n) {
    memset(s, 0, sizeof *s);
    int rc = joule_mmap_open(&s->map, path);
    if (rc) return rc;
    const uint8_t *p = s->map.data;
    const char *why = NULL;
    size_t rec = joule_chunk_record_bytes(m);
    if (s->map.size < JOULE_CHUNKS_HEADER) why = "truncated header";
    else if (memcmp(p, JOULE_CHUNKS_MAGIC, 8) != 0) why = "bad magic (not a joule chunk store)";
    else if (rd32(p + 8) != JOULE_CHUNKS_VERSION) why = "unsupported format version";
    else if (rd32(p + 12) != (uint32_t)m) why = "chunk size differs from the manifest's";
    else if (rd64(p + 16) != n) why = "entry count differs from the manifest's";
    else if (rd32(p + 24) != rec) why = "record size does not match the chunk size";
    else if (n > (SIZE_MAX - JOULE_CHUNKS_HEADER) / rec || s->map.size != JOULE_CHUNKS_HEADER + n * rec)
        why = "file size does not match the entry count (truncated?)";
    if (why) {
        joule_mmap_close(&s->map);
        return joule_fail(JOULE_ERR_FORMAT, "%s: %s", path, why);
    }
    s->m = m;
    s->n = n;
    s->rec = rec;
    s->base = p + JOULE_CHUNKS_HEADER;
    return JOULE_OK;
}

void joule_chunk_store_close(joule_chunk_store *s) {
    joule_mmap_close(&s->map);
    memset(s, 0, sizeof *s);
}

int joule_chunk_store_check(const joule_chunk_store *s, const char *path) {
    size_t used = 16 + 2 * (size_t)s->m;
    for (uint64_t i = 0; i < s->n; i++) {
        const joule_chunk_record *r = joule_chunk_store_get(s, i);
        if (r->chunk_len < 1 || r->chunk_len > (uint32_t)s->m || r->cont_len > (uint32_t)s->m ||
            (r->cont_len > 0 && r->chunk_len != (uint32_t)s->m))
            return joule_fail(JOULE_ERR_FORMAT, "%s: entry %llu has invalid lengths (%u, %u)", path,
                              (unsigned long long)i, r->chunk_len, r->cont_len);
        const uint8_t *t = r->tokens;
        for (uint32_t j = r->chunk_len; j < (uint32_t)s->m; j++)
            if (t[j]) return joule_fail(JOULE_ERR_FORMAT, "%s: entry %llu: padding is not zero", path, (unsigned long long)i);
        for (uint32_t j = r->cont_len; j < (uint32_t)s->m; j++)
            if (t[s->m + j])
                return joule_fail(JOULE_ERR_FORMAT, "%s: entry %llu: padding is not zero", path, (unsigned long long)i);
        for (size_t j = used; j < s->rec; j++)
            if (((const uint8_t *)r)[j])
                return joule_fail(JOULE_ERR_FORMAT, "%s: entry %llu: padding is not zero", path, (unsigned long long)i);
        if (i > 0 && joule_chunk_store_get(s, i - 1)->doc_id == r->doc_id &&
            joule_chunk_store_get(s, i - 1)->cont_len == 0)
            return joule_fail(JOULE_ERR_FORMAT, "%s: entry %llu continues a document that had ended", path,
                              (unsigned long long)i);
    }
    return JOULE_OK;
}

void joule_chunk_record_tokens(const joule_chunk_record *r, int m, int32_t *out) {
    for (int j = 0; j < m; j++) out[j] = (uint32_t)j < r->chunk_len ? r->tokens[j] : JOULE_DB_PAD;
    for (int j = 0; j < m; j++) out[m + j] = (uint32_t)j < r->cont_len ? r->tokens[m + j] : JOULE_DB_PAD;
}

/* ---- chunker ---- */

int joule_chunker_open(joule_chunker *c, const char *const *paths, int n, int m) {
    memset(c, 0, sizeof *c);
    if (n < 1) return joule_fail(JOULE_ERR_ARG, "no token files to chunk");
    if (m < 1 || m > JOULE_DB_MAX_CHUNK) return joule_fail(JOULE_ERR_ARG, "chunk size %d not in [1, %d]", m, JOULE_DB_MAX_CHUNK);
    c->files = calloc((size_t)n, sizeof *c->files);
    if (!c->files) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    c->m = m;
    for (int i = 0; i < n; i++) {
        int rc = joule_tokens_open(&c->files[i], paths[i]);
        if (rc) {
            c->n_files = i;
            joule_chunker_close(c);
            return rc;
        }
    }
    c->n_files = n;
    return JOULE_OK;
}

void joule_chunker_close(joule_chunker *c) {
    for (int i = 0; i < c->n_files; i++) joule_tokens_close(&c->files[i]);
    free(c->files);
    memset(c, 0, sizeof *c);
}

uint64_t joule_chunker_count(const joule_chunker *c) {
    uint64_t n = 0;
    for (int i = 0; i < c->n_files; i++) {
        const joule_tokens *t = &c->files[i];
        for (uint64_t d = 0; d < t->n_docs; d++) {
            uint64_t len = t->doc_offsets[d + 1] - t->doc_offsets[d];
            n += (len + (uint64_t)c->m - 1) / (uint64_t)c->m;
        }
    }
    return n;
}

/* Moves to the next chunk start; false at the end of the last file. */
static bool chunker_settle(joule_chunker *c) {
    while (c->f < c->n_files) {
        const joule_tokens *t = &c->files[c->f];
        if (c->d < t->n_docs) {
            if (c->pos < t->doc_offsets[c->d]) c->pos = t->doc_offsets[c->d];
            if (c->pos < t->doc_offsets[c->d + 1]) return true;
            c->d++;
            continue;
        }
        c->f++;
        c->d = 0;
        c->pos = 0;
    }
    return false;
}

bool joule_chunker_next(joule_chunker *c, joule_chunk_record *r) {
    if (!chunker_settle(c)) return false;
    const joule_tokens *t = &c->files[c->f];
    const uint64_t m = (uint64_t)c->m, end = t->doc_offsets[c->d + 1];
    uint64_t clen = end - c->pos < m ? end - c->pos : m;
    uint64_t rest = end - c->pos - clen;
    uint64_t nlen = rest < m ? rest : m;
    memset(r, 0, joule_chunk_record_bytes(c->m));
    r->doc_id = t->doc_ids[c->d];
    r->chunk_len = (uint32_t)clen;
    r->cont_len = (uint32_t)nlen;
    memcpy(r->tokens, t->tok + c->pos, clen);
    memcpy(r->tokens + m, t->tok + c->pos + clen, nlen);
    c->pos += clen;
    return true;
}

void joule_chunker_skip(joule_chunker *c, uint64_t n) {
    const uint64_t m = (uint64_t)c->m;
    while (n > 0 && chunker_settle(c)) {
        const joule_tokens *t = &c->files[c->f];
        uint64_t end = t->doc_offsets[c->d + 1];
        uint64_t left = (end - c->pos + m - 1) / m; /* chunks left in this document */
        if (left <= n) {
            n -= left;
            c->pos = end;
        } else {
            c->pos += n * m;
            n = 0;
        }
    }
}

int joule_file_crc32(const char *path, uint32_t *crc, uint64_t *size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return joule_fail(JOULE_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    enum { BUF = 1 << 20 };
    unsigned char *buf = malloc(BUF);
    if (!buf) {
        close(fd);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    }
    uLong c = crc32(0L, Z_NULL, 0);
    uint64_t total = 0;
    for (;;) {
        ssize_t got = read(fd, buf, BUF);
        if (got < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            free(buf);
            close(fd);
            return joule_fail(JOULE_ERR_IO, "%s: read failed: %s", path, strerror(e));
        }
        if (got == 0) break;
        c = crc32(c, buf, (uInt)got);
        total += (uint64_t)got;
    }
    free(buf);
    close(fd);
    *crc = (uint32_t)c;
    if (size) *size = total;
    return JOULE_OK;
}
