/* joule/svg.h — axes, ticks, curves and legends of joule's hand-written SVG plots (the
 * comparison's loss_vs_compute.svg and energy_vs_bpb.svg, `joule fit --svg`, `joule bench
 * energy`), so that every plot reads the same way:
 *   - a log axis is ticked at the decades (1e11, 1e12) with minor ticks at 2 and 5, which
 *     are labelled too when the axis spans under 2.5 decades; an axis spanning too little
 *     for three such labels gets evenly spaced values (2, 2.2, 2.4 ...) instead;
 *   - curves and bands are clipped to the frame, never flattened against it;
 *   - the legend sits inside the frame, in the corner that hides the fewest points.
 * The writers go to a FILE (a memory stream in practice); nothing here prints.
 */
#ifndef JOULE_SVG_H
#define JOULE_SVG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "joule/fit.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    double lo, hi; /* range in axis units: log10 of the value on a log axis */
    bool log;
    double p0, p1; /* pixels of lo and hi (p0 > p1 on a vertical axis) */
} joule_svg_axis;

/* An empty axis; widen it with every value, then finish it. */
joule_svg_axis joule_svg_axis_new(bool log);
/* Finite, and > 0 on a log axis. */
bool joule_svg_usable(const joule_svg_axis *a, double v);
/* Grows the range to hold v (unusable values are ignored). */
void joule_svg_widen(joule_svg_axis *a, double v);
/* Pads the range by `pad` of its width on each side (an empty or single-valued range gets
 * a width first) and places it between pixels p0 and p1. */
void joule_svg_finish(joule_svg_axis *a, double pad, double p0, double p1);
/* Pixel of value v (v usable). */
double joule_svg_px(const joule_svg_axis *a, double v);
/* The value a fraction t in [0, 1] along the axis. */
double joule_svg_at(const joule_svg_axis *a, double t);

/* A short label for v: "1e12", "2e11", "2.5e11" outside [1e-3, 1e5), else "%g". */
void joule_svg_number(char *buf, size_t n, double v);
/* XML-escaped text. */
void joule_svg_text(FILE *f, const char *s);

/* The document's opening (size, white background, font) and a title line at (x, 24). */
void joule_svg_begin(FILE *f, int width, int height, int x, const char *title);
/* The frame spanned by the axes: grid lines and labels at the ticks, minor tick marks, the
 * axis titles, and a clip path "frame" that curves() and band() use. */
void joule_svg_frame(FILE *f, const joule_svg_axis *x, const joule_svg_axis *y, const char *x_title,
                     const char *y_title);

/* The ticks of axis a alone: grid lines from `from` to `to` across it (pixels on the other
 * axis), tick marks and labels on the `from` side. joule_svg_frame draws both axes' so. */
void joule_svg_ticks(FILE *f, const joule_svg_axis *a, double from, double to, bool horizontal);

typedef double (*joule_svg_fn)(const void *ctx, double x);
/* y = fn(ctx, x) across the x axis, clipped to the frame; dashed or solid. */
void joule_svg_curve(FILE *f, const joule_svg_axis *x, const joule_svg_axis *y, joule_svg_fn fn, const void *ctx,
                     const char *colour, bool dashed);
/* The area between lo(ctx, x) and hi(ctx, x) across the x axis, shaded, clipped. */
void joule_svg_band(FILE *f, const joule_svg_axis *x, const joule_svg_axis *y, joule_svg_fn lo, joule_svg_fn hi,
                    const void *ctx, const char *colour);
/* A point, with a small label beside it when label is not NULL. */
void joule_svg_point(FILE *f, double px, double py, const char *colour, const char *label);

/* A power-law fit L(C) as a curve, and its bootstrap interval (percentiles of the reps
 * bootstrap fits' L(C) at `level`) as the band's edges; ctx is a joule_svg_pow. */
typedef struct {
    const joule_pow_fit *fit;
    const joule_pow_fit *boot; /* reps fits, or NULL */
    int reps;
    double level;
    double *scratch; /* reps doubles */
} joule_svg_pow;
double joule_svg_pow_loss(const void *ctx, double C);
double joule_svg_pow_lo(const void *ctx, double C);
double joule_svg_pow_hi(const void *ctx, double C);

typedef enum { JOULE_SVG_DOT, JOULE_SVG_LINE, JOULE_SVG_DASH, JOULE_SVG_BAND } joule_svg_mark;
typedef struct {
    joule_svg_mark mark;
    const char *colour;
    const char *text;
} joule_svg_key;
/* The legend inside the frame, in the corner where the fewest of the np pixel positions
 * (points and curve samples) fall; top-right first on a tie. */
void joule_svg_legend(FILE *f, const joule_svg_axis *x, const joule_svg_axis *y, const joule_svg_key *keys, int n,
                      const double *px, const double *py, int np);

#ifdef __cplusplus
}
#endif
#endif
