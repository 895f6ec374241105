/* The scaling-law plot: log-log loss against compute, the runs as points, the fitted L(C)
 * and the Chinchilla compute-optimal frontier as curves. Hand-written SVG. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fit_cli.h"

typedef struct {
    char *buf;
    size_t len, cap;
    bool oom;
} sbuf;

static void put(sbuf *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sbuf *s, const char *fmt, ...) {
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int n = vsnprintf(s->buf ? s->buf + s->len : NULL, s->buf ? s->cap - s->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            s->oom = true;
            return;
        }
        if (s->buf && s->len + (size_t)n < s->cap) {
            s->len += (size_t)n;
            return;
        }
        size_t nc = (s->cap ? s->cap * 2 : 8192) + (size_t)n;
        char *g = realloc(s->buf, nc);
        if (!g) {
            s->oom = true;
            return;
        }
        s->buf = g;
        s->cap = nc;
    }
}

enum { W = 760, H = 500, ML = 70, MR = 20, MT = 40, MB = 60 };

typedef struct {
    double x0, x1, y0, y1; /* log10 ranges */
} axes;

static double px(const axes *a, double C) { return ML + (log10(C) - a->x0) / (a->x1 - a->x0) * (W - ML - MR); }
static double py(const axes *a, double L) { return H - MB - (log10(L) - a->y0) / (a->y1 - a->y0) * (H - MT - MB); }

char *fit_svg(const fit_plot *p) {
    axes a = {INFINITY, -INFINITY, INFINITY, -INFINITY};
    for (size_t i = 0; i < p->n; i++) {
        a.x0 = fmin(a.x0, log10(p->runs[i].C));
        a.x1 = fmax(a.x1, log10(p->runs[i].C));
        a.y0 = fmin(a.y0, log10(p->runs[i].loss));
        a.y1 = fmax(a.y1, log10(p->runs[i].loss));
    }
    if (p->c_extra > 0) {
        a.x1 = fmax(a.x1, log10(p->c_extra));
        a.x0 = fmin(a.x0, log10(p->c_extra));
    }
    a.x0 = floor(a.x0);
    a.x1 = ceil(a.x1);
    if (a.x1 <= a.x0) a.x1 = a.x0 + 1;
    double pad = fmax(0.02, 0.05 * (a.y1 - a.y0));
    a.y0 -= pad;
    a.y1 += pad;
    sbuf s = {0};
    put(&s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" "
        "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
        W, H);
    put(&s, "<text x=\"%d\" y=\"22\" font-size=\"15\">%s</text>\n", ML, p->title);
    put(&s, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"black\"/>\n", ML, MT,
        W - ML - MR, H - MT - MB);
    for (int e = (int)a.x0; e <= (int)a.x1; e++) {
        double x = px(&a, pow(10, e));
        put(&s, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#ddd\"/>\n", x, MT, x, H - MB);
        put(&s, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">1e%d</text>\n", x, H - MB + 16, e);
    }
    for (int k = 0; k <= 5; k++) {
        double ly = a.y0 + (a.y1 - a.y0) * k / 5, y = py(&a, pow(10, ly));
        put(&s, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#eee\"/>\n", ML, y, W - MR, y);
        put(&s, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.3g</text>\n", ML - 6, y + 4, pow(10, ly));
    }
    put(&s, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">training compute C (FLOPs)</text>\n", (W + ML) / 2, H - 18);
    put(&s, "<text x=\"16\" y=\"%d\" transform=\"rotate(-90 16 %d)\" text-anchor=\"middle\">loss</text>\n",
        (H - MB + MT) / 2, (H - MB + MT) / 2);
    for (int curve = 0; curve < 2; curve++) {
        if ((curve == 0 && !p->pow) || (curve == 1 && !p->chin)) continue;
        put(&s, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\"%s points=\"", curve ? "#d62728" : "#1f77b4",
            curve ? " stroke-dasharray=\"6 4\"" : "");
        for (int k = 0; k <= 200; k++) {
            double C = pow(10, a.x0 + (a.x1 - a.x0) * k / 200), L;
            if (curve == 0) {
                L = joule_pow_loss(p->pow, C);
            } else {
                double N, D;
                joule_chin_optimal(p->chin, C, &N, &D);
                L = joule_chin_loss(p->chin, N, D);
            }
            double y = py(&a, L);
            if (isfinite(y) && y > MT - 50 && y < H + 50) put(&s, "%.1f,%.1f ", px(&a, C), fmin(fmax(y, MT), H - MB));
        }
        put(&s, "\"/>\n");
    }
    for (size_t i = 0; i < p->n; i++)
        put(&s, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\" fill-opacity=\"0.7\"/>\n", px(&a, p->runs[i].C),
            py(&a, p->runs[i].loss), p->held_out && p->held_out[i] ? "#ff7f0e" : "#333");
    int ly = MT + 16;
    if (p->pow) {
        put(&s, "<text x=\"%d\" y=\"%d\" fill=\"#1f77b4\">L(C) = %.4g C^%.4f + %.4g</text>\n", W - MR - 330, ly,
            p->pow->a, p->pow->b, p->pow->c);
        ly += 16;
    }
    if (p->chin) {
        put(&s,
            "<text x=\"%d\" y=\"%d\" fill=\"#d62728\">compute-optimal L: E=%.4g A=%.4g B=%.4g alpha=%.4f "
            "beta=%.4f</text>\n",
            W - MR - 460, ly, p->chin->E, p->chin->A, p->chin->B, p->chin->alpha, p->chin->beta);
    }
    put(&s, "</svg>\n");
    if (s.oom) {
        free(s.buf);
        return NULL;
    }
    return s.buf;
}
