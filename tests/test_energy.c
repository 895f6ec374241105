/* Energy meters and windows: the RAPL reader on a fake powercap tree (domains, wrap-around,
 * unreadable files), modelled and constant energy labelled as such, nested windows, the
 * writers, and meters that are absent explaining why. */
#define _GNU_SOURCE
#include <check.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "joule/energy.h"
#include "testutil.h"

static void put(const char *rel, const char *text) { tu_write_text(tu_path("%s", rel), text); }

static void put_u64(const char *rel, unsigned long long v) {
    char buf[32];
    snprintf(buf, sizeof buf, "%llu\n", v);
    put(rel, buf);
}

static void mkdir_rel(const char *rel) { ck_assert_int_eq(mkdir(tu_path("%s", rel), 0755), 0); }

#define MAX_UJ 262143328850ull

/* intel-rapl:0 (package-0) with subdomains core (ignored) and dram; intel-rapl:1 (package-1) */
static void fake_tree(void) {
    tu_make_dir("joule_rapl_");
    const char *dirs[] = {"intel-rapl:0", "intel-rapl:0:0", "intel-rapl:0:1", "intel-rapl:1"};
    const char *names[] = {"package-0\n", "core\n", "dram\n", "package-1\n"};
    for (int i = 0; i < 4; i++) {
        char rel[128];
        mkdir_rel(dirs[i]);
        snprintf(rel, sizeof rel, "%s/name", dirs[i]);
        put(rel, names[i]);
        snprintf(rel, sizeof rel, "%s/max_energy_range_uj", dirs[i]);
        put_u64(rel, MAX_UJ);
        snprintf(rel, sizeof rel, "%s/energy_uj", dirs[i]);
        put_u64(rel, 1000000);
    }
}


START_TEST(test_rapl_domains_and_wrap) {
    fake_tree();
    joule_rapl r;
    ck_assert_msg(joule_rapl_open(&r, tu_dir) == JOULE_OK, "%s", joule_last_error());
    ck_assert_int_eq(r.n, 3); /* two packages and one dram; core is inside its package */
    int dram = 0;
    for (int i = 0; i < r.n; i++)
        dram += r.dram[i];
    ck_assert_int_eq(dram, 1);
    ck_assert_uint_eq(r.max_uj[0], MAX_UJ);
    ck_assert_double_eq_tol(joule_rapl_delta_j(1000000, 3500000, MAX_UJ), 2.5, 1e-12);
    /* the counter wrapped: (max - before) + after */
    ck_assert_double_eq_tol(joule_rapl_delta_j(MAX_UJ - 1000000, 500000, MAX_UJ), 1.5, 1e-12);
    tu_remove_dir();
}
END_TEST

static joule_energy open_rapl(void) {
    joule_energy_opts o;
    joule_energy_opts_init(&o);
    o.want[JOULE_METER_RAPL] = true;
    o.rapl_root = tu_dir;
    joule_energy e;
    ck_assert_msg(joule_energy_open(&e, &o) == JOULE_OK, "%s", joule_last_error());
    return e;
}

START_TEST(test_rapl_window_measured_and_nested) {
    fake_tree();
    joule_energy e = open_rapl();
    ck_assert_str_eq(e.method, "measured:rapl");
    joule_energy_window outer, inner;
    ck_assert_int_eq(joule_energy_window_start(&outer, &e), JOULE_OK);
    put_u64("intel-rapl:0/energy_uj", 3000000); /* +2 J */
    ck_assert_int_eq(joule_energy_window_start(&inner, &e), JOULE_OK);
    put_u64("intel-rapl:1/energy_uj", MAX_UJ - 100); /* wraps below */
    put_u64("intel-rapl:0:1/energy_uj", 1500000);    /* dram +0.5 J */
    joule_energy_report ri, ro;
    ck_assert_int_eq(joule_energy_window_stop(&inner, &ri), JOULE_OK);
    put_u64("intel-rapl:1/energy_uj", 400); /* wrapped: +500 uJ from MAX-100 */
    ck_assert_int_eq(joule_energy_window_stop(&outer, &ro), JOULE_OK);
    ck_assert(ri.measured && ro.measured);
    ck_assert_str_eq(ro.method, "measured:rapl");
    const double wrap1 = (double)(MAX_UJ - 100 - 1000000) * 1e-6; /* package-1 in the inner window */
    ck_assert_double_eq_tol(ri.cpu_j, wrap1, 1e-6);
    ck_assert_double_eq_tol(ri.dram_j, 0.5, 1e-9);
    ck_assert_double_eq_tol(ro.cpu_j, 2.0 + (double)(MAX_UJ - 1000000 + 400) * 1e-6, 1e-6);
    ck_assert_double_eq_tol(ro.joules, ro.cpu_j + 0.5, 1e-9);
    ck_assert(ro.duration_s >= ri.duration_s);
    joule_energy_close(&e);
    tu_remove_dir();
}
END_TEST

START_TEST(test_rapl_unreadable_counter) {
    fake_tree();
    const char *path = tu_path("intel-rapl:1/energy_uj");
    ck_assert_int_eq(chmod(path, 0), 0);
    joule_rapl r;
    int rc = joule_rapl_open(&r, tu_dir);
    FILE *probe = fopen(path, "r");
    bool readable = probe != NULL; /* root reads through mode 000 */
    if (probe) fclose(probe);
    if (!readable) {
        ck_assert_int_eq(rc, JOULE_ERR_IO);
        ck_assert_msg(strstr(joule_last_error(), "permission") && strstr(joule_last_error(), path), "%s",
                      joule_last_error());
    } else {
        ck_assert_int_eq(rc, JOULE_OK); /* as root only the permission assertion is skipped */
    }
    /* a directory where the counter should be: unreadable for anyone, named in the message */
    chmod(path, 0644);
    ck_assert_int_eq(remove(path), 0);
    ck_assert_int_eq(mkdir(path, 0755), 0);
    rc = joule_rapl_open(&r, tu_dir);
    ck_assert_int_eq(rc, JOULE_ERR_IO);
    ck_assert_msg(strstr(joule_last_error(), path) != NULL, "%s", joule_last_error());
    tu_remove_dir();
}
END_TEST

START_TEST(test_rapl_absent_and_garbage) {
    joule_rapl r;
    ck_assert_int_ne(joule_rapl_open(&r, "/nonexistent/powercap"), JOULE_OK);
    ck_assert_msg(strstr(joule_last_error(), "no RAPL"), "%s", joule_last_error());
    fake_tree();
    put("intel-rapl:0/energy_uj", "12abc\n");
    ck_assert_int_eq(joule_rapl_open(&r, tu_dir), JOULE_ERR_FORMAT);
    ck_assert_msg(strstr(joule_last_error(), "not an unsigned integer"), "%s", joule_last_error());
    tu_remove_dir();
}
END_TEST

static joule_hw_profile cpu_profile(void) {
    joule_hw_profile p;
    const char *json = "{\"name\":\"test-cpu\",\"kind\":\"cpu\",\"peak_flops\":{\"fp32\":1e12},\"tdp_w\":100,"
                       "\"idle_w\":20,\"cores\":4}";
    ck_assert_msg(joule_hw_from_json(&p, json, "test-cpu.json") == JOULE_OK, "%s", joule_last_error());
    return p;
}

/* Spends `seconds` of this process's CPU time (not wall time: on a loaded machine a wall-time
 * loop may get almost no CPU, and the checks below need CPU time to have been used). */
static double process_cpu_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}
static void burn_cpu(double seconds) {
    volatile double x = 0;
    double t_end = process_cpu_s() + seconds;
    while (process_cpu_s() < t_end)
        for (int i = 0; i < 10000; i++)
            x += sqrt((double)i);
}

START_TEST(test_modeled_energy_is_labelled) {
    joule_energy_opts o;
    joule_energy_opts_init(&o);
    o.rapl_root = "/nonexistent";
    o.perf_root = "/nonexistent";
    o.nvml_lib = "/nonexistent/libnvidia-ml.so.1";
    o.cpu = cpu_profile();
    o.have_cpu_profile = true;
    o.cpus = 2;
    joule_energy e;
    ck_assert_msg(joule_energy_open(&e, &o) == JOULE_OK, "%s", joule_last_error());
    ck_assert_str_eq(e.method, "modeled:tdp");
    ck_assert(!e.on[JOULE_METER_RAPL] && strstr(e.why[JOULE_METER_RAPL], "/nonexistent"));
    ck_assert(!e.on[JOULE_METER_NVML] && strstr(e.why[JOULE_METER_NVML], "dlopen"));
    joule_energy_window w;
    ck_assert_int_eq(joule_energy_window_start(&w, &e), JOULE_OK);
    burn_cpu(0.2);
    joule_energy_report r;
    ck_assert_int_eq(joule_energy_window_stop(&w, &r), JOULE_OK);
    ck_assert(!r.measured);
    ck_assert_str_eq(r.method, "modeled:tdp");
    /* idle 20 W x 2/4 CPUs x wall + (100 - 20)/4 W x CPU time */
    ck_assert_double_eq_tol(r.joules, 10 * r.duration_s + 20 * r.cpu_s, 1e-9);
    ck_assert(r.cpu_s > 0.05 && r.joules > 0);
    r.tokens = 1000;
    r.queries = 4;
    char *js = joule_energy_report_json(&r, "unit");
    cJSON *o2 = cJSON_Parse(js);
    ck_assert_ptr_nonnull(o2);
    ck_assert_str_eq(cJSON_GetObjectItem(o2, "method")->valuestring, "modeled:tdp");
    ck_assert(cJSON_IsFalse(cJSON_GetObjectItem(o2, "measured")));
    ck_assert_double_eq_tol(cJSON_GetObjectItem(o2, "energy_consumed")->valuedouble, r.joules / 3.6e6, 1e-15);
    ck_assert_double_eq_tol(cJSON_GetObjectItem(o2, "J_per_token")->valuedouble, r.joules / 1000, 1e-12);
    ck_assert_double_eq_tol(cJSON_GetObjectItem(o2, "J_per_query")->valuedouble, r.joules / 4, 1e-12);
    ck_assert_double_eq_tol(cJSON_GetObjectItem(o2, "emissions")->valuedouble,
                            r.joules / 3.6e6 * JOULE_DEFAULT_GRID_G_PER_KWH / 1000, 1e-15);
    cJSON_Delete(o2);
    free(js);
    char head[1024], row[1024];
    joule_energy_csv_header(head, sizeof head);
    joule_energy_csv_row(&r, "unit", row, sizeof row);
    ck_assert(strstr(head, "method") && strstr(head, "energy_consumed") && strstr(row, ",modeled:tdp,false,"));
    int commas_h = 0, commas_r = 0;
    for (char *p = head; *p; p++)
        commas_h += *p == ',';
    for (char *p = row; *p; p++)
        commas_r += *p == ',';
    ck_assert_int_eq(commas_h, commas_r);
    joule_energy_close(&e);
}
END_TEST

START_TEST(test_constant_and_nothing) {
    joule_energy_opts o;
    joule_energy_opts_init(&o);
    o.want[JOULE_METER_CONSTANT] = true;
    o.constant_watts = 50;
    joule_energy e;
    ck_assert_int_eq(joule_energy_open(&e, &o), JOULE_OK);
    ck_assert_str_eq(e.method, "measured:constant");
    joule_energy_window w;
    joule_energy_report r;
    ck_assert_int_eq(joule_energy_window_start(&w, &e), JOULE_OK);
    burn_cpu(0.05);
    ck_assert_int_eq(joule_energy_window_stop(&w, &r), JOULE_OK);
    ck_assert_double_eq_tol(r.joules, 50 * r.duration_s, 1e-9);
    ck_assert(r.measured);
    joule_energy_close(&e);
    /* the model without a profile, nothing else: a clear failure listing every meter */
    joule_energy_opts_init(&o);
    o.want[JOULE_METER_MODELED] = true;
    ck_assert_int_eq(joule_energy_open(&e, &o), JOULE_ERR_ARG);
    ck_assert_msg(strstr(joule_last_error(), "tdp: no CPU profile"), "%s", joule_last_error());
}
END_TEST

START_TEST(test_hardware_profiles) {
    joule_hw_profile p;
    ck_assert_int_eq(
        joule_hw_from_json(&p, "{\"name\":\"x\",\"kind\":\"cpu\",\"peak_flops\":{\"fp32\":1e12}}", "x.json"),
        JOULE_ERR_FORMAT);
    ck_assert_msg(strstr(joule_last_error(), "x.json") && strstr(joule_last_error(), "tdp_w"), "%s",
                  joule_last_error());
    ck_assert_int_eq(joule_hw_from_json(&p,
                                        "{\"name\":\"x\",\"kind\":\"cpu\",\"peak_flops\":{\"fp33\":1},"
                                        "\"tdp_w\":1,\"idle_w\":0}",
                                        "x.json"),
                     JOULE_ERR_FORMAT);
    ck_assert_int_eq(joule_hw_from_json(&p,
                                        "{\"name\":\"x\",\"kind\":\"cpu\",\"peak_flops\":{\"fp32\":1},"
                                        "\"tdp_w\":1,\"idle_w\":5}",
                                        "x.json"),
                     JOULE_ERR_FORMAT);
    /* every profile in the repository loads */
    const char *src = getenv("JOULE_TEST_SRC");
    ck_assert_msg(src != NULL, "JOULE_TEST_SRC is not set (run through ctest)");
    char dirs[1024];
    snprintf(dirs, sizeof dirs, "%s/docs/hardware", src);
    const char *names[] = {"nvidia-a100-sxm4-80gb", "nvidia-h100-sxm5-80gb", "nvidia-v100-sxm2-32gb", "amd-epyc-7763",
                           "intel-xeon-platinum-8380"};
    for (int i = 0; i < 5; i++) {
        ck_assert_msg(joule_hw_load(&p, names[i], dirs) == JOULE_OK, "%s", joule_last_error());
        ck_assert(p.tdp_w > 0 && p.source[0]);
    }
    ck_assert_int_ne(joule_hw_load(&p, "nosuch", dirs), JOULE_OK);
    /* local: a measured peak, and this machine's share of the profile's power */
    joule_hw_profile cpu = cpu_profile(), local;
    joule_hw_local(&local, 0.2, &cpu);
    ck_assert(local.peak_flops[joule_hw_precision_index("fp32")] > 1e8);
    ck_assert(local.tdp_w > 0 && local.tdp_w <= cpu.tdp_w);
}
END_TEST

START_TEST(test_sum_is_measured_only_if_all_parts_are) {
    bool on[JOULE_METER_COUNT] = {false};
    char m[96];
    on[JOULE_METER_RAPL] = on[JOULE_METER_NVML] = true;
    joule_energy_method(on, m, sizeof m);
    ck_assert_str_eq(m, "measured:rapl+nvml");
    on[JOULE_METER_RAPL] = false;
    on[JOULE_METER_MODELED] = true;
    joule_energy_method(on, m, sizeof m);
    ck_assert_str_eq(m, "modeled:tdp+measured:nvml");
    on[JOULE_METER_NVML] = false;
    joule_energy_method(on, m, sizeof m);
    ck_assert_str_eq(m, "modeled:tdp");
    memset(on, 0, sizeof on);
    joule_energy_method(on, m, sizeof m);
    ck_assert_str_eq(m, "none");
}
END_TEST

/* The perf PMU and NVML back ends fail with their reason: a power PMU the kernel does not
 * know (a fake sysfs entry), and a library that is not NVML. */
START_TEST(test_perf_and_nvml_explain_failures) {
    fake_tree(); /* reuse the temp folder for a fake event_source/devices/power */
    mkdir_rel("power");
    mkdir_rel("power/events");
    put("power/type", "4000\n");
    put("power/events/energy-pkg", "event=0x02\n");
    put("power/events/energy-pkg.scale", "2.3283064365386962890625e-10\n");
    const char *root = tu_path("power");
    joule_energy e;
    memset(&e, 0, sizeof e);
    ck_assert_int_eq(joule_perf_open(&e, root), JOULE_ERR_IO);
    ck_assert_msg(strstr(joule_last_error(), "power/energy-pkg") && strstr(joule_last_error(), "perf_event_paranoid"),
                  "%s", joule_last_error());
    ck_assert_int_eq(e.perf_n, 0);
    ck_assert_int_eq(joule_perf_open(&e, "/nonexistent/power"), JOULE_ERR_IO);
    ck_assert_msg(strstr(joule_last_error(), "no perf power PMU"), "%s", joule_last_error());
    tu_remove_dir();
    joule_nvml *g = NULL;
    char detail[200];
    ck_assert_int_eq(joule_nvml_open(&g, "libm.so.6", detail, sizeof detail), JOULE_ERR_IO);
    ck_assert_msg(strstr(joule_last_error(), "nvmlInit_v2"), "%s", joule_last_error());
    ck_assert_ptr_null(g);
    setenv("JOULE_NVML_LIB", "/nonexistent/libnvidia-ml.so.1", 1);
    ck_assert_int_eq(joule_nvml_open(&g, NULL, detail, sizeof detail), JOULE_ERR_IO);
    ck_assert_msg(strstr(joule_last_error(), "/nonexistent/libnvidia-ml.so.1"), "%s", joule_last_error());
    unsetenv("JOULE_NVML_LIB");
}
END_TEST

static Suite *energy_suite(void) {
    Suite *s = suite_create("energy");
    TCase *r = tu_tcase(s, "rapl", 30, NULL, NULL);
    tcase_add_test(r, test_rapl_domains_and_wrap);
    tcase_add_test(r, test_rapl_window_measured_and_nested);
    tcase_add_test(r, test_rapl_unreadable_counter);
    tcase_add_test(r, test_rapl_absent_and_garbage);
    TCase *m = tu_tcase(s, "model", 60, NULL, NULL);
    tcase_add_test(m, test_modeled_energy_is_labelled);
    tcase_add_test(m, test_constant_and_nothing);
    tcase_add_test(m, test_hardware_profiles);
    tcase_add_test(m, test_sum_is_measured_only_if_all_parts_are);
    tcase_add_test(m, test_perf_and_nvml_explain_failures);
    return s;
}

int main(void) {
    return tu_run_suite(energy_suite());
}
