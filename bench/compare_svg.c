/* The comparison's two plots as hand-written SVG: series of points per architecture on
 * log or linear axes, with an optional curve (the dense L(C) fit). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "compare_svg.h"

enum { PW = 760, PH = 480, LM = 76, RM = 150, TM = 40, BM = 56 };

static const char *const COLOURS[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd"};

typedef struct {
    double lo, hi;
    bool log;
} span;

static double tr(const span *s, double v) { return s->log ? log10(v) : v; }

static double to_x(const span *s, double v) { return LM + (tr(s, v) - s->lo) / (s->hi - s->lo) * (PW - LM - RM); }
static double to_y(const span *s, double v) { return PH - BM - (tr(s, v) - s->lo) / (s->hi - s->lo) * (PH - TM - BM); }

static bool usable(const span *s, double v) { return isfinite(v) && (!s->log || v > 0); }

static void widen(span *s, double v) {
    if (!usable(s, v)) return;
    s->lo = fmin(s->lo, tr(s, v));
    s->hi = fmax(s->hi, tr(s, v));
}

static void finish_span(span *s) {
    if (!isfinite(s->lo)) s->lo = 0, s->hi = 1;
    if (s->hi - s->lo < 1e-9) s->lo -= 0.5, s->hi += 0.5;
    double pad = 0.06 * (s->hi - s->lo);
    s->lo -= pad;
    s->hi += pad;
}

static void ticks(FILE *f, const span *s, bool horizontal) {
    for (int k = 0; k <= 5; k++) {
        double t = s->lo + (s->hi - s->lo) * k / 5, v = s->log ? pow(10, t) : t;
        double pos = horizontal ? to_x(s, v) : to_y(s, v);
        if (horizontal) {
            fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#e4e4e4\"/>\n", pos, TM, pos, PH - BM);
            fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%.3g</text>\n", pos, PH - BM + 16, v);
        } else {
            fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>\n", LM, pos, PW - RM, pos);
            fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.3g</text>\n", LM - 6, pos + 4, v);
        }
    }
}

char *compare_svg(const compare_plot *p) {
    span sx = {INFINITY, -INFINITY, p->log_x}, sy = {INFINITY, -INFINITY, p->log_y};
    for (int s = 0; s < p->n_series; s++)
        for (int i = 0; i < p->series[s].n; i++) {
            if (!usable(&sx, p->series[s].x[i]) || !usable(&sy, p->series[s].y[i])) continue;
            widen(&sx, p->series[s].x[i]);
            widen(&sy, p->series[s].y[i]);
        }
    finish_span(&sx);
    finish_span(&sy);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return NULL;
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" "
            "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            PW, PH);
    fprintf(f, "<text x=\"%d\" y=\"24\" font-size=\"15\">%s</text>\n", LM, p->title);
    ticks(f, &sx, true);
    ticks(f, &sy, false);
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"black\"/>\n", LM, TM,
            PW - LM - RM, PH - TM - BM);
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%s</text>\n", (PW - RM + LM) / 2, PH - 16, p->x_label);
    fprintf(f, "<text x=\"18\" y=\"%d\" transform=\"rotate(-90 18 %d)\" text-anchor=\"middle\">%s</text>\n",
            (PH - BM + TM) / 2, (PH - BM + TM) / 2, p->y_label);
    if (p->curve) {
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" stroke-dasharray=\"6 4\" points=\"",
                COLOURS[0]);
        for (int k = 0; k <= 160; k++) {
            double t = sx.lo + (sx.hi - sx.lo) * k / 160, x = sx.log ? pow(10, t) : t, y = p->curve(p->curve_ctx, x);
            if (usable(&sy, y)) fprintf(f, "%.1f,%.1f ", to_x(&sx, x), fmin(fmax(to_y(&sy, y), TM), PH - BM));
        }
        fprintf(f, "\"/>\n<text x=\"%d\" y=\"%d\" fill=\"%s\">%s</text>\n", PW - RM + 8, TM + 20 * (p->n_series + 1),
                COLOURS[0], p->curve_label ? p->curve_label : "fit");
    }
    for (int s = 0; s < p->n_series; s++) {
        const char *col = COLOURS[s % 4];
        for (int i = 0; i < p->series[s].n; i++) {
            double x = p->series[s].x[i], y = p->series[s].y[i];
            if (!usable(&sx, x) || !usable(&sy, y)) continue;
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\" fill-opacity=\"0.8\"/>\n", to_x(&sx, x),
                    to_y(&sy, y), col);
        }
        fprintf(f, "<circle cx=\"%d\" cy=\"%d\" r=\"4\" fill=\"%s\"/><text x=\"%d\" y=\"%d\">%s</text>\n", PW - RM + 12,
                TM + 16 + 20 * s, col, PW - RM + 22, TM + 20 + 20 * s, p->series[s].name);
    }
    if (p->note)
        fprintf(f, "<text x=\"%d\" y=\"%d\" fill=\"#666\">%s</text>\n", LM + 8, TM + 18, p->note);
    fputs("</svg>\n", f);
    if (fclose(f)) {
        free(buf);
        return NULL;
    }
    return buf;
}
