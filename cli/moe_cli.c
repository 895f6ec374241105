/* The MoE parts of the CLI: train options and summary, eval routing statistics. */
#include "moe_cli.h"

#include <math.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <stdio.h>

#include "cli.h"
#include "joule/moe.h"

static int bad_float(const char *cmd, const char *name, const char *arg, float *out) {
    if (!cli_parse_float(arg, out) || !(*out >= 0) || !isfinite(*out))
        return cli_usage_error(cmd, "%s: '%s' is not a non-negative number", name, arg);
    return 0;
}

int cli_moe_parse(const char *cmd, cli_moe_opts *o, int opt, const char *arg) {
    joule_moe_config *e = &o->e;
    int rc = 0;
    switch (opt) {
    case OPT_MOE_ARCH:
        if (strcmp(arg, "dense") && strcmp(arg, "moe"))
            return cli_usage_error(cmd, "--arch: '%s' is not dense or moe", arg);
        o->arch = arg;
        return 0;
    case OPT_MOE_EXPERTS: rc = cli_int_option(cmd, "--experts", arg, 1, 4096, &e->n_experts); break;
    case OPT_MOE_TOP_K: rc = cli_int_option(cmd, "--top-k", arg, 1, 2, &e->top_k); break;
    case OPT_MOE_EVERY: rc = cli_int_option(cmd, "--moe-every", arg, 1, JOULE_MAX_LAYERS, &e->every); break;
    case OPT_MOE_D_FF_EXPERT: rc = cli_int_option(cmd, "--d-ff-expert", arg, 1, 1 << 20, &e->d_ff_expert); break;
    case OPT_MOE_CF: rc = bad_float(cmd, "--capacity-factor", arg, &e->capacity_train); break;
    case OPT_MOE_EVAL_CF: rc = bad_float(cmd, "--eval-capacity-factor", arg, &e->capacity_eval); break;
    case OPT_MOE_ALPHA: rc = bad_float(cmd, "--aux-alpha", arg, &e->aux_alpha); break;
    case OPT_MOE_BETA: rc = bad_float(cmd, "--z-beta", arg, &e->z_beta); break;
    case OPT_MOE_NO_RENORM: e->renormalize = false; break;
    case OPT_MOE_RANDOM_SECOND: e->random_second = true; break;
    default: return cli_usage_error(cmd, "internal: option %d is not an MoE option", opt);
    }
    if (!rc) o->given |= 1u << (opt - OPT_MOE_FIRST);
    return rc;
}

#define GIVEN(o, opt) (((o)->given >> ((opt) - OPT_MOE_FIRST)) & 1u)

int cli_moe_finish(const char *cmd, const cli_moe_opts *o, joule_config *cfg) {
    const bool was_moe = strcmp(cfg->arch, "moe") == 0 && joule_config_has_moe(cfg);
    const bool moe = o->arch ? strcmp(o->arch, "moe") == 0 : was_moe;
    if (!moe) {
        if (o->given) return cli_usage_error(cmd, "the MoE options (--experts, --top-k, ...) need --arch moe");
        if (o->arch) {
            strcpy(cfg->arch, "dense");
            for (int l = 0; l < JOULE_MAX_LAYERS; l++) cfg->kinds[l].ffn = JOULE_FFN_DENSE;
        }
        return 0;
    }
    if (was_moe && !o->given) return 0; /* the config file's MoE layers as they are */
    joule_moe_config e = was_moe ? cfg->moe : joule_moe_config_default(cfg->d_ff);
    const joule_moe_config *v = &o->e;
    if (GIVEN(o, OPT_MOE_EXPERTS)) e.n_experts = v->n_experts;
    if (GIVEN(o, OPT_MOE_TOP_K)) e.top_k = v->top_k;
    if (GIVEN(o, OPT_MOE_EVERY)) e.every = v->every;
    if (GIVEN(o, OPT_MOE_D_FF_EXPERT)) e.d_ff_expert = v->d_ff_expert;
    if (GIVEN(o, OPT_MOE_CF)) e.capacity_train = v->capacity_train;
    if (GIVEN(o, OPT_MOE_EVAL_CF)) e.capacity_eval = v->capacity_eval;
    if (GIVEN(o, OPT_MOE_ALPHA)) e.aux_alpha = v->aux_alpha;
    if (GIVEN(o, OPT_MOE_BETA)) e.z_beta = v->z_beta;
    if (GIVEN(o, OPT_MOE_NO_RENORM)) e.renormalize = false;
    if (GIVEN(o, OPT_MOE_RANDOM_SECOND)) e.random_second = true;
    if (e.top_k > e.n_experts)
        return cli_usage_error(cmd, "--top-k %d needs at least %d experts (--experts %d)", e.top_k, e.top_k,
                               e.n_experts);
    if (e.every > cfg->n_layers)
        return cli_usage_error(cmd, "--moe-every %d leaves no MoE layer in %d layers", e.every, cfg->n_layers);
    joule_moe_apply(cfg, &e);
    return 0;
}

void cli_moe_print_summary(const joule_model *m) {
    const joule_config *c = &m->cfg;
    if (!joule_config_has_moe(c)) return;
    const joule_moe_config *e = &c->moe;
    char layers[512] = "", a[32], b[32];
    size_t used = 0;
    for (int l = 0; l < c->n_layers && used < sizeof layers - 8; l++)
        if (c->kinds[l].ffn == JOULE_FFN_MOE)
            used += (size_t)snprintf(layers + used, sizeof layers - used, "%s%d", used ? "," : "", l);
    char cap_train[32], cap_eval[32];
    if (e->capacity_train > 0) snprintf(cap_train, sizeof cap_train, "%g", e->capacity_train);
    else snprintf(cap_train, sizeof cap_train, "dropless");
    if (e->capacity_eval > 0) snprintf(cap_eval, sizeof cap_eval, "%g", e->capacity_eval);
    else snprintf(cap_eval, sizeof cap_eval, "dropless");
    printf("moe: MoE FFN in layers %s, %d experts of d_ff %d, top-%d, %s gates%s, capacity factor %s training / %s "
           "evaluation, aux alpha %g, z beta %g; %s params, %s active per token\n",
           layers, e->n_experts, e->d_ff_expert, e->top_k, e->renormalize ? "renormalised" : "raw softmax",
           e->random_second ? ", random second expert" : "", cap_train, cap_eval, e->aux_alpha, e->z_beta,
           cli_fmt_count(a, sizeof a, (double)joule_model_param_counts(m).total),
           cli_fmt_count(b, sizeof b, (double)joule_moe_active_params(m, false)));
}

void cli_moe_eval_report(const joule_model *m, void *json) {
    if (!joule_config_has_moe(&m->cfg)) return;
    cJSON *o = cJSON_CreateObject();
    joule_moe_stats_json(m, o, true);
    if (json) {
        cJSON_AddItemToObject(json, "moe", o);
        return;
    }
    printf("routing (per MoE layer, whole evaluation; aux %.4g):\n", cJSON_GetObjectItem(o, "aux")->valuedouble);
    const cJSON *l;
    cJSON_ArrayForEach(l, cJSON_GetObjectItem(o, "layers")) {
#define NUM(k) cJSON_GetObjectItem(l, k)->valuedouble
        printf("  layer %d: tokens/expert min %.0f max %.0f (max/mean %.2f), dropped first %.2f%% second %.2f%%, "
               "entropy %.3f, lb %.4g, z %.4g\n",
               (int)NUM("layer"), NUM("tokens_min"), NUM("tokens_max"), NUM("max_over_mean"), 100 * NUM("drop_first"),
               100 * NUM("drop_second"), NUM("entropy"), NUM("lb"), NUM("z"));
#undef NUM
    }
    cJSON_Delete(o);
}
