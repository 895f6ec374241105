/* joule/safetensors.h — reading and writing .safetensors files.
 *
 * Format: an 8-byte little-endian u64 N, then N bytes of UTF-8 JSON (the header), then the
 * data section. The header is one object mapping each tensor name to
 *   {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}
 * with byte offsets relative to the start of the data section; data is raw little-endian,
 * row-major. An optional "__metadata__" entry maps strings to strings. The header may end
 * in spaces (padding). Following the reference implementation, tensors must tile the data
 * section exactly: sorted by offset they are contiguous from 0, without gaps or overlap,
 * and the last one ends at the end of the file.
 *
 * Our writer pads the header so the data section starts at a multiple of 64 bytes and lays
 * tensors out contiguously in the order they were added.
 *
 * Errors follow joule/common.h: functions return a joule_status and leave a one-line
 * message naming the file in joule_last_error(). A missing path (or one that is not a
 * file) is JOULE_ERR_ARG, an unreadable file JOULE_ERR_IO, and a file whose contents are
 * wrong JOULE_ERR_FORMAT.
 */
#ifndef JOULE_SAFETENSORS_H
#define JOULE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "joule/common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define JOULE_ST_MAX_DIMS 8
/* Largest header the reader accepts (the reference implementation's limit). */
#define JOULE_ST_MAX_HEADER 100000000ull

typedef enum {
    JOULE_ST_F32 = 0,
    JOULE_ST_F16,
    JOULE_ST_BF16,
    JOULE_ST_F64,
    JOULE_ST_I8,
    JOULE_ST_I16,
    JOULE_ST_I32,
    JOULE_ST_I64,
    JOULE_ST_U8,
    JOULE_ST_U16,
    JOULE_ST_U32,
    JOULE_ST_U64,
    JOULE_ST_BOOL,
    JOULE_ST_F8_E4M3,
    JOULE_ST_F8_E5M2,
    JOULE_ST_DTYPE_COUNT
} joule_st_dtype;

/* "F32", "BF16", ...; "?" for a value outside the enum. Static strings. */
const char *joule_st_dtype_name(joule_st_dtype dt);
/* Bytes per element; 0 for a value outside the enum. */
size_t joule_st_dtype_size(joule_st_dtype dt);

/* ---- reading ---- */

/* One tensor of an open file. Everything it points to belongs to the file and stays valid
 * until joule_st_close. `data` points into the read-only mapping and is aligned only as the
 * file happens to align it: foreign files may place data at any byte offset, so callers
 * that dereference it as a wider type must either memcpy or use joule_st_expect_f32, which
 * checks alignment. For zero-element tensors nbytes is 0 and data must not be read. */
typedef struct {
    const char *name;
    joule_st_dtype dtype;
    int ndim;                         /* 0 for a scalar */
    int64_t shape[JOULE_ST_MAX_DIMS]; /* shape[ndim..] are 0 */
    const void *data;
    size_t nbytes;
    uint64_t offset; /* begin, relative to the data section */
} joule_st_tensor;

typedef struct joule_st_file joule_st_file;

/* Map `path` read-only and validate the whole header before returning; on success *out is
 * a new file the caller frees with joule_st_close. On failure *out is NULL. The file's
 * data is not read here (only mapped), so opening a large model is cheap. */
int joule_st_open(joule_st_file **out, const char *path);
/* Unmap and free; all pointers obtained from f become invalid. NULL is a no-op. */
void joule_st_close(joule_st_file *f);

/* The path given to joule_st_open (owned by f). */
const char *joule_st_path(const joule_st_file *f);
/* Number of tensors ("__metadata__" is not one). */
size_t joule_st_count(const joule_st_file *f);
/* Tensor i (0 <= i < count) in data-section order, which for our files is the order the
 * writer added them. NULL when i is out of range. */
const joule_st_tensor *joule_st_at(const joule_st_file *f, size_t i);
/* Tensor by exact name, or NULL (no error message set). O(log count). */
const joule_st_tensor *joule_st_find(const joule_st_file *f, const char *name);

/* Value of metadata `key`, or NULL if absent. Owned by f. */
const char *joule_st_meta(const joule_st_file *f, const char *key);
/* Metadata pairs in header order, for listing them (e.g. an inspect command). */
size_t joule_st_meta_count(const joule_st_file *f);
int joule_st_meta_at(const joule_st_file *f, size_t i, const char **key, const char **value);

/* Checked lookup for model loading: tensor `name` must exist, be F32, have exactly `ndim`
 * dims equal to `shape`, and its data must be 4-byte aligned (so *out can be read as
 * floats directly; our writer guarantees it). On success *out points into the mapping,
 * owned by f. Otherwise JOULE_ERR_FORMAT, e.g. "m.safetensors: tensor 'w' has shape
 * [4, 8], expected [8, 8]". JOULE_ERR_ARG for ndim outside [0, JOULE_ST_MAX_DIMS]. */
int joule_st_expect_f32(const joule_st_file *f, const char *name, const int64_t *shape, int ndim,
                        const float **out);
/* Metadata `key` must equal `expected`, e.g. joule_st_expect_meta(f, "format_version", "1")
 * fails with "m.safetensors: format_version is '2', this joule reads '1'". */
int joule_st_expect_meta(const joule_st_file *f, const char *key, const char *expected);

/* ---- writing ---- */

typedef struct joule_st_writer joule_st_writer;

/* New empty writer; free with joule_st_writer_free (whether or not it was written). */
int joule_st_writer_new(joule_st_writer **out);
void joule_st_writer_free(joule_st_writer *w);

/* Add a tensor. name and shape are copied; `data` (product(shape) * dtype size bytes) is
 * borrowed, not copied, and must stay valid and unchanged until joule_st_writer_write
 * returns. data may be NULL only for a zero-element tensor. JOULE_ERR_ARG for a NULL or
 * duplicate name, "__metadata__", ndim outside [0, 8], a negative dim, or an overflowing
 * size. */
int joule_st_writer_add(joule_st_writer *w, const char *name, joule_st_dtype dtype,
                        const int64_t *shape, int ndim, const void *data);
/* Add a metadata pair (both copied). JOULE_ERR_ARG for a duplicate key. */
int joule_st_writer_add_meta(joule_st_writer *w, const char *key, const char *value);

/* Write everything added so far to `path` atomically (temporary file, fsync, rename): a
 * crash leaves either the old file or the complete new one. The writer stays usable. */
int joule_st_writer_write(joule_st_writer *w, const char *path);

#ifdef __cplusplus
}
#endif
#endif
