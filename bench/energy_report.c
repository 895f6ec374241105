/* Energy-per-query results out: JSON (cJSON), CSV, an SVG bar chart, and the tables for
 * humans (one model, or several side by side). Files are written atomically. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "joule/bench_energy.h"
#include "joule/svg.h"

/* ---------------------------------------------------------------- JSON */

static void add_pcts(cJSON *o, const char *name, double p50, double p95, double p99) {
    cJSON *p = cJSON_AddObjectToObject(o, name);
    if (!p) return;
    cJSON_AddNumberToObject(p, "p50", p50);
    cJSON_AddNumberToObject(p, "p95", p95);
    cJSON_AddNumberToObject(p, "p99", p99);
}

static cJSON *result_json(const joule_bench_energy_result *r) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "label", r->label);
    cJSON_AddStringToObject(o, "arch", r->arch);
    cJSON_AddNumberToObject(o, "params", r->params);
    cJSON_AddNumberToObject(o, "params_active", r->params_active);
    cJSON_AddNumberToObject(o, "prompt", r->prompt);
    cJSON_AddNumberToObject(o, "generate", r->generate);
    cJSON_AddNumberToObject(o, "batch", r->batch);
    cJSON_AddNumberToObject(o, "queries", r->queries);
    cJSON_AddNumberToObject(o, "warmup", r->warmup);
    cJSON_AddNumberToObject(o, "seed", (double)r->seed);
    char digest[20];
    snprintf(digest, sizeof digest, "%016llx", (unsigned long long)r->tokens_digest);
    cJSON_AddStringToObject(o, "tokens_digest", digest);
    cJSON_AddNumberToObject(o, "threads", r->threads);
    cJSON_AddStringToObject(o, "blas_core", r->blas_core);
    cJSON *lat = cJSON_AddObjectToObject(o, "latency_s");
    if (lat) {
        add_pcts(lat, "query", r->query_p50, r->query_p95, r->query_p99);
        add_pcts(lat, "first_token", r->ttft_p50, r->ttft_p95, r->ttft_p99);
        add_pcts(lat, "token", r->token_p50, r->token_p95, r->token_p99);
    }
    cJSON_AddNumberToObject(o, "tokens_per_s", r->tokens_per_s);
    cJSON_AddNumberToObject(o, "window_s", r->wall_s);
    cJSON *fl = cJSON_AddObjectToObject(o, "flops_per_query");
    if (fl) {
        cJSON_AddNumberToObject(fl, "analytic", r->flops_analytic);
        cJSON_AddNumberToObject(fl, "counted", r->flops_counted);
        cJSON_AddNumberToObject(fl, "prefill_analytic", r->flops_prefill_analytic);
        cJSON_AddNumberToObject(fl, "decode_analytic", r->flops_decode_analytic);
        cJSON_AddNumberToObject(fl, "search_analytic", r->flops_search);
    }
    cJSON_AddStringToObject(o, "energy_method", r->energy.method);
    cJSON_AddNumberToObject(o, "J_per_query", r->j_per_query);
    cJSON_AddNumberToObject(o, "J_per_token", r->j_per_token);
    cJSON_AddNumberToObject(o, "Wh_per_1k_queries", r->wh_per_1k_queries);
    cJSON_AddNumberToObject(o, "gCO2e_per_1k_queries", r->g_co2e_per_1k_queries);
    cJSON_AddNumberToObject(o, "pue", r->energy.pue);
    cJSON_AddNumberToObject(o, "grid_gCO2e_per_kWh", r->energy.grid_g_per_kwh);
    if (r->retrieval) {
        cJSON *rt = cJSON_AddObjectToObject(o, "retrieval");
        if (rt) {
            cJSON_AddNumberToObject(rt, "searches_per_query", r->searches_per_query);
            cJSON_AddStringToObject(rt, "search_method", r->search_method);
            cJSON_AddNumberToObject(rt, "time_share", r->retrieval_time_share);
            cJSON_AddNumberToObject(rt, "flops_share", r->retrieval_flops_share);
        }
    } else {
        cJSON_AddNullToObject(o, "retrieval");
    }
    cJSON_AddNumberToObject(o, "peak_rss_bytes", (double)r->peak_rss_bytes);
    cJSON_AddBoolToObject(o, "peak_rss_reset", r->peak_rss_reset);
    cJSON_AddStringToObject(o, "precision", r->precision);
    cJSON_AddStringToObject(o, "kernels", r->kernels);
    cJSON_AddNumberToObject(o, "weight_bytes_per_token", r->weight_bytes_per_token);
    if (r->quality) {
        cJSON_AddNumberToObject(o, "bpb", r->bpb);
        cJSON_AddNumberToObject(o, "kl_bits", r->kl_bits);
    }
    /* the window's whole report, CodeCarbon-compatible fields included */
    char *e = joule_energy_report_json(&r->energy, r->label);
    cJSON *ej = e ? cJSON_Parse(e) : NULL;
    free(e);
    if (ej) cJSON_AddItemToObject(o, "energy", ej);
    return o;
}

int joule_bench_energy_write_json(const char *path, const joule_bench_energy_result *r, int n) {
    cJSON *root = cJSON_CreateObject();
    cJSON *models = root ? cJSON_AddArrayToObject(root, "models") : NULL;
    bool ok = models && cJSON_AddStringToObject(root, "bench", "energy");
    for (int i = 0; ok && i < n; i++) {
        cJSON *m = result_json(&r[i]);
        ok = m && cJSON_AddItemToArray(models, m);
    }
    char *s = ok ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!s) return joule_fail(JOULE_ERR_NOMEM, "%s: out of memory building the JSON", path);
    size_t len = strlen(s);
    s[len] = '\n'; /* cJSON's NUL becomes the final newline */
    int rc = joule_write_file_atomic(path, s, len + 1);
    free(s);
    return rc;
}

/* ---------------------------------------------------------------- CSV and SVG */

/* Text built in memory (open_memstream), then written atomically. */
static int write_stream(const char *path, char **buf, size_t *len, FILE *f) {
    bool bad = ferror(f) != 0;
    bad |= fclose(f) != 0; /* sets *buf and *len */
    int rc = bad || !*buf ? joule_fail(JOULE_ERR_NOMEM, "%s: out of memory formatting the file", path)
                          : joule_write_file_atomic(path, *buf, *len);
    free(*buf);
    return rc;
}

/* A CSV field: quoted when it holds a comma, quote or line break. */
static void csv_text(FILE *f, const char *s) {
    if (!strpbrk(s, ",\"\r\n")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

int joule_bench_energy_write_csv(const char *path, const joule_bench_energy_result *r, int n) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return joule_fail(JOULE_ERR_NOMEM, "%s: out of memory", path);
    fputs("label,arch,params,params_active,prompt,generate,batch,queries,warmup,seed,threads,blas_core,"
          "query_p50_s,query_p95_s,query_p99_s,first_token_p50_s,first_token_p95_s,first_token_p99_s,"
          "token_p50_s,token_p95_s,token_p99_s,tokens_per_s,window_s,flops_analytic,flops_counted,flops_search,"
          "energy_method,J_per_query,J_per_token,Wh_per_1k_queries,gCO2e_per_1k_queries,pue,grid_gCO2e_per_kWh,"
          "retrieval_time_share,retrieval_flops_share,peak_rss_bytes\n",
          f);
    for (int i = 0; i < n; i++) {
        const joule_bench_energy_result *x = &r[i];
        csv_text(f, x->label);
        fprintf(f, ",%s,%.0f,%.0f,%d,%d,%d,%d,%d,%llu,%d,", x->arch, x->params, x->params_active, x->prompt,
                x->generate, x->batch, x->queries, x->warmup, (unsigned long long)x->seed, x->threads);
        csv_text(f, x->blas_core);
        fprintf(f, ",%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.8g,%.8g,%.8g,%s,%.6g,%.6g,%.6g,%.6g,%g,%g,",
                x->query_p50, x->query_p95, x->query_p99, x->ttft_p50, x->ttft_p95, x->ttft_p99, x->token_p50,
                x->token_p95, x->token_p99, x->tokens_per_s, x->wall_s, x->flops_analytic, x->flops_counted,
                x->flops_search, x->energy.method, x->j_per_query, x->j_per_token, x->wh_per_1k_queries, x->g_co2e_per_1k_queries,
                x->energy.pue, x->energy.grid_g_per_kwh);
        if (x->retrieval)
            fprintf(f, "%.6g,%.6g,", x->retrieval_time_share, x->retrieval_flops_share);
        else
            fputs(",,", f);
        fprintf(f, "%llu\n", (unsigned long long)x->peak_rss_bytes);
    }
    return write_stream(path, &buf, &len, f);
}

enum { SVG_W = 760, SVG_LABEL = 180, SVG_BAR = 22, SVG_GAP = 10, SVG_PANEL_TOP = 56, SVG_AXIS = 30 };

/* One panel of horizontal bars, value i of each model, on a value axis from 0 with round
 * ticks (joule/svg.h) so that bars read against numbers, not only against each other. */
static int svg_panel(FILE *f, int y, const char *title, const char *unit, const double *v,
                     const joule_bench_energy_result *r, int n, const char *colour) {
    joule_svg_axis ax = joule_svg_axis_new(false);
    joule_svg_widen(&ax, 0);
    for (int i = 0; i < n; i++) joule_svg_widen(&ax, v[i]);
    if (ax.hi <= 0) ax.hi = 1;
    ax.p0 = SVG_LABEL;
    ax.p1 = SVG_W - 110;
    fprintf(f, "<text x=\"10\" y=\"%d\" font-weight=\"bold\">", y);
    joule_svg_text(f, title);
    fprintf(f, " (%s)</text>\n", unit);
    y += 12;
    const int bottom = y + n * (SVG_BAR + SVG_GAP);
    joule_svg_ticks(f, &ax, bottom, y, true);
    for (int i = 0; i < n; i++) {
        double w = isfinite(v[i]) && v[i] > 0 ? joule_svg_px(&ax, v[i]) - SVG_LABEL : 0;
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">", SVG_LABEL - 8, y + 16);
        joule_svg_text(f, r[i].label);
        fprintf(f, "</text>\n<rect x=\"%d\" y=\"%d\" width=\"%.1f\" height=\"%d\" fill=\"%s\"/>\n", SVG_LABEL, y, w,
                SVG_BAR, colour);
        char num[32];
        joule_svg_number(num, sizeof num, v[i]);
        fprintf(f, "<text x=\"%.1f\" y=\"%d\">%s %s</text>\n", SVG_LABEL + w + 6, y + 16, num, unit);
        y += SVG_BAR + SVG_GAP;
    }
    fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", SVG_LABEL, bottom, SVG_W - 110, bottom);
    return bottom + SVG_AXIS + 20;
}

int joule_bench_energy_write_svg(const char *path, const joule_bench_energy_result *r, int n) {
    double *v = malloc(2 * (size_t)(n > 0 ? n : 1) * sizeof *v);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = v ? open_memstream(&buf, &len) : NULL;
    if (!f) {
        free(v);
        return joule_fail(JOULE_ERR_NOMEM, "%s: out of memory", path);
    }
    for (int i = 0; i < n; i++) {
        v[i] = r[i].j_per_query;
        v[n + i] = r[i].tokens_per_s;
    }
    const int height = SVG_PANEL_TOP + 2 * (12 + n * (SVG_BAR + SVG_GAP) + SVG_AXIS + 20);
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" "
            "font-size=\"13\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            SVG_W, height);
    fprintf(f, "<text x=\"10\" y=\"22\" font-size=\"16\">joule bench energy: %d queries, prompt %d, %d generated, "
               "batch %d</text>\n",
            n ? r[0].queries : 0, n ? r[0].prompt : 0, n ? r[0].generate : 0, n ? r[0].batch : 0);
    fprintf(f, "<text x=\"10\" y=\"40\" fill=\"#555\">energy method: ");
    joule_svg_text(f, n ? r[0].energy.method : "none");
    fprintf(f, " (steady-state window, warm-up excluded)</text>\n");
    int y = svg_panel(f, SVG_PANEL_TOP + 14, "Energy per query", "J", v, r, n, "#d95f02");
    svg_panel(f, y, "Generated tokens per second", "tok/s", v + n, r, n, "#1b9e77");
    fputs("</svg>\n", f);
    free(v);
    return write_stream(path, &buf, &len, f);
}

/* ---------------------------------------------------------------- tables */

static void fmt_si(char *b, size_t n, double v) {
    const char *suffix[] = {"", "k", "M", "G", "T", "P"};
    int k = 0;
    while (fabs(v) >= 1000 && k < 5) {
        v /= 1000;
        k++;
    }
    snprintf(b, n, "%.3g%s", v, suffix[k]);
}

/* Row `row` of the table for model r into b. Returns the row's name, NULL past the end. */
static const char *table_cell(int row, const joule_bench_energy_result *r, char *b, size_t n) {
    char x[32], y[32];
    switch (row) {
    case 0: snprintf(b, n, "%s", r->arch); return "arch";
    case 1: fmt_si(x, sizeof x, r->params), fmt_si(y, sizeof y, r->params_active);
        snprintf(b, n, "%s / %s", x, y);
        return "params total / active";
    case 2: snprintf(b, n, "%.1f / %.1f / %.1f", 1e3 * r->query_p50, 1e3 * r->query_p95, 1e3 * r->query_p99);
        return "query latency p50/p95/p99 ms";
    case 3: snprintf(b, n, "%.1f / %.1f / %.1f", 1e3 * r->ttft_p50, 1e3 * r->ttft_p95, 1e3 * r->ttft_p99);
        return "first token p50/p95/p99 ms";
    case 4: snprintf(b, n, "%.2f / %.2f / %.2f", 1e3 * r->token_p50, 1e3 * r->token_p95, 1e3 * r->token_p99);
        return "per token p50/p95/p99 ms";
    case 5: snprintf(b, n, "%.1f", r->tokens_per_s); return "generated tokens/s";
    case 6: fmt_si(x, sizeof x, r->flops_analytic), fmt_si(y, sizeof y, r->flops_counted);
        snprintf(b, n, "%s / %s", x, y);
        return "FLOPs/query analytic / counted";
    case 7: snprintf(b, n, "%.4g", r->j_per_query); return "energy J/query";
    case 15:
        fmt_si(x, sizeof x, r->flops_search);
        snprintf(b, n, "%.2f / %s", r->searches_per_query, r->retrieval ? x : "-");
        return "searches/query / search FLOPs";
    case 8: snprintf(b, n, "%.4g", r->j_per_token); return "energy J/generated token";
    case 9: snprintf(b, n, "%.4g", r->wh_per_1k_queries); return "Wh / 1k queries (x PUE)";
    case 10: snprintf(b, n, "%.4g", r->g_co2e_per_1k_queries); return "gCO2e / 1k queries";
    case 11: snprintf(b, n, "%s", r->energy.method); return "energy method";
    case 12:
        if (r->retrieval)
            snprintf(b, n, "%.1f%% / %.1f%%", 100 * r->retrieval_time_share, 100 * r->retrieval_flops_share);
        else
            snprintf(b, n, "-");
        return "retrieval time / FLOPs";
    case 13: snprintf(b, n, "%.1f%s", r->peak_rss_bytes / 1048576.0, r->peak_rss_reset ? "" : " (process)");
        return "peak RSS MiB";
    case 14: snprintf(b, n, "%s x %d", r->blas_core, r->threads); return "BLAS kernels x threads";
    case 16: snprintf(b, n, "%s (%s)", r->precision, r->kernels); return "precision (kernels)";
    case 17: snprintf(b, n, "%.2f", r->weight_bytes_per_token / 1e6); return "weights read MB/token";
    case 18:
        if (r->quality) snprintf(b, n, "%.4f / %.3g", r->bpb, r->kl_bits);
        else snprintf(b, n, "-");
        return "bpb / KL bits (vs 1st model)";
    default: return NULL;
    }
}

void joule_bench_energy_print_compare(FILE *f, const joule_bench_energy_result *r, int n) {
    char cell[96];
    fprintf(f, "%-32s", "");
    for (int i = 0; i < n; i++) fprintf(f, " | %-26.26s", r[i].label);
    fputc('\n', f);
    for (int row = 0;; row++) {
        const char *name = n ? table_cell(row, &r[0], cell, sizeof cell) : NULL;
        if (!name) break;
        fprintf(f, "%-32s", name);
        for (int i = 0; i < n; i++) {
            table_cell(row, &r[i], cell, sizeof cell);
            fprintf(f, " | %-26s", cell);
        }
        fputc('\n', f);
    }
}

void joule_bench_energy_print(FILE *f, const joule_bench_energy_result *r) {
    char cell[96];
    fprintf(f, "%s: %d queries (after %d warm-up), prompt %d, %d generated, batch %d\n", r->label, r->queries,
            r->warmup, r->prompt, r->generate, r->batch);
    for (int row = 0;; row++) {
        const char *name = table_cell(row, r, cell, sizeof cell);
        if (!name) break;
        fprintf(f, "  %-32s %s\n", name, cell);
    }
}
