/* Status messages, RNG, clocks, aligned memory and atomic file writes. */
#define _GNU_SOURCE
#include "joule/common.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdarg.h>
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
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
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

void *joule_alloc(size_t bytes) {
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (rounded < bytes) {
        joule_fail(JOULE_ERR_NOMEM, "allocation of %zu bytes overflows", bytes);
        return NULL;
    }
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (!p) {
        joule_fail(JOULE_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
        return NULL;
    }
    memset(p, 0, rounded ? rounded : 64);
    return p;
}

void joule_free(void *p) { free(p); }

int joule_atomic_open(joule_atomic_file *f, const char *path) {
    memset(f, 0, sizeof *f);
    f->fd = -1;
    if (asprintf(&f->tmp_path, "%s.tmp.%ld", path, (long)getpid()) < 0) {
        f->tmp_path = NULL;
        return joule_fail(JOULE_ERR_NOMEM, "%s: out of memory", path);
    }
    f->path = strdup(path);
    f->fd = open(f->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f->fd < 0 || !f->path) {
        int e = errno;
        free(f->tmp_path);
        free(f->path);
        f->tmp_path = f->path = NULL;
        return joule_fail(JOULE_ERR_IO, "%s: cannot create temporary file: %s", path, strerror(e));
    }
    return JOULE_OK;
}

int joule_atomic_write(joule_atomic_file *f, const void *data, size_t len) {
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(f->fd, p, len > (1u << 30) ? (1u << 30) : len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return joule_fail(JOULE_ERR_IO, "%s: write failed: %s", f->path, strerror(errno));
        }
        p += n;
        len -= (size_t)n;
    }
    return JOULE_OK;
}

static void fsync_parent_dir(const char *path) {
    char *copy = strdup(path);
    if (!copy) return;
    int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(copy);
}

int joule_atomic_commit(joule_atomic_file *f) {
    int rc = JOULE_OK;
    if (fsync(f->fd) != 0)
        rc = joule_fail(JOULE_ERR_IO, "%s: fsync failed: %s", f->path, strerror(errno));
    if (close(f->fd) != 0 && rc == JOULE_OK)
        rc = joule_fail(JOULE_ERR_IO, "%s: close failed: %s", f->path, strerror(errno));
    f->fd = -1;
    if (rc == JOULE_OK && rename(f->tmp_path, f->path) != 0)
        rc = joule_fail(JOULE_ERR_IO, "%s: rename failed: %s", f->path, strerror(errno));
    if (rc != JOULE_OK) unlink(f->tmp_path);
    else fsync_parent_dir(f->path);
    free(f->tmp_path);
    free(f->path);
    f->tmp_path = f->path = NULL;
    return rc;
}

void joule_atomic_abort(joule_atomic_file *f) {
    if (f->fd >= 0) close(f->fd);
    if (f->tmp_path) unlink(f->tmp_path);
    free(f->tmp_path);
    free(f->path);
    f->fd = -1;
    f->tmp_path = f->path = NULL;
}

int joule_write_file_atomic(const char *path, const void *data, size_t len) {
    joule_atomic_file f;
    int rc = joule_atomic_open(&f, path);
    if (rc) return rc;
    rc = joule_atomic_write(&f, data, len);
    if (rc) {
        joule_atomic_abort(&f);
        return rc;
    }
    return joule_atomic_commit(&f);
}

int joule_mmap_open(joule_mmap *m, const char *path) {
    m->data = NULL;
    m->size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return joule_fail(JOULE_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return joule_fail(JOULE_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return joule_fail(JOULE_ERR_IO, "%s: not a regular file", path);
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

int joule_read_text(const char *path, size_t max_bytes, char **out) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return joule_fail(JOULE_ERR_IO, "%s: %s", path, strerror(errno));
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
