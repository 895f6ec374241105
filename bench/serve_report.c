/* `joule bench serve`: result files (docs/BENCH.md maps every field). */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "joule/bench_serve.h"
#include "joule/svg.h"

/* A number, or null where it is unknown (NaN): never a made-up zero. */
static void num(cJSON *o, const char *k, double v) {
    if (isfinite(v)) cJSON_AddNumberToObject(o, k, v);
    else cJSON_AddNullToObject(o, k);
}

static void ms(cJSON *o, const char *what, const joule_pctl *p) {
    char k[64];
    snprintf(k, sizeof k, "mean_%s_ms", what), num(o, k, 1e3 * p->mean);
    snprintf(k, sizeof k, "median_%s_ms", what), num(o, k, 1e3 * p->p50);
    snprintf(k, sizeof k, "p90_%s_ms", what), num(o, k, 1e3 * p->p90);
    snprintf(k, sizeof k, "p99_%s_ms", what), num(o, k, 1e3 * p->p99);
}

static cJSON *run_json(double rate, const joule_serve_summary *s, const joule_serve_slo *slo) {
    cJSON *o = cJSON_CreateObject();
    num(o, "request_rate", rate > 0 ? rate : INFINITY); /* null: all at once */
    cJSON_AddNumberToObject(o, "num_prompts", s->requests);
    cJSON_AddNumberToObject(o, "completed", s->completed);
    num(o, "duration", s->wall_s);
    cJSON_AddNumberToObject(o, "total_input_tokens", (double)s->prompt_tokens);
    cJSON_AddNumberToObject(o, "total_output_tokens", (double)s->output_tokens);
    num(o, "request_throughput", s->req_per_s);
    num(o, "output_throughput", s->tok_per_s);
    num(o, "request_goodput", s->goodput_req_per_s);
    num(o, "slo_ttft_ms", 1e3 * slo->ttft_s);
    num(o, "slo_tpot_ms", 1e3 * slo->tpot_s);
    ms(o, "ttft", &s->ttft);
    ms(o, "tpot", &s->tpot);
    ms(o, "itl", &s->itl);
    ms(o, "e2el", &s->e2e);
    cJSON_AddStringToObject(o, "energy_method", s->method);
    num(o, "energy_j", s->joules);
    num(o, "energy_per_request_j", s->j_per_request);
    num(o, "energy_per_token_j", s->j_per_token);
    num(o, "energy_busy_j", s->busy_joules);
    num(o, "energy_busy_per_request_j", s->busy_j_per_request);
    num(o, "steady_state_start_s", s->ss_t0);
    num(o, "steady_state_duration", s->ss_t1 - s->ss_t0);
    cJSON_AddNumberToObject(o, "steady_state_in_flight", s->ss_in_flight);
    num(o, "steady_state_energy", s->ss_joules);
    num(o, "steady_state_output_tokens", s->ss_tokens);
    num(o, "steady_state_energy_per_token", s->ss_j_per_token);
    num(o, "steady_state_energy_per_request", s->ss_j_per_request);
    num(o, "idle_power_w", s->idle_w);
    num(o, "idle_subtracted_energy_per_request_j", s->idle_sub_j_per_request);
    num(o, "idle_subtracted_energy_per_token_j", s->idle_sub_j_per_token);
    num(o, "idle_subtracted_steady_state_energy_per_token", s->ss_idle_sub_j_per_token);
    return o;
}

int joule_serve_write_json(const char *path, const char *model, const double *rates, const joule_serve_summary *s,
                           int n, const joule_serve_slo *slo) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "bench", "serve");
    cJSON_AddNumberToObject(o, "version", 1);
    cJSON_AddStringToObject(o, "model", model);
    cJSON *runs = cJSON_AddArrayToObject(o, "runs");
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(runs, run_json(rates[i], &s[i], slo));
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    if (!text) return joule_fail(JOULE_ERR_NOMEM, "out of memory writing %s", path);
    int rc = joule_write_file_atomic(path, text, strlen(text));
    free(text);
    return rc;
}

/* CodeCarbon's emissions.csv columns, in its order; what joule does not know stays empty. */
static const char CSV_HEADER[] =
    "timestamp,project_name,run_id,experiment_id,duration,emissions,emissions_rate,cpu_power,gpu_power,ram_power,"
    "cpu_energy,gpu_energy,ram_energy,energy_consumed,country_name,country_iso_code,region,cloud_provider,"
    "cloud_region,os,python_version,codecarbon_version,cpu_count,cpu_model,gpu_count,gpu_model,longitude,latitude,"
    "ram_total_size,tracking_mode,on_cloud,pue\n";

static void cpu_model(char *buf, size_t n) {
    buf[0] = '\0';
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        const char *c = strchr(line, ':');
        if (!strncmp(line, "model name", 10) && c) {
            snprintf(buf, n, "%s", c + 2);
            buf[strcspn(buf, "\n,\"")] = '\0'; /* one CSV field */
            break;
        }
    }
    if (f) fclose(f);
}

static void csv_row(FILE *f, const char *model, double rate, const joule_serve_summary *s) {
    char ts[32], cpu[256], os[256];
    time_t now = time(NULL);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", gmtime(&now));
    cpu_model(cpu, sizeof cpu);
    struct utsname u;
    snprintf(os, sizeof os, "%s", uname(&u) == 0 ? u.sysname : "");
    const bool e = isfinite(s->joules);
    const double kwh = s->joules / 3.6e6, kg = kwh * JOULE_DEFAULT_GRID_G_PER_KWH / 1000.0;
    fprintf(f, "%s,joule bench serve %s,rate=%g,,%.6f,", ts, model, rate, s->wall_s);
    if (e) fprintf(f, "%.9g,%.9g,", kg, s->wall_s > 0 ? kg / s->wall_s : NAN);
    else fprintf(f, ",,");
    /* power and energy by component: joule's serve figures are one device total */
    fprintf(f, ",,,,,,");
    if (e) fprintf(f, "%.9g", kwh);
    fprintf(f, ",,,,,,%s,,,%ld,%s,,,,,,,,%g\n", os, sysconf(_SC_NPROCESSORS_ONLN), cpu, JOULE_DEFAULT_PUE);
}

int joule_serve_write_csv(const char *path, const char *model, const double *rates, const joule_serve_summary *s,
                          int n) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return joule_fail(JOULE_ERR_NOMEM, "out of memory writing %s", path);
    fputs(CSV_HEADER, f);
    for (int i = 0; i < n; i++) csv_row(f, model, rates[i], &s[i]);
    fclose(f);
    int rc = joule_write_file_atomic(path, buf, len);
    free(buf);
    return rc;
}

/* One panel: y(rate) for each series, points joined. */
static void panel(FILE *f, int x0, const char *title, const char *ytitle, const double *rates, const double *const *ys,
                  const char *const *names, int nser, int n) {
    const char *colours[3] = {"#1f77b4", "#ff7f0e", "#2ca02c"};
    joule_svg_axis x = joule_svg_axis_new(false), y = joule_svg_axis_new(false);
    for (int i = 0; i < n; i++) {
        joule_svg_widen(&x, rates[i]);
        for (int k = 0; k < nser; k++) joule_svg_widen(&y, ys[k][i]);
    }
    joule_svg_widen(&y, 0);
    joule_svg_finish(&x, 0.05, x0 + 70, x0 + 430);
    joule_svg_finish(&y, 0.05, 330, 50);
    fprintf(f, "<text x=\"%d\" y=\"44\" font-size=\"13\">", x0 + 70);
    joule_svg_text(f, title);
    fprintf(f, "</text>\n");
    joule_svg_frame(f, &x, &y, "request rate (requests/s)", ytitle);
    joule_svg_key keys[3];
    for (int k = 0; k < nser; k++) {
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", colours[k]);
        for (int i = 0; i < n; i++)
            if (joule_svg_usable(&y, ys[k][i])) fprintf(f, "%.1f,%.1f ", joule_svg_px(&x, rates[i]), joule_svg_px(&y, ys[k][i]));
        fprintf(f, "\"/>\n");
        for (int i = 0; i < n; i++)
            if (joule_svg_usable(&y, ys[k][i])) joule_svg_point(f, joule_svg_px(&x, rates[i]), joule_svg_px(&y, ys[k][i]), colours[k], NULL);
        keys[k] = (joule_svg_key){JOULE_SVG_LINE, colours[k], names[k]};
    }
    joule_svg_legend(f, &x, &y, keys, nser, NULL, NULL, 0);
}

int joule_serve_write_svg(const char *path, const double *rates, const joule_serve_summary *s, int n) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    double *v = calloc(5 * (size_t)(n + 1), sizeof *v);
    if (!f || !v) {
        if (f) fclose(f);
        free(buf);
        free(v);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory writing %s", path);
    }
    double *ttft = v, *tpot = v + n, *jr = v + 2 * n, *jss = v + 3 * n, *jidle = v + 4 * n;
    for (int i = 0; i < n; i++) {
        ttft[i] = 1e3 * s[i].ttft.p90;
        tpot[i] = 1e3 * s[i].tpot.p90;
        jr[i] = s[i].j_per_request;
        jss[i] = s[i].ss_j_per_request;
        jidle[i] = s[i].idle_sub_j_per_request;
    }
    joule_svg_begin(f, 920, 380, 70, "joule bench serve: latency and energy per request against request rate");
    const double *lat[2] = {ttft, tpot}, *en[3] = {jr, jss, jidle};
    const char *ln[2] = {"TTFT p90", "TPOT p90"}, *enn[3] = {"whole run", "steady state", "idle-subtracted"};
    panel(f, 0, "latency", "milliseconds", rates, lat, ln, 2, n);
    panel(f, 460, "energy per request", "joules", rates, en, enn, 3, n);
    fprintf(f, "</svg>\n");
    fclose(f);
    int rc = joule_write_file_atomic(path, buf, len);
    free(buf);
    free(v);
    return rc;
}
