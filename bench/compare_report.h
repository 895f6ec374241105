/* bench/compare_report.h — the report's private pieces: the runs of one arch, shared by
 * bench/compare_report.c and its sections in compare_predict.c and compare_emerge.c. */
#ifndef JOULE_COMPARE_REPORT_H
#define JOULE_COMPARE_REPORT_H

#include <cjson/cJSON.h>
#include <stdio.h>

#include "joule/compare.h"
#include "joule/fit.h"

#define MAX_ROWS 512

/* The finished runs of one arch as fit points (C = counted training FLOPs, loss = val bpb),
 * ascending in budget, and their rows. */
typedef struct {
    joule_run pts[MAX_ROWS];
    const joule_compare_row *rows[MAX_ROWS];
    int n;
} arch_runs;

/* Capability prediction per difficulty bucket from the runs' <stem>.prompts.jsonl
 * (docs/COMPARE.md section 5): report.md's section into f, fit.json's
 * "capability_prediction". */
void compare_capability(FILE *f, cJSON *fit, const arch_runs *runs, const joule_compare_report_opts *o);

/* The emergence panel: report.md's section into f, fit.json's "emergence", and
 * dir/emergence.svg. */
int compare_emergence(const char *dir, FILE *f, cJSON *fit, const arch_runs *runs);

/* The Precision section from dir/precisions.jsonl (nothing when there is none): report.md's
 * table into f, fit.json's "precisions". *out receives the points, sorted by arch, budget
 * and precision, for the energy plot (caller frees; NULL when none). */
int compare_prec_section(const char *dir, FILE *f, cJSON *fit, joule_compare_prec_row **out, int *n_out);

#endif
