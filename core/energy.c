/* Meter sets and measurement windows; the constant and modeled (TDP) meters live here. */
#include "joule/energy.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "joule/ops.h"

const char *const joule_meter_names[JOULE_METER_COUNT] = {"rapl", "perf", "nvml", "constant", "tdp"};

void joule_energy_opts_init(joule_energy_opts *o) { memset(o, 0, sizeof *o); }

static bool any_wanted(const joule_energy_opts *o) {
    for (int k = 0; k < JOULE_METER_COUNT; k++)
        if (o->want[k]) return true;
    return false;
}

void joule_energy_method(const bool on[JOULE_METER_COUNT], char *buf, size_t n) {
    static const char *const LABEL[JOULE_METER_COUNT] = {"measured:rapl", "measured:perf", "measured:nvml",
                                                         "measured:constant", "modeled:tdp"};
    bool all_measured = !on[JOULE_METER_MODELED];
    char parts[96] = "";
    /* a modelled part comes first, so no partly modelled sum reads "measured:..." */
    static const int ORDER[JOULE_METER_COUNT] = {JOULE_METER_MODELED, JOULE_METER_RAPL, JOULE_METER_PERF,
                                                 JOULE_METER_NVML, JOULE_METER_CONSTANT};
    for (int i = 0; i < JOULE_METER_COUNT; i++) {
        const int k = ORDER[i];
        if (!on[k]) continue;
        size_t len = strlen(parts);
        /* all measured: "measured:rapl+nvml"; otherwise each part keeps its own label */
        snprintf(parts + len, sizeof parts - len, "%s%s", len ? "+" : "",
                 all_measured ? LABEL[k] + strlen("measured:") : LABEL[k]);
    }
    snprintf(buf, n, "%s%s", all_measured && parts[0] ? "measured:" : "", parts[0] ? parts : "none");
}

int joule_energy_open(joule_energy *e, const joule_energy_opts *o) {
    memset(e, 0, sizeof *e);
    const bool automatic = !any_wanted(o);
    bool want[JOULE_METER_COUNT];
    for (int k = 0; k < JOULE_METER_COUNT; k++)
        want[k] = automatic || o->want[k];
    if (automatic) want[JOULE_METER_CONSTANT] = o->constant_watts > 0;
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    e->cpus = o->cpus > 0 ? o->cpus : online > 0 ? (int)online : 1;
    bool cpu_side = false; /* one CPU-side meter at most: they measure the same thing */
    if (want[JOULE_METER_CONSTANT]) {
        if (o->constant_watts > 0) {
            e->watts = o->constant_watts;
            e->on[JOULE_METER_CONSTANT] = cpu_side = true;
            snprintf(e->why[JOULE_METER_CONSTANT], sizeof e->why[0], "%g W stated by the user (--power-watts)",
                     e->watts);
        } else {
            snprintf(e->why[JOULE_METER_CONSTANT], sizeof e->why[0], "no power given (--power-watts W)");
        }
    } else {
        snprintf(e->why[JOULE_METER_CONSTANT], sizeof e->why[0], "not asked for (--power-watts W)");
    }
    if (want[JOULE_METER_RAPL] && !cpu_side) {
        if (joule_rapl_open(&e->rapl, o->rapl_root) == JOULE_OK) {
            e->on[JOULE_METER_RAPL] = cpu_side = true;
            char *w = e->why[JOULE_METER_RAPL];
            size_t n = (size_t)snprintf(w, sizeof e->why[0], "%d domain%s:", e->rapl.n, e->rapl.n > 1 ? "s" : "");
            for (int i = 0; i < e->rapl.n && n < sizeof e->why[0]; i++)
                n += (size_t)snprintf(w + n, sizeof e->why[0] - n, " %s", e->rapl.name[i]);
        } else {
            snprintf(e->why[JOULE_METER_RAPL], sizeof e->why[0], "%s", joule_last_error());
        }
    } else if (!want[JOULE_METER_RAPL] || cpu_side) {
        snprintf(e->why[JOULE_METER_RAPL], sizeof e->why[0], "%s",
                 cpu_side ? "not tried: a CPU meter is already open" : "not asked for");
    }
    if (want[JOULE_METER_PERF] && !cpu_side) {
        if (joule_perf_open(e, o->perf_root) == JOULE_OK) {
            e->on[JOULE_METER_PERF] = cpu_side = true;
            snprintf(e->why[JOULE_METER_PERF], sizeof e->why[0], "%d event%s (%s%s%s)", e->perf_n,
                     e->perf_n > 1 ? "s" : "", e->perf_name[0], e->perf_n > 1 ? ", " : "",
                     e->perf_n > 1 ? e->perf_name[1] : "");
        } else {
            snprintf(e->why[JOULE_METER_PERF], sizeof e->why[0], "%s", joule_last_error());
        }
    } else if (!e->why[JOULE_METER_PERF][0]) {
        snprintf(e->why[JOULE_METER_PERF], sizeof e->why[0], "%s",
                 cpu_side ? "not tried: a CPU meter is already open" : "not asked for");
    }
    if (want[JOULE_METER_NVML]) {
        char detail[200];
        if (joule_nvml_open(&e->nvml, o->nvml_lib, detail, sizeof detail) == JOULE_OK) {
            e->on[JOULE_METER_NVML] = true;
            snprintf(e->why[JOULE_METER_NVML], sizeof e->why[0], "%s", detail);
        } else {
            snprintf(e->why[JOULE_METER_NVML], sizeof e->why[0], "%s", joule_last_error());
        }
    } else {
        snprintf(e->why[JOULE_METER_NVML], sizeof e->why[0], "not asked for");
    }
    if (want[JOULE_METER_MODELED] && !cpu_side) {
        if (o->have_cpu_profile && o->cpu.tdp_w > 0) {
            e->cpu = o->cpu;
            e->on[JOULE_METER_MODELED] = cpu_side = true;
            int cores = e->cpu.cores > 0 ? e->cpu.cores : e->cpus;
            snprintf(e->why[JOULE_METER_MODELED], sizeof e->why[0],
                     "profile %s: idle %.3g W x %d/%d CPUs x wall + %.3g W per busy core x CPU time", e->cpu.name,
                     e->cpu.idle_w, e->cpus, cores, (e->cpu.tdp_w - e->cpu.idle_w) / cores);
        } else {
            snprintf(e->why[JOULE_METER_MODELED], sizeof e->why[0], "no CPU profile with a TDP (--hardware)");
        }
    } else if (!e->why[JOULE_METER_MODELED][0]) {
        snprintf(e->why[JOULE_METER_MODELED], sizeof e->why[0], "%s",
                 cpu_side ? "not needed: a CPU meter is open" : "not asked for");
    }
    bool any = false;
    for (int k = 0; k < JOULE_METER_COUNT; k++)
        any |= e->on[k];
    if (!any) {
        char msg[1200] = "";
        for (int k = 0; k < JOULE_METER_COUNT; k++)
            snprintf(msg + strlen(msg), sizeof msg - strlen(msg), "%s%s: %s", k ? "; " : "", joule_meter_names[k],
                     e->why[k]);
        return joule_fail(JOULE_ERR_ARG, "no energy meter can be used (%s)", msg);
    }
    joule_energy_method(e->on, e->method, sizeof e->method);
    char *tdp = e->on[JOULE_METER_MODELED] && o->cpu_generic ? strstr(e->method, "modeled:tdp") : NULL;
    if (tdp) { /* a guessed CPU says so in every figure's method */
        char rest[96];
        snprintf(rest, sizeof rest, "%s", tdp + strlen("modeled:tdp"));
        snprintf(tdp, sizeof e->method - (size_t)(tdp - e->method), "modeled:tdp-generic%s", rest);
    }
    return JOULE_OK;
}

void joule_energy_close(joule_energy *e) {
    if (e->on[JOULE_METER_PERF]) joule_perf_close(e);
    if (e->nvml) joule_nvml_close(e->nvml);
    e->nvml = NULL;
    memset(e->on, 0, sizeof e->on);
}

static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int joule_energy_sample_now(const joule_energy *e, joule_energy_sample *s) {
    memset(s, 0, sizeof *s);
    s->wall_s = joule_now();
    s->cpu_s = cpu_seconds();
    s->flops = joule_flops_counted();
    int rc = JOULE_OK;
    if (e->on[JOULE_METER_RAPL] && (rc = joule_rapl_read(&e->rapl, s->rapl_uj))) return rc;
    if (e->on[JOULE_METER_PERF] && (rc = joule_perf_read(e, s->perf_count))) return rc;
    if (e->on[JOULE_METER_NVML] && (rc = joule_nvml_read(e->nvml, &s->nvml_j))) return rc;
    return JOULE_OK;
}

int joule_energy_window_start(joule_energy_window *w, const joule_energy *e) {
    w->e = e;
    return joule_energy_sample_now(e, &w->start);
}

int joule_energy_window_stop(const joule_energy_window *w, joule_energy_report *r) {
    const joule_energy *e = w->e;
    joule_energy_sample end;
    memset(r, 0, sizeof *r);
    r->pue = JOULE_DEFAULT_PUE;
    r->grid_g_per_kwh = JOULE_DEFAULT_GRID_G_PER_KWH;
    int rc = joule_energy_sample_now(e, &end);
    if (rc) return rc;
    const joule_energy_sample *s = &w->start;
    r->duration_s = end.wall_s - s->wall_s;
    r->cpu_s = end.cpu_s - s->cpu_s;
    r->flops = end.flops - s->flops;
    if (e->on[JOULE_METER_RAPL])
        for (int i = 0; i < e->rapl.n; i++) {
            double j = joule_rapl_delta_j(s->rapl_uj[i], end.rapl_uj[i], e->rapl.max_uj[i]);
            if (e->rapl.dram[i])
                r->dram_j += j;
            else
                r->cpu_j += j;
        }
    if (e->on[JOULE_METER_PERF])
        for (int i = 0; i < e->perf_n; i++) {
            double j = (double)(end.perf_count[i] - s->perf_count[i]) * e->perf_scale[i];
            if (strcmp(e->perf_name[i], "energy-ram") == 0)
                r->dram_j += j;
            else
                r->cpu_j += j;
        }
    if (e->on[JOULE_METER_CONSTANT]) r->cpu_j += e->watts * r->duration_s;
    if (e->on[JOULE_METER_MODELED]) {
        const joule_hw_profile *p = &e->cpu;
        int cores = p->cores > 0 ? p->cores : e->cpus;
        double idle = p->idle_w * (e->cpus < cores ? (double)e->cpus / cores : 1.0);
        r->cpu_j += idle * r->duration_s + (p->tdp_w - p->idle_w) / cores * r->cpu_s;
    }
    if (e->on[JOULE_METER_NVML]) r->gpu_j = end.nvml_j - s->nvml_j;
    r->joules = r->cpu_j + r->dram_j + r->gpu_j;
    snprintf(r->method, sizeof r->method, "%s", e->method);
    r->measured = !e->on[JOULE_METER_MODELED];
    return JOULE_OK;
}

double joule_energy_kwh(const joule_energy_report *r) { return r->joules * r->pue / 3.6e6; }
double joule_energy_kg_co2e(const joule_energy_report *r) { return joule_energy_kwh(r) * r->grid_g_per_kwh / 1000.0; }

static double per(double j, uint64_t n) { return n ? j / (double)n : 0.0; }
static double rate(double x, double s) { return s > 0 ? x / s : 0.0; }

char *joule_energy_report_json(const joule_energy_report *r, const char *label) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    const double kwh = joule_energy_kwh(r), kg = joule_energy_kg_co2e(r);
    if (label) cJSON_AddStringToObject(o, "label", label);
    /* CodeCarbon's names and units */
    cJSON_AddNumberToObject(o, "duration", r->duration_s);
    cJSON_AddNumberToObject(o, "emissions", kg);
    cJSON_AddNumberToObject(o, "emissions_rate", rate(kg, r->duration_s));
    cJSON_AddNumberToObject(o, "cpu_power", rate(r->cpu_j, r->duration_s));
    cJSON_AddNumberToObject(o, "gpu_power", rate(r->gpu_j, r->duration_s));
    cJSON_AddNumberToObject(o, "ram_power", rate(r->dram_j, r->duration_s));
    cJSON_AddNumberToObject(o, "cpu_energy", r->cpu_j * r->pue / 3.6e6);
    cJSON_AddNumberToObject(o, "gpu_energy", r->gpu_j * r->pue / 3.6e6);
    cJSON_AddNumberToObject(o, "ram_energy", r->dram_j * r->pue / 3.6e6);
    cJSON_AddNumberToObject(o, "energy_consumed", kwh);
    cJSON_AddNumberToObject(o, "pue", r->pue);
    /* joule's own */
    cJSON_AddStringToObject(o, "method", r->method);
    cJSON_AddBoolToObject(o, "measured", r->measured);
    cJSON_AddNumberToObject(o, "cpu_time", r->cpu_s);
    cJSON_AddNumberToObject(o, "joules", r->joules);
    cJSON_AddNumberToObject(o, "Wh", r->joules / 3600.0);
    cJSON_AddNumberToObject(o, "flops", (double)r->flops);
    cJSON_AddNumberToObject(o, "tokens", (double)r->tokens);
    cJSON_AddNumberToObject(o, "queries", (double)r->queries);
    cJSON_AddNumberToObject(o, "J_per_token", per(r->joules, r->tokens));
    cJSON_AddNumberToObject(o, "J_per_query", per(r->joules, r->queries));
    cJSON_AddNumberToObject(o, "gCO2e", kg * 1000.0);
    cJSON_AddNumberToObject(o, "grid_gCO2e_per_kWh", r->grid_g_per_kwh);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

void joule_energy_csv_header(char *buf, size_t n) {
    snprintf(buf, n,
             "label,duration,emissions,cpu_power,gpu_power,ram_power,energy_consumed,pue,method,measured,"
             "joules,Wh,flops,tokens,queries,J_per_token,J_per_query,gCO2e,grid_gCO2e_per_kWh");
}

void joule_energy_csv_row(const joule_energy_report *r, const char *label, char *buf, size_t n) {
    const double kg = joule_energy_kg_co2e(r);
    snprintf(buf, n, "%s,%.6f,%.6g,%.6g,%.6g,%.6g,%.6g,%.3g,%s,%s,%.6g,%.6g,%llu,%llu,%llu,%.6g,%.6g,%.6g,%.6g",
             label ? label : "", r->duration_s, kg, rate(r->cpu_j, r->duration_s), rate(r->gpu_j, r->duration_s),
             rate(r->dram_j, r->duration_s), joule_energy_kwh(r), r->pue, r->method, r->measured ? "true" : "false",
             r->joules, r->joules / 3600.0, (unsigned long long)r->flops, (unsigned long long)r->tokens,
             (unsigned long long)r->queries, per(r->joules, r->tokens), per(r->joules, r->queries), kg * 1000.0,
             r->grid_g_per_kwh);
}
