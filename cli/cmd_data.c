/* joule data prepare | info — building and inspecting token corpora. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "joule/data.h"

static const char USAGE[] =
    "Usage: joule data <subcommand> [options]\n"
    "\n"
    "Subcommands:\n"
    "  prepare   turn text files or a preset corpus into train/val token files\n"
    "  info      show what a prepared corpus folder holds\n"
    "\n"
    "Run 'joule data <subcommand> --help' for its options.\n";

static const char PREPARE_USAGE[] =
    "Usage: joule data prepare [--preset NAME | PATH...] [options]\n"
    "\n"
    "Reads text (files, or folders read recursively in sorted order) or a preset corpus,\n"
    "cuts it into documents, splits the documents into training and validation sets and\n"
    "writes OUT/train.bin, train.idx, val.bin, val.idx and meta.json. Tokens are bytes;\n"
    "byte 0 ends each document (NUL bytes in the text are dropped).\n"
    "\n"
    "Options:\n"
    "  --preset NAME        default (GCIDE dictionary + fortunes), gcide or fortunes, read\n"
    "                       from the Debian packages dict-gcide and fortunes\n"
    "                       (default when no PATH is given: default)\n"
    "  --out DIR            output folder, created if missing (default data/<preset> for a\n"
    "                       preset; required with PATHs)\n"
    "  --val-fraction F     fraction of documents for validation, in (0, 1) (default 0.05)\n"
    "  --seed S             seed of the train/validation split (default 1)\n"
    "  --split MODE         how PATHs are cut into documents (default file):\n"
    "                         file        each file is one document\n"
    "                         blank-line  paragraphs separated by blank lines\n"
    "                         sep:LINE    documents separated by lines equal to LINE (e.g. sep:%)\n"
    "  -h, --help           show this help and exit\n"
    "\n"
    "Hidden entries inside folders, symlinked folders, special files and binary files (a NUL\n"
    "byte in the first 8 KiB) are skipped with a warning and counted in the summary.\n";

static const char INFO_USAGE[] =
    "Usage: joule data info [DIR] [options]\n"
    "\n"
    "Opens and validates DIR/train.bin and DIR/val.bin (with their .idx files) and prints\n"
    "their token and document counts and the corpus description from DIR/meta.json.\n"
    "\n"
    "Arguments:\n"
    "  DIR          prepared corpus folder (default data/default)\n"
    "Options:\n"
    "  --json       print one JSON object instead of text\n"
    "  -h, --help   show this help and exit\n";

/* ---- prepare ---- */

typedef struct {
    cli_progress bar;
    bool started;
} prepare_ui;

static void on_progress(void *ctx, uint64_t done, uint64_t total) {
    prepare_ui *ui = ctx;
    if (!ui->started) {
        cli_progress_start(&ui->bar, "prepare", "B", (double)total);
        ui->started = true;
    }
    ui->bar.total = (double)total;
    cli_progress_update(&ui->bar, (double)done, NULL);
}

static void on_warn(void *ctx, const char *message) {
    prepare_ui *ui = ctx;
    if (ui->started && ui->bar.tty) fputs("\r\033[K", stderr); /* clear the bar line */
    fprintf(stderr, "joule data prepare: warning: %s\n", message);
    if (ui->bar.tty) ui->bar.printed = 0; /* redraw at the next update */
}

enum { OPT_PRESET = 256, OPT_OUT, OPT_VAL_FRACTION, OPT_SEED, OPT_SPLIT, OPT_JSON };

static int cmd_prepare(int argc, char **argv) {
    const char *cmd = "data prepare";
    static const struct option LONG[] = {
        {"preset", required_argument, NULL, OPT_PRESET},
        {"out", required_argument, NULL, OPT_OUT},
        {"val-fraction", required_argument, NULL, OPT_VAL_FRACTION},
        {"seed", required_argument, NULL, OPT_SEED},
        {"split", required_argument, NULL, OPT_SPLIT},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    joule_prepare_opts o;
    joule_prepare_opts_init(&o);
    const char *split = NULL;
    int c;
    cli_opt_start();
    while ((c = cli_getopt(argc, argv, ":h", LONG, PREPARE_USAGE)) != -1) {
        switch (c) {
        case CLI_HELP: return 0;
        case OPT_PRESET:
            o.preset = optarg;
            break;
        case OPT_OUT:
            o.out_dir = optarg;
            break;
        case OPT_VAL_FRACTION:
            if (!cli_parse_double(optarg, &o.val_fraction) || !(o.val_fraction > 0 && o.val_fraction < 1))
                return cli_usage_error(cmd, "--val-fraction: '%s' is not a number in (0, 1)", optarg);
            break;
        case OPT_SEED: CLI_CHECK(cli_u64_option(cmd, "--seed", optarg, &o.seed)); break;
        case OPT_SPLIT:
            split = optarg;
            if (joule_prepare_parse_split(&o, optarg) != JOULE_OK)
                return cli_usage_error(cmd, "--split: '%s' is not file, blank-line or sep:LINE", optarg);
            break;
        default:
            return cli_bad_option(cmd, c, argv);
        }
    }
    o.inputs = (const char *const *)(argv + optind);
    o.n_inputs = argc - optind;
    if (o.n_inputs > 0 && o.preset)
        return cli_usage_error(cmd, "give either --preset or input PATHs, not both");
    if (o.n_inputs == 0) {
        if (!o.preset) o.preset = "default";
        if (split) return cli_usage_error(cmd, "--split applies to input PATHs; presets split their own way");
        o.inputs = NULL;
    }
    char default_out[512];
    if (!o.out_dir) {
        if (!o.preset) return cli_usage_error(cmd, "--out DIR is required with input PATHs");
        snprintf(default_out, sizeof default_out, "data/%s", o.preset);
        o.out_dir = default_out;
    }
    for (int i = 0; i < o.n_inputs; i++) {
        if (access(o.inputs[i], R_OK) != 0) {
            cli_error(0, cmd, "%s: %s", o.inputs[i], strerror(errno));
            return EXIT_USAGE;
        }
    }
    prepare_ui ui = {0};
    o.progress = on_progress;
    o.warn = on_warn;
    o.ctx = &ui;
    joule_prepare_report r;
    int rc = joule_data_prepare(&o, &r);
    if (ui.started) {
        if (rc == JOULE_OK) cli_progress_finish(&ui.bar, (double)r.input_bytes, NULL);
        else if (ui.bar.tty) fputc('\n', stderr);
    }
    if (rc) return cli_fail(cmd, rc);

    char a[32], b[32], d[32];
    printf("prepared %s: %" PRIu64 " documents from %" PRIu64 " file%s (%s bytes of text) in %.1fs\n",
           o.preset ? o.preset : "corpus", r.n_docs, r.n_files, r.n_files == 1 ? "" : "s",
           cli_fmt_count(a, sizeof a, (double)r.input_bytes), r.seconds);
    printf("  train: %" PRIu64 " documents, %" PRIu64 " tokens (%s)\n", r.train_docs, r.train_tokens,
           cli_fmt_count(b, sizeof b, (double)r.train_tokens));
    printf("  val:   %" PRIu64 " documents, %" PRIu64 " tokens (%s)\n", r.val_docs, r.val_tokens,
           cli_fmt_count(d, sizeof d, (double)r.val_tokens));
    printf("  skipped: %" PRIu64 " hidden, %" PRIu64 " binary, %" PRIu64 " other\n", r.skipped_hidden,
           r.skipped_binary, r.skipped_other);
    printf("  wrote %s/train.bin, %s/train.idx, %s/val.bin, %s/val.idx, %s/meta.json\n", o.out_dir, o.out_dir,
           o.out_dir, o.out_dir, o.out_dir);
    return 0;
}

/* ---- info ---- */

static int open_split(const char *cmd, const char *dir, const char *name, joule_tokens *t) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.bin", dir, name);
    int rc = cli_check_input(cmd, path, "prepare a corpus with 'joule data prepare'");
    if (rc) return rc;
    int st = joule_tokens_open(t, path);
    if (st) return cli_fail(cmd, st);
    return 0;
}

static cJSON *split_json(const joule_tokens *t) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "documents", (double)t->n_docs);
    cJSON_AddNumberToObject(o, "tokens", (double)t->n_tokens);
    return o;
}

static int cmd_info_data(int argc, char **argv) {
    const char *cmd = "data info";
    static const struct option LONG[] = {
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool json = false;
    int c;
    cli_opt_start();
    while ((c = cli_getopt(argc, argv, ":h", LONG, INFO_USAGE)) != -1) {
        switch (c) {
        case CLI_HELP: return 0;
        case OPT_JSON:
            json = true;
            break;
        default:
            return cli_bad_option(cmd, c, argv);
        }
    }
    if (argc - optind > 1) return cli_usage_error(cmd, "expected at most one folder, got %d", argc - optind);
    const char *dir = optind < argc ? argv[optind] : "data/default";
    joule_tokens tr = {0}, va = {0};
    int rc = open_split(cmd, dir, "train", &tr);
    if (rc) return rc;
    if ((rc = open_split(cmd, dir, "val", &va))) {
        joule_tokens_close(&tr);
        return rc;
    }
    char meta_path[4096];
    snprintf(meta_path, sizeof meta_path, "%s/meta.json", dir);
    char *meta_text = cli_read_file(meta_path, NULL);
    cJSON *meta = meta_text ? cJSON_Parse(meta_text) : NULL;
    free(meta_text);
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "dir", dir);
        cJSON_AddItemToObject(o, "train", split_json(&tr));
        cJSON_AddItemToObject(o, "val", split_json(&va));
        cJSON_AddItemToObject(o, "meta", meta ? meta : cJSON_CreateNull());
        meta = NULL;
        cli_print_json(o);
    } else {
        char a[32], b[32];
        printf("corpus %s\n", dir);
        printf("  train: %" PRIu64 " documents, %" PRIu64 " tokens (%s)\n", tr.n_docs, tr.n_tokens,
               cli_fmt_count(a, sizeof a, (double)tr.n_tokens));
        printf("  val:   %" PRIu64 " documents, %" PRIu64 " tokens (%s)\n", va.n_docs, va.n_tokens,
               cli_fmt_count(b, sizeof b, (double)va.n_tokens));
        if (meta) {
            const cJSON *preset = cJSON_GetObjectItemCaseSensitive(meta, "preset");
            const cJSON *mode = cJSON_GetObjectItemCaseSensitive(meta, "split_mode");
            const cJSON *files = cJSON_GetObjectItemCaseSensitive(meta, "n_files");
            const cJSON *seed = cJSON_GetObjectItemCaseSensitive(meta, "seed");
            const cJSON *frac = cJSON_GetObjectItemCaseSensitive(meta, "val_fraction");
            const cJSON *by = cJSON_GetObjectItemCaseSensitive(meta, "created_by");
            printf("  source: %s, %.0f file%s, split %s, val fraction %g, seed %.0f, created by %s\n",
                   cJSON_IsString(preset) ? cli_text(preset->valuestring) : "input paths",
                   cJSON_IsNumber(files) ? files->valuedouble : 0,
                   cJSON_IsNumber(files) && files->valuedouble == 1 ? "" : "s",
                   cli_text(cJSON_GetStringValue(mode)), cJSON_IsNumber(frac) ? frac->valuedouble : 0,
                   cJSON_IsNumber(seed) ? seed->valuedouble : 0, cli_text(cJSON_GetStringValue(by)));
        } else {
            printf("  source: %s missing or unreadable\n", meta_path);
        }
    }
    cJSON_Delete(meta);
    joule_tokens_close(&tr);
    joule_tokens_close(&va);
    return 0;
}

int cmd_data(int argc, char **argv) {
    if (argc < 2) return cli_usage_error("data", "missing subcommand (prepare, info)");
    const char *sub = argv[1];
    if (strcmp(sub, "-h") == 0 || strcmp(sub, "--help") == 0 || strcmp(sub, "help") == 0) {
        fputs(USAGE, stdout);
        return 0;
    }
    if (strcmp(sub, "prepare") == 0) return cmd_prepare(argc - 1, argv + 1);
    if (strcmp(sub, "info") == 0) return cmd_info_data(argc - 1, argv + 1);
    return cli_usage_error("data", "unknown subcommand '%s' (prepare, info)", sub);
}
