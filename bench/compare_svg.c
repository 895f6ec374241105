/* The comparison's two plots as hand-written SVG (joule/svg.h draws the axes): series of
 * points per architecture, each labelled with its budget, on log or linear axes, with an
 * optional curve (the dense L(C) fit) and its bootstrap interval. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "compare_svg.h"

enum { PW = COMPARE_SVG_W, PH = COMPARE_SVG_H, LM = 84, RM = 24, TM = 40, BM = 60, MAX_MARKS = 1024 };

/* one per series: an arch, or an arch at a precision (4 x 3 in the energy plot) */
static const char *const COLOURS[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
                                      "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#393b79", "#637939"};
#define N_COLOURS 12

/* Pixel positions the legend should not hide: the points and samples of the curve. */
typedef struct {
    double x[MAX_MARKS], y[MAX_MARKS];
    int n;
} marks;

static void mark(marks *m, double x, double y) {
    if (m->n < MAX_MARKS) m->x[m->n] = x, m->y[m->n++] = y;
}

/* A faint line through a series' points in the order of their budgets: which way an
 * architecture moves as it gets more compute. */
static void trajectory(FILE *f, const compare_series *se, const joule_svg_axis *sx, const joule_svg_axis *sy,
                       const char *colour) {
    int order[256], n = 0;
    for (int i = 0; i < se->n && n < 256; i++) {
        if (!joule_svg_usable(sx, se->x[i]) || !joule_svg_usable(sy, se->y[i])) continue;
        int k = n++;
        for (; k > 0 && se->budget[order[k - 1]] > se->budget[i]; k--) order[k] = order[k - 1];
        order[k] = i;
    }
    fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-opacity=\"0.35\" points=\"", colour);
    for (int k = 0; k < n; k++) fprintf(f, "%.1f,%.1f ", joule_svg_px(sx, se->x[order[k]]), joule_svg_px(sy, se->y[order[k]]));
    fputs("\"/>\n", f);
}

static void points(FILE *f, const compare_plot *p, const joule_svg_axis *sx, const joule_svg_axis *sy, marks *m) {
    for (int s = 0; s < p->n_series; s++) {
        const compare_series *se = &p->series[s];
        if (se->budget && se->n > 1) trajectory(f, se, sx, sy, COLOURS[s % N_COLOURS]);
        for (int i = 0; i < se->n; i++) {
            if (!joule_svg_usable(sx, se->x[i]) || !joule_svg_usable(sy, se->y[i])) continue;
            char label[32];
            const bool labelled = se->budget && !p->no_labels;
            if (labelled) joule_svg_number(label, sizeof label, se->budget[i]);
            double px = joule_svg_px(sx, se->x[i]), py = joule_svg_px(sy, se->y[i]);
            joule_svg_point(f, px, py, COLOURS[s % N_COLOURS], labelled ? label : NULL);
            mark(m, px, py);
            if (labelled) mark(m, px + 24, py - 8); /* the label */
        }
    }
}

char *compare_svg(const compare_plot *p) {
    joule_svg_axis sx = joule_svg_axis_new(p->log_x), sy = joule_svg_axis_new(p->log_y);
    for (int s = 0; s < p->n_series; s++)
        for (int i = 0; i < p->series[s].n; i++) {
            if (!joule_svg_usable(&sx, p->series[s].x[i]) || !joule_svg_usable(&sy, p->series[s].y[i])) continue;
            joule_svg_widen(&sx, p->series[s].x[i]);
            joule_svg_widen(&sy, p->series[s].y[i]);
        }
    joule_svg_finish(&sx, 0.06, LM, PW - RM);
    joule_svg_finish(&sy, 0.08, PH - BM, TM);
    marks *m = calloc(1, sizeof *m);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = m ? open_memstream(&buf, &len) : NULL;
    if (!f) {
        free(m);
        return NULL;
    }
    joule_svg_begin(f, PW, PH, LM, p->title);
    joule_svg_frame(f, &sx, &sy, p->x_label, p->y_label);
    joule_svg_key keys[2 + N_COLOURS];
    int nk = 0;
    if (p->curve && p->band_lo && p->band_hi) {
        joule_svg_band(f, &sx, &sy, p->band_lo, p->band_hi, p->curve_ctx, COLOURS[0]);
        keys[nk++] = (joule_svg_key){JOULE_SVG_BAND, COLOURS[0], p->band_label ? p->band_label : "interval"};
    }
    if (p->curve) {
        joule_svg_curve(f, &sx, &sy, p->curve, p->curve_ctx, COLOURS[0], true);
        keys[nk++] = (joule_svg_key){JOULE_SVG_DASH, COLOURS[0], p->curve_label ? p->curve_label : "fit"};
        for (int k = 0; k <= 40; k++) {
            double x = joule_svg_at(&sx, k / 40.0), y = p->curve(p->curve_ctx, x);
            if (joule_svg_usable(&sy, y)) mark(m, joule_svg_px(&sx, x), joule_svg_px(&sy, y));
        }
    }
    points(f, p, &sx, &sy, m);
    for (int s = 0; s < p->n_series && nk < 2 + N_COLOURS; s++)
        keys[nk++] = (joule_svg_key){JOULE_SVG_DOT, COLOURS[s % N_COLOURS], p->series[s].name};
    joule_svg_legend(f, &sx, &sy, keys, nk, m->x, m->y, m->n);
    if (p->note) {
        fprintf(f, "<text x=\"%d\" y=\"%d\" fill=\"#666\">", LM + 10, (PH - BM + TM) / 2);
        joule_svg_text(f, p->note);
        fputs("</text>\n", f);
    }
    fputs("</svg>\n", f);
    free(m);
    if (fclose(f)) {
        free(buf);
        return NULL;
    }
    return buf;
}
