/* bench/compare_svg.h — the comparison's scatter plots (bench/compare_svg.c). */
#ifndef JOULE_COMPARE_SVG_H
#define JOULE_COMPARE_SVG_H

#include <stdbool.h>

#include "joule/svg.h"

typedef struct {
    const char *name;
    const double *x, *y;
    const double *budget; /* each point's budget, written beside it; may be NULL */
    int n;
} compare_series;

typedef struct {
    const char *title, *x_label, *y_label;
    bool log_x, log_y;
    const compare_series *series;
    int n_series;
    joule_svg_fn curve; /* may be NULL */
    const void *curve_ctx;
    const char *curve_label;
    joule_svg_fn band_lo, band_hi; /* the curve's interval (same ctx); may be NULL */
    const char *band_label;
    const char *note; /* may be NULL: a line shown inside the plot */
    bool no_labels;   /* points without their budget labels (lines still follow the budgets) */
} compare_plot;

enum { COMPARE_SVG_W = 760, COMPARE_SVG_H = 500 }; /* one plot's size in pixels */

/* The SVG document (caller frees), NULL when out of memory. */
char *compare_svg(const compare_plot *p);

#endif
