/* The RETRO parts of `joule train`, `joule eval` and `joule generate`. */
#include "retro_cli.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "joule/checkpoint.h"
#include "joule/ops.h"
#include "joule/retro_db.h"

void retro_train_cli_init(retro_train_cli *r) {
    memset(r, 0, sizeof *r);
    r->chunk = r->k = r->cca_start = r->cca_every = r->enc_layers = r->enc_d_model = -1;
}

int retro_train_cli_option(retro_train_cli *r, const char *cmd, int c, const char *arg) {
    struct {
        int opt;
        int *var;
        int lo;
        const char *name;
    } ints[] = {{OPT_RETRO_CHUNK, &r->chunk, 1, "--chunk"},         {OPT_RETRO_K, &r->k, 0, "--neighbours"},
                {OPT_RETRO_CCA_START, &r->cca_start, 0, "--cca-start"}, {OPT_RETRO_CCA_EVERY, &r->cca_every, 1, "--cca-every"},
                {OPT_RETRO_ENC_LAYERS, &r->enc_layers, 1, "--enc-layers"},
                {OPT_RETRO_ENC_D_MODEL, &r->enc_d_model, 2, "--enc-d-model"}};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) {
        if (c != ints[i].opt) continue;
        if (!cli_parse_int(arg, ints[i].lo, 65536, ints[i].var))
            return cli_usage_error(cmd, "%s: '%s' is not an integer in [%d, 65536]", ints[i].name, arg, ints[i].lo);
        r->any = true;
        return 0;
    }
    switch (c) {
    case OPT_RETRO_DB: r->db = arg; return 0;
    case OPT_RETRO_INIT: r->init = arg; r->any = true; return 0;
    case OPT_RETRO_FREEZE: r->freeze = true; return 0;
    case OPT_RETRO_ALLOW: r->allow_mismatch = true; return 0;
    case OPT_RETRO_ON_DEMAND: r->on_demand = true; return 0;
    case OPT_RETRO_POSITIONS:
        if (strcmp(arg, "rope") && strcmp(arg, "none"))
            return cli_usage_error(cmd, "--retro-positions: '%s' is not rope or none", arg);
        r->no_positions = strcmp(arg, "none") == 0;
        r->any = true;
        return 0;
    default: return -1;
    }
}

int retro_train_cli_config(retro_train_cli *r, const char *cmd, joule_config *cfg, bool resume, bool model_flags) {
    if (resume) {
        if (r->any || r->retro)
            return cli_usage_error(cmd, "--resume takes the model from the checkpoint: drop --arch and the RETRO sizes");
        return 0;
    }
    if (!r->retro) {
        if (r->any || r->db || r->freeze)
            return cli_usage_error(cmd, "the RETRO options need --arch retro");
        return 0;
    }
    if (!r->db) return cli_usage_error(cmd, "--arch retro needs --db DIR (build one with 'joule db build')");
    if (r->freeze && !r->init) return cli_usage_error(cmd, "--freeze-base needs --init DENSE.safetensors");
    int st;
    if (r->init) {
        if (model_flags) return cli_usage_error(cmd, "--init takes the model sizes from %s: drop the model options", r->init);
        int rc = cli_check_input(cmd, r->init, NULL);
        if (rc) return rc;
        if ((st = joule_checkpoint_load(&r->base, r->init, NULL))) return cli_fail(cmd, st);
        if (r->base->quant) return cli_quantised_refusal(cmd, r->init, r->base);
        if (joule_config_has_cca(&r->base->cfg) || joule_config_has_moe(&r->base->cfg))
            return cli_usage_error(cmd, "--init %s: not a dense checkpoint (arch %s)", r->init, r->base->cfg.arch);
        *cfg = r->base->cfg;
    }
    if (r->chunk < 0) { /* the database's chunk size */
        joule_retro_db *db;
        if ((st = joule_db_open(&db, r->db))) return cli_fail(cmd, st);
        r->chunk = joule_db_chunk(db);
        joule_db_close(db);
    }
    joule_retro_config *rc = &cfg->retro;
    memset(rc, 0, sizeof *rc);
    rc->chunk = r->chunk;
    rc->k = r->k > 0 ? r->k : 2;
    /* unset: joule_retro_config_apply's rule for the depth */
    rc->cca_start = r->cca_start >= 0 ? r->cca_start : 0;
    rc->cca_every = r->cca_every > 0 ? r->cca_every : r->cca_start >= 0 ? 3 : 0;
    rc->positions = r->no_positions ? JOULE_RETRO_POS_NONE : JOULE_RETRO_POS_ROPE;
    rc->enc_layers = r->enc_layers > 0 ? r->enc_layers : 0;
    rc->enc_d_model = r->enc_d_model > 0 ? r->enc_d_model : 0;
    if (rc->cca_start >= cfg->n_layers)
        return cli_usage_error(cmd, "--cca-start %d: the model has %d layers", rc->cca_start, cfg->n_layers);
    joule_retro_config_apply(cfg);
    if (r->k == 0) rc->k = 0;
    return 0;
}

static void on_nbr_progress(void *ctx, const char *what, uint64_t done, uint64_t total) {
    cli_phases *p = ctx;
    if (cli_phase_begin(p, what, "neighbours", "chunk", (double)total))
        fprintf(stderr, "computing neighbours: %s\n", what);
    cli_progress_update(&p->bar, (double)done, NULL);
}

static int open_data(const char *cmd, const joule_config *c, const char *db_dir, const char *const *paths, int n,
                     bool allow, bool on_demand, joule_retro_data **rd) {
    cli_phases p = {0};
    joule_retro_data_opts o;
    joule_retro_data_opts_init(&o);
    o.allow_db_mismatch = allow;
    o.on_demand = on_demand;
    o.progress = on_nbr_progress;
    o.ctx = &p;
    int st = joule_retro_data_open_opts(rd, c, db_dir, paths, n, &o);
    cli_phase_end(&p, st == JOULE_OK);
    return st ? cli_fail(cmd, st) : 0;
}

int retro_train_cli_attach(retro_train_cli *r, const char *cmd, joule_model *m, joule_train_opts *o, bool resume,
                           const char *train_path, const char *val_path) {
    const joule_config *c = &m->cfg;
    if (!joule_config_has_cca(c)) {
        if (r->db || r->freeze || r->on_demand)
            return cli_usage_error(cmd, "--db, --freeze-base and --neighbours-on-demand need a RETRO model");
        return 0;
    }
    if (!r->db) return cli_usage_error(cmd, "a RETRO model trains with --db DIR");
    int st;
    if (r->base) {
        if ((st = joule_retro_init_from(m, r->base, r->init))) return cli_fail(cmd, st);
        joule_model_free(r->base);
        r->base = NULL;
    }
    if (r->freeze) joule_retro_freeze_base(m);
    const char *paths[2] = {train_path, val_path};
    int ret = open_data(cmd, c, r->db, paths, val_path ? 2 : 1, r->allow_mismatch, r->on_demand, &r->rd);
    if (ret) return ret;
    if (!resume || !c->retro.db_id[0])
        snprintf(m->cfg.retro.db_id, sizeof m->cfg.retro.db_id, "%s", joule_retro_data_db_id(r->rd));
    joule_retro_train_hooks(o, r->rd);
    char layers[256];
    int n = 0;
    for (int l = 0; l < c->n_layers && n < (int)sizeof layers - 8; l++)
        if (c->kinds[l].cca) n += snprintf(layers + n, sizeof layers - (size_t)n, "%s%d", n ? "," : "", l);
    uint64_t frozen = 0;
    for (int i = 0; i < m->n_tensors; i++) frozen += m->tensors[i].frozen ? m->tensors[i].numel : 0;
    printf("retro: chunk %d, %d neighbours, CCA in layers %s (positions: %s), encoder %d x d_model %d; database %s "
           "(%" PRIu64 " chunks, id %s)%s%s\n",
           c->retro.chunk, c->retro.k, layers, c->retro.positions == JOULE_RETRO_POS_NONE ? "none" : "rope",
           c->retro.enc_layers, c->retro.enc_d_model, r->db,
           joule_db_size(joule_retro_data_db(r->rd)), joule_retro_data_db_id(r->rd), r->init ? "; init from " : "",
           r->init ? r->init : "");
    if (r->freeze) printf("retro: %" PRIu64 " base parameters frozen\n", frozen);
    return 0;
}

void retro_train_cli_free(retro_train_cli *r) {
    joule_model_free(r->base);
    joule_retro_data_close(r->rd);
    r->base = NULL;
    r->rd = NULL;
}

/* ---- info ---- */

void retro_cli_print_terms(const joule_config *cfg) {
    const joule_ext_ops *ops = joule_ext_get(JOULE_EXT_CCA);
    if (!joule_config_has_cca(cfg) || !ops) return;
    double cca = 0, enc = 0;
    int n_cca = 0;
    for (int l = 0; l < cfg->n_layers; l++) {
        if (!cfg->kinds[l].cca) continue;
        const char *names[4];
        uint64_t fl[4];
        int n = ops->flop_terms(cfg, l, 1, cfg->ctx, names, fl, 4);
        for (int i = 0; i < n; i++) *(strcmp(names[i], "cca") == 0 ? &cca : &enc) += (double)fl[i];
        n_cca++;
    }
    char a[32], b[32];
    printf("retro:      chunk %d, %d neighbours, encoder %d x d_model %d, positions %s; of the forward FLOPs/token: "
           "cca %s (%d layers), encoder %s; one database search per %d tokens (done by FAISS, not counted)\n",
           cfg->retro.chunk, cfg->retro.k, cfg->retro.enc_layers, cfg->retro.enc_d_model,
           cfg->retro.positions == JOULE_RETRO_POS_NONE ? "none" : "rope",
           cli_fmt_count(a, sizeof a, cca / cfg->ctx), n_cca, cli_fmt_count(b, sizeof b, enc / cfg->ctx),
           cfg->retro.chunk);
}

void retro_cli_retrieval_cost(joule_retro_db *db, int m, void *json) {
    joule_search_cost sc;
    const char *spec = joule_embedder_spec(joule_db_embedder(db));
    const bool ngram = strncmp(spec, "ngram", 5) == 0;
    const char *emb = ngram ? "hashed byte n-grams (no matmul FLOPs)" : "a forward pass of that model over the chunk";
    const bool known = joule_retro_db_search_cost(db, &sc) == 0;
    if (json) {
        cJSON *o = cJSON_AddObjectToObject(json, "retrieval_cost");
        cJSON_AddNumberToObject(o, "tokens_per_search", m);
        if (known) cJSON_AddNumberToObject(o, "search_flops_per_query", sc.flops);
        else cJSON_AddNullToObject(o, "search_flops_per_query");
        cJSON_AddStringToObject(o, "search_method", known ? sc.method : joule_last_error());
        cJSON_AddStringToObject(o, "index", joule_db_factory(db));
        cJSON_AddStringToObject(o, "embedder", spec);
        return;
    }
    if (known)
        printf("search: one per %d tokens, ~%.3g FLOPs per query (%s, d %d, N %" PRIu64 "; done by FAISS, not "
               "counted); query embedding: %s, %s\n",
               m, sc.flops, sc.method, joule_db_dim(db), joule_db_size(db), spec, emb);
    else
        printf("search: one per %d tokens, cost unknown (%s); query embedding: %s, %s\n", m, joule_last_error(), spec,
               emb);
}

/* ---- eval ---- */

int retro_db_cli_option(retro_db_cli *d, const char *cmd, int c, const char *arg) {
    switch (c) {
    case OPT_RETRO_DB: d->dir = arg; return 0;
    case OPT_RETRO_ALLOW: d->allow_mismatch = true; return 0;
    case OPT_RETRO_OWN_DOC: d->own_doc = true; return 0;
    case OPT_RETRO_ON_DEMAND: d->on_demand = true; return 0;
    case OPT_RETRO_LEAKAGE: d->leakage = true; return 0;
    case OPT_RETRO_BASELINE: d->baseline = arg; return 0;
    case OPT_RETRO_LEAK_K:
        if (!cli_parse_int(arg, 1, 1024, &d->leak_k))
            return cli_usage_error(cmd, "--leakage-neighbours: '%s' is not an integer in [1, 1024]", arg);
        return 0;
    default: return -1;
    }
}

static void print_leakage(const joule_leakage_result *r, const char *baseline) {
    printf("leakage: r = longest run shared with the %d nearest entries / chunk, over %" PRIu64 " chunks (%s)\n",
           r->neighbours, r->chunks, r->own_document ? "own document allowed" : "own document excluded");
    printf("  %-7s %9s %10s %10s %10s%s\n", "r <=", "chunks", "bytes", "bpb on", "bpb off", baseline ? "  bpb dense" : "");
    for (int a = 0; a < JOULE_LEAKAGE_ALPHAS; a++) {
        const joule_leakage_row *w = &r->rows[a];
        printf("  %-7.3g %9" PRIu64 " %10" PRIu64 " %10.4f %10.4f", w->alpha, w->chunks, w->bytes, w->bpb_on, w->bpb_off);
        if (baseline) printf(" %10.4f", w->bpb_dense);
        putchar('\n');
    }
    if (baseline) printf("baseline: %s\n", baseline);
}

/* `joule eval --db --leakage`: the table by overlap (the baseline loaded with buffers). */
static int eval_leakage(const char *cmd, joule_model *m, joule_tokens *t, const retro_db_cli *d, joule_retro_data *rd,
                        int seq, int batch, uint64_t windows, bool json) {
    joule_model *dense = NULL;
    int st = JOULE_OK, ret = 0;
    if (d->baseline && (ret = cli_check_input(cmd, d->baseline, NULL))) return ret;
    if (d->baseline && !(st = joule_checkpoint_load(&dense, d->baseline, NULL))) {
        if (joule_config_has_cca(&dense->cfg) || dense->cfg.ctx < seq) {
            joule_model_free(dense);
            return cli_usage_error(cmd, "--baseline %s: needs a non-RETRO model with context >= %d", d->baseline, seq);
        }
        st = joule_model_alloc_train(dense, batch);
    }
    joule_leakage_result r;
    if (!st) st = joule_retro_leakage(m, dense, rd, t, seq, batch, windows, d->leak_k > 0 ? d->leak_k : 10, &r);
    joule_model_free(dense);
    if (st) return cli_fail(cmd, st);
    if (json) {
        cJSON *o = joule_retro_leakage_json(&r);
        cJSON_AddStringToObject(o, "tokens_file", t->path);
        cJSON_AddStringToObject(o, "db", d->dir);
        if (d->baseline) cJSON_AddStringToObject(o, "baseline", d->baseline);
        cli_print_json(o);
    } else {
        printf("data:   %s (%" PRIu64 " windows of %d tokens); db %s (id %s)\n", t->path, r.windows, seq, d->dir,
               joule_retro_data_db_id(rd));
        print_leakage(&r, d->baseline);
    }
    return 0;
}

int retro_cli_eval(const char *cmd, joule_model *m, joule_tokens *t, const retro_db_cli *d, int seq, int batch,
                   uint64_t windows, bool json, const char *model_path) {
    const char *db_dir = d->dir;
    const bool own_doc = d->own_doc;
    if (!joule_config_has_cca(&m->cfg)) return cli_usage_error(cmd, "--db needs a RETRO model (%s is %s)", model_path, m->cfg.arch);
    joule_retro_data *rd = NULL;
    const char *paths[1] = {t->path};
    /* Searching live (own document allowed) reads no neighbour file: computing one would be waste. */
    int ret = open_data(cmd, &m->cfg, db_dir, paths, 1, d->allow_mismatch, d->on_demand || own_doc, &rd);
    if (ret) return ret;
    joule_retro_data_set_own_document(rd, own_doc);
    if (d->leakage) {
        ret = eval_leakage(cmd, m, t, d, rd, seq, batch, windows, json);
        joule_retro_data_close(rd);
        return ret;
    }
    joule_eval_result res[2];
    for (int on = 1; on >= 0 && !ret; on--) {
        joule_retro_data_set_retrieval(rd, on);
        int st = joule_evaluate_prepared(m, t, seq, batch, windows, joule_retro_prepare, rd, &res[on], NULL, NULL);
        if (st) ret = cli_fail(cmd, st);
    }
    if (!ret && json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "model", model_path);
        cJSON_AddStringToObject(o, "tokens_file", t->path);
        cJSON_AddStringToObject(o, "db", db_dir);
        cJSON_AddStringToObject(o, "db_id", joule_retro_data_db_id(rd));
        cJSON_AddBoolToObject(o, "own_document", own_doc);
        cJSON_AddBoolToObject(o, "on_demand", d->on_demand);
        cJSON_AddNumberToObject(o, "bpb_retrieval", res[1].bpb);
        cJSON_AddNumberToObject(o, "bpb_no_retrieval", res[0].bpb);
        cJSON_AddNumberToObject(o, "loss_retrieval", res[1].loss);
        cJSON_AddNumberToObject(o, "loss_no_retrieval", res[0].loss);
        cJSON_AddNumberToObject(o, "tokens", (double)res[1].tokens);
        cJSON_AddNumberToObject(o, "windows", (double)res[1].windows);
        cJSON_AddNumberToObject(o, "seq", seq);
        cJSON_AddNumberToObject(o, "flops_retrieval", (double)res[1].flops);
        cJSON_AddNumberToObject(o, "flops_no_retrieval", (double)res[0].flops);
        cJSON_AddNumberToObject(o, "wall_s_retrieval", res[1].wall_s);
        cJSON_AddNumberToObject(o, "wall_s_no_retrieval", res[0].wall_s);
        retro_cli_retrieval_cost(joule_retro_data_db(rd), m->cfg.retro.chunk, o);
        cli_print_json(o);
    } else if (!ret) {
        printf("model:  %s\n", model_path);
        printf("data:   %s (%" PRIu64 " windows of %d tokens)\n", t->path, res[1].windows, seq);
        printf("db:     %s (%" PRIu64 " chunks, id %s); %s\n", db_dir, joule_db_size(joule_retro_data_db(rd)),
               joule_retro_data_db_id(rd),
               own_doc         ? "searched live, own document allowed"
               : d->on_demand ? "neighbours searched on demand, own document excluded"
                               : "precomputed neighbours, own document excluded");
        printf("bpb:    %.4f with retrieval, %.4f without (%+.4f)\n", res[1].bpb, res[0].bpb, res[1].bpb - res[0].bpb);
        printf("FLOPs:  %.3g with retrieval, %.3g without (counted)\n", (double)res[1].flops, (double)res[0].flops);
        printf("time:   %.2fs with retrieval, %.2fs without\n", res[1].wall_s, res[0].wall_s);
        retro_cli_retrieval_cost(joule_retro_data_db(rd), m->cfg.retro.chunk, NULL);
    }
    joule_retro_data_close(rd);
    return ret;
}

/* ---- generate ---- */

int retro_cli_open_db(const char *cmd, const joule_model *m, const char *db_dir, bool allow_mismatch,
                      joule_retro_db **db) {
    *db = NULL;
    if (!joule_config_has_cca(&m->cfg)) return cli_usage_error(cmd, "--db needs a RETRO model (this one is %s)", m->cfg.arch);
    int st = joule_db_open(db, db_dir);
    if (st) return cli_fail(cmd, st);
    const joule_retro_config *r = &m->cfg.retro;
    const char *why = NULL;
    if (joule_db_chunk(*db) != r->chunk) why = "its chunk length differs from the model's";
    else if (r->db_id[0] && strcmp(r->db_id, joule_db_id(*db)) != 0 && !allow_mismatch)
        why = "it is not the database the model was trained with (allow it with --allow-db-mismatch)";
    if (why) {
        fprintf(stderr, "joule %s: %s: %s\n", cmd, db_dir, why);
        joule_db_close(*db);
        *db = NULL;
        return EXIT_USAGE;
    }
    return 0;
}
