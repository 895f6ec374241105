/* Fuzz target: a retrieval database folder (joule_db_open, then joule_db_verify, a search
 * with document exclusion and entry reads). The first input byte picks the file the rest
 * replaces in a copy of the small Flat database scripts/fuzz.sh built:
 *   0 manifest.json, as it is;
 *   1 chunks.bin, 2 index.faiss: with the manifest's size and crc32 of that file set to
 *     the input's, as a forged manifest would (else the checksum stops every input at the
 *     door and the parsers behind it are never reached).
 * Index inputs are flat indexes only (fourcc IxF*): joule checks those itself before
 * FAISS reads them (retro/faiss_check.c); the parsers of FAISS's other index types are
 * FAISS's (a forged IVF file can make them allocate up to 2^40 elements, see
 * docs/FORMATS.md), not fuzzed here.
 * Seeds: the files of that database, so prefixed. */
#include "fuzz_util.h"

#include <cjson/cJSON.h>
#include <zlib.h>

#include "joule/retro_db.h"

static char *g_manifest; /* the prepared database's manifest text */

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        abort();
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *s = malloc((size_t)n + 1);
    if (!s || fread(s, 1, (size_t)n, f) != (size_t)n) abort();
    s[n] = '\0';
    fclose(f);
    return s;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fz_register();
    mkdir(fz_path("db"), 0700);
    g_manifest = slurp(fz_prepared("db/manifest.json"));
    return 0;
}

/* The prepared manifest with files[name] describing `size` bytes of `data`. */
static char *forged_manifest(const char *name, const uint8_t *data, size_t size) {
    cJSON *m = cJSON_Parse(g_manifest), *f = cJSON_GetObjectItem(cJSON_GetObjectItem(m, "files"), name);
    char crc[9];
    snprintf(crc, sizeof crc, "%08lx", crc32(crc32(0L, Z_NULL, 0), data, (uInt)size));
    cJSON_ReplaceItemInObject(f, "bytes", cJSON_CreateNumber((double)size));
    cJSON_ReplaceItemInObject(f, "crc32", cJSON_CreateString(crc));
    char *text = cJSON_Print(m);
    cJSON_Delete(m);
    return text;
}

static void exercise(joule_retro_db *db) {
    fz_check_message(joule_db_verify(db, NULL));
    int m = joule_db_chunk(db);
    int32_t *q = calloc((size_t)m, sizeof *q), *tok = calloc(2 * (size_t)m, sizeof *tok);
    int64_t ids[4];
    uint64_t excl = 0;
    if (q && tok && joule_db_search(db, q, 1, 4, &excl, ids, NULL) == JOULE_OK)
        for (int j = 0; j < 4; j++)
            if (ids[j] >= 0) fz_check_message(joule_db_entry(db, ids[j], tok, NULL));
    free(q);
    free(tok);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    static const char *const names[3] = {"manifest.json", "chunks.bin", "index.faiss"};
    int which = data[0] % 3;
    if (which == 2 && (size < 5 || memcmp(data + 1, "IxF", 3) != 0)) return 0;
    char dst[3][64];
    for (int i = 0; i < 3; i++) snprintf(dst[i], sizeof dst[i], "db/%s", names[i]);
    for (int i = 1; i < 3; i++)
        if (i != which) fz_copy(fz_prepared(dst[i]), fz_path(dst[i]));
    fz_write(fz_path(dst[which]), data + 1, size - 1);
    if (which != 0) {
        char *text = forged_manifest(names[which], data + 1, size - 1);
        fz_write(fz_path(dst[0]), text, strlen(text));
        free(text);
    }
    joule_retro_db *db;
    int rc = joule_db_open(&db, fz_path("db"));
    fz_check_message(rc);
    if (rc == JOULE_OK) {
        exercise(db);
        joule_db_close(db);
    }
    return 0;
}
