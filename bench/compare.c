/* The equal-compute comparison: the sizing rule and one run (train to the budget,
 * evaluate, measure). docs/COMPARE.md states the rule; compare_loop.c drives the runs. */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compare_run.h"
#include "joule/bench_energy.h"
#include "joule/checkpoint.h"
#include "joule/moe.h"
#include "joule/ops.h"
#include "joule/retro.h"
#include "joule/retro_db.h"
#include "joule/train.h"

const char *const joule_arch_names[JOULE_ARCH_COUNT] = {"dense", "moe", "retro", "retro-fit"};

void joule_compare_settings_init(joule_compare_settings *s) {
    memset(s, 0, sizeof *s);
    s->tokens_per_param = 20;
    s->aspect = 32;
    /* steps of 8 in width: doubling budgets then get distinct sizes at demo scale (steps
     * of 16 gave pairs of budgets the same model) */
    s->head_dim = 8;
    s->ffn_mult = 3;
    s->width_step = 8;
    /* RETRO's method needs a context of several chunks (the paper: 2048 / 64): ctx >= 8m */
    s->ctx = 256;
    s->min_steps = 50;
    s->experts = 8;
    s->top_k = 2;
    s->moe_every = 2;
    s->retro_chunk = 32;
    s->retro_enc_layers = 1;
    s->db_chunks = 0;
    s->retrofit_fraction = 0.25;
    s->db_nprobe = 4;
    s->batch = 8;
    s->lr = 3e-3;
    s->seed = 1;
    s->eval_windows = 256;
    s->em_windows = 128;
    s->match_bytes = JOULE_COMPARE_EM_BYTES;
    s->samples = 0;
    s->temperature = 1.0;
    s->queries = 16;
}

char *joule_compare_settings_json(const joule_compare_settings *s) {
    cJSON *j = cJSON_CreateObject();
    if (!j) return NULL;
    cJSON_AddNumberToObject(j, "tokens_per_param", s->tokens_per_param);
    cJSON_AddNumberToObject(j, "aspect", s->aspect);
    cJSON_AddNumberToObject(j, "head_dim", s->head_dim);
    cJSON_AddNumberToObject(j, "ffn_mult", s->ffn_mult);
    cJSON_AddNumberToObject(j, "width_step", s->width_step);
    cJSON_AddNumberToObject(j, "ctx", s->ctx);
    cJSON_AddNumberToObject(j, "min_steps", s->min_steps);
    cJSON_AddNumberToObject(j, "experts", s->experts);
    cJSON_AddNumberToObject(j, "top_k", s->top_k);
    cJSON_AddNumberToObject(j, "moe_every", s->moe_every);
    cJSON_AddNumberToObject(j, "retro_chunk", s->retro_chunk);
    cJSON_AddNumberToObject(j, "retro_enc_layers", s->retro_enc_layers);
    cJSON_AddNumberToObject(j, "retro_enc_d_model", s->retro_enc_d_model);
    cJSON_AddNumberToObject(j, "db_chunks", (double)s->db_chunks);
    cJSON_AddStringToObject(j, "db_index", s->db_index);
    cJSON_AddNumberToObject(j, "db_nprobe", s->db_nprobe);
    cJSON_AddNumberToObject(j, "retrofit_fraction", s->retrofit_fraction);
    cJSON_AddStringToObject(j, "neighbours", s->neighbour_files ? "files" : "on-demand");
    cJSON_AddNumberToObject(j, "batch", s->batch);
    cJSON_AddNumberToObject(j, "lr", s->lr);
    cJSON_AddNumberToObject(j, "seed", (double)s->seed);
    cJSON_AddNumberToObject(j, "eval_windows", (double)s->eval_windows);
    cJSON_AddNumberToObject(j, "em_windows", s->em_windows);
    cJSON_AddNumberToObject(j, "match_bytes", s->match_bytes);
    cJSON_AddNumberToObject(j, "samples", s->samples);
    cJSON_AddNumberToObject(j, "temperature", s->temperature);
    cJSON_AddNumberToObject(j, "queries", s->queries);
    char *out = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return out;
}

/* Member i >= 1 of the fixed-aspect family: d_model = i x width_step, n_layers =
 * round(d_model / aspect) (at least 1), heads of head_dim, d_ff = ffn_mult x d_model. */
static joule_config family_member(const joule_compare_settings *s, int i) {
    int d = i * s->width_step;
    int layers = (int)lround((double)d / s->aspect);
    if (layers < 1) layers = 1;
    if (layers > JOULE_MAX_LAYERS) layers = JOULE_MAX_LAYERS;
    int heads = d / s->head_dim > 0 ? d / s->head_dim : 1;
    return joule_config_default(layers, d, heads, s->ffn_mult * d, s->ctx);
}

/* The arch's model built on the dense backbone c. */
static void make_arch(const joule_compare_settings *s, joule_arch arch, joule_config *c) {
    if (arch == JOULE_ARCH_RETRO || arch == JOULE_ARCH_RETROFIT) {
        joule_retro_config *r = &c->retro;
        /* a narrow encoder: at these widths CCA's projections and its attention over k*2m
         * neighbour tokens already cost ~10-20% of the decoder (docs/COMPARE.md §1) */
        const int D = s->retro_enc_d_model > 0 ? s->retro_enc_d_model
                                               : (c->d_model / 6 / s->head_dim > 0 ? c->d_model / 6 / s->head_dim : 1) *
                                                     s->head_dim;
        r->chunk = s->retro_chunk;
        r->enc_layers = s->retro_enc_layers;
        r->enc_d_model = D;
        r->enc_heads = D / s->head_dim > 0 ? D / s->head_dim : 1;
        r->enc_d_ff = s->ffn_mult * D;
        joule_retro_config_apply(c);
        return;
    }
    if (arch != JOULE_ARCH_MOE) return;
    joule_moe_config e = joule_moe_config_default(c->d_ff);
    e.n_experts = s->experts;
    e.top_k = s->top_k;
    /* a one-layer backbone still gets its MoE layer */
    e.every = c->n_layers < s->moe_every ? 1 : s->moe_every;
    e.d_ff_expert = c->d_ff / s->top_k > 0 ? c->d_ff / s->top_k : 1;
    /* dropless training: every routed token is computed, so the counted FLOPs spend the
     * budget the trainer plans with (capacity drops would leave up to ~10% unspent) */
    e.capacity_train = 0;
    joule_moe_apply(c, &e);
}

static double step_flops(const joule_compare_settings *s, const joule_config *c) {
    return 3.0 * (double)joule_model_forward_flops(c, s->batch, s->ctx);
}

static int total_params(const joule_config *c, uint64_t *n) {
    joule_model *m = NULL;
    int rc = joule_model_describe(&m, c);
    if (rc) return rc;
    *n = joule_model_param_counts(m).total;
    joule_model_free(m);
    return JOULE_OK;
}

double compare_fit_budget(const joule_compare_settings *s, const joule_config *c, double budget) {
    const double least = (double)s->min_steps * step_flops(s, c);
    return s->retrofit_fraction * budget > least ? s->retrofit_fraction * budget : least;
}

int joule_compare_size(const joule_compare_settings *s, joule_arch arch, double budget, joule_config *out,
                       uint64_t *steps) {
    if (!(budget > 0)) return joule_fail(JOULE_ERR_ARG, "budget %g FLOPs is not positive", budget);
    const double target = sqrt(budget / (6.0 * s->tokens_per_param));
    const int max_i = 4096 / s->width_step;
    int best = 1;
    double best_dist = INFINITY;
    for (int i = 1; i <= max_i; i++) {
        joule_config c = family_member(s, i);
        uint64_t n;
        int rc = total_params(&c, &n);
        if (rc) return rc;
        double dist = fabs(log((double)n / target));
        if (dist < best_dist) {
            best_dist = dist;
            best = i;
        }
        if ((double)n > 4 * target) break;
    }
    /* the dense backbone is chosen for every arch, so equal budgets mean equal models
     * except for what the arch adds; RETRO-fit fits retrieval onto the dense run's model */
    const joule_arch sized = arch == JOULE_ARCH_RETROFIT ? JOULE_ARCH_DENSE : arch;
    for (int i = best; i >= 1; i--) {
        joule_config c = family_member(s, i);
        make_arch(s, sized, &c);
        double n_steps = floor(budget / step_flops(s, &c));
        if (n_steps >= s->min_steps || i == 1) {
            if (n_steps < s->min_steps)
                return joule_fail(JOULE_ERR_ARG,
                                  "budget %.3g FLOPs buys %.0f steps of the smallest %s model (%.3g FLOPs per step of "
                                  "batch %d x %d tokens); at least %d are needed to spend it within 2%%",
                                  budget, n_steps, joule_arch_names[sized], step_flops(s, &c), s->batch, s->ctx,
                                  s->min_steps);
            if (arch == JOULE_ARCH_RETROFIT) {
                make_arch(s, arch, &c);
                n_steps = floor(compare_fit_budget(s, &c, budget) / step_flops(s, &c));
            }
            int rc = joule_config_validate(&c, "compare sizing");
            if (rc) return rc;
            *out = c;
            *steps = (uint64_t)n_steps;
            return JOULE_OK;
        }
    }
    return joule_fail(JOULE_ERR_RUNTIME, "sizing found no model");
}

static void fill_sizes(joule_compare_row *r, const joule_config *c) {
    r->n_layers = c->n_layers;
    r->d_model = c->d_model;
    r->n_heads = c->n_heads;
    r->d_ff = c->d_ff;
    r->ctx = c->ctx;
    if (joule_config_has_moe(c)) {
        r->experts = c->moe.n_experts;
        r->top_k = c->moe.top_k;
        r->d_ff_expert = c->moe.d_ff_expert;
    }
}

int compare_query_bench(const compare_run_ctx *x, const joule_model *m, joule_retro_data *rd, const char *label,
                        joule_bench_energy_result *b) {
    joule_bench_energy_opts o;
    joule_bench_energy_opts_init(&o);
    o.data_dir = x->data_dir;
    o.db_dir = x->db_dir;
    o.db_params = x->db_params;
    /* the run's database, its search parameters already set: loading the index again
     * cost seconds per run */
    o.db = rd ? joule_retro_data_db(rd) : NULL;
    o.queries = x->settings->queries;
    o.warmup = 2;
    o.prompt = m->cfg.ctx / 2;
    o.generate = m->cfg.ctx - o.prompt;
    o.seed = x->settings->seed;
    o.meters = x->meters;
    return joule_bench_energy_run(m, label, &o, b);
}

/* Energy per query of the trained model with the energy benchmark's steady-state window. */
static int query_energy(const compare_run_ctx *x, const joule_model *m, joule_retro_data *rd, joule_compare_row *r) {
    joule_bench_energy_result b;
    int rc = compare_query_bench(x, m, rd, r->arch, &b);
    if (rc) return rc;
    if (joule_config_has_cca(&m->cfg) && !b.retrieval) {
        /* decoding without its neighbours is not the RETRO model's cost: report none */
        snprintf(r->query_method, sizeof r->query_method, "not measured: the benchmark ran without retrieval");
        return JOULE_OK;
    }
    r->query_j = b.j_per_query;
    r->query_s = b.query_p50;
    snprintf(r->query_method, sizeof r->query_method, "%s", b.energy.method);
    return JOULE_OK;
}

/* The run's model with training buffers: initialised from the seed, or for RETRO-fit the
 * dense run's weights, frozen; RETRO's data on the folder's database. */
static int build_model(const compare_run_ctx *x, joule_arch arch, joule_config *c, joule_model **m,
                       joule_retro_data **rd) {
    const joule_compare_settings *s = x->settings;
    const bool retro = arch == JOULE_ARCH_RETRO || arch == JOULE_ARCH_RETROFIT;
    if (retro && !x->db_dir) return joule_fail(JOULE_ERR_RUNTIME, "retro: no database (%s)", x->retro_error);
    if (arch == JOULE_ARCH_RETROFIT && !x->dense)
        return joule_fail(JOULE_ERR_RUNTIME, "retro-fit: needs the finished dense run of the same budget");
    int rc = JOULE_OK;
    if (retro) {
        const char *paths[2] = {x->train_path, x->val_path};
        joule_retro_data_opts ro;
        joule_retro_data_opts_init(&ro);
        ro.on_demand = !s->neighbour_files;
        if ((rc = joule_retro_data_open_opts(rd, c, x->db_dir, paths, 2, &ro))) return rc;
        if (x->db_params && (rc = joule_db_set_params(joule_retro_data_db(*rd), x->db_params))) return rc;
        snprintf(c->retro.db_id, sizeof c->retro.db_id, "%s", joule_retro_data_db_id(*rd));
    }
    if ((rc = joule_model_create(m, c))) return rc;
    joule_model_init(*m, s->seed);
    if ((rc = joule_model_alloc_train(*m, s->batch))) return rc;
    if (arch != JOULE_ARCH_RETROFIT) return JOULE_OK;
    joule_model *base = NULL;
    if ((rc = joule_checkpoint_load(&base, x->dense->checkpoint, NULL))) return rc;
    rc = joule_retro_init_from(*m, base, x->dense->checkpoint);
    joule_model_free(base);
    if (!rc) joule_retro_freeze_base(*m);
    return rc;
}

/* Counted FLOPs of `steps` training steps of c's dense backbone (CCA and encoder taken off). */
static double backbone_flops(const joule_compare_settings *s, const joule_config *c, uint64_t steps) {
    joule_config b = *c;
    for (int l = 0; l < b.n_layers; l++) b.kinds[l].cca = false;
    snprintf(b.arch, sizeof b.arch, "%s", joule_config_has_moe(&b) ? "moe" : "dense");
    return (double)steps * step_flops(s, &b);
}

/* Trains m to the budget (RETRO-fit: its fitting budget) and fills the training fields. */
static int train_run(const compare_run_ctx *x, joule_arch arch, joule_model *m, joule_retro_data *rd, double budget,
                     uint64_t steps, joule_compare_row *r) {
    const joule_compare_settings *s = x->settings;
    const double spend = arch == JOULE_ARCH_RETROFIT ? compare_fit_budget(s, &m->cfg, budget) : budget;
    joule_train_opts o;
    joule_train_opts_init(&o);
    o.train_path = x->train_path;
    o.out_path = r->checkpoint;
    o.log_path = x->log_path;
    o.batch = s->batch;
    o.seq = s->ctx;
    o.seed = s->seed;
    o.max_flops = spend;
    o.adam.lr = (float)s->lr;
    o.adam.min_lr = (float)(s->lr / 10);
    o.adam.warmup_steps = (int)(steps / 5 < 100 ? steps / 5 : 100);
    o.interrupt = x->interrupt;
    o.on_step = x->on_step;
    o.ctx = x->step_ctx;
    if (rd) joule_retro_train_hooks(&o, rd);
    joule_energy_window w;
    bool metered = x->meters && joule_energy_window_start(&w, x->meters) == JOULE_OK;
    joule_train_progress last;
    memset(&last, 0, sizeof last);
    double tt = joule_now();
    int rc = joule_train(m, &o, &last);
    if (rc) return rc;
    r->train_s = joule_now() - tt;
    if (metered) {
        joule_energy_report er;
        if (joule_energy_window_stop(&w, &er) == JOULE_OK) {
            r->energy_j = er.joules;
            snprintf(r->energy_method, sizeof r->energy_method, "%s", er.method);
        }
    }
    if (last.step < last.total_steps) return COMPARE_INTERRUPTED;
    r->steps = last.step;
    r->tokens = last.tokens;
    r->flops_counted = last.flops;
    r->flops_analytic = last.flops_analytic;
    r->spent = (double)last.flops / spend;
    if (!rd) return JOULE_OK;
    r->flops_encoder_cca = last.flops - (uint64_t)backbone_flops(s, &m->cfg, last.step);
    r->retrieval_flops = (double)(last.tokens / (uint64_t)m->cfg.retro.chunk) * x->search_flops;
    if (!s->neighbour_files) joule_retro_data_search_stats(rd, &r->retrieval_searches, &r->retrieval_s);
    if (arch == JOULE_ARCH_RETROFIT) { /* the whole model's compute: the dense run's, then the fitting's */
        r->fit_budget = spend;
        r->flops_base = x->dense->flops_counted;
        r->flops_counted += x->dense->flops_counted;
        r->flops_analytic += x->dense->flops_analytic;
        r->tokens += x->dense->tokens;
        r->train_s += x->dense->train_s;
        r->energy_j += x->dense->energy_j;
    }
    return JOULE_OK;
}

/* RETRO's leakage table on the evaluated windows, beside the dense run of the budget, into
 * <checkpoint stem>.leakage.json. */
static int leakage_file(const compare_run_ctx *x, joule_model *m, joule_retro_data *rd, const joule_tokens *val,
                        const joule_compare_row *r) {
    const joule_compare_settings *s = x->settings;
    joule_model *dense = NULL;
    int rc = x->dense ? joule_checkpoint_load(&dense, x->dense->checkpoint, NULL) : JOULE_OK;
    if (!rc && dense) rc = joule_model_alloc_train(dense, s->batch);
    joule_leakage_result lk;
    if (!rc) rc = joule_retro_leakage(m, dense, rd, val, s->ctx, s->batch, s->eval_windows, 10, &lk);
    joule_model_free(dense);
    if (rc) return rc;
    cJSON *j = joule_retro_leakage_json(&lk);
    if (j && x->dense) cJSON_AddStringToObject(j, "baseline", x->dense->checkpoint);
    char *text = j ? cJSON_Print(j) : NULL;
    cJSON_Delete(j);
    char path[600];
    snprintf(path, sizeof path, "%.*s.leakage.json", (int)(strlen(r->checkpoint) - strlen(".safetensors")),
             r->checkpoint);
    rc = text ? joule_write_file_atomic(path, text, strlen(text)) : joule_fail(JOULE_ERR_NOMEM, "out of memory");
    free(text);
    return rc;
}

/* The metrics on the same prompts (val split, prompts of ctx - n bytes) into r and
 * <checkpoint stem>.prompts.jsonl. */
static int prompt_metrics(const compare_run_ctx *x, joule_model *m, joule_retro_data *rd, const joule_tokens *val,
                          joule_compare_row *r) {
    const joule_compare_settings *s = x->settings;
    joule_prompt_opts o = {s->ctx - s->match_bytes, s->match_bytes, s->em_windows, s->samples, (float)s->temperature,
                           s->seed};
    joule_prompt_score *sc = malloc((size_t)s->em_windows * sizeof *sc);
    if (!sc) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    joule_prompt_means mean;
    const double t0 = joule_now();
    int rc = joule_prompt_metrics(m, rd, val, &o, sc, &mean);
    r->prompts_s = joule_now() - t0;
    if (!rc) {
        char path[600];
        snprintf(path, sizeof path, "%.*s.prompts.jsonl", (int)(strlen(r->checkpoint) - strlen(".safetensors")),
                 r->checkpoint);
        rc = joule_prompt_scores_save(path, &o, sc, s->em_windows);
    }
    free(sc);
    if (rc) return rc;
    r->exact_match = mean.exact_match;
    r->em_windows = (uint64_t)s->em_windows;
    r->match_bytes = s->match_bytes;
    r->samples = s->samples;
    r->byte_accuracy = mean.byte_accuracy;
    r->logprob = mean.logprob;
    r->edit_distance = mean.edit_distance;
    r->pass_rate = mean.pass_rate;
    return JOULE_OK;
}

/* Validation bpb, the metrics on the same prompts, RETRO's leakage table, energy per query. */
static int measure(const compare_run_ctx *x, joule_model *m, joule_retro_data *rd, joule_compare_row *r) {
    const joule_compare_settings *s = x->settings;
    joule_tokens val = {0};
    int rc = joule_tokens_open(&val, x->val_path);
    if (rc) return rc;
    joule_eval_result ev;
    rc = joule_evaluate_prepared(m, &val, s->ctx, s->batch, s->eval_windows, rd ? joule_retro_prepare : NULL, rd, &ev,
                                 NULL, NULL);
    if (!rc) {
        r->val_bpb = ev.bpb;
        rc = prompt_metrics(x, m, rd, &val, r);
    }
    if (!rc && rd) rc = leakage_file(x, m, rd, &val, r);
    joule_tokens_close(&val);
    if (!rc && s->queries > 0 && x->meters) rc = query_energy(x, m, rd, r);
    return rc;
}

int compare_run_one(const compare_run_ctx *x, joule_arch arch, double budget, joule_compare_row *r) {
    joule_config c;
    uint64_t steps = 0;
    joule_model *m = NULL;
    joule_retro_data *rd = NULL;
    double t0 = joule_now();
    int rc = joule_compare_size(x->settings, arch, budget, &c, &steps);
    if (!rc) {
        fill_sizes(r, &c);
        rc = build_model(x, arch, &c, &m, &rd);
    }
    if (!rc) {
        joule_param_counts pc = joule_model_param_counts(m);
        r->params_total = pc.total;
        r->params_non_embedding = pc.non_embedding;
        r->params_active = joule_config_has_moe(&c) ? joule_moe_active_params(m, false) : pc.total;
        rc = train_run(x, arch, m, rd, budget, steps, r);
    }
    if (!rc) rc = measure(x, m, rd, r);
    r->ok = rc == JOULE_OK;
    r->wall_s = joule_now() - t0;
    if (rc && rc != COMPARE_INTERRUPTED) snprintf(r->error, sizeof r->error, "%s", joule_last_error());
    joule_retro_data_close(rd);
    joule_model_free(m);
    return rc;
}
