/* Status messages, RNG, clocks, aligned memory, memory maps and whole-file reads.
 * Atomic writes are core/atomic.c; escaping untrusted text is core/escape.c. */
#define _GNU_SOURCE
#include "joule/common.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static _Thread_local char g_err[1024];

const char *joule_last_error(void) { return g_err; }

int joule_fail(int code, const char *fmt, ...) {
    /* formatted apart first: an argument may be joule_last_error() itself */
    char raw[sizeof g_err];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    joule_sanitize_line(g_err, sizeof g_err, raw);
    return code;
}

int joule_exit_code(int status) {
    if (status == JOULE_OK) return 0;
    if (status == JOULE_ERR_FORMAT || status == JOULE_ERR_ARG) return 2;
    return 1;
}

double joule_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

uint64_t joule_mix64(uint64_t a, uint64_t b) {
    uint64_t z = a + 0x9E3779B97F4A7C15ull * (b + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void joule_rng_seed(joule_rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t joule_rng_u64(joule_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float joule_rng_float(joule_rng *r) { return (float)(joule_rng_u64(r) >> 40) * (1.0f / 16777216.0f); }

uint64_t joule_rng_below(joule_rng *r, uint64_t n) {
    /* Rejection sampling keeps the result unbiased for any n. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = joule_rng_u64(r);
    while (x >= limit);
    return x % n;
}

float joule_rng_normal(joule_rng *r) {
    double u1 = ((double)(joule_rng_u64(r) >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    double u2 = (double)(joule_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

double joule_float_for_json(float f) {
    char buf[32];
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f) break;
    }
    return strtod(buf, NULL);
}

/* Arenas of weights, caches and moments go on 2 MiB pages where the kernel has them
 * (transparent huge pages in madvise mode): a decode step streams every weight, and with
 * 4 KiB pages that is a TLB miss every 4 KiB (docs/BENCH.md). */
#define JOULE_HUGE_PAGE ((size_t)2 << 20)
#define JOULE_HUGE_MIN ((size_t)4 << 20)

void *joule_alloc(size_t bytes) {
    const bool huge = bytes >= JOULE_HUGE_MIN;
    const size_t align = huge ? JOULE_HUGE_PAGE : 64;
    const size_t size = bytes ? (bytes + align - 1) & ~(align - 1) : 64;
    if (size < bytes) {
        joule_fail(JOULE_ERR_NOMEM, "allocation of %zu bytes overflows", bytes);
        return NULL;
    }
    void *p = aligned_alloc(align, size);
    if (!p) {
        joule_fail(JOULE_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
        return NULL;
    }
    if (huge) (void)madvise(p, size, MADV_HUGEPAGE); /* advice: refused or unsupported is fine */
    memset(p, 0, size);
    return p;
}

void joule_free(void *p) { free(p); }

int joule_mmap_open(joule_mmap *m, const char *path) {
    m->data = NULL;
    m->size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) /* a missing input is the caller's mistake, as in open_input */
        return joule_fail(errno == ENOENT || errno == ENOTDIR ? JOULE_ERR_ARG : JOULE_ERR_IO, "%s: cannot open: %s", path,
                          strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return joule_fail(JOULE_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return joule_fail(JOULE_ERR_ARG, "%s: %s", path, S_ISDIR(st.st_mode) ? "is a folder, not a file" : "not a regular file");
    }
    m->size = (size_t)st.st_size;
    if (m->size == 0) {
        close(fd);
        return JOULE_OK; /* callers check sizes; an empty map has data == NULL */
    }
    void *p = mmap(NULL, m->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        m->size = 0;
        return joule_fail(JOULE_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
    }
    m->data = p;
    return JOULE_OK;
}

void joule_mmap_close(joule_mmap *m) {
    if (m->data) munmap(m->data, m->size);
    m->data = NULL;
    m->size = 0;
}

/* A named input that is missing or is not a file is the caller's mistake (exit 2); other
 * failures to read it are I/O errors. */
static int open_input(const char *path, FILE **out) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return joule_fail(e == ENOENT || e == ENOTDIR ? JOULE_ERR_ARG : JOULE_ERR_IO, "%s: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        bool dir = S_ISDIR(st.st_mode);
        close(fd);
        return joule_fail(JOULE_ERR_ARG, "%s: %s", path, dir ? "is a folder, not a file" : "not a regular file");
    }
    *out = fdopen(fd, "rb");
    if (!*out) {
        close(fd);
        return joule_fail(JOULE_ERR_NOMEM, "%s: out of memory", path);
    }
    return JOULE_OK;
}

int joule_read_text(const char *path, size_t max_bytes, char **out) {
    *out = NULL;
    FILE *f;
    int rc = open_input(path, &f);
    if (rc) return rc;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            fclose(f);
            return joule_fail(JOULE_ERR_NOMEM, "%s: out of memory reading", path);
        }
        n += fread(buf + n, 1, cap - n - 1, f);
        if (n + 1 < cap) break;
        if (cap > max_bytes) {
            free(buf);
            fclose(f);
            return joule_fail(JOULE_ERR_FORMAT, "%s: larger than %zu bytes", path, max_bytes);
        }
        char *nb = realloc(buf, cap * 2);
        if (!nb) free(buf);
        buf = nb;
        cap *= 2;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return joule_fail(JOULE_ERR_IO, "%s: read error", path);
    }
    buf[n] = '\0';
    if (strlen(buf) != n) {
        free(buf);
        return joule_fail(JOULE_ERR_FORMAT, "%s: contains NUL bytes, not text", path);
    }
    *out = buf;
    return JOULE_OK;
}

int joule_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double joule_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, joule_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
