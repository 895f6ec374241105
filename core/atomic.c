/* Atomic file writes: a temporary name in the same folder, fsync, rename, fsync of the
 * folder (docs/FORMATS.md §1), and the clean-up of temporary files that killed writers
 * left behind. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "joule/common.h"

/* Removes <path>.tmp.<pid> files whose writer is gone (no process has that pid): a kill
 * between creating and renaming one leaves it, and only the next writer of the same path
 * knows the name. A live pid's file is left alone (it may be writing right now). Best
 * effort: what cannot be listed or removed stays. */
void joule_atomic_clean_stale(const char *path) {
    char *dcopy = strdup(path), *bcopy = strdup(path);
    DIR *d = dcopy && bcopy ? opendir(dirname(dcopy)) : NULL;
    if (d) {
        const char *base = basename(bcopy);
        size_t bl = strlen(base);
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strncmp(e->d_name, base, bl) != 0 || strncmp(e->d_name + bl, ".tmp.", 5) != 0) continue;
            const char *digits = e->d_name + bl + 5;
            char *end;
            errno = 0;
            long pid = strtol(digits, &end, 10);
            if (*digits < '0' || *digits > '9' || *end || errno || pid <= 0 || pid == (long)getpid()) continue;
            if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
            unlinkat(dirfd(d), e->d_name, 0);
        }
        closedir(d);
    }
    free(dcopy);
    free(bcopy);
}

int joule_atomic_open(joule_atomic_file *f, const char *path) {
    memset(f, 0, sizeof *f);
    f->fd = -1;
    joule_atomic_clean_stale(path);
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

int joule_fsync_parent(const char *path) {
    char *copy = strdup(path);
    if (!copy) return joule_fail(JOULE_ERR_NOMEM, "%s: out of memory", path);
    const char *dir = dirname(copy);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc = JOULE_OK;
    if (dfd < 0 || fsync(dfd) != 0) rc = joule_fail(JOULE_ERR_IO, "%s: fsync of the folder failed: %s", dir, strerror(errno));
    if (dfd >= 0) close(dfd);
    free(copy);
    return rc;
}

int joule_rename_durable(const char *from, const char *to) {
    if (rename(from, to) != 0) return joule_fail(JOULE_ERR_IO, "%s: rename to %s failed: %s", from, to, strerror(errno));
    return joule_fsync_parent(to);
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
    else (void)joule_fsync_parent(f->path); /* best effort: the file is in place either way */
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
