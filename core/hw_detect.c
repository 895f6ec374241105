/* The CPU profile of this machine when none is named: /proc/cpuinfo's model name matched to
 * a profile of docs/hardware, else a generic per-core TDP (CodeCarbon's approach when it
 * does not know the CPU). The generic profile's figures are labelled "modeled:tdp-generic". */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "joule/energy.h"

/* Whether every '-'-separated word of a profile name is a word of the model name (both
 * lower-cased; words are runs of letters and digits). */
static bool name_matches(const char *profile, const char *model) {
    char m[512];
    size_t k = 0;
    m[k++] = ' ';
    for (const char *c = model; *c && k < sizeof m - 2; c++) m[k++] = isalnum((unsigned char)*c) ? (char)tolower((unsigned char)*c) : ' ';
    m[k++] = ' ';
    m[k] = '\0';
    char p[128], *save = NULL;
    snprintf(p, sizeof p, "%s", profile);
    int words = 0;
    for (char *w = strtok_r(p, "-_ ", &save); w; w = strtok_r(NULL, "-_ ", &save), words++) {
        char needle[140];
        snprintf(needle, sizeof needle, " %s ", w);
        for (char *c = needle; *c; c++) *c = (char)tolower((unsigned char)*c);
        if (!strstr(m, needle)) return false;
    }
    return words > 0;
}

static void model_name(const char *cpuinfo, char *buf, size_t n) {
    buf[0] = '\0';
    FILE *f = fopen(cpuinfo ? cpuinfo : "/proc/cpuinfo", "r");
    char line[1024];
    while (f && fgets(line, sizeof line, f)) {
        const char *c = strchr(line, ':');
        if (c && !strncmp(line, "model name", 10)) {
            snprintf(buf, n, "%s", c + 1 + (c[1] == ' '));
            buf[strcspn(buf, "\n")] = '\0';
            break;
        }
    }
    if (f) fclose(f);
}

static int by_name(const struct dirent **a, const struct dirent **b) { return strcmp((*a)->d_name, (*b)->d_name); }

/* The first CPU profile (folders in order, files by name) whose name matches `model`. */
static bool find_profile(joule_hw_profile *hw, const char *dirs, const char *model) {
    char list[8192], *save = NULL;
    snprintf(list, sizeof list, "%s", dirs ? dirs : "");
    for (char *d = strtok_r(list, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        struct dirent **e;
        int n = scandir(d, &e, NULL, by_name);
        bool found = false;
        for (int i = 0; i < n; i++) {
            const char *f = e[i]->d_name;
            const size_t len = strlen(f);
            char path[8192];
            if (!found && len > 5 && !strcmp(f + len - 5, ".json")) {
                snprintf(path, sizeof path, "%s/%s", d, f);
                found = joule_hw_load(hw, path, NULL) == JOULE_OK && !strcmp(hw->kind, "cpu") && name_matches(hw->name, model);
            }
            free(e[i]);
        }
        if (n >= 0) free(e);
        if (found) return true;
    }
    return false;
}

int joule_hw_detect_cpu(joule_hw_profile *hw, const char *dirs, const char *cpuinfo, bool *generic) {
    char model[512];
    model_name(cpuinfo, model, sizeof model);
    *generic = false;
    if (model[0] && find_profile(hw, dirs, model)) return JOULE_OK;
    memset(hw, 0, sizeof *hw);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    hw->cores = cpus > 0 ? (int)cpus : 1;
    snprintf(hw->name, sizeof hw->name, "generic-cpu");
    snprintf(hw->kind, sizeof hw->kind, "cpu");
    hw->tdp_w = JOULE_GENERIC_CORE_TDP_W * hw->cores;
    hw->idle_w = hw->tdp_w / 3.0;
    snprintf(hw->source, sizeof hw->source,
             "generic: no profile matches this CPU ('%s'); %.1f W per core at TDP (the mean TDP per core of "
             "docs/hardware's CPU profiles), idle a third of it",
             joule_q(model[0] ? model : "unknown"), JOULE_GENERIC_CORE_TDP_W);
    *generic = true;
    return JOULE_OK;
}
