/* `joule compare --precisions`: every finished run of the grid quantised to bf16 / int8 and
 * measured as the run was (val bpb on its windows, KL from the fp32 model, energy per query),
 * one point per precision in DIR/precisions.jsonl. docs/COMPARE.md §9. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "compare_run.h"
#include "joule/checkpoint.h"
#include "joule/quant.h"
#include "joule/retro.h"
#include "joule/retro_db.h"

static int find_point(const joule_compare_prec_row *rows, int n, const joule_compare_row *run, const char *prec) {
    for (int i = 0; i < n; i++)
        if (!strcmp(rows[i].arch, run->arch) && !strcmp(rows[i].precision, prec) &&
            fabs(rows[i].budget - run->budget) <= 1e-9 * run->budget)
            return i;
    return -1;
}

/* runs/<arch>-<budget>.<prec>.safetensors beside the run's checkpoint. */
static void quant_path(char *buf, size_t n, const char *checkpoint, joule_precision p) {
    const int stem = (int)(strlen(checkpoint) - strlen(".safetensors"));
    snprintf(buf, n, "%.*s.%s.safetensors", stem, checkpoint, joule_precision_name(p));
}

/* A quantised file is reused when it is at least as new as the checkpoint it came from. */
static bool fresh(const char *path, const char *source) {
    struct stat a, b;
    if (stat(path, &a) || stat(source, &b)) return false;
    return a.st_mtim.tv_sec > b.st_mtim.tv_sec ||
           (a.st_mtim.tv_sec == b.st_mtim.tv_sec && a.st_mtim.tv_nsec >= b.st_mtim.tv_nsec);
}

/* The quantised model from its file, written first (atomically) unless a fresh one exists.
 * Always read back from the file, so a rerun measures the same weights. */
static int quantised_model(const char *checkpoint, joule_precision p, const char *path, joule_model **out) {
    *out = NULL;
    int rc = JOULE_OK;
    if (!fresh(path, checkpoint)) {
        joule_model *m = NULL;
        joule_quant *q = NULL;
        if (!(rc = joule_checkpoint_load(&m, checkpoint, NULL)) && !(rc = joule_quant_from_model(&q, m, p))) {
            m->quant = q;
            rc = joule_quant_save(m, path);
        }
        joule_model_free(m);
        if (rc) return rc;
    }
    if ((rc = joule_checkpoint_load(out, path, NULL))) return rc;
    if (!(*out)->quant || (*out)->quant->prec != p) {
        joule_model_free(*out);
        *out = NULL;
        return joule_fail(JOULE_ERR_FORMAT, "%s: not a %s checkpoint", path, joule_precision_name(p));
    }
    return JOULE_OK;
}

/* bpb and KL of qm against ref on the run's validation windows (RETRO with its neighbours). */
static int quality(const compare_run_ctx *x, joule_model *qm, joule_model *ref, joule_compare_prec_row *pr) {
    const joule_compare_settings *s = x->settings;
    int rc = joule_model_alloc_train(qm, s->batch);
    if (!rc) rc = joule_model_alloc_train(ref, s->batch);
    joule_retro_data *rd = NULL;
    if (!rc && joule_config_has_cca(&qm->cfg)) {
        if (!x->db_dir) return joule_fail(JOULE_ERR_RUNTIME, "retro: no database (%s)", x->retro_error);
        const char *paths[2] = {x->train_path, x->val_path};
        joule_retro_data_opts ro;
        joule_retro_data_opts_init(&ro);
        ro.on_demand = !s->neighbour_files;
        rc = joule_retro_data_open_opts(&rd, &qm->cfg, x->db_dir, paths, 2, &ro);
        if (!rc && x->db_params) rc = joule_db_set_params(joule_retro_data_db(rd), x->db_params);
    }
    joule_tokens val = {0};
    if (!rc) rc = joule_tokens_open(&val, x->val_path);
    joule_eval_result ev;
    double kl = 0, ref_loss = 0;
    if (!rc)
        rc = joule_evaluate_kl_prepared(qm, ref, &val, s->ctx, s->batch, s->eval_windows,
                                        rd ? joule_retro_prepare : NULL, rd, &ev, &kl, &ref_loss);
    if (!rc) {
        pr->val_bpb = ev.bpb;
        pr->kl_bits = kl / M_LN2;
    }
    joule_tokens_close(&val);
    joule_retro_data_close(rd);
    return rc;
}

/* One quantised point: the file, its quality against the fp32 run, its energy per query. */
static int measure_quantised(const compare_run_ctx *x, const joule_compare_row *run, joule_precision p,
                             joule_compare_prec_row *pr) {
    joule_model *qm = NULL, *ref = NULL;
    quant_path(pr->checkpoint, sizeof pr->checkpoint, run->checkpoint, p);
    int rc = quantised_model(run->checkpoint, p, pr->checkpoint, &qm);
    if (!rc) rc = joule_checkpoint_load(&ref, run->checkpoint, NULL);
    if (!rc) {
        pr->weight_bytes = (double)joule_quant_decode_weight_bytes(qm);
        snprintf(pr->kernels, sizeof pr->kernels, "%s", joule_quant_kernel_name(p));
        rc = quality(x, qm, ref, pr);
    }
    joule_model_free(ref);
    if (!rc && x->settings->queries > 0 && x->meters) {
        char label[64];
        snprintf(label, sizeof label, "%s %s", run->arch, pr->precision);
        joule_bench_energy_result b;
        if (!(rc = compare_query_bench(x, qm, NULL, label, &b)) && !(joule_config_has_cca(&qm->cfg) && !b.retrieval)) {
            pr->query_j = b.j_per_query;
            pr->query_s = b.query_p50;
            pr->tokens_per_s = b.tokens_per_s;
            snprintf(pr->query_method, sizeof pr->query_method, "%s", b.energy.method);
        }
    }
    joule_model_free(qm);
    return rc;
}

/* The fp32 point is the run itself: its row's numbers, the file's weight bytes. */
static int fp32_point(const joule_compare_row *run, joule_compare_prec_row *pr) {
    joule_model *m = NULL;
    int rc = joule_checkpoint_load(&m, run->checkpoint, NULL);
    if (rc) return rc;
    pr->weight_bytes = (double)joule_quant_decode_weight_bytes(m);
    joule_model_free(m);
    pr->val_bpb = run->val_bpb;
    pr->kl_bits = 0;
    pr->query_j = run->query_j;
    pr->query_s = run->query_s;
    snprintf(pr->query_method, sizeof pr->query_method, "%s", run->query_method);
    snprintf(pr->kernels, sizeof pr->kernels, "sgemm");
    snprintf(pr->checkpoint, sizeof pr->checkpoint, "%s", run->checkpoint);
    return JOULE_OK;
}

static int measure_point(const compare_run_ctx *x, const joule_compare_row *run, joule_precision p,
                         joule_compare_prec_row *pr) {
    memset(pr, 0, sizeof *pr);
    snprintf(pr->arch, sizeof pr->arch, "%s", run->arch);
    pr->budget = run->budget;
    snprintf(pr->precision, sizeof pr->precision, "%s", joule_precision_name(p));
    pr->val_bpb = pr->kl_bits = pr->query_j = pr->query_s = pr->tokens_per_s = NAN;
    const double t0 = joule_now();
    int rc = p == JOULE_PREC_F32 ? fp32_point(run, pr) : measure_quantised(x, run, p, pr);
    pr->wall_s = joule_now() - t0;
    pr->ok = rc == JOULE_OK;
    if (rc) snprintf(pr->error, sizeof pr->error, "%s", joule_last_error());
    return rc;
}

/* Replaces the point of the same (arch, budget, precision) or appends it. */
static int put_point(joule_compare_prec_row **rows, int *n, const joule_compare_prec_row *pr, int at) {
    if (at >= 0) {
        (*rows)[at] = *pr;
        return JOULE_OK;
    }
    joule_compare_prec_row *g = realloc(*rows, (size_t)(*n + 1) * sizeof *g);
    if (!g) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    g[(*n)++] = *pr;
    *rows = g;
    return JOULE_OK;
}

int compare_precisions(const joule_compare_plan *p, const compare_run_ctx *x, joule_compare_outcome *out) {
    joule_compare_prec_row *rows = NULL;
    int n = 0, rc = joule_compare_prec_load(p->out_dir, &rows, &n);
    for (int b = 0; b < p->n_budgets && !rc; b++)
        for (int a = 0; a < JOULE_ARCH_COUNT && !rc; a++) {
            const int ri = p->archs[a] ? compare_find_row(out->rows, out->n_rows, joule_arch_names[a], p->budgets[b]) : -1;
            if (ri < 0 || !out->rows[ri].ok) continue;
            for (int k = 0; k < p->n_precisions && !rc; k++) {
                const char *name = joule_precision_name(p->precisions[k]);
                const int at = find_point(rows, n, &out->rows[ri], name);
                if (at >= 0 && rows[at].ok) {
                    out->prec_reused++;
                    if (p->on_precision) p->on_precision(p->ctx, &rows[at], true);
                    continue;
                }
                if (p->interrupt && *p->interrupt) {
                    out->interrupted = true;
                    break;
                }
                joule_compare_prec_row pr;
                measure_point(x, &out->rows[ri], p->precisions[k], &pr);
                out->prec_measured++;
                if (p->on_precision) p->on_precision(p->ctx, &pr, false);
                if (!(rc = put_point(&rows, &n, &pr, at))) rc = joule_compare_prec_save(p->out_dir, rows, n);
            }
        }
    for (int i = 0; i < n; i++) out->prec_failed += !rows[i].ok;
    free(rows);
    return rc;
}
