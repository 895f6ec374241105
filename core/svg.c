/* The pieces every joule plot is drawn with (joule/svg.h states the rules). */
#include "joule/svg.h"

#include <math.h>
#include <string.h>

enum { MAX_TICKS = 64 };

typedef struct {
    double v;
    bool label; /* grid line and label; otherwise a short tick mark only */
} tick;

joule_svg_axis joule_svg_axis_new(bool log) { return (joule_svg_axis){INFINITY, -INFINITY, log, 0, 1}; }

bool joule_svg_usable(const joule_svg_axis *a, double v) { return isfinite(v) && (!a->log || v > 0); }

static double units(const joule_svg_axis *a, double v) { return a->log ? log10(v) : v; }

void joule_svg_widen(joule_svg_axis *a, double v) {
    if (!joule_svg_usable(a, v)) return;
    a->lo = fmin(a->lo, units(a, v));
    a->hi = fmax(a->hi, units(a, v));
}

void joule_svg_finish(joule_svg_axis *a, double pad, double p0, double p1) {
    if (!isfinite(a->lo)) a->lo = 0, a->hi = 1;
    if (a->hi - a->lo < 1e-9) a->lo -= 0.5, a->hi += 0.5;
    double w = pad * (a->hi - a->lo);
    a->lo -= w;
    a->hi += w;
    a->p0 = p0;
    a->p1 = p1;
}

double joule_svg_px(const joule_svg_axis *a, double v) {
    double px = a->p0 + (units(a, v) - a->lo) / (a->hi - a->lo) * (a->p1 - a->p0);
    return fmin(fmax(px, -1e5), 1e5); /* far outside the frame: clipped anyway */
}

double joule_svg_at(const joule_svg_axis *a, double t) {
    double u = a->lo + (a->hi - a->lo) * t;
    return a->log ? pow(10, u) : u;
}

void joule_svg_number(char *buf, size_t n, double v) {
    double av = fabs(v);
    if (av == 0 || (av >= 1e-3 && av < 1e5)) { /* 4 significant digits, never "1e+04" */
        int decimals = av == 0 ? 0 : 3 - (int)floor(log10(av));
        snprintf(buf, n, "%.*f", decimals > 0 ? decimals : 0, v);
        char *dot = strchr(buf, '.');
        if (!dot) return;
        char *end = buf + strlen(buf);
        while (end > dot && (end[-1] == '0' || end[-1] == '.')) *--end = '\0';
        return;
    }
    int e = (int)floor(log10(av));
    double m = v / pow(10, e);
    if (fabs(m) >= 9.9995) m /= 10, e++; /* 9.99996e11 prints as 1e12 */
    snprintf(buf, n, "%.3ge%d", m, e);
}

void joule_svg_text(FILE *f, const char *s) {
    for (; s && *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

/* ~5 round values (1, 2 or 5 x 10^k apart) across [lo, hi] in value space. */
static int even_ticks(double lo, double hi, tick *t, int max) {
    double raw = (hi - lo) / 5, mag = pow(10, floor(log10(raw))), r = raw / mag;
    double step = mag * (r < 1.5 ? 1 : r < 3.5 ? 2 : r < 7.5 ? 5 : 10);
    int n = 0;
    for (double k = ceil(lo / step); k * step <= hi + 1e-9 * step && n < max; k++)
        t[n++] = (tick){fabs(k) < 1e-9 ? 0 : k * step, true};
    return n;
}

static int ticks(const joule_svg_axis *a, tick *t, int max) {
    if (!a->log) return even_ticks(a->lo, a->hi, t, max);
    const double span = a->hi - a->lo;
    int n = 0, labelled = 0;
    for (int e = (int)floor(a->lo); e <= (int)ceil(a->hi) && n < max; e++) {
        static const double M[3] = {1, 2, 5};
        for (int i = 0; i < 3 && n < max; i++) {
            double u = log10(M[i]) + e;
            if (u < a->lo - 1e-9 || u > a->hi + 1e-9) continue;
            bool label = i == 0 || span < 2.5;
            t[n++] = (tick){M[i] * pow(10, e), label};
            labelled += label;
        }
    }
    if (labelled >= 3) return n;
    n = even_ticks(pow(10, a->lo), pow(10, a->hi), t, max);
    int k = 0; /* drop 0 and below: no place on a log axis */
    for (int i = 0; i < n; i++)
        if (t[i].v > 0) t[k++] = t[i];
    return k;
}

void joule_svg_begin(FILE *f, int width, int height, int x, const char *title) {
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" "
            "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            width, height);
    fprintf(f, "<text x=\"%d\" y=\"24\" font-size=\"15\">", x);
    joule_svg_text(f, title);
    fputs("</text>\n", f);
}

void joule_svg_ticks(FILE *f, const joule_svg_axis *a, double from, double to, bool horizontal) {
    tick t[MAX_TICKS];
    int n = ticks(a, t, MAX_TICKS);
    for (int i = 0; i < n; i++) {
        double p = joule_svg_px(a, t[i].v), len = t[i].label ? 6 : 3;
        char lab[32];
        joule_svg_number(lab, sizeof lab, t[i].v);
        if (horizontal) {
            if (t[i].label) fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>\n", p, from, p, to);
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", p, from, p, from + len);
            if (t[i].label) fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", p, from + 20, lab);
        } else {
            if (t[i].label) fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>\n", from, p, to, p);
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", from - len, p, from, p);
            if (t[i].label) fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", from - 9, p + 4, lab);
        }
    }
}

void joule_svg_frame(FILE *f, const joule_svg_axis *x, const joule_svg_axis *y, const char *x_title,
                     const char *y_title) {
    const double l = x->p0, r = x->p1, b = y->p0, t = y->p1;
    fprintf(f, "<clipPath id=\"frame\"><rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\"/></clipPath>\n", l,
            t, r - l, b - t);
    joule_svg_ticks(f, x, b, t, true);
    joule_svg_ticks(f, y, l, r, false);
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"black\"/>\n", l, t,
            r - l, b - t);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", (l + r) / 2, b + 42);
    joule_svg_text(f, x_title);
    const double cy = (b + t) / 2, cx = l - 58;
    fprintf(f, "</text>\n<text x=\"%.1f\" y=\"%.1f\" transform=\"rotate(-90 %.1f %.1f)\" text-anchor=\"middle\">", cx,
            cy, cx, cy);
    joule_svg_text(f, y_title);
    fputs("</text>\n", f);
}

enum { SAMPLES = 200 };

static void trace(FILE *f, const joule_svg_axis *x, const joule_svg_axis *y, joule_svg_fn fn, const void *ctx,
                  bool backwards) {
    for (int k = 0; k <= SAMPLES; k++) {
        double vx = joule_svg_at(x, (double)(backwards ? SAMPLES - k : k) / SAMPLES), vy = fn(ctx, vx);
        if (joule_svg_usable(y, vy)) fprintf(f, "%.1f,%.1f ", joule_svg_px(x, vx), joule_svg_px(y, vy));
    }
}

void joule_svg_curve(FILE *f, const joule_svg_axis *x, const joule_svg_axis *y, joule_svg_fn fn, const void *ctx,
                     const char *colour, bool dashed) {
    fprintf(f, "<polyline clip-path=\"url(#frame)\" fill=\"none\" stroke=\"%s\" stroke-width=\"1.8\"%s points=\"",
            colour, dashed ? " stroke-dasharray=\"6 4\"" : "");
    trace(f, x, y, fn, ctx, false);
    fputs("\"/>\n", f);
}

void joule_svg_band(FILE *f, const joule_svg_axis *x, const joule_svg_axis *y, joule_svg_fn lo, joule_svg_fn hi,
                    const void *ctx, const char *colour) {
    fprintf(f, "<polygon clip-path=\"url(#frame)\" fill=\"%s\" fill-opacity=\"0.15\" stroke=\"none\" points=\"", colour);
    trace(f, x, y, hi, ctx, false);
    trace(f, x, y, lo, ctx, true);
    fputs("\"/>\n", f);
}

double joule_svg_pow_loss(const void *ctx, double C) { return joule_pow_loss(((const joule_svg_pow *)ctx)->fit, C); }

static double pow_edge(const joule_svg_pow *p, double C, bool upper) {
    if (!p->boot || p->reps < 2) return NAN;
    for (int i = 0; i < p->reps; i++) p->scratch[i] = joule_pow_loss(&p->boot[i], C);
    double lo, hi, sd;
    joule_interval(p->scratch, (size_t)p->reps, p->level, &lo, &hi, &sd);
    return upper ? hi : lo;
}

double joule_svg_pow_lo(const void *ctx, double C) { return pow_edge(ctx, C, false); }
double joule_svg_pow_hi(const void *ctx, double C) { return pow_edge(ctx, C, true); }

void joule_svg_point(FILE *f, double px, double py, const char *colour, const char *label) {
    fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\" fill-opacity=\"0.85\"/>\n", px, py, colour);
    if (!label) return;
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" fill=\"#555\">", px + 7, py + 3.5);
    joule_svg_text(f, label);
    fputs("</text>\n", f);
}

void joule_svg_legend(FILE *f, const joule_svg_axis *x, const joule_svg_axis *y, const joule_svg_key *keys, int n,
                      const double *px, const double *py, int np) {
    if (n <= 0) return;
    size_t chars = 0;
    for (int i = 0; i < n; i++) chars = strlen(keys[i].text) > chars ? strlen(keys[i].text) : chars;
    const double w = 36 + 6.8 * (double)chars, h = 8 + 18 * n, m = 8;
    const double l = x->p0, r = x->p1, b = y->p0, t = y->p1;
    /* corners: top-right, top-left, bottom-right, bottom-left */
    const double cx[4] = {r - m - w, l + m, r - m - w, l + m}, cy[4] = {t + m, t + m, b - m - h, b - m - h};
    int best = 0, fewest = np + 1;
    for (int c = 0; c < 4; c++) {
        int inside = 0;
        for (int i = 0; i < np; i++)
            inside += px[i] >= cx[c] - 6 && px[i] <= cx[c] + w + 6 && py[i] >= cy[c] - 6 && py[i] <= cy[c] + h + 6;
        if (inside < fewest) fewest = inside, best = c;
    }
    const double x0 = cx[best], y0 = cy[best];
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"white\" fill-opacity=\"0.9\" "
               "stroke=\"#bbb\"/>\n", x0, y0, w, h);
    for (int i = 0; i < n; i++) {
        const double ky = y0 + 16 + 18 * i, kx = x0 + 8;
        const char *c = keys[i].colour;
        switch (keys[i].mark) {
        case JOULE_SVG_DOT: fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\"/>\n", kx + 10, ky - 4, c); break;
        case JOULE_SVG_LINE:
        case JOULE_SVG_DASH:
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"1.8\"%s/>\n", kx,
                    ky - 4, kx + 20, ky - 4, c, keys[i].mark == JOULE_SVG_DASH ? " stroke-dasharray=\"6 4\"" : "");
            break;
        case JOULE_SVG_BAND:
            fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"20\" height=\"10\" fill=\"%s\" fill-opacity=\"0.15\"/>\n", kx,
                    ky - 9, c);
            break;
        }
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">", kx + 28, ky);
        joule_svg_text(f, keys[i].text);
        fputs("</text>\n", f);
    }
}
