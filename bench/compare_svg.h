/* bench/compare_svg.h — the comparison's scatter plots (bench/compare_svg.c). */
#ifndef JOULE_COMPARE_SVG_H
#define JOULE_COMPARE_SVG_H

#include <stdbool.h>

typedef struct {
    const char *name;
    const double *x, *y;
    int n;
} compare_series;

typedef struct {
    const char *title, *x_label, *y_label;
    bool log_x, log_y;
    const compare_series *series;
    int n_series;
    double (*curve)(const void *ctx, double x); /* may be NULL */
    const void *curve_ctx;
    const char *curve_label;
    const char *note; /* may be NULL: a line shown inside the plot */
} compare_plot;

/* The SVG document (caller frees), NULL when out of memory. */
char *compare_svg(const compare_plot *p);

#endif
