/* `joule bench retro`: what retrieval costs a RETRO model. Training steps (forward + backward)
 * with neighbours against the same model with retrieval off (the dense base's work), and
 * generation with live retrieval against generation without, with the share of generation
 * time spent embedding, searching and fetching. Runs alternate, medians reported, so the
 * ratios come from one run on the same machine state. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "joule/checkpoint.h"
#include "joule/ops.h"
#include "joule/retro.h"
#include "joule/retro_db.h"
#include "retro_cli.h"

static const char *CMD = "bench retro";

/* One training step's work on random tokens and neighbours of the chunks training windows
 * read (retrieval off: nb NULL). */
static int timed_step(joule_model *m, const int32_t *in, const int32_t *tg, const joule_retro_chunk *ch, int nch,
                      const int32_t *nb, int B, int T, double *secs, uint64_t *flops) {
    double t0 = joule_now();
    uint64_t f0 = joule_flops_counted();
    double loss;
    int rc = joule_retro_set_chunks(m, ch, nch, nb, B, T);
    if (!rc) rc = joule_model_forward(m, in, tg, B, T, &loss);
    if (!rc) rc = joule_model_backward(m, 1.0f);
    *secs = joule_now() - t0;
    *flops = joule_flops_counted() - f0;
    return rc;
}

static int no_output(void *ctx, int32_t tok) {
    (void)ctx;
    (void)tok;
    return 0;
}

int bench_retro(int argc, char **argv) {
    static const struct option LONG[] = {
        {"model", required_argument, NULL, 'm'}, {"db", required_argument, NULL, 'd'},
        {"batch", required_argument, NULL, 'b'}, {"steps", required_argument, NULL, 's'},
        {"tokens", required_argument, NULL, 'n'}, {"threads", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
    const char *model_path = NULL, *db_dir = NULL;
    int batch = 8, steps = 5, tokens = 256, threads = 0;
    int c;
    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", LONG, NULL)) != -1) {
        int *dst = NULL;
        switch (c) {
        case 'h':
            puts("Usage: joule bench retro --model RETRO.safetensors --db DIR [options]\n"
                 "\n"
                 "Times training steps (forward + backward, random tokens and neighbours) with retrieval\n"
                 "against the same model with retrieval off (the base model's work), and greedy generation\n"
                 "with live retrieval from DIR against generation without; runs alternate and medians are\n"
                 "reported, with the share of generation time spent embedding, searching and fetching.\n"
                 "\n"
                 "Options:\n"
                 "  --model PATH    a RETRO checkpoint (required)\n"
                 "  --db DIR        its database (required)\n"
                 "  --batch N       sequences per training step (8)\n"
                 "  --steps N       timed steps and generations of each kind (5)\n"
                 "  --tokens N      tokens generated per generation (256)\n"
                 "  --threads N     OpenMP/BLAS threads (0 = all cores)");
            return 0;
        case 'm': model_path = optarg; continue;
        case 'd': db_dir = optarg; continue;
        case 'b': dst = &batch; break;
        case 's': dst = &steps; break;
        case 'n': dst = &tokens; break;
        case 't': dst = &threads; break;
        default: return cli_bad_option(CMD, c, argv);
        }
        if (!cli_parse_int(optarg, dst == &threads ? 0 : 1, 1 << 20, dst))
            return cli_usage_error(CMD, "'%s' is not a valid count", optarg);
    }
    if (optind < argc) return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    if (!model_path || !db_dir) return cli_usage_error(CMD, "--model and --db are required");
    int rc = cli_check_input(CMD, model_path, NULL);
    if (rc) return rc;
    joule_model *m = NULL;
    int st = joule_checkpoint_load(&m, model_path, NULL);
    if (st) return cli_fail(CMD, st);
    joule_retro_db *db = NULL;
    if ((rc = retro_cli_open_db(CMD, m, db_dir, true, &db))) {
        joule_model_free(m);
        return rc;
    }
    cli_setup_threads(threads);
    const joule_config *cfg = &m->cfg;
    const int T = cfg->ctx / cfg->retro.chunk * cfg->retro.chunk, nch = T / cfg->retro.chunk;
    const size_t N = (size_t)batch * T, R = (size_t)batch * nch * cfg->retro.k * 2 * cfg->retro.chunk;
    int32_t *in = malloc(N * sizeof *in), *tg = malloc(N * sizeof *tg), *nb = malloc((R + 1) * sizeof *nb);
    joule_retro_chunk *ch = malloc(((size_t)batch * nch + 1) * sizeof *ch);
    double *t_on = calloc((size_t)steps, sizeof(double)), *t_off = calloc((size_t)steps, sizeof(double));
    double *g_on = calloc((size_t)steps, sizeof(double)), *g_off = calloc((size_t)steps, sizeof(double));
    double *share = calloc((size_t)steps, sizeof(double));
    if (!in || !tg || !nb || !ch || !t_on || !t_off || !g_on || !g_off || !share) {
        fprintf(stderr, "joule %s: out of memory\n", CMD);
        rc = EXIT_RUNTIME;
        goto done;
    }
    joule_rng r;
    joule_rng_seed(&r, 1);
    for (size_t i = 0; i < N; i++) in[i] = (int32_t)joule_rng_below(&r, 256), tg[i] = (int32_t)joule_rng_below(&r, 256);
    for (size_t i = 0; i < R; i++) nb[i] = (int32_t)joule_rng_below(&r, 256);
    const int n_ch = joule_retro_regular_chunks(cfg->retro.chunk, batch, T, ch);
    if ((st = joule_model_alloc_train(m, batch))) {
        rc = cli_fail(CMD, st);
        goto done;
    }
    printf("model %s: ctx %d, chunk %d, k %d; database %s (%" PRIu64 " chunks, %s); %d threads\n", model_path,
           cfg->ctx, cfg->retro.chunk, cfg->retro.k, db_dir, joule_db_size(db), joule_db_factory(db),
           joule_get_threads());
    uint64_t f_on = 0, f_off = 0;
    joule_sampler greedy = {.temperature = 0.0f, .top_k = 0, .top_p = 1.0f};
    const int n_gen = tokens < cfg->ctx ? tokens : cfg->ctx; /* no sliding window: one search per chunk */
    joule_retro_gen_stats gs;
    for (int i = -1; i < steps && !st; i++) { /* i = -1 warms up */
        double s_on, s_off;
        if ((st = timed_step(m, in, tg, ch, n_ch, nb, batch, T, &s_on, &f_on)) ||
            (st = timed_step(m, in, tg, ch, n_ch, NULL, batch, T, &s_off, &f_off)))
            break;
        if ((st = joule_retro_generate(m, db, NULL, 0, 0, n_gen, &greedy, 1, no_output, NULL, &gs))) break;
        double gen_on = gs.total_s, sh = gs.retrieval_s / gs.total_s;
        if ((st = joule_retro_generate(m, NULL, NULL, 0, 0, n_gen, &greedy, 1, no_output, NULL, &gs))) break;
        if (i < 0) continue;
        t_on[i] = s_on, t_off[i] = s_off, g_on[i] = gen_on, g_off[i] = gs.total_s, share[i] = sh;
    }
    if (st) {
        rc = cli_fail(CMD, st);
        goto done;
    }
    double mon = cli_median(t_on, steps), moff = cli_median(t_off, steps), gon = cli_median(g_on, steps), goff = cli_median(g_off, steps);
    printf("train step (batch %d x %d): retrieval %.1f ms (%.3g FLOPs), off %.1f ms (%.3g FLOPs): time x%.2f, FLOPs x%.2f\n",
           batch, T, 1e3 * mon, (double)f_on, 1e3 * moff, (double)f_off, mon / moff, (double)f_on / (double)f_off);
    printf("generate %d tokens: live retrieval %.1f tok/s, off %.1f tok/s: time x%.2f; retrieval (embed+search+fetch) "
           "%.1f%% of generation time (median)\n",
           n_gen, n_gen / gon, n_gen / goff, gon / goff, 100.0 * cli_median(share, steps));
    retro_cli_retrieval_cost(db, cfg->retro.chunk, NULL);
done:
    free(in);
    free(tg);
    free(nb);
    free(ch);
    free(t_on);
    free(t_off);
    free(g_on);
    free(g_off);
    free(share);
    joule_db_close(db);
    joule_model_free(m);
    return rc;
}
