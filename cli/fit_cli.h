/* cli/fit_cli.h — the plot `joule fit` writes. */
#ifndef JOULE_FIT_CLI_H
#define JOULE_FIT_CLI_H

#include <stdbool.h>
#include <stddef.h>

#include "joule/fit.h"

typedef struct {
    const char *title;
    const joule_run *runs;
    size_t n;
    const bool *held_out;       /* may be NULL */
    const joule_pow_fit *pow;   /* may be NULL */
    const joule_chin_fit *chin; /* may be NULL */
    double c_extra;             /* widen the compute axis to include this (0 = none) */
    const joule_pow_fit *boot;  /* bootstrap fits of pow (n_boot), shaded as its interval; may be NULL */
    int n_boot;
    double level;
} fit_plot;

/* The SVG document (caller frees), or NULL when out of memory. */
char *fit_svg(const fit_plot *p);

#endif
