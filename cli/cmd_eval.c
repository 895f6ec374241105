/* joule eval — validation loss and bits-per-byte of a checkpoint. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acct_cli.h"
#include "cli.h"
#include "retro_cli.h"
#include "joule/checkpoint.h"
#include "joule/data.h"
#include "joule/ops.h"
#include "joule/train.h"
#include "moe_cli.h"

static const char USAGE[] =
    "Usage: joule eval --model PATH [--data DIR | --tokens FILE] [options]\n"
    "\n"
    "Reports the mean next-token loss over consecutive non-overlapping windows of the\n"
    "model's context length (inputs tok[wT..wT+T-1], targets shifted by one);\n"
    "bits-per-byte = loss / ln 2. Each window scores T targets, each predicted from the\n"
    "bytes before it in the same window (no context carries across windows).\n"
    "\n"
    "Options:\n"
    "  --model PATH     checkpoint (.safetensors) to evaluate (required)\n"
    "  --data DIR       prepared corpus; evaluates DIR/<split>.bin (default data/default)\n"
    "  --split NAME     val or train, with --data (default val)\n"
    "  --tokens FILE    token file (.bin) to evaluate, instead of --data\n"
    "  --windows N      evaluate at most the first N windows; 0 = all (default 0)\n"
    "  --batch N        windows per forward pass (default 8)\n"
    "  --seq N          window length T, at most the model's context (default: the model's ctx)\n"
    "  --db DIR         RETRO models: bits-per-byte with retrieval from DIR on and off (a\n"
    "                   database of the training split only, or one that also holds the\n"
    "                   validation split: the 'leaky' setting, are two runs)\n"
    "  --allow-db-mismatch  accept a database other than the model's training one\n"
    "  --include-own-doc, --leaky  with --db: search live with nothing excluded, so a chunk may\n"
    "                   retrieve its own document (the leaky setting; default: the clean one,\n"
    "                   excluded as in training)\n"
    "  --leakage        with --db: bits-per-byte by overlap with the database, as in the RETRO\n"
    "                   paper: each evaluated chunk's r = the longest run of bytes it shares with\n"
    "                   one of its nearest entries, over the chunk length; bpb with retrieval on\n"
    "                   and off over the chunks with r <= 0, 1/8, 1/4, 1/2, 3/4, 1, with counts\n"
    "  --baseline PATH  with --leakage: a dense model scored on the same bytes\n"
    "  --leakage-neighbours N  entries searched per chunk for r (default 10)\n"
    "  --neighbours-on-demand  with --db: no neighbour file; search each chunk of the evaluated\n"
    "                   windows when first read (a few windows of a large split pay for only those)\n"
    "  --json           print one JSON object instead of text\n"
    "  --threads N      threads for BLAS and joule's loops; 0 = all cores (default 0)\n"
    "  -h, --help       show this help and exit\n"
    "\n"
    "Prints loss (nats), bits-per-byte, tokens scored, windows, counted FLOPs, wall time\n"
    "and tokens/s, MFU against the sgemm peak (measured at start, or $JOULE_PEAK_GFLOPS) and\n"
    "the energy with its method (docs/ACCOUNTING.md; $JOULE_HARDWARE, $JOULE_POWER_WATTS).\n"
    "JSON keys: model, tokens_file, loss, bpb, tokens, windows, seq, batch, flops,\n"
    "flops_analytic, peak_gflops, mfu, energy_j, energy_method, J_per_token, wall_s,\n"
    "tokens_per_s, threads; for an MoE model also moe: per-layer routing statistics over the\n"
    "whole evaluation (tokens per expert min/max and max/mean, fractions of first and second\n"
    "choices dropped, router entropy, lb and z losses).\n";

enum { OPT_MODEL = 256, OPT_DATA, OPT_SPLIT, OPT_TOKENS, OPT_WINDOWS, OPT_BATCH, OPT_SEQ, OPT_JSON, OPT_THREADS };

static const char *CMD = "eval";

typedef struct {
    cli_progress bar;
    int seq;
} eval_progress;

static void on_eval_progress(void *ctx, uint64_t done, uint64_t total) {
    eval_progress *ep = ctx;
    (void)total;
    cli_progress_update(&ep->bar, (double)(done * (uint64_t)ep->seq), NULL);
}

int cmd_eval(int argc, char **argv) {
    static const struct option LONG[] = {
        {"model", required_argument, NULL, OPT_MODEL},
        {"data", required_argument, NULL, OPT_DATA},
        {"split", required_argument, NULL, OPT_SPLIT},
        {"tokens", required_argument, NULL, OPT_TOKENS},
        {"windows", required_argument, NULL, OPT_WINDOWS},
        {"batch", required_argument, NULL, OPT_BATCH},
        {"seq", required_argument, NULL, OPT_SEQ},
        {"json", no_argument, NULL, OPT_JSON},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"help", no_argument, NULL, 'h'},
        RETRO_EVAL_LONG_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const char *model_path = NULL, *data_dir = NULL, *split = NULL, *tokens_path = NULL;
    uint64_t max_windows = 0;
    int batch = 8, seq = 0, threads = 0;
    bool json = false;
    retro_db_cli rdb = {0};
    int c;
    cli_opt_start();
    while ((c = cli_getopt(argc, argv, ":h", LONG, USAGE)) != -1) {
        switch (c) {
        case CLI_HELP: return 0;
        case OPT_MODEL: model_path = optarg; break;
        case OPT_DATA: data_dir = optarg; break;
        case OPT_SPLIT:
            if (strcmp(optarg, "val") && strcmp(optarg, "train"))
                return cli_usage_error(CMD, "--split: '%s' is not val or train", optarg);
            split = optarg;
            break;
        case OPT_TOKENS: tokens_path = optarg; break;
        case OPT_WINDOWS: CLI_CHECK(cli_u64_option(CMD, "--windows", optarg, &max_windows)); break;
        case OPT_BATCH:
            if (!cli_parse_int(optarg, 1, 1 << 16, &batch))
                return cli_usage_error(CMD, "--batch: '%s' is not an integer in [1, 65536]", optarg);
            break;
        case OPT_SEQ:
            if (!cli_parse_int(optarg, 1, 1 << 16, &seq))
                return cli_usage_error(CMD, "--seq: '%s' is not an integer in [1, 65536]", optarg);
            break;
        case OPT_JSON: json = true; break;
        case OPT_THREADS: CLI_CHECK(cli_int_option(CMD, "--threads", optarg, 0, 4096, &threads)); break;
        default:
        {
            const int r = retro_db_cli_option(&rdb, CMD, c, optarg);
            if (r) return r < 0 ? cli_bad_option(CMD, c, argv) : r;
        }
        }
    }
    if (optind < argc) return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    if (!model_path) return cli_usage_error(CMD, "--model PATH is required");
    if (rdb.own_doc && !rdb.dir) return cli_usage_error(CMD, "--include-own-doc needs --db DIR");
    if (rdb.on_demand && !rdb.dir) return cli_usage_error(CMD, "--neighbours-on-demand needs --db DIR");
    if ((rdb.leakage || rdb.baseline || rdb.leak_k) && !rdb.dir) return cli_usage_error(CMD, "--leakage needs --db DIR");
    if ((rdb.baseline || rdb.leak_k) && !rdb.leakage)
        return cli_usage_error(CMD, "--baseline and --leakage-neighbours go with --leakage");
    if (tokens_path && (data_dir || split)) return cli_usage_error(CMD, "give either --data/--split or --tokens");
    char buf[4096];
    if (!tokens_path) {
        snprintf(buf, sizeof buf, "%s/%s.bin", data_dir ? data_dir : "data/default", split ? split : "val");
        tokens_path = buf;
    }
    int rc;
    if ((rc = cli_check_input(CMD, model_path, NULL))) return rc;
    if ((rc = cli_check_input(CMD, tokens_path, data_dir || !strstr(tokens_path, "data/default/")
                                                    ? NULL
                                                    : "prepare it with 'joule data prepare --preset default'")))
        return rc;

    joule_model *m = NULL;
    joule_tokens t = {0};
    bool t_open = false;
    int ret = 0, st;
    if ((st = joule_checkpoint_load(&m, model_path, NULL))) return cli_fail(CMD, st);
    if (!seq) seq = m->cfg.ctx;
    if (seq > m->cfg.ctx) {
        ret = cli_usage_error(CMD, "--seq %d is longer than the model's context %d", seq, m->cfg.ctx);
        goto done;
    }
    if ((st = joule_tokens_open(&t, tokens_path))) {
        ret = cli_fail(CMD, st);
        goto done;
    }
    t_open = true;
    uint64_t nw = joule_eval_windows(&t, seq);
    if (max_windows && nw > max_windows) nw = max_windows;
    if (nw == 0) {
        fprintf(stderr, "joule %s: %s: %" PRIu64 " tokens is too short for one window of %d\n", CMD, tokens_path,
                t.n_tokens, seq);
        ret = EXIT_USAGE;
        goto done;
    }
    cli_setup_threads(threads);
    if ((st = joule_model_alloc_train(m, batch))) {
        ret = cli_fail(CMD, st);
        goto done;
    }
    if (rdb.dir) {
        ret = retro_cli_eval(CMD, m, &t, &rdb, seq, batch, nw, json, model_path);
        goto done;
    }

    const double peak = cli_peak_flops();
    cli_energy energy;
    cli_energy_begin(&energy, "eval");
    eval_progress ep = {.seq = seq};
    cli_progress_start(&ep.bar, "eval", "tok", (double)(nw * (uint64_t)seq));
    joule_eval_result r;
    if ((st = joule_evaluate(m, &t, seq, batch, nw, &r, on_eval_progress, &ep))) {
        if (ep.bar.tty && ep.bar.printed) fputc('\n', stderr);
        joule_energy_close(&energy.meters);
        ret = cli_fail(CMD, st);
        goto done;
    }
    if (ep.bar.printed) cli_progress_finish(&ep.bar, (double)r.tokens, NULL);
    double wall = r.wall_s, loss = r.loss, bpb = r.bpb;
    uint64_t tokens = r.tokens, flops = r.flops;
    double tps = wall > 0 ? (double)tokens / wall : 0;
    const double analytic = (double)nw * (double)joule_model_forward_flops(&m->cfg, 1, seq);
    joule_energy_report er;
    memset(&er, 0, sizeof er);
    if (json) {
        cli_energy_end(&energy, tokens, 0, true, &er);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "model", model_path);
        cJSON_AddStringToObject(o, "tokens_file", tokens_path);
        cJSON_AddNumberToObject(o, "loss", loss);
        cJSON_AddNumberToObject(o, "bpb", bpb);
        cJSON_AddNumberToObject(o, "tokens", (double)tokens);
        cJSON_AddNumberToObject(o, "windows", (double)nw);
        cJSON_AddNumberToObject(o, "seq", seq);
        cJSON_AddNumberToObject(o, "batch", batch);
        cJSON_AddNumberToObject(o, "flops", (double)flops);
        cJSON_AddNumberToObject(o, "flops_analytic", analytic);
        cJSON_AddNumberToObject(o, "peak_gflops", peak / 1e9);
        cJSON_AddNumberToObject(o, "mfu", wall > 0 && peak > 0 ? analytic / wall / peak : 0);
        cJSON_AddNumberToObject(o, "energy_j", er.joules);
        cJSON_AddStringToObject(o, "energy_method", er.method[0] ? er.method : "none");
        cJSON_AddNumberToObject(o, "J_per_token", tokens ? er.joules / (double)tokens : 0);
        cJSON_AddNumberToObject(o, "wall_s", wall);
        cJSON_AddNumberToObject(o, "tokens_per_s", tps);
        cJSON_AddNumberToObject(o, "threads", joule_get_threads());
        cli_moe_eval_report(m, o);
        cli_print_json(o);
    } else {
        char b[32];
        printf("model:  %s\n", model_path);
        printf("data:   %s (%" PRIu64 " windows of %d tokens%s)\n", tokens_path, nw, seq,
               max_windows && nw == max_windows ? ", limited by --windows" : "");
        printf("loss:   %.4f nats/token\n", loss);
        printf("bpb:    %.4f bits/byte\n", bpb);
        printf("tokens: %" PRIu64 "\n", tokens);
        printf("FLOPs:  %.3g counted, %.3g analytic (forward)\n", (double)flops, analytic);
        printf("time:   %.2fs (%s tok/s, %d threads)\n", wall, cli_fmt_count(b, sizeof b, tps), joule_get_threads());
        cli_print_mfu(stdout, analytic, (double)flops, wall, peak);
        cli_energy_end(&energy, tokens, 0, false, &er);
        cli_moe_eval_report(m, NULL);
    }
done:
    if (t_open) joule_tokens_close(&t);
    joule_model_free(m);
    return ret;
}
