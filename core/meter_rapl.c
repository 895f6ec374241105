/* Linux RAPL through the powercap sysfs tree: package domains and their DRAM subdomains. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "joule/energy.h"

/* Reads one unsigned decimal from a sysfs file. */
static int read_u64(const char *path, uint64_t *out) {
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == EACCES || errno == EPERM)
            return joule_fail(JOULE_ERR_IO,
                              "%s: permission denied (energy_uj is readable by root only since Linux 5.10; run as "
                              "root or grant read access, e.g. chmod o+r)",
                              path);
        return joule_fail(JOULE_ERR_IO, "%s: %s", path, strerror(errno));
    }
    char buf[64];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    int err = ferror(f) ? errno : 0;
    fclose(f);
    if (err) {
        if (err == EACCES || err == EPERM)
            return joule_fail(JOULE_ERR_IO, "%s: permission denied reading (root-only since Linux 5.10)", path);
        return joule_fail(JOULE_ERR_IO, "%s: cannot read: %s", path, strerror(err));
    }
    buf[n] = '\0';
    char *end;
    errno = 0;
    unsigned long long v = strtoull(buf, &end, 10);
    if (end == buf || errno || (*end && *end != '\n'))
        return joule_fail(JOULE_ERR_FORMAT, "%s: not an unsigned integer", path);
    *out = v;
    return JOULE_OK;
}

static void read_name(const char *dir, char *name, size_t n) {
    char path[1024];
    snprintf(path, sizeof path, "%s/name", dir);
    FILE *f = fopen(path, "r");
    name[0] = '\0';
    if (!f) return;
    if (fgets(name, (int)n, f)) name[strcspn(name, "\n")] = '\0';
    fclose(f);
}

static int add_domain(joule_rapl *r, const char *dir, bool want_dram) {
    char name[64];
    read_name(dir, name, sizeof name);
    bool dram = strcmp(name, "dram") == 0;
    if (want_dram != dram) return JOULE_OK;
    if (r->n == JOULE_RAPL_MAX_DOMAINS) return JOULE_OK;
    int i = r->n;
    snprintf(r->name[i], sizeof r->name[i], "%s", name[0] ? name : "package");
    snprintf(r->path[i], sizeof r->path[i], "%s/energy_uj", dir);
    r->dram[i] = dram;
    char path[1024];
    snprintf(path, sizeof path, "%s/max_energy_range_uj", dir);
    int rc = read_u64(path, &r->max_uj[i]);
    uint64_t now;
    if (!rc) rc = read_u64(r->path[i], &now);
    if (rc) return rc;
    if (r->max_uj[i] == 0) return joule_fail(JOULE_ERR_FORMAT, "%s: max_energy_range_uj is 0", path);
    r->n++;
    return JOULE_OK;
}

static int by_name(const struct dirent **a, const struct dirent **b) { return strcmp((*a)->d_name, (*b)->d_name); }

int joule_rapl_open(joule_rapl *r, const char *root) {
    memset(r, 0, sizeof *r);
    if (!root) root = "/sys/class/powercap";
    struct dirent **ents;
    int n = scandir(root, &ents, NULL, by_name);
    if (n < 0) return joule_fail(JOULE_ERR_IO, "%s: %s (no powercap interface: no RAPL)", root, strerror(errno));
    int rc = JOULE_OK;
    for (int i = 0; i < n && !rc; i++) {
        const char *d = ents[i]->d_name;
        int pkg, sub;
        char tail;
        /* intel-rapl:N is a package; intel-rapl:N:M its subdomains (core, uncore, dram) */
        if (sscanf(d, "intel-rapl:%d%c", &pkg, &tail) == 1) {
            char dir[1024];
            snprintf(dir, sizeof dir, "%s/%s", root, d);
            rc = add_domain(r, dir, false);
        } else if (sscanf(d, "intel-rapl:%d:%d%c", &pkg, &sub, &tail) == 2) {
            char dir[1024];
            snprintf(dir, sizeof dir, "%s/%s", root, d);
            rc = add_domain(r, dir, true);
        }
    }
    for (int i = 0; i < n; i++)
        free(ents[i]);
    free(ents);
    if (!rc && r->n == 0) rc = joule_fail(JOULE_ERR_IO, "%s: no intel-rapl:N package domain", root);
    return rc;
}

int joule_rapl_read(const joule_rapl *r, uint64_t *uj) {
    for (int i = 0; i < r->n; i++) {
        int rc = read_u64(r->path[i], &uj[i]);
        if (rc) return rc;
    }
    return JOULE_OK;
}

double joule_rapl_delta_j(uint64_t before, uint64_t after, uint64_t max_uj) {
    /* one wrap at most between readings: windows are far shorter than a wrap (~minutes) */
    uint64_t d = after >= before ? after - before : (max_uj - before) + after;
    return (double)d * 1e-6;
}
