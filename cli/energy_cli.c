/* Energy for the CLI: data folders, meters from flags or environment, the energy line. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "acct_cli.h"
#include "cli.h"
#include "joule/account.h"
#include "joule/ops.h"

void cli_data_dirs(const char *kind, char *buf, size_t n) {
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[len > 0 ? len : 0] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) *slash = '\0';
    const char *env = getenv("JOULE_DATA_DIR");
    int k = 0;
    buf[0] = '\0';
    if (env && *env) k = snprintf(buf, n, "%s/%s:", env, kind);
    if (k >= 0 && (size_t)k < n) snprintf(buf + k, n - (size_t)k, "%s/../docs/%s:docs/%s", exe, kind, kind);
}

int cli_energy_open(joule_energy *e, const char *hardware, double power_watts, const char *meter, char *profile,
                    size_t profile_n) {
    joule_energy_opts o;
    joule_energy_opts_init(&o);
    o.constant_watts = power_watts;
    if (meter && strcmp(meter, "auto") != 0) {
        int k = 0;
        while (k < JOULE_METER_COUNT && strcmp(joule_meter_names[k], meter) != 0)
            k++;
        if (k == JOULE_METER_COUNT)
            return joule_fail(JOULE_ERR_ARG, "meter '%s' is not one of auto, rapl, perf, nvml, constant, tdp", meter);
        o.want[k] = true;
    }
    char dirs[8192];
    cli_data_dirs("hardware", dirs, sizeof dirs);
    /* no profile named: the one matching this CPU, else a generic per-core TDP */
    const bool named = hardware && *hardware && strcmp(hardware, "local") != 0;
    const char *name = named ? hardware : "(detected)";
    int rc = named ? joule_hw_load(&o.cpu, name, dirs) : joule_hw_detect_cpu(&o.cpu, dirs, NULL, &o.cpu_generic);
    if (rc == JOULE_OK && strcmp(o.cpu.kind, "cpu") != 0)
        rc = joule_fail(JOULE_ERR_ARG, "hardware profile '%s' is a %s; the modeled meter needs a CPU profile", name,
                        o.cpu.kind);
    if (rc == JOULE_OK)
        o.have_cpu_profile = true;
    else if (meter && strcmp(meter, "tdp") == 0)
        return rc;
    if (profile) snprintf(profile, profile_n, "%s", o.have_cpu_profile ? o.cpu.name : "none");
    return joule_energy_open(e, &o);
}

void cli_energy_begin(cli_energy *ce, const char *label) {
    memset(ce, 0, sizeof *ce);
    ce->label = label;
    const char *w = getenv("JOULE_POWER_WATTS");
    double watts = 0;
    if (w && *w && !cli_parse_double(w, &watts)) watts = 0;
    if (cli_energy_open(&ce->meters, getenv("JOULE_HARDWARE"), watts, NULL, ce->profile, sizeof ce->profile)) return;
    ce->ok = joule_energy_window_start(&ce->window, &ce->meters) == JOULE_OK;
    if (!ce->ok) joule_energy_close(&ce->meters);
}

void cli_energy_end(cli_energy *ce, uint64_t tokens, uint64_t queries, bool to_stderr, joule_energy_report *out) {
    FILE *f = to_stderr ? stderr : stdout;
    if (!ce->ok) {
        fprintf(f, "energy: not measured (%s)\n", joule_last_error());
        return;
    }
    joule_energy_report r;
    int rc = joule_energy_window_stop(&ce->window, &r);
    joule_energy_close(&ce->meters);
    ce->ok = false;
    if (rc) {
        fprintf(f, "energy: not measured (%s)\n", joule_last_error());
        return;
    }
    r.tokens = tokens;
    r.queries = queries;
    char extra[160] = "";
    if (tokens) snprintf(extra, sizeof extra, ", %.4g J/token", r.joules / (double)tokens);
    if (queries)
        snprintf(extra + strlen(extra), sizeof extra - strlen(extra), ", %.4g J/query", r.joules / (double)queries);
    fprintf(f, "energy: %.4g J = %.4g Wh [%s%s%s] over %.2f s wall, %.2f s CPU%s; %.3g gCO2e at %g gCO2e/kWh, PUE %g\n",
            r.joules, r.joules / 3600, r.method, strstr(r.method, "tdp") ? ", profile " : "",
            strstr(r.method, "tdp") ? ce->profile : "", r.duration_s, r.cpu_s, extra, joule_energy_kg_co2e(&r) * 1000,
            r.grid_g_per_kwh, r.pue);
    const char *csv = getenv("JOULE_ENERGY_CSV");
    if (csv && *csv) {
        bool fresh = access(csv, F_OK) != 0;
        FILE *log = fopen(csv, "a");
        char line[1024];
        if (!log) {
            fprintf(stderr, "joule: %s: cannot append the energy row ($JOULE_ENERGY_CSV)\n", csv);
        } else {
            if (fresh) {
                joule_energy_csv_header(line, sizeof line);
                fprintf(log, "%s\n", line);
            }
            joule_energy_csv_row(&r, ce->label, line, sizeof line);
            fprintf(log, "%s\n", line);
            if (fclose(log)) fprintf(stderr, "joule: %s: write error\n", csv);
        }
    }
    if (out) *out = r;
}

double cli_peak_flops(void) {
    const char *env = getenv("JOULE_PEAK_GFLOPS");
    double g;
    if (env && *env && cli_parse_double(env, &g) && g > 0) return g * 1e9;
    g = joule_sgemm_peak_gflops(1024, 0.3);
    return isfinite(g) && g > 0 ? g * 1e9 : 0;
}

void cli_print_mfu(FILE *f, double analytic, double counted, double seconds, double peak) {
    if (!(seconds > 0) || !(peak > 0)) return;
    fprintf(f,
            "MFU: %.1f%% (analytic %.4g GFLOP/s) and HFU %.1f%% (counted %.4g GFLOP/s) of the sgemm peak %.4g GFLOP/s "
            "(%s, %s)\n",
            100 * analytic / seconds / peak, analytic / seconds / 1e9, 100 * counted / seconds / peak,
            counted / seconds / 1e9, peak / 1e9, joule_blas_corename(),
            getenv("JOULE_PEAK_GFLOPS") ? "from JOULE_PEAK_GFLOPS" : "measured at start");
}
