/* joule/energy.h — hardware profiles, energy meters and measurement windows.
 *
 * Every energy figure carries its method: "measured:rapl", "measured:perf",
 * "measured:nvml", "measured:constant" (a power the user stated, times wall time) or
 * "modeled:tdp" (idle power x wall time + per-core active power x CPU time, from a hardware
 * profile: CodeCarbon's TDP approach). A sum is "measured:..." only when all its parts are;
 * otherwise it is "modeled:..." and lists its parts (e.g. "modeled:tdp+measured:nvml").
 *
 * Ownership: joule_energy_open fills a caller-owned joule_energy that the caller releases
 * with joule_energy_close. Windows are plain values that refer to an open meter set; any
 * number of them may be open at once, nested or overlapping (they only read counters).
 */
#ifndef JOULE_ENERGY_H
#define JOULE_ENERGY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "joule/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- hardware profiles (core/hardware.c; JSON files in docs/hardware/) ---- */

#define JOULE_HW_PRECISIONS 6
typedef struct {
    char name[64];
    char kind[8]; /* "cpu" or "gpu" */
    /* peak FLOP/s by precision: "fp64", "fp32", "tf32", "bf16", "fp16", "int8"; 0 = unknown */
    double peak_flops[JOULE_HW_PRECISIONS];
    double tdp_w;      /* whole device (CPU package or GPU board) */
    double idle_w;     /* whole device at idle */
    double mem_bw_gbs; /* peak memory bandwidth, GB/s */
    int cores;         /* physical cores (CPU) or SMs (GPU) */
    char source[512];  /* where the numbers come from */
} joule_hw_profile;

/* Index of a precision name in peak_flops, or -1. */
int joule_hw_precision_index(const char *precision);
extern const char *const joule_hw_precision_names[JOULE_HW_PRECISIONS];

/* Parses a profile; `what` names the file in messages. */
int joule_hw_from_json(joule_hw_profile *hw, const char *json, const char *what);
/* Loads `name_or_path`: a path to a .json file, or a profile name looked up as
 * <dir>/<name>.json in each of the ':'-separated `dirs`. */
int joule_hw_load(joule_hw_profile *hw, const char *name_or_path, const char *dirs);
/* The profile "local": fp32 peak = the measured sgemm peak of this process's BLAS
 * (best of repeats over `seconds`; none and 0 when seconds <= 0), cores = online CPUs; power figures copied from `power`
 * (may be NULL: then 0), scaled to the share of its cores this machine has. */
void joule_hw_local(joule_hw_profile *hw, double seconds, const joule_hw_profile *power);

/* The profile of this machine's CPU when none is named: the first CPU profile in `dirs`
 * whose name's words ("amd-epyc-7763") are all words of /proc/cpuinfo's model name
 * (cpuinfo: another file, for tests; NULL = /proc/cpuinfo); else a generic profile
 * "generic-cpu" of JOULE_GENERIC_CORE_TDP_W per online CPU, idle a third, and *generic
 * true (its energy is labelled "modeled:tdp-generic"). */
#define JOULE_GENERIC_CORE_TDP_W 5.6 /* mean of amd-epyc-7763 (280/64) and xeon-8380 (270/40) */
int joule_hw_detect_cpu(joule_hw_profile *hw, const char *dirs, const char *cpuinfo, bool *generic);

/* Best-of-repeats GFLOP/s of square n x n sgemms through joule_sgemm for about `seconds`
 * (the FLOPs it spends are counted like any others). NaN when out of memory. */
double joule_sgemm_peak_gflops(int n, double seconds);

/* ---- meters (core/energy.c, core/meter_*.c) ---- */

typedef enum {
    JOULE_METER_RAPL = 0,
    JOULE_METER_PERF = 1,
    JOULE_METER_NVML = 2,
    JOULE_METER_CONSTANT = 3,
    JOULE_METER_MODELED = 4,
    JOULE_METER_COUNT = 5
} joule_meter_kind;

extern const char *const joule_meter_names[JOULE_METER_COUNT]; /* "rapl", "perf", ... */

#define JOULE_RAPL_MAX_DOMAINS 16
typedef struct {
    int n;
    char name[JOULE_RAPL_MAX_DOMAINS][64];   /* "package-0", "dram", ... */
    char path[JOULE_RAPL_MAX_DOMAINS][768];  /* .../energy_uj */
    uint64_t max_uj[JOULE_RAPL_MAX_DOMAINS]; /* max_energy_range_uj: the counter wraps here */
    bool dram[JOULE_RAPL_MAX_DOMAINS];
} joule_rapl;

/* Finds package domains (intel-rapl:N) and their DRAM subdomains (intel-rapl:N:M named
 * "dram") under `root` (NULL = /sys/class/powercap) and checks each energy_uj can be read.
 * Fails with a message naming the file and, for EACCES, why (root-only since Linux 5.10). */
int joule_rapl_open(joule_rapl *r, const char *root);
/* Reads every domain's counter (uJ) into uj[r->n]. */
int joule_rapl_read(const joule_rapl *r, uint64_t *uj);
/* Energy between two readings of a counter that wraps at max_uj, in joules. */
double joule_rapl_delta_j(uint64_t before, uint64_t after, uint64_t max_uj);

typedef struct {
    bool want[JOULE_METER_COUNT]; /* meters to try; all false = automatic (rapl, perf, nvml, then model) */
    const char *rapl_root;        /* NULL = /sys/class/powercap */
    const char *perf_root;        /* NULL = /sys/bus/event_source/devices/power */
    const char *nvml_lib;         /* NULL = $JOULE_NVML_LIB or libnvidia-ml.so.1 */
    double constant_watts;        /* > 0: the "constant" meter with this power */
    joule_hw_profile cpu;         /* profile of the CPU for modeled:tdp */
    bool have_cpu_profile;
    bool cpu_generic;             /* cpu is joule_hw_detect_cpu's generic profile: the label
                                     says "modeled:tdp-generic" */
    int cpus; /* CPUs this process may use (0 = online CPUs) */
} joule_energy_opts;

void joule_energy_opts_init(joule_energy_opts *o);

/* The method label of a set of open meters: "measured:rapl+nvml" when every part is
 * measured, else each part with its own label ("modeled:tdp+measured:nvml"); "none". */
void joule_energy_method(const bool on[JOULE_METER_COUNT], char *buf, size_t n);

typedef struct joule_nvml joule_nvml; /* private to core/meter_nvml.c */

typedef struct {
    bool on[JOULE_METER_COUNT];
    char why[JOULE_METER_COUNT][320]; /* for each meter: what was found, or why not */
    joule_rapl rapl;
    int perf_fd[4], perf_n;
    double perf_scale[4]; /* joules per count */
    char perf_name[4][32];
    joule_nvml *nvml;
    double watts;         /* constant */
    joule_hw_profile cpu; /* modeled */
    int cpus;
    char method[96]; /* of the whole set, e.g. "measured:rapl" */
} joule_energy;

/* Opens the meters o asks for (automatic: every CPU-side meter in order until one works,
 * RAPL, perf, then the model; plus NVML when a GPU is found; "constant" replaces the CPU
 * side when constant_watts > 0). Fails only when nothing at all can be used (the model needs
 * a CPU profile). e->why says what happened to each meter. */
int joule_energy_open(joule_energy *e, const joule_energy_opts *o);
void joule_energy_close(joule_energy *e);

/* One reading of every open meter. */
typedef struct {
    double wall_s, cpu_s;
    uint64_t rapl_uj[JOULE_RAPL_MAX_DOMAINS];
    uint64_t perf_count[4];
    double nvml_j;  /* cumulative GPU energy (all devices) */
    uint64_t flops; /* joule_flops_counted() */
} joule_energy_sample;

int joule_energy_sample_now(const joule_energy *e, joule_energy_sample *s);

/* Meter back ends, used by joule_energy_open (exposed for tests and `joule account --meters`). */
int joule_perf_open(joule_energy *e, const char *root);
int joule_perf_read(const joule_energy *e, uint64_t *counts);
void joule_perf_close(joule_energy *e);
/* detail receives e.g. "2 GPUs (NVIDIA H100), total-energy counter". */
int joule_nvml_open(joule_nvml **out, const char *lib_path, char *detail, size_t detail_n);
int joule_nvml_read(joule_nvml *g, double *joules);
void joule_nvml_close(joule_nvml *g);

/* ---- measurement windows ---- */

typedef struct {
    const joule_energy *e;
    joule_energy_sample start;
} joule_energy_window;

typedef struct {
    char method[96];
    bool measured;
    double duration_s, cpu_s;
    double joules;               /* device energy, all parts */
    double cpu_j, dram_j, gpu_j; /* parts (0 when absent) */
    uint64_t flops;              /* counted in the window */
    uint64_t tokens, queries;    /* set by the caller before writing */
    double pue;                  /* facility overhead, >= 1 */
    double grid_g_per_kwh;       /* carbon intensity of the grid */
} joule_energy_report;

/* Defaults stated in docs/ACCOUNTING.md. */
#define JOULE_DEFAULT_PUE 1.0
#define JOULE_DEFAULT_GRID_G_PER_KWH 475.0

int joule_energy_window_start(joule_energy_window *w, const joule_energy *e);
/* Ends the window (the window may be stopped again later for a longer interval). */
int joule_energy_window_stop(const joule_energy_window *w, joule_energy_report *r);

/* Derived figures: facility energy (kWh, x PUE), emissions (kg CO2e), per token/query. */
double joule_energy_kwh(const joule_energy_report *r);
double joule_energy_kg_co2e(const joule_energy_report *r);

/* CodeCarbon-compatible fields (duration, emissions, emissions_rate, cpu_power, gpu_power,
 * ram_power, cpu_energy, gpu_energy, ram_energy, energy_consumed, pue) plus joule's own
 * (method, measured, joules, Wh, flops, tokens, queries, J_per_token, J_per_query,
 * gCO2e, grid_gCO2e_per_kWh). JSON: one compact object, caller frees. CSV: header and row. */
char *joule_energy_report_json(const joule_energy_report *r, const char *label);
void joule_energy_csv_header(char *buf, size_t n);
void joule_energy_csv_row(const joule_energy_report *r, const char *label, char *buf, size_t n);

#ifdef __cplusplus
}
#endif
#endif
