/* joule/common.h — status codes, error messages, RNG, timing shared by every module.
 *
 * Error convention (as in the FAISS C API): functions return a joule_status; on
 * failure the one-line message is available from joule_last_error() on the same
 * thread until the next failing call. Messages name the file and the problem.
 */
#ifndef JOULE_COMMON_H
#define JOULE_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define JOULE_VERSION_STRING "0.1.0"

typedef enum {
    JOULE_OK = 0,
    JOULE_ERR_IO = 1,      /* open/read/write/fsync/rename/mmap failed */
    JOULE_ERR_FORMAT = 2,  /* a file exists but its contents are invalid */
    JOULE_ERR_ARG = 3,     /* bad argument or configuration from the caller */
    JOULE_ERR_NOMEM = 4,   /* allocation failed */
    JOULE_ERR_RUNTIME = 5  /* anything else (numerical failure, internal) */
} joule_status;

/* Last error message of this thread; never NULL ("" when none). Owned by joule. */
const char *joule_last_error(void);

/* Set this thread's error message (printf-style) and return `code`.
 * Used by every module: `return joule_fail(JOULE_ERR_FORMAT, "%s: bad magic", path);`
 * The stored message is always one line of valid UTF-8: control bytes, escape sequences
 * and invalid bytes that reach it are shown escaped (joule_sanitize_line). Strings read
 * from files should still go through joule_q, which also bounds their length. */
int joule_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- untrusted text in messages ----
 * Escapes: \n \r \t, \xNN for other control bytes (ESC included) and for bytes that are not
 * UTF-8, \u00NN for C1 controls, \u2028-style for line separators and bidirectional
 * overrides. Output longer than the buffer ends in "...". */

/* s with those escapes and every backslash doubled, into buf (cap bytes). Returns buf. */
char *joule_escape(char *buf, size_t cap, const char *s);
/* The same without doubling backslashes, for a message already built (idempotent). */
char *joule_sanitize_line(char *buf, size_t cap, const char *s);
/* joule_escape into one of 8 rotating thread-local buffers, for a printf argument:
 * `joule_fail(JOULE_ERR_FORMAT, "%s: tensor '%s' ...", path, joule_q(name))`. Shows at
 * most JOULE_Q_MAX bytes of output; valid until 8 more calls on this thread. */
#define JOULE_Q_MAX 160
const char *joule_q(const char *s);

/* Exit code a CLI should use for a status: 0 ok, 2 bad usage or bad input, 1 otherwise. */
int joule_exit_code(int status);

/* Monotonic wall clock in seconds. */
double joule_now(void);

/* qsort comparison of doubles, ascending. */
int joule_cmp_double(const void *a, const void *b);
/* Median of v[0..n) (n >= 1; the mean of the two middle values when n is even); sorts v in
 * place, so v[0] is then the smallest. For repeated timings. */
double joule_median(double *v, int n);

/* Deterministic RNG (xoshiro256** seeded through splitmix64). Plain value type: copy to fork. */
typedef struct { uint64_t s[4]; } joule_rng;
void joule_rng_seed(joule_rng *r, uint64_t seed);
uint64_t joule_rng_u64(joule_rng *r);
/* Uniform in [0, 1) with 24 random bits. */
float joule_rng_float(joule_rng *r);
/* Uniform integer in [0, n); n > 0. */
uint64_t joule_rng_below(joule_rng *r, uint64_t n);
/* Standard normal (Box–Muller, double internally). */
float joule_rng_normal(joule_rng *r);
/* Stateless mixing of two 64-bit values: used to derive per-step streams from (seed, step). */
uint64_t joule_mix64(uint64_t a, uint64_t b);

/* The double nearest the shortest decimal that reads back as f, so JSON shows 1e-05
 * rather than 9.99999974737875e-06 for 1e-5f. */
double joule_float_for_json(float f);

/* Zeroed allocation, 64-byte aligned; from 4 MiB on, 2 MiB aligned and advised onto
 * transparent huge pages (madvise; the kernel may decline). Free with joule_free. NULL on
 * failure (message set). */
void *joule_alloc(size_t bytes);
void joule_free(void *p);

/* Write `len` bytes to `path` atomically: temp name in the same directory, fsync, rename,
 * fsync of the directory. */
int joule_write_file_atomic(const char *path, const void *data, size_t len);

/* Reads a whole text file (at most max_bytes; no NUL bytes) into a NUL-terminated string
 * the caller frees with free(). Missing or not a file: JOULE_ERR_ARG, as joule_mmap_open. */
int joule_read_text(const char *path, size_t max_bytes, char **out);

/* Helpers for atomic multi-part writes: open "<path>.tmp.<pid>" for writing; commit
 * fsyncs, closes and renames it to path; abort closes and unlinks. */
typedef struct { int fd; char *tmp_path; char *path; } joule_atomic_file;
int joule_atomic_open(joule_atomic_file *f, const char *path);
int joule_atomic_write(joule_atomic_file *f, const void *data, size_t len);
int joule_atomic_commit(joule_atomic_file *f);
void joule_atomic_abort(joule_atomic_file *f);
/* Removes "<path>.tmp.<pid>" files of writers that no longer run (killed mid-write);
 * joule_atomic_open calls it, so the next write of the same path cleans up. */
void joule_atomic_clean_stale(const char *path);
/* fsync of the folder holding path, so a rename into it is durable. */
int joule_fsync_parent(const char *path);
/* rename(from, to) then joule_fsync_parent(to). */
int joule_rename_durable(const char *from, const char *to);

/* Read-only memory map of a whole file. A missing path or one that is not a regular file
 * is JOULE_ERR_ARG (the caller named it), other failures JOULE_ERR_IO. */
typedef struct { void *data; size_t size; } joule_mmap;
int joule_mmap_open(joule_mmap *m, const char *path);
void joule_mmap_close(joule_mmap *m);

#ifdef __cplusplus
}
#endif
#endif
