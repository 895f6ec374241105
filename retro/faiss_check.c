/* retro/faiss_check.c — FAISS index files on joule's terms: a size check before FAISS
 * reads one, and writing one through a FILE* of ours (fsynced, errors reported once).
 *
 * FAISS 1.7.3's read_index leaks what it allocated when a file ends early (it throws
 * out of a half-built index), so a truncated index is better refused here. For the flat
 * indexes joule writes by default ("Flat": fourcc IxF2, IxFI or IxFl) the layout is fixed
 * (faiss/impl/index_write.cpp, write_index_header and WRITEXBVECTOR):
 *   fourcc u32 | d i32 | ntotal i64 | two i64 placeholders | is_trained u8 | metric i32 |
 *   [metric_arg f32 when metric > 1, signed] | n_words u64 | n_words * 4 bytes of codes
 * with codes = ntotal * d floats, so the whole size follows from d and ntotal. Other index
 * types have nested parts and are left to FAISS (tests/lsan.supp covers its leak). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <faiss/c_api/index_io_c.h>

#include "retro_internal.h"

#define FLAT_HEADER 37u /* fourcc through metric */

static uint32_t le32(const unsigned char *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t le64(const unsigned char *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }

int joule_faiss_precheck(const char *path, int d, uint64_t n) {
    unsigned char h[FLAT_HEADER + 12];
    struct stat st;
    FILE *f = fopen(path, "rb");
    if (!f) return joule_fail(JOULE_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t got = fread(h, 1, sizeof h, f);
    int ok_stat = fstat(fileno(f), &st) == 0;
    fclose(f);
    if (!ok_stat) return joule_fail(JOULE_ERR_IO, "%s: cannot stat", path);
    if (got < 4) return joule_fail(JOULE_ERR_FORMAT, "%s: %zu bytes, too short for a FAISS index", path, got);
    if (memcmp(h, "IxF2", 4) != 0 && memcmp(h, "IxFI", 4) != 0 && memcmp(h, "IxFl", 4) != 0) return JOULE_OK;
    if (got < FLAT_HEADER + 8) return joule_fail(JOULE_ERR_FORMAT, "%s: truncated flat index header", path);
    /* metric is FAISS's signed int: metric_arg follows only when it is > 1 as such */
    int32_t fd = (int32_t)le32(h + 4), metric = (int32_t)le32(h + 33);
    uint64_t ntotal = le64(h + 8);
    size_t words_at = FLAT_HEADER + (metric > 1 ? 4u : 0u);
    if (fd != d || ntotal != n)
        return joule_fail(JOULE_ERR_FORMAT, "%s: flat index of %llu vectors of dimension %d, expected %llu of %d", path,
                          (unsigned long long)ntotal, fd, (unsigned long long)n, d);
    if (got < words_at + 8) return joule_fail(JOULE_ERR_FORMAT, "%s: truncated flat index header", path);
    /* n <= 2^53 and d <= 65536 (the manifest's limits): no overflow below */
    uint64_t words = le64(h + words_at), want = n * (uint64_t)d;
    if (words != want || (uint64_t)st.st_size != words_at + 8 + 4 * want)
        return joule_fail(JOULE_ERR_FORMAT, "%s: %llu bytes, a flat index of %llu x %d floats needs %llu", path,
                          (unsigned long long)st.st_size, (unsigned long long)n, d,
                          (unsigned long long)(words_at + 8 + 4 * want));
    return JOULE_OK;
}

/* faiss_write_index_fname closes its own FILE* and, when that fails (a full disk), prints a
 * line without a newline to stderr; writing through our own stream keeps the one message. */
int joule_faiss_write(const FaissIndex *index, const char *path) {
    FILE *f = fopen(path, "wb");
    if (!f) return joule_fail(JOULE_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    int rc = JOULE_OK;
    if (faiss_write_index(index, f) != 0) rc = joule_faiss_fail(JOULE_ERR_IO, path);
    else if (fflush(f) != 0 || fsync(fileno(f)) != 0)
        rc = joule_fail(JOULE_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    if (fclose(f) != 0 && !rc) rc = joule_fail(JOULE_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    return rc;
}
