/* safetensors reader (mmap, validate everything up front) and writer (atomic, 64-byte
 * aligned data section). Format summary in include/joule/safetensors.h. */
#define _GNU_SOURCE
#include "joule/safetensors.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- dtypes ---- */

static const struct {
    const char *name;
    size_t size;
} k_dtypes[JOULE_ST_DTYPE_COUNT] = {
    [JOULE_ST_F32] = {"F32", 4},         [JOULE_ST_F16] = {"F16", 2},
    [JOULE_ST_BF16] = {"BF16", 2},       [JOULE_ST_F64] = {"F64", 8},
    [JOULE_ST_I8] = {"I8", 1},           [JOULE_ST_I16] = {"I16", 2},
    [JOULE_ST_I32] = {"I32", 4},         [JOULE_ST_I64] = {"I64", 8},
    [JOULE_ST_U8] = {"U8", 1},           [JOULE_ST_U16] = {"U16", 2},
    [JOULE_ST_U32] = {"U32", 4},         [JOULE_ST_U64] = {"U64", 8},
    [JOULE_ST_BOOL] = {"BOOL", 1},       [JOULE_ST_F8_E4M3] = {"F8_E4M3", 1},
    [JOULE_ST_F8_E5M2] = {"F8_E5M2", 1},
};

static bool dtype_valid(joule_st_dtype dt) { return (unsigned)dt < JOULE_ST_DTYPE_COUNT; }

const char *joule_st_dtype_name(joule_st_dtype dt) {
    return dtype_valid(dt) ? k_dtypes[dt].name : "?";
}

size_t joule_st_dtype_size(joule_st_dtype dt) { return dtype_valid(dt) ? k_dtypes[dt].size : 0; }

static bool dtype_from_name(const char *s, joule_st_dtype *out) {
    for (int i = 0; i < JOULE_ST_DTYPE_COUNT; i++)
        if (strcmp(s, k_dtypes[i].name) == 0) {
            *out = (joule_st_dtype)i;
            return true;
        }
    return false;
}

/* ---- shared helpers ---- */

/* Offsets and dims travel as JSON numbers, which cJSON holds as doubles: above 2^53 they
 * are no longer exact, so neither side goes there (no real file comes close). */
#define JSON_INT_MAX 9007199254740992ull

/* Element count times element size, or false on overflow. Dims are multiplied left to
 * right with a check at each step, as the reference implementation does. */
static bool shape_nbytes(const int64_t *shape, int ndim, size_t elem, uint64_t *out) {
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        uint64_t d = (uint64_t)shape[i];
        if (d != 0 && n > UINT64_MAX / d) return false;
        n *= d;
    }
    if (elem != 0 && n > UINT64_MAX / elem) return false;
    *out = n * elem;
    return *out <= SIZE_MAX;
}

static void fmt_shape(char *buf, size_t cap, const int64_t *shape, int ndim) {
    size_t len = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (len < cap) snprintf(buf + len, cap - len, "]");
}

/* Length of the longest prefix of s that is well-formed UTF-8 (no overlong forms,
 * surrogates or code points past U+10FFFF); n when all of it is. */
static size_t utf8_valid_prefix(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0)
            len = 2, cp = c & 0x1F, min = 0x80;
        else if ((c & 0xF0) == 0xE0)
            len = 3, cp = c & 0x0F, min = 0x800;
        else if ((c & 0xF8) == 0xF0)
            len = 4, cp = c & 0x07, min = 0x10000;
        else
            return i;
        if (n - i < len) return i;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return i;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return i;
        i += len;
    }
    return n;
}

static bool utf8_valid(const char *s) {
    size_t n = strlen(s);
    return utf8_valid_prefix((const unsigned char *)s, n) == n;
}

/* ---- reading ---- */

struct joule_st_file {
    char *path;
    joule_mmap map;
    cJSON *root;              /* names and metadata strings point into it */
    joule_st_tensor *tensors; /* sorted by data offset */
    size_t n;
    const joule_st_tensor **by_name; /* sorted by name, for lookup */
    const char **meta_keys, **meta_vals;
    size_t n_meta;
};

/* A JSON value rendered for an error message ("-1", "1.5", "\"3\""), truncated. */
static const char *describe(const cJSON *v, char *buf, size_t cap) {
    char *s = cJSON_PrintUnformatted(v);
    snprintf(buf, cap, "%s", s ? s : "?");
    if (s && strlen(s) >= cap && cap > 4) strcpy(buf + cap - 4, "...");
    cJSON_free(s);
    return buf;
}

static bool json_u64(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    /* cJSON cannot tell 3 from 3.0; both are accepted, fractions and negatives are not. */
    if (!(d >= 0.0) || d > (double)JSON_INT_MAX || d != floor(d)) return false;
    *out = (uint64_t)d;
    return true;
}

static int parse_metadata(joule_st_file *f, const cJSON *m) {
    const char *path = f->path;
    if (!cJSON_IsObject(m))
        return joule_fail(JOULE_ERR_FORMAT, "%s: __metadata__ is not an object", path);
    size_t cap = (size_t)cJSON_GetArraySize(m);
    f->meta_keys = calloc(cap ? cap : 1, sizeof *f->meta_keys);
    f->meta_vals = calloc(cap ? cap : 1, sizeof *f->meta_vals);
    if (!f->meta_keys || !f->meta_vals)
        return joule_fail(JOULE_ERR_NOMEM, "%s: out of memory", path);
    const cJSON *kv;
    cJSON_ArrayForEach(kv, m) {
        if (!cJSON_IsString(kv))
            return joule_fail(JOULE_ERR_FORMAT, "%s: __metadata__ value for '%s' is not a string",
                              path, joule_q(kv->string));
        for (size_t i = 0; i < f->n_meta; i++) /* metadata is a handful of pairs */
            if (strcmp(f->meta_keys[i], kv->string) == 0)
                return joule_fail(JOULE_ERR_FORMAT, "%s: duplicate __metadata__ key '%s'", path,
                                  joule_q(kv->string));
        f->meta_keys[f->n_meta] = kv->string;
        f->meta_vals[f->n_meta] = kv->valuestring;
        f->n_meta++;
    }
    return JOULE_OK;
}

/* The dtype, shape and data_offsets fields of tensor entry e. Walks the fields rather
 * than look them up so that a repeated field is an error instead of silently using the
 * first. Unknown fields are ignored. */
static int tensor_fields(const char *path, const char *name, const cJSON *e, const cJSON **dtype,
                         const cJSON **shape, const cJSON **offs) {
    const cJSON *c;
    cJSON_ArrayForEach(c, e) {
        const cJSON **slot = strcmp(c->string, "dtype") == 0          ? dtype
                             : strcmp(c->string, "shape") == 0        ? shape
                             : strcmp(c->string, "data_offsets") == 0 ? offs
                                                                      : NULL;
        if (!slot) continue;
        if (*slot)
            return joule_fail(JOULE_ERR_FORMAT, "%s: tensor '%s' has field '%s' twice", path, name,
                              joule_q(c->string));
        *slot = c;
    }
    if (!*dtype || !*shape || !*offs)
        return joule_fail(JOULE_ERR_FORMAT, "%s: tensor '%s' has no %s", path, name,
                          !*dtype   ? "dtype"
                          : !*shape ? "shape"
                                    : "data_offsets");
    return JOULE_OK;
}

static int tensor_shape(const char *path, const char *name, const cJSON *shape, joule_st_tensor *t) {
    char vbuf[64];
    if (!cJSON_IsArray(shape))
        return joule_fail(JOULE_ERR_FORMAT, "%s: tensor '%s' shape is not an array", path, name);
    int nd = cJSON_GetArraySize(shape);
    if (nd > JOULE_ST_MAX_DIMS)
        return joule_fail(JOULE_ERR_FORMAT,
                          "%s: tensor '%s' shape has %d dims, joule reads at most %d", path, name,
                          nd, JOULE_ST_MAX_DIMS);
    t->ndim = nd;
    int k = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, shape) {
        uint64_t d;
        if (!json_u64(c, &d))
            return joule_fail(
                JOULE_ERR_FORMAT,
                "%s: tensor '%s' shape entry %d is %s, not a non-negative integer (up to 2^53)",
                path, name, k, describe(c, vbuf, sizeof vbuf));
        t->shape[k++] = (int64_t)d;
    }
    return JOULE_OK;
}

/* data_offsets [begin, end] within the data section of data_size bytes. */
static int tensor_offsets(const char *path, const char *name, const cJSON *offs, size_t data_size,
                          uint64_t off[2]) {
    char vbuf[64];
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
        return joule_fail(JOULE_ERR_FORMAT, "%s: tensor '%s' data_offsets %s is not [begin, end]",
                          path, name, describe(offs, vbuf, sizeof vbuf));
    int k = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, offs) {
        if (!json_u64(c, &off[k]))
            return joule_fail(JOULE_ERR_FORMAT,
                              "%s: tensor '%s' data_offsets entry %d is %s, not a non-negative "
                              "integer (up to 2^53)",
                              path, name, k, describe(c, vbuf, sizeof vbuf));
        k++;
    }
    if (off[0] > off[1])
        return joule_fail(JOULE_ERR_FORMAT,
                          "%s: tensor '%s' data_offsets [%" PRIu64 ", %" PRIu64 "] begin after end",
                          path, name, off[0], off[1]);
    if (off[1] > data_size)
        return joule_fail(JOULE_ERR_FORMAT,
                          "%s: tensor '%s' data_offsets [%" PRIu64 ", %" PRIu64
                          "] past end of data (%zu bytes)",
                          path, name, off[0], off[1], data_size);
    return JOULE_OK;
}

/* Fill t from one header entry; checks everything that concerns this tensor alone. */
static int parse_tensor(const joule_st_file *f, const cJSON *e, const unsigned char *data,
                        size_t data_size, joule_st_tensor *t) {
    /* the name is shown escaped: it comes from the file */
    const char *path = f->path, *name = joule_q(e->string);
    char vbuf[64];
    if (!cJSON_IsObject(e))
        return joule_fail(JOULE_ERR_FORMAT, "%s: tensor '%s' entry is not an object", path, name);
    const cJSON *dtype = NULL, *shape = NULL, *offs = NULL;
    int rc = tensor_fields(path, name, e, &dtype, &shape, &offs);
    if (rc) return rc;
    if (!cJSON_IsString(dtype))
        return joule_fail(JOULE_ERR_FORMAT, "%s: tensor '%s' dtype %s is not a string", path, name,
                          describe(dtype, vbuf, sizeof vbuf));
    if (!dtype_from_name(dtype->valuestring, &t->dtype))
        return joule_fail(JOULE_ERR_FORMAT, "%s: tensor '%s' has unknown dtype '%s'", path, name,
                          joule_q(dtype->valuestring));
    uint64_t off[2];
    if ((rc = tensor_shape(path, name, shape, t)) || (rc = tensor_offsets(path, name, offs, data_size, off)))
        return rc;

    char sbuf[256];
    fmt_shape(sbuf, sizeof sbuf, t->shape, t->ndim);
    uint64_t need;
    if (!shape_nbytes(t->shape, t->ndim, k_dtypes[t->dtype].size, &need))
        return joule_fail(JOULE_ERR_FORMAT,
                          "%s: tensor '%s' shape %s is too large (byte size overflows)", path, name,
                          sbuf);
    if (off[1] - off[0] != need)
        return joule_fail(JOULE_ERR_FORMAT,
                          "%s: tensor '%s' data_offsets [%" PRIu64 ", %" PRIu64 "] span %" PRIu64
                          " bytes but shape %s of %s needs %" PRIu64,
                          path, name, off[0], off[1], off[1] - off[0], sbuf,
                          k_dtypes[t->dtype].name, need);

    t->name = e->string;
    t->offset = off[0];
    t->nbytes = (size_t)need;
    t->data = data + off[0];
    return JOULE_OK;
}

static int cmp_offset(const void *a, const void *b) {
    const joule_st_tensor *x = a, *y = b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_name(const void *a, const void *b) {
    return strcmp((*(const joule_st_tensor *const *)a)->name,
                  (*(const joule_st_tensor *const *)b)->name);
}

/* The 8-byte header length, checked against the file and the limit. */
static int header_length(const char *path, const unsigned char *base, size_t size, uint64_t *hlen) {
    if (size == 0)
        return joule_fail(JOULE_ERR_FORMAT, "%s: file is empty, not a safetensors file", path);
    if (size < 8)
        return joule_fail(JOULE_ERR_FORMAT,
                          "%s: file is %zu bytes, too short for the 8-byte header length", path,
                          size);
    *hlen = 0;
    for (int i = 7; i >= 0; i--)
        *hlen = (*hlen << 8) | base[i];
    /* Compare against what is left instead of computing 8 + hlen, which can wrap. */
    if (*hlen > JOULE_ST_MAX_HEADER)
        return joule_fail(JOULE_ERR_FORMAT,
                          "%s: header length %" PRIu64 " exceeds the %llu-byte limit", path, *hlen,
                          JOULE_ST_MAX_HEADER);
    if (*hlen > size - 8)
        return joule_fail(JOULE_ERR_FORMAT,
                          "%s: header length %" PRIu64 " past end of file (%zu bytes follow it)",
                          path, *hlen, size - 8);
    return JOULE_OK;
}

/* The header's bytes as JSON text, before cJSON sees them. */
static int check_header_bytes(const char *path, const unsigned char *hdr, uint64_t hlen) {
    if (hlen == 0 || hdr[0] != '{')
        return joule_fail(JOULE_ERR_FORMAT,
                          "%s: header is not a JSON object (does not start with '{')", path);
    size_t good = utf8_valid_prefix(hdr, hlen);
    if (good != hlen)
        return joule_fail(JOULE_ERR_FORMAT, "%s: header is not valid UTF-8 (byte %zu)", path, good);
    /* Raw control bytes are never valid JSON, and a NUL would silently cut cJSON's strings. */
    for (size_t i = 0; i < hlen; i++)
        if (hdr[i] < 0x20 && hdr[i] != '\t' && hdr[i] != '\n' && hdr[i] != '\r')
            return joule_fail(JOULE_ERR_FORMAT,
                              "%s: header is not valid JSON (control byte 0x%02x at byte %zu)",
                              path, hdr[i], i);
    return JOULE_OK;
}

/* f->root from the header: one JSON object and nothing after it but white space. */
static int parse_header(joule_st_file *f, const unsigned char *hdr, uint64_t hlen) {
    const char *path = f->path;
    /* cJSON may look one byte past the length it is given, which could be past the end of
     * the mapping, so parse a NUL-terminated copy of the header (the data stays mapped). */
    char *text = malloc(hlen + 1);
    if (!text)
        return joule_fail(JOULE_ERR_NOMEM, "%s: out of memory for a %" PRIu64 "-byte header", path,
                          hlen);
    memcpy(text, hdr, hlen);
    text[hlen] = '\0';
    const char *end = NULL;
    f->root = cJSON_ParseWithLengthOpts(text, hlen, &end, 0);
    size_t end_at = end ? (size_t)(end - text) : 0;
    size_t trail = end_at;
    while (f->root && trail < hlen && strchr(" \t\r\n", text[trail]))
        trail++;
    free(text);
    if (!f->root)
        return joule_fail(JOULE_ERR_FORMAT, "%s: header is not valid JSON (error near byte %zu)",
                          path, end_at);
    if (trail != hlen)
        return joule_fail(
            JOULE_ERR_FORMAT,
            "%s: header is not valid JSON (trailing bytes after the object at byte %zu)", path,
            trail);
    if (!cJSON_IsObject(f->root))
        return joule_fail(JOULE_ERR_FORMAT, "%s: header is not a JSON object", path);
    return JOULE_OK;
}

/* Every entry of the header: __metadata__ (at most once) and the tensors. */
static int parse_entries(joule_st_file *f, const unsigned char *data, size_t data_size) {
    const char *path = f->path;
    size_t cap = (size_t)cJSON_GetArraySize(f->root);
    f->tensors = calloc(cap ? cap : 1, sizeof *f->tensors);
    f->by_name = calloc(cap ? cap : 1, sizeof *f->by_name);
    if (!f->tensors || !f->by_name) return joule_fail(JOULE_ERR_NOMEM, "%s: out of memory", path);

    bool seen_meta = false;
    const cJSON *e;
    cJSON_ArrayForEach(e, f->root) {
        int rc;
        if (strcmp(e->string, "__metadata__") == 0) {
            if (seen_meta)
                return joule_fail(JOULE_ERR_FORMAT, "%s: duplicate __metadata__ entry", path);
            seen_meta = true;
            rc = parse_metadata(f, e);
        } else {
            rc = parse_tensor(f, e, data, data_size, &f->tensors[f->n]);
            f->n += (rc == JOULE_OK);
        }
        if (rc) return rc;
    }
    return JOULE_OK;
}

/* Tensors in offset order, by_name in name order with no name twice, and (like the
 * reference implementation) the tensors tiling the data section: that rules out overlap
 * (two names aliasing bytes) and unexplained bytes. */
static int index_tensors(joule_st_file *f, size_t data_size) {
    const char *path = f->path;
    /* The array is final from here on, so by_name may point into it. */
    qsort(f->tensors, f->n, sizeof *f->tensors, cmp_offset);
    for (size_t i = 0; i < f->n; i++)
        f->by_name[i] = &f->tensors[i];
    qsort(f->by_name, f->n, sizeof *f->by_name, cmp_name);
    for (size_t i = 1; i < f->n; i++)
        if (strcmp(f->by_name[i - 1]->name, f->by_name[i]->name) == 0)
            return joule_fail(JOULE_ERR_FORMAT, "%s: duplicate tensor name '%s'", path,
                              joule_q(f->by_name[i]->name));
    uint64_t pos = 0;
    for (size_t i = 0; i < f->n; i++) {
        const joule_st_tensor *t = &f->tensors[i];
        if (t->offset < pos) {
            const joule_st_tensor *p = &f->tensors[i - 1];
            return joule_fail(JOULE_ERR_FORMAT,
                              "%s: tensor '%s' data_offsets [%" PRIu64 ", %" PRIu64
                              "] overlaps tensor '%s' [%" PRIu64 ", %" PRIu64 "]",
                              path, joule_q(t->name), t->offset, t->offset + t->nbytes, joule_q(p->name),
                              p->offset, p->offset + p->nbytes);
        }
        if (t->offset > pos)
            return joule_fail(JOULE_ERR_FORMAT,
                              "%s: gap in data section: bytes [%" PRIu64 ", %" PRIu64
                              ") before tensor '%s' belong to no tensor",
                              path, pos, t->offset, joule_q(t->name));
        pos = t->offset + t->nbytes;
    }
    if (pos != data_size)
        return joule_fail(JOULE_ERR_FORMAT,
                          "%s: data section is %zu bytes but tensors cover only %" PRIu64
                          " (trailing bytes belong to no tensor)",
                          path, data_size, pos);
    return JOULE_OK;
}

static int parse_file(joule_st_file *f) {
    const unsigned char *base = f->map.data;
    size_t size = f->map.size;
    uint64_t hlen = 0;
    int rc = header_length(f->path, base, size, &hlen);
    if (rc || (rc = check_header_bytes(f->path, base + 8, hlen)) || (rc = parse_header(f, base + 8, hlen)))
        return rc;
    size_t data_size = size - 8 - (size_t)hlen;
    if ((rc = parse_entries(f, base + 8 + hlen, data_size))) return rc;
    return index_tensors(f, data_size);
}

int joule_st_open(joule_st_file **out, const char *path) {
    *out = NULL;
    joule_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return joule_fail(JOULE_ERR_NOMEM, "%s: out of memory", path);
    }
    int rc = joule_mmap_open(&f->map, path);
    if (rc == JOULE_OK) rc = parse_file(f);
    if (rc) {
        joule_st_close(f);
        return rc;
    }
    *out = f;
    return JOULE_OK;
}

void joule_st_close(joule_st_file *f) {
    if (!f) return;
    joule_mmap_close(&f->map);
    cJSON_Delete(f->root);
    free(f->tensors);
    free(f->by_name);
    free(f->meta_keys);
    free(f->meta_vals);
    free(f->path);
    free(f);
}

const char *joule_st_path(const joule_st_file *f) { return f->path; }

size_t joule_st_count(const joule_st_file *f) { return f->n; }

const joule_st_tensor *joule_st_at(const joule_st_file *f, size_t i) {
    return i < f->n ? &f->tensors[i] : NULL;
}

const joule_st_tensor *joule_st_find(const joule_st_file *f, const char *name) {
    size_t lo = 0, hi = f->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->by_name[mid]->name, name);
        if (c == 0) return f->by_name[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const char *joule_st_meta(const joule_st_file *f, const char *key) {
    for (size_t i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_vals[i];
    return NULL;
}

size_t joule_st_meta_count(const joule_st_file *f) { return f->n_meta; }

int joule_st_meta_at(const joule_st_file *f, size_t i, const char **key, const char **value) {
    if (i >= f->n_meta)
        return joule_fail(JOULE_ERR_ARG, "%s: metadata index %zu out of range (%zu pairs)", f->path,
                          i, f->n_meta);
    *key = f->meta_keys[i];
    *value = f->meta_vals[i];
    return JOULE_OK;
}

int joule_st_expect_f32(const joule_st_file *f, const char *name, const int64_t *shape, int ndim,
                        const float **out) {
    *out = NULL;
    if (ndim < 0 || ndim > JOULE_ST_MAX_DIMS || (ndim > 0 && !shape))
        return joule_fail(JOULE_ERR_ARG, "%s: expecting tensor '%s' with %d dims: out of range",
                          f->path, name, ndim);
    const joule_st_tensor *t = joule_st_find(f, name);
    if (!t) return joule_fail(JOULE_ERR_FORMAT, "%s: missing tensor '%s'", f->path, name);
    if (t->dtype != JOULE_ST_F32)
        return joule_fail(JOULE_ERR_FORMAT, "%s: tensor '%s' has dtype %s, expected F32", f->path,
                          name, joule_st_dtype_name(t->dtype));
    bool same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = t->shape[i] == shape[i];
    if (!same) {
        char have[256], want[256];
        fmt_shape(have, sizeof have, t->shape, t->ndim);
        fmt_shape(want, sizeof want, shape, ndim);
        return joule_fail(JOULE_ERR_FORMAT, "%s: tensor '%s' has shape %s, expected %s", f->path,
                          name, have, want);
    }
    /* Reading through a misaligned float* is undefined behaviour; our writer never
     * produces one, so refuse rather than copy. */
    if ((uintptr_t)t->data % _Alignof(float) != 0)
        return joule_fail(
            JOULE_ERR_FORMAT, "%s: tensor '%s' data is not 4-byte aligned (file offset %zu)",
            f->path, name,
            (size_t)((const unsigned char *)t->data - (const unsigned char *)f->map.data));
    *out = t->data;
    return JOULE_OK;
}

int joule_st_expect_meta(const joule_st_file *f, const char *key, const char *expected) {
    const char *v = joule_st_meta(f, key);
    if (!v)
        return joule_fail(JOULE_ERR_FORMAT, "%s: no %s in __metadata__, this joule reads '%s'",
                          f->path, key, expected);
    if (strcmp(v, expected) != 0)
        return joule_fail(JOULE_ERR_FORMAT, "%s: %s is '%s', this joule reads '%s'", f->path, key,
                          joule_q(v), expected);
    return JOULE_OK;
}

/* ---- writing ---- */

typedef struct {
    char *name;
    joule_st_dtype dtype;
    int ndim;
    int64_t shape[JOULE_ST_MAX_DIMS];
    const void *data;
    uint64_t nbytes;
} st_wtensor;

struct joule_st_writer {
    st_wtensor *t;
    size_t n, cap;
    char **meta_keys, **meta_vals;
    size_t n_meta, meta_cap;
};

int joule_st_writer_new(joule_st_writer **out) {
    *out = calloc(1, sizeof **out);
    return *out ? JOULE_OK : joule_fail(JOULE_ERR_NOMEM, "out of memory for a safetensors writer");
}

void joule_st_writer_free(joule_st_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n; i++)
        free(w->t[i].name);
    for (size_t i = 0; i < w->n_meta; i++) {
        free(w->meta_keys[i]);
        free(w->meta_vals[i]);
    }
    free(w->t);
    free(w->meta_keys);
    free(w->meta_vals);
    free(w);
}

/* Grow *arr (elements of `size` bytes) so that index n fits. */
static bool grow(void **arr, size_t *cap, size_t n, size_t size) {
    if (n < *cap) return true;
    size_t nc = *cap ? 2 * *cap : 16;
    void *p = realloc(*arr, nc * size);
    if (!p) return false;
    *arr = p;
    *cap = nc;
    return true;
}

int joule_st_writer_add(joule_st_writer *w, const char *name, joule_st_dtype dtype,
                        const int64_t *shape, int ndim, const void *data) {
    if (!name) return joule_fail(JOULE_ERR_ARG, "safetensors writer: tensor name is NULL");
    if (strcmp(name, "__metadata__") == 0 || !utf8_valid(name))
        return joule_fail(JOULE_ERR_ARG, "safetensors writer: '%s' is not a valid tensor name",
                          name);
    if (!dtype_valid(dtype))
        return joule_fail(JOULE_ERR_ARG, "safetensors writer: tensor '%s' has an invalid dtype",
                          name);
    if (ndim < 0 || ndim > JOULE_ST_MAX_DIMS || (ndim > 0 && !shape))
        return joule_fail(JOULE_ERR_ARG,
                          "safetensors writer: tensor '%s' has %d dims (0 to %d allowed)", name,
                          ndim, JOULE_ST_MAX_DIMS);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0 || (uint64_t)shape[i] > JSON_INT_MAX)
            return joule_fail(JOULE_ERR_ARG, "safetensors writer: tensor '%s' dim %d is %" PRId64,
                              name, i, shape[i]);
    uint64_t nbytes;
    if (!shape_nbytes(shape, ndim, k_dtypes[dtype].size, &nbytes))
        return joule_fail(JOULE_ERR_ARG, "safetensors writer: tensor '%s' byte size overflows",
                          name);
    if (nbytes > 0 && !data)
        return joule_fail(JOULE_ERR_ARG, "safetensors writer: tensor '%s' has no data", name);
    for (size_t i = 0; i < w->n; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return joule_fail(JOULE_ERR_ARG, "safetensors writer: duplicate tensor name '%s'",
                              name);
    if (!grow((void **)&w->t, &w->cap, w->n, sizeof *w->t))
        return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    st_wtensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    t->dtype = dtype;
    t->ndim = ndim;
    if (ndim > 0) memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->data = data;
    t->nbytes = nbytes;
    w->n++;
    return JOULE_OK;
}

int joule_st_writer_add_meta(joule_st_writer *w, const char *key, const char *value) {
    if (!key || !value || !utf8_valid(key) || !utf8_valid(value))
        return joule_fail(JOULE_ERR_ARG,
                          "safetensors writer: metadata key and value must be UTF-8 strings");
    for (size_t i = 0; i < w->n_meta; i++)
        if (strcmp(w->meta_keys[i], key) == 0)
            return joule_fail(JOULE_ERR_ARG, "safetensors writer: duplicate metadata key '%s'",
                              key);
    size_t cap = w->meta_cap;
    if (!grow((void **)&w->meta_keys, &cap, w->n_meta, sizeof(char *)) ||
        !grow((void **)&w->meta_vals, &w->meta_cap, w->n_meta, sizeof(char *)))
        return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    }
    w->meta_keys[w->n_meta] = k;
    w->meta_vals[w->n_meta] = v;
    w->n_meta++;
    return JOULE_OK;
}

/* Growable text buffer for the header; an allocation failure sticks until checked. */
typedef struct {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_append(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->len + n + 1)
            nc *= 2;
        char *p = realloc(b->p, nc);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = nc;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(sbuf *b, const char *s) { sb_append(b, s, strlen(s)); }

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    sb_append(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* JSON string literal. Input is valid UTF-8 (checked on add), so only quotes, backslashes
 * and control characters need escaping. */
static void sb_json_string(sbuf *b, const char *s) {
    sb_puts(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            sb_append(b, esc, 2);
        } else if (c < 0x20) {
            sb_printf(b, "\\u%04x", c);
        } else {
            sb_append(b, (const char *)&c, 1);
        }
    }
    sb_puts(b, "\"");
}

int joule_st_writer_write(joule_st_writer *w, const char *path) {
    /* Integers are printed by hand rather than through cJSON, whose %g formatting would
     * turn offsets of 10^15 and up into exponent notation that strict readers refuse. */
    sbuf b = {0};
    sb_puts(&b, "{");
    if (w->n_meta > 0) {
        sb_puts(&b, "\"__metadata__\":{");
        for (size_t i = 0; i < w->n_meta; i++) {
            if (i) sb_puts(&b, ",");
            sb_json_string(&b, w->meta_keys[i]);
            sb_puts(&b, ":");
            sb_json_string(&b, w->meta_vals[i]);
        }
        sb_puts(&b, "}");
    }
    uint64_t pos = 0;
    for (size_t i = 0; i < w->n; i++) {
        const st_wtensor *t = &w->t[i];
        if (i || w->n_meta) sb_puts(&b, ",");
        sb_json_string(&b, t->name);
        sb_printf(&b, ":{\"dtype\":\"%s\",\"shape\":[", k_dtypes[t->dtype].name);
        for (int d = 0; d < t->ndim; d++)
            sb_printf(&b, "%s%" PRId64, d ? "," : "", t->shape[d]);
        if (t->nbytes > JSON_INT_MAX - pos) {
            free(b.p);
            return joule_fail(JOULE_ERR_ARG, "%s: tensors total more than 2^53 bytes", path);
        }
        sb_printf(&b, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", pos, pos + t->nbytes);
        pos += t->nbytes;
    }
    sb_puts(&b, "}");
    /* Trailing spaces are valid JSON padding; they put the data section on a 64-byte
     * boundary so that every F32 tensor of ours is aligned in the mapping. */
    while (!b.oom && (8 + b.len) % 64 != 0)
        sb_puts(&b, " ");
    if (b.oom) {
        free(b.p);
        return joule_fail(JOULE_ERR_NOMEM, "%s: out of memory building the header", path);
    }
    if (b.len > JOULE_ST_MAX_HEADER) {
        free(b.p);
        return joule_fail(JOULE_ERR_ARG, "%s: header of %zu bytes exceeds the %llu-byte limit",
                          path, b.len, JOULE_ST_MAX_HEADER);
    }

    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)((uint64_t)b.len >> (8 * i));
    joule_atomic_file af;
    int rc = joule_atomic_open(&af, path);
    if (rc == JOULE_OK) {
        rc = joule_atomic_write(&af, len8, sizeof len8);
        if (rc == JOULE_OK) rc = joule_atomic_write(&af, b.p, b.len);
        for (size_t i = 0; rc == JOULE_OK && i < w->n; i++)
            if (w->t[i].nbytes > 0)
                rc = joule_atomic_write(&af, w->t[i].data, (size_t)w->t[i].nbytes);
        if (rc == JOULE_OK)
            rc = joule_atomic_commit(&af);
        else
            joule_atomic_abort(&af);
    }
    free(b.p);
    return rc;
}
