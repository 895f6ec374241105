/* Energy without a named profile: /proc/cpuinfo's model name picks a docs/hardware profile
 * when one matches, else a generic per-core TDP whose figures say "modeled:tdp-generic". */
#define _GNU_SOURCE
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "joule/energy.h"
#include "testutil.h"

static void dirs(char *buf, size_t n) { snprintf(buf, n, "%s/docs/hardware", getenv("JOULE_TEST_SRC")); }

START_TEST(test_match_and_generic) {
    tu_make_dir("joule_hw_");
    char d[4096];
    dirs(d, sizeof d);
    joule_hw_profile hw;
    bool generic;
    tu_write_text(tu_path("epyc"), "processor\t: 0\nmodel name\t: AMD EPYC 7763 64-Core Processor\nflags\t: fpu\n");
    ck_assert_int_eq(joule_hw_detect_cpu(&hw, d, tu_path("epyc"), &generic), JOULE_OK);
    ck_assert(!generic);
    ck_assert_str_eq(hw.name, "amd-epyc-7763");
    tu_write_text(tu_path("xeon"), "model name\t: Intel(R) Xeon(R) Platinum 8380 CPU @ 2.30GHz\n");
    ck_assert_int_eq(joule_hw_detect_cpu(&hw, d, tu_path("xeon"), &generic), JOULE_OK);
    ck_assert(!generic);
    ck_assert_str_eq(hw.name, "intel-xeon-platinum-8380");
    /* a family without its model number is not a match: the figures would be a guess */
    tu_write_text(tu_path("vm"), "model name\t: AMD EPYC\n");
    ck_assert_int_eq(joule_hw_detect_cpu(&hw, d, tu_path("vm"), &generic), JOULE_OK);
    ck_assert(generic);
    ck_assert_str_eq(hw.name, "generic-cpu");
    ck_assert_int_eq(hw.cores, (int)sysconf(_SC_NPROCESSORS_ONLN));
    ck_assert(fabs(hw.tdp_w - JOULE_GENERIC_CORE_TDP_W * hw.cores) < 1e-9 && fabs(hw.idle_w - hw.tdp_w / 3) < 1e-9);
    ck_assert_int_eq(joule_hw_detect_cpu(&hw, d, tu_path("missing"), &generic), JOULE_OK);
    ck_assert(generic);
    tu_remove_dir();
}
END_TEST

/* The generic profile's label reaches the meter set and every report of its windows. */
START_TEST(test_generic_label) {
    char d[4096];
    dirs(d, sizeof d);
    joule_energy_opts o;
    joule_energy_opts_init(&o);
    o.want[JOULE_METER_MODELED] = true;
    ck_assert_int_eq(joule_hw_detect_cpu(&o.cpu, d, "/nonexistent", &o.cpu_generic), JOULE_OK);
    o.have_cpu_profile = true;
    joule_energy e;
    ck_assert_int_eq(joule_energy_open(&e, &o), JOULE_OK);
    ck_assert_str_eq(e.method, "modeled:tdp-generic");
    joule_energy_window w;
    joule_energy_report r;
    ck_assert_int_eq(joule_energy_window_start(&w, &e), JOULE_OK);
    ck_assert_int_eq(joule_energy_window_stop(&w, &r), JOULE_OK);
    ck_assert_str_eq(r.method, "modeled:tdp-generic");
    ck_assert(!r.measured);
    joule_energy_close(&e);
    /* a matched profile keeps the plain label */
    o.cpu_generic = false;
    ck_assert_int_eq(joule_hw_load(&o.cpu, "amd-epyc-7763", d), JOULE_OK);
    ck_assert_int_eq(joule_energy_open(&e, &o), JOULE_OK);
    ck_assert_str_eq(e.method, "modeled:tdp");
    joule_energy_close(&e);
}
END_TEST

int main(void) {
    Suite *s = suite_create("hw_detect");
    TCase *t = tu_tcase(s, "detect", 30, NULL, NULL);
    tcase_add_test(t, test_match_and_generic);
    tcase_add_test(t, test_generic_label);
    return tu_run_suite(s);
}
