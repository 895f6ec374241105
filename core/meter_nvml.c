/* NVIDIA GPUs through NVML, loaded at run time (no build dependency): the total-energy
 * counter (mJ, Volta and later), or power sampled every 50 ms and integrated when the
 * counter is not supported. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "joule/energy.h"

#define NVML_MAX_DEV 16
typedef int nvml_ret;
typedef void *nvml_dev;

struct joule_nvml {
    void *lib;
    unsigned n;
    nvml_dev dev[NVML_MAX_DEV];
    bool counter; /* every device has the energy counter */
    nvml_ret (*shutdown)(void);
    nvml_ret (*energy)(nvml_dev, unsigned long long *);
    nvml_ret (*power)(nvml_dev, unsigned int *);
    const char *(*error_string)(nvml_ret);
    /* power-sampling fallback */
    pthread_t thread;
    pthread_mutex_t mu;
    bool running;
    double sampled_j, last_w, last_t;
};

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double total_power_w(struct joule_nvml *g) {
    double w = 0;
    for (unsigned i = 0; i < g->n; i++) {
        unsigned mw = 0;
        if (g->power(g->dev[i], &mw) == 0) w += mw * 1e-3;
    }
    return w;
}

static void sample_once(struct joule_nvml *g) {
    double w = total_power_w(g), t = mono_s();
    pthread_mutex_lock(&g->mu);
    g->sampled_j += 0.5 * (w + g->last_w) * (t - g->last_t); /* trapezoid */
    g->last_w = w;
    g->last_t = t;
    pthread_mutex_unlock(&g->mu);
}

static void *sampler(void *arg) {
    struct joule_nvml *g = arg;
    for (;;) {
        pthread_mutex_lock(&g->mu);
        bool run = g->running;
        pthread_mutex_unlock(&g->mu);
        if (!run) break;
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
        sample_once(g);
    }
    return NULL;
}

#define SYM(var, name)                                                                                                 \
    do {                                                                                                               \
        *(void **)(&var) = dlsym(g->lib, name);                                                                        \
        if (!var) {                                                                                                    \
            rc = joule_fail(JOULE_ERR_IO, "%s: symbol %s missing (driver too old?)", path, name);                      \
            goto fail;                                                                                                 \
        }                                                                                                              \
    } while (0)

int joule_nvml_open(joule_nvml **out, const char *lib_path, char *detail, size_t detail_n) {
    *out = NULL;
    const char *env = getenv("JOULE_NVML_LIB");
    const char *path = lib_path ? lib_path : env && *env ? env : "libnvidia-ml.so.1";
    struct joule_nvml *g = calloc(1, sizeof *g);
    if (!g) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    int rc = JOULE_OK;
    g->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!g->lib) {
        const char *e = dlerror();
        free(g);
        return joule_fail(JOULE_ERR_IO, "dlopen %s: %s (no NVIDIA driver)", path, e ? e : "failed");
    }
    nvml_ret (*init)(void), (*count)(unsigned *), (*handle)(unsigned, nvml_dev *), (*name)(nvml_dev, char *, unsigned);
    SYM(init, "nvmlInit_v2");
    SYM(g->shutdown, "nvmlShutdown");
    SYM(count, "nvmlDeviceGetCount_v2");
    SYM(handle, "nvmlDeviceGetHandleByIndex_v2");
    SYM(g->energy, "nvmlDeviceGetTotalEnergyConsumption");
    SYM(g->power, "nvmlDeviceGetPowerUsage");
    SYM(g->error_string, "nvmlErrorString");
    SYM(name, "nvmlDeviceGetName");
    nvml_ret r = init();
    if (r) {
        rc = joule_fail(JOULE_ERR_IO, "nvmlInit: %s", g->error_string(r));
        goto fail;
    }
    if ((r = count(&g->n)) || g->n == 0) {
        g->shutdown();
        rc = joule_fail(JOULE_ERR_IO, "NVML: %s", r ? g->error_string(r) : "no GPU");
        goto fail;
    }
    if (g->n > NVML_MAX_DEV) g->n = NVML_MAX_DEV;
    g->counter = true;
    char first[96] = "?";
    for (unsigned i = 0; i < g->n; i++) {
        if ((r = handle(i, &g->dev[i]))) {
            g->shutdown();
            rc = joule_fail(JOULE_ERR_IO, "NVML device %u: %s", i, g->error_string(r));
            goto fail;
        }
        unsigned long long mj;
        if (g->energy(g->dev[i], &mj)) g->counter = false;
        if (i == 0) name(g->dev[0], first, sizeof first);
    }
    if (!g->counter) {
        pthread_mutex_init(&g->mu, NULL);
        g->last_t = mono_s();
        g->last_w = total_power_w(g);
        g->running = true;
        if (pthread_create(&g->thread, NULL, sampler, g)) {
            g->shutdown();
            rc = joule_fail(JOULE_ERR_RUNTIME, "NVML: cannot start the power sampler");
            goto fail;
        }
    }
    snprintf(detail, detail_n, "%u GPU%s (%s), %s", g->n, g->n > 1 ? "s" : "", first,
             g->counter ? "total-energy counter" : "power sampled every 50 ms (no energy counter)");
    *out = g;
    return JOULE_OK;
fail:
    dlclose(g->lib);
    free(g);
    return rc;
}

int joule_nvml_read(joule_nvml *g, double *joules) {
    if (g->counter) {
        double j = 0;
        for (unsigned i = 0; i < g->n; i++) {
            unsigned long long mj;
            nvml_ret r = g->energy(g->dev[i], &mj);
            if (r) return joule_fail(JOULE_ERR_IO, "NVML energy of GPU %u: %s", i, g->error_string(r));
            j += (double)mj * 1e-3;
        }
        *joules = j;
        return JOULE_OK;
    }
    sample_once(g);
    pthread_mutex_lock(&g->mu);
    *joules = g->sampled_j;
    pthread_mutex_unlock(&g->mu);
    return JOULE_OK;
}

void joule_nvml_close(joule_nvml *g) {
    if (!g) return;
    if (!g->counter) {
        pthread_mutex_lock(&g->mu);
        g->running = false;
        pthread_mutex_unlock(&g->mu);
        pthread_join(g->thread, NULL);
        pthread_mutex_destroy(&g->mu);
    }
    g->shutdown();
    dlclose(g->lib);
    free(g);
}
