/* The perf "power" PMU (energy-pkg, energy-ram): system-wide counters on CPU 0. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/perf_event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "joule/energy.h"

static int read_line(const char *path, char *buf, size_t n) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char *ok = fgets(buf, (int)n, f);
    fclose(f);
    if (!ok) return -1;
    buf[strcspn(buf, "\n")] = '\0';
    return 0;
}

static void paranoid_hint(char *buf, size_t n) {
    char v[32];
    if (read_line("/proc/sys/kernel/perf_event_paranoid", v, sizeof v)) snprintf(v, sizeof v, "?");
    snprintf(buf, n, "perf_event_paranoid is %s; system-wide counters need <= 0 or CAP_PERFMON", v);
}

/* Opens the events found in `root` (NULL = /sys/bus/event_source/devices/power) into
 * e->perf_*. Fails with the reason. */
int joule_perf_open(joule_energy *e, const char *root) {
    if (!root) root = "/sys/bus/event_source/devices/power";
    char path[1024], buf[128];
    snprintf(path, sizeof path, "%s/type", root);
    if (read_line(path, buf, sizeof buf))
        return joule_fail(JOULE_ERR_IO, "%s: %s (no perf power PMU: a VM or an unsupported CPU)", path,
                          strerror(errno));
    int type = atoi(buf);
    static const char *const EVENTS[] = {"energy-pkg", "energy-ram"};
    e->perf_n = 0;
    for (int i = 0; i < 2; i++) {
        unsigned long long config;
        snprintf(path, sizeof path, "%s/events/%s", root, EVENTS[i]);
        if (read_line(path, buf, sizeof buf) || sscanf(buf, "event=%llx", &config) != 1) continue;
        snprintf(path, sizeof path, "%s/events/%s.scale", root, EVENTS[i]);
        double scale = 2.3283064365386962890625e-10; /* 2^-32 J, the usual RAPL unit */
        if (!read_line(path, buf, sizeof buf)) scale = atof(buf);
        struct perf_event_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.size = sizeof attr;
        attr.type = (unsigned)type;
        attr.config = config;
        int fd = (int)syscall(SYS_perf_event_open, &attr, -1, 0, -1, 0);
        if (fd < 0) {
            int err = errno;
            for (int k = 0; k < e->perf_n; k++)
                close(e->perf_fd[k]);
            e->perf_n = 0;
            char hint[160];
            paranoid_hint(hint, sizeof hint);
            return joule_fail(JOULE_ERR_IO, "perf_event_open(power/%s/): %s (%s)", EVENTS[i], strerror(err), hint);
        }
        e->perf_fd[e->perf_n] = fd;
        e->perf_scale[e->perf_n] = scale;
        snprintf(e->perf_name[e->perf_n], sizeof e->perf_name[0], "%s", EVENTS[i]);
        e->perf_n++;
    }
    if (e->perf_n == 0) return joule_fail(JOULE_ERR_IO, "%s/events: no energy-pkg or energy-ram event", root);
    return JOULE_OK;
}

int joule_perf_read(const joule_energy *e, uint64_t *counts) {
    for (int i = 0; i < e->perf_n; i++)
        if (read(e->perf_fd[i], &counts[i], sizeof counts[i]) != (ssize_t)sizeof counts[i])
            return joule_fail(JOULE_ERR_IO, "reading perf counter power/%s/: %s", e->perf_name[i], strerror(errno));
    return JOULE_OK;
}

void joule_perf_close(joule_energy *e) {
    for (int i = 0; i < e->perf_n; i++)
        close(e->perf_fd[i]);
    e->perf_n = 0;
}
