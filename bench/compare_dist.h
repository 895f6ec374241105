/* bench/compare_dist.h — the grid spread over the ranks of `mpirun -np N joule compare`
 * (docs/COMPARE.md §8), and the row files that let any rank record a finished run.
 *
 * Under mpirun each (budget, arch) run is done, single-process, by one rank. Which rank is
 * fixed by the plan (compare_spread_plan), the same on every rank: the runs still to do, in
 * two phases (RETRO and RETRO-fit runs whose dense run of the same budget is also to do wait
 * for phase 2, since they read its checkpoint), each phase assigned longest-first by planned
 * training FLOPs to the rank with the fewest FLOPs so far. A rank records each finished run
 * in its row file, runs/<arch>-<budget>.row.json (atomic, beside the checkpoint); at the end
 * of a phase every rank receives every rank's rows (compare_spread_exchange) and rank 0
 * writes results.jsonl and removes the row files it now holds. A killed job leaves row files;
 * the next invocation (spread or not) adopts them (compare_rows_adopt) before planning.
 *
 * One process (not under mpirun, or -np 1) has one phase of every run in grid order and saves
 * results.jsonl after each run, as before. Ownership: compare_spread owns its arrays (freed
 * by compare_spread_free); rows are plain values.
 */
#ifndef JOULE_COMPARE_DIST_H
#define JOULE_COMPARE_DIST_H

#include "joule/compare.h"

typedef struct {
    int arch;      /* joule_arch */
    double budget; /* FLOPs asked for */
    double cost;   /* planned training FLOPs, what the assignment balances */
} compare_cell;

typedef struct {
    int rank, size;
    compare_cell *cells;  /* this rank's runs: phase 1's, then phase 2's, each in run order */
    int n_cells;
    int phase_end[2];     /* cells[0, phase_end[0]) is phase 1, [phase_end[0], phase_end[1]) phase 2 */
    int n_phases;         /* 1 in one process, 2 spread */
    int n_loaded;         /* rows the folder held before the runs: they keep their places */
    joule_compare_row *done; /* rows this rank finished since the last exchange */
    int n_done;
    int ran;              /* runs finished by all ranks, up to the last exchange */
} compare_spread;

/* Rank and size from joule/dist.h; nothing planned yet. */
void compare_spread_init(compare_spread *s);
void compare_spread_free(compare_spread *s);

/* This rank's runs of the grid (budgets x archs still to do in out->rows, which must be the
 * same on every rank). */
int compare_spread_plan(compare_spread *s, const joule_compare_plan *p, const joule_compare_outcome *out);

/* Rank 0's rows (the folder it opened) to every rank. */
int compare_spread_share_rows(const compare_spread *s, joule_compare_outcome *out);

/* What rank 0's retrieval set-up found, to every rank: ok (the database is there), whether
 * Ctrl-C stopped it, the FLOPs of one search, the search parameters and the error. */
typedef struct {
    int ok, interrupted;
    double search_flops;
    char params[32];
    char error[512];
} compare_retrieval_info;
int compare_spread_share_retrieval(const compare_spread *s, compare_retrieval_info *info);

/* A finished (or failed) run of this rank, already placed in out->rows: its row file
 * (<checkpoint stem>.row.json, atomic), kept for the next exchange. */
int compare_spread_record(compare_spread *s, const joule_compare_row *r);

/* End of a phase: every rank's rows to every rank, the rows new to the folder put in grid
 * order (budget, then arch: the order one process writes them in), an interrupt on any rank
 * seen by all; rank 0 saves results.jsonl and removes the row files it saved. */
int compare_spread_exchange(compare_spread *s, const joule_compare_plan *p, joule_compare_outcome *out);

/* The row files in dir/runs (a killed spread job's finished runs) into out->rows, replacing
 * the row of the same run; results.jsonl is then saved and the row files removed. */
int compare_rows_adopt(const char *dir, joule_compare_outcome *out);

#endif
