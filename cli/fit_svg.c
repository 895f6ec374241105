/* The scaling-law plot: log-log loss against compute, the runs as points, the fitted L(C)
 * with its bootstrap interval and the Chinchilla compute-optimal frontier as curves, the
 * formulas in a legend inside the frame. Hand-written SVG; joule/svg.h draws the axes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "fit_cli.h"
#include "joule/svg.h"

enum { W = 760, H = 500, ML = 84, MR = 24, MT = 40, MB = 60, CURVE_MARKS = 41 };

static const char *const BLUE = "#1f77b4", *const RED = "#d62728", *const RUN = "#333", *const HELD = "#ff7f0e";

static double chin_frontier(const void *ctx, double C) {
    double N, D;
    joule_chin_optimal(ctx, C, &N, &D);
    return joule_chin_loss(ctx, N, D);
}

/* Where the legend must not go: the runs and samples of the curves. */
static int legend_marks(const fit_plot *p, const joule_svg_axis *x, const joule_svg_axis *y, const joule_svg_pow *pc,
                        double *px, double *py) {
    int n = 0;
    for (size_t i = 0; i < p->n; i++) px[n] = joule_svg_px(x, p->runs[i].C), py[n++] = joule_svg_px(y, p->runs[i].loss);
    for (int k = 0; k < CURVE_MARKS; k++) {
        double C = joule_svg_at(x, k / (CURVE_MARKS - 1.0));
        double L[2] = {p->pow ? joule_svg_pow_loss(pc, C) : NAN, p->chin ? chin_frontier(p->chin, C) : NAN};
        for (int c = 0; c < 2; c++)
            if (joule_svg_usable(y, L[c])) px[n] = joule_svg_px(x, C), py[n++] = joule_svg_px(y, L[c]);
    }
    return n;
}

static void legend(FILE *f, const fit_plot *p, const joule_svg_axis *x, const joule_svg_axis *y, const joule_svg_pow *pc,
                   bool band) {
    char pow[128], chin[160], iv[96];
    joule_svg_key k[5];
    int n = 0;
    k[n++] = (joule_svg_key){JOULE_SVG_DOT, RUN, "runs"};
    if (p->held_out) k[n++] = (joule_svg_key){JOULE_SVG_DOT, HELD, "held out (backtest)"};
    if (p->pow) {
        snprintf(pow, sizeof pow, "L(C) = %.4g C^%.4f + %.4g", p->pow->a, p->pow->b, p->pow->c);
        k[n++] = (joule_svg_key){JOULE_SVG_LINE, BLUE, pow};
    }
    if (band) {
        snprintf(iv, sizeof iv, "L(C) %.0f%% bootstrap interval (%d resamples)", 100 * p->level, p->n_boot);
        k[n++] = (joule_svg_key){JOULE_SVG_BAND, BLUE, iv};
    }
    if (p->chin) {
        snprintf(chin, sizeof chin, "compute-optimal L*(C): E=%.4g A=%.4g B=%.4g alpha=%.3f beta=%.3f", p->chin->E,
                 p->chin->A, p->chin->B, p->chin->alpha, p->chin->beta);
        k[n++] = (joule_svg_key){JOULE_SVG_DASH, RED, chin};
    }
    double *px = malloc((p->n + 2 * CURVE_MARKS) * sizeof *px), *py = malloc((p->n + 2 * CURVE_MARKS) * sizeof *py);
    int np = px && py ? legend_marks(p, x, y, pc, px, py) : 0;
    joule_svg_legend(f, x, y, k, n, px, py, np);
    free(px);
    free(py);
}

char *fit_svg(const fit_plot *p) {
    joule_svg_axis x = joule_svg_axis_new(true), y = joule_svg_axis_new(true);
    for (size_t i = 0; i < p->n; i++) {
        joule_svg_widen(&x, p->runs[i].C);
        joule_svg_widen(&y, p->runs[i].loss);
    }
    if (p->c_extra > 0) joule_svg_widen(&x, p->c_extra);
    joule_svg_finish(&x, 0.04, ML, W - MR);
    double *scratch = p->pow && p->boot && p->n_boot >= 2 ? malloc((size_t)p->n_boot * sizeof *scratch) : NULL;
    const joule_svg_pow pc = {p->pow, scratch ? p->boot : NULL, p->n_boot, p->level, scratch};
    /* the fits' ends too: a prediction beyond the runs (c_extra) stays in the frame */
    for (int end = 0; end < 2; end++) {
        double C = joule_svg_at(&x, end);
        if (p->pow) joule_svg_widen(&y, joule_svg_pow_loss(&pc, C));
        if (p->chin) joule_svg_widen(&y, chin_frontier(p->chin, C));
    }
    joule_svg_finish(&y, 0.08, H - MB, MT);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) {
        free(scratch);
        return NULL;
    }
    joule_svg_begin(f, W, H, ML, p->title);
    joule_svg_frame(f, &x, &y, "training compute C (FLOPs)", "loss");
    if (scratch) joule_svg_band(f, &x, &y, joule_svg_pow_lo, joule_svg_pow_hi, &pc, BLUE);
    if (p->pow) joule_svg_curve(f, &x, &y, joule_svg_pow_loss, &pc, BLUE, false);
    if (p->chin) joule_svg_curve(f, &x, &y, chin_frontier, p->chin, RED, true);
    for (size_t i = 0; i < p->n; i++)
        joule_svg_point(f, joule_svg_px(&x, p->runs[i].C), joule_svg_px(&y, p->runs[i].loss),
                        p->held_out && p->held_out[i] ? HELD : RUN, NULL);
    legend(f, p, &x, &y, &pc, scratch != NULL);
    fputs("</svg>\n", f);
    free(scratch);
    if (fclose(f)) {
        free(buf);
        return NULL;
    }
    return buf;
}
