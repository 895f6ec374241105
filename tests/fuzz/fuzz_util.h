/* fuzz_util.h — what the libFuzzer harnesses share: a scratch folder of this process
 * (readers take paths, so each input is written to a file there), the folder that
 * scripts/fuzz.sh prepared with joule itself ($JOULE_FUZZ_DIR: a model, a database, token
 * files), and the check every harness makes of a refusal: one line, nothing a terminal
 * acts on. Header-only: each harness is one executable. */
#ifndef JOULE_FUZZ_UTIL_H
#define JOULE_FUZZ_UTIL_H

#define _GNU_SOURCE
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "joule/common.h"
#include "joule/moe.h"
#include "joule/retro.h"

static char fz_dir[4096];

static inline int fz_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static inline void fz_cleanup(void) {
    if (fz_dir[0]) nftw(fz_dir, fz_rm, 16, FTW_DEPTH | FTW_PHYS);
}

/* fz_dir/name; the folder (in /dev/shm when there is one: inputs are written at every
 * execution) is made at the first call and removed at exit. */
static inline const char *fz_path(const char *name) {
    static char buf[4][8192];
    static int k;
    if (!fz_dir[0]) {
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
        snprintf(fz_dir, sizeof fz_dir, "%s/joule-fuzz-%ld", base, (long)getpid());
        if (mkdir(fz_dir, 0700) != 0) {
            perror(fz_dir);
            abort();
        }
        atexit(fz_cleanup);
    }
    char *b = buf[k++ % 4];
    snprintf(b, sizeof buf[0], "%s/%s", fz_dir, name);
    return b;
}

static inline void fz_write(const char *path, const void *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
        perror(path);
        abort();
    }
}

/* The input as fz_dir/name; its path. */
static inline const char *fz_input(const uint8_t *data, size_t size, const char *name) {
    const char *p = fz_path(name);
    fz_write(p, data, size);
    return p;
}

/* $JOULE_FUZZ_DIR/name: what scripts/fuzz.sh made with joule. */
static inline const char *fz_prepared(const char *name) {
    static char buf[4][8192];
    static int k;
    const char *dir = getenv("JOULE_FUZZ_DIR");
    if (!dir || !*dir) {
        fprintf(stderr, "JOULE_FUZZ_DIR is not set: run the harnesses through scripts/fuzz.sh\n");
        abort();
    }
    char *b = buf[k++ % 4];
    snprintf(b, sizeof buf[0], "%s/%s", dir, name);
    return b;
}

/* Whole-file copy (for the fixed files a harness pairs with its input). */
static inline void fz_copy(const char *from, const char *to) {
    FILE *f = fopen(from, "rb");
    if (!f) {
        perror(from);
        abort();
    }
    static char chunk[1 << 16];
    FILE *g = fopen(to, "wb");
    size_t n;
    while (g && (n = fread(chunk, 1, sizeof chunk, f)) > 0) fwrite(chunk, 1, n, g);
    fclose(f);
    if (!g || fclose(g) != 0) {
        perror(to);
        abort();
    }
}

/* A refusal's message must be one line with nothing a terminal acts on: a finding
 * otherwise (the fuzzer reports the abort). */
static inline void fz_check_message(int status) {
    if (status == JOULE_OK) return;
    const unsigned char *m = (const unsigned char *)joule_last_error();
    if (!*m) {
        fprintf(stderr, "status %d without a message\n", status);
        abort();
    }
    for (; *m; m++)
        if (*m < 0x20 || *m == 0x7f) {
            fprintf(stderr, "control byte 0x%02x in the message: %s\n", *m, joule_last_error());
            abort();
        }
}

/* Every kind a file may name is available, as in the joule command. */
static inline void fz_register(void) {
    joule_moe_register();
    joule_retro_register();
}

#endif
