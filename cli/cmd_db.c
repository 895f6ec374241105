/* joule db build | info | query | verify | recall | neighbours — RETRO retrieval databases. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "joule/retro_db.h"

static const char USAGE[] =
    "Usage: joule db <subcommand> [options]\n"
    "\n"
    "Retrieval databases for RETRO: chunks of a prepared corpus embedded and indexed with FAISS.\n"
    "\n"
    "Subcommands:\n"
    "  build        cut a corpus into chunks, embed and index them into a database folder\n"
    "  info         show a database's manifest and file sizes\n"
    "  query        print the nearest chunks of a text\n"
    "  verify       check checksums and that the index and the chunk store agree\n"
    "  recall       recall@k of a database's (approximate) index against an exact Flat one\n"
    "  neighbours   precompute the neighbours of every chunk of a token file (for training)\n"
    "\n"
    "Run 'joule db <subcommand> --help' for its options.\n";

static const char BUILD_USAGE[] =
    "Usage: joule db build --data PATH --out DIR [options]\n"
    "\n"
    "Cuts every document into chunks of m tokens (the last one shorter), keeps each chunk with\n"
    "its continuation (the next m tokens of the document) and document id, embeds the chunks and\n"
    "indexes them with FAISS. Writes DIR/{manifest.json, index.faiss, chunks.bin} through\n"
    "DIR.partial/, renamed when complete. Ctrl-C saves a resume point; --resume continues.\n"
    "With --shards S, index.faiss is replaced by S indexes shard.<s>.faiss over contiguous\n"
    "ranges of entries; every search merges them into the single index's results.\n"
    "\n"
    "Options:\n"
    "  --data PATH        a prepared corpus folder (its train.bin) or a token file (.bin);\n"
    "                     repeat to add more (entries follow in the order given)\n"
    "  --with-val         also add the corpus folders' val.bin (the 'leaky' database)\n"
    "  --out DIR          the database folder (must not exist)\n"
    "  --chunk M          tokens per chunk (default 64)\n"
    "  --embedder SPEC    ngram (default: hashed byte 1..4-grams, 128 dims), ngram:DIM, or\n"
    "                     model:CHECKPOINT (mean final hidden state of a joule model)\n"
    "  --index STRING     FAISS index_factory string, e.g. Flat, IVF1024,Flat, IVF1024,PQ16,\n"
    "                     HNSW32 (default: Flat below 50000 entries, else IVF<~4 sqrt(N)>,Flat)\n"
    "  --seed S           seed of the index's training sample (default 1)\n"
    "  --max-chunks N     only the first N entries (default: all)\n"
    "  --batch N          entries per batch (default 4096)\n"
    "  --shards S         S index files, shard s holding entries [floor(s*N/S), floor((s+1)*N/S))\n"
    "                     (default 1: one index.faiss; at most 256, at most N)\n"
    "  --checkpoint-every N  a resume point every N batches or 60 s, whichever comes first\n"
    "                     (default 16)\n"
    "  --resume           continue the interrupted build in DIR.partial (from its last resume\n"
    "                     point; a build killed before its first point starts again)\n"
    "  --threads N        OpenMP/BLAS threads (default 0 = all cores)\n"
    "  -h, --help         show this help and exit\n"
    "Without --resume, a leftover DIR.partial from an interrupted build is discarded.\n";

static const char INFO_USAGE[] =
    "Usage: joule db info DIR [--json]\n"
    "\n"
    "Opens and validates DIR and prints its manifest (chunk size, tokenizer, embedder, index,\n"
    "counts, sources) and file sizes.\n"
    "\n"
    "Options:\n"
    "  --json       print the manifest and sizes as one JSON object\n"
    "  -h, --help   show this help and exit\n";

static const char QUERY_USAGE[] =
    "Usage: joule db query DIR --text TEXT [options]\n"
    "\n"
    "Cuts TEXT into chunks of the database's size (the last one shorter) and prints each chunk's\n"
    "k nearest entries: id, document, squared L2 distance, the chunk and its continuation.\n"
    "\n"
    "Options:\n"
    "  --text TEXT        the query text (required)\n"
    "  -k N               neighbours per chunk (default 4)\n"
    "  --nprobe N         IVF lists searched (IVF indexes)\n"
    "  --ef-search N      HNSW search breadth (HNSW indexes)\n"
    "  --params STRING    any FAISS ParameterSpace settings, e.g. nprobe=16,efSearch=64\n"
    "  --exclude-doc ID   skip entries of this document id\n"
    "  --threads N        OpenMP/BLAS threads (default 0 = all cores)\n"
    "  -h, --help         show this help and exit\n";

static const char VERIFY_USAGE[] =
    "Usage: joule db verify DIR\n"
    "\n"
    "Checks the checksums of index.faiss and chunks.bin against the manifest, every chunk\n"
    "record, the index's size and dimension, and that a seeded sample of 256 entries finds\n"
    "itself among its first 10 results (all of them for Flat, at least half otherwise).\n"
    "Exit status 0 when the database is sound, 2 when it is not.\n"
    "\n"
    "Options:\n"
    "  --params STRING    FAISS search parameters for the self-search (e.g. nprobe=16)\n"
    "  --threads N        OpenMP/BLAS threads (default 0 = all cores)\n"
    "  -h, --help         show this help and exit\n";

static const char RECALL_USAGE[] =
    "Usage: joule db recall DIR --exact FLATDIR --queries PATH [options]\n"
    "\n"
    "Recall@k of DIR's index against FLATDIR (an exact Flat database over the same entries and\n"
    "embedder): the mean fraction of the exact k nearest that DIR also returns, for a seeded\n"
    "sample of chunk-aligned query chunks of PATH (a token file, or a corpus folder's val.bin).\n"
    "\n"
    "Options:\n"
    "  --exact FLATDIR    the reference database (required)\n"
    "  --queries PATH     where query chunks come from (required)\n"
    "  -n N               queries (default 1000)\n"
    "  -k N               neighbours (default 10)\n"
    "  --seed S           query sample seed (default 1)\n"
    "  --nprobe N, --ef-search N, --params STRING   DIR's search parameters\n"
    "  --threads N        OpenMP/BLAS threads (default 0 = all cores)\n"
    "  -h, --help         show this help and exit\n";

static const char NBR_USAGE[] =
    "Usage: joule db neighbours DIR --tokens FILE.bin [options]\n"
    "\n"
    "Writes the k neighbours of every chunk [c*m, (c+1)*m) of FILE.bin, excluding entries from\n"
    "any document the chunk touches, to FILE.nbr (or --out). The model reads it in training.\n"
    "\n"
    "Options:\n"
    "  --tokens FILE.bin  token file (required)\n"
    "  --out FILE         output (default: FILE.bin with .nbr)\n"
    "  -k N               neighbours per chunk (default 2)\n"
    "  --nprobe N, --ef-search N, --params STRING   search parameters\n"
    "  --threads N        OpenMP/BLAS threads (default 0 = all cores)\n"
    "  -h, --help         show this help and exit\n";

enum {
    O_DATA = 256, O_WITH_VAL, O_OUT, O_CHUNK, O_EMBEDDER, O_INDEX, O_SEED, O_MAX_CHUNKS, O_BATCH, O_RESUME,
    O_THREADS, O_JSON, O_TEXT, O_NPROBE, O_EF, O_PARAMS, O_EXCLUDE, O_EXACT, O_QUERIES, O_TOKENS, O_DB, O_CKPT,
    O_SHARDS
};

typedef struct {
    const char *data[16];
    int n_data;
    bool with_val, resume, json;
    const char *out, *embedder, *index, *text, *params_raw, *exact, *queries, *tokens, *db;
    int chunk, batch, threads, k, n, nprobe, ef, checkpoint_every, shards;
    uint64_t seed, max_chunks, exclude;
    char params[256];
} db_opts;

/* "--name" of long option c, or "-k" / "-n". */
static const char *opt_name(const struct option *l, int c) {
    static char buf[64];
    snprintf(buf, sizeof buf, "-%c", c < 256 ? c : '?');
    for (; l->name; l++)
        if (l->val == c) snprintf(buf, sizeof buf, "--%s", l->name);
    return buf;
}

static int parse(const char *cmd, const char *usage, const char *allowed, int argc, char **argv, db_opts *o) {
    static const struct option LONG[] = {
        {"data", 1, 0, O_DATA},         {"with-val", 0, 0, O_WITH_VAL}, {"out", 1, 0, O_OUT},
        {"chunk", 1, 0, O_CHUNK},       {"embedder", 1, 0, O_EMBEDDER}, {"index", 1, 0, O_INDEX},
        {"seed", 1, 0, O_SEED},         {"max-chunks", 1, 0, O_MAX_CHUNKS}, {"batch", 1, 0, O_BATCH},
        {"resume", 0, 0, O_RESUME},     {"threads", 1, 0, O_THREADS},   {"json", 0, 0, O_JSON},
        {"text", 1, 0, O_TEXT},         {"nprobe", 1, 0, O_NPROBE},     {"ef-search", 1, 0, O_EF},
        {"params", 1, 0, O_PARAMS},     {"exclude-doc", 1, 0, O_EXCLUDE}, {"exact", 1, 0, O_EXACT},
        {"queries", 1, 0, O_QUERIES},   {"tokens", 1, 0, O_TOKENS},     {"db", 1, 0, O_DB},
        {"checkpoint-every", 1, 0, O_CKPT}, {"shards", 1, 0, O_SHARDS}, {"help", 0, 0, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    cli_opt_start();
    while ((c = cli_getopt(argc, argv, ":hk:n:", LONG, usage)) != -1) {
        if (c == CLI_HELP) return -1;
        if (c == ':' || c == '?') return cli_bad_option(cmd, c, argv);
        /* options of other subcommands are unknown here */
        char key = c == 'k' ? 'k' : c == 'n' ? 'n' : (char)('A' + (c - O_DATA));
        /* the option's own name: argv[optind - 1] is its value when given apart ("--nprobe -1") */
        const char *name = opt_name(LONG, c);
        if (!strchr(allowed, key)) return cli_usage_error(cmd, "option '%s' does not apply here", name);
        switch (c) {
        case O_DATA:
            if (o->n_data == 16) return cli_usage_error(cmd, "at most 16 --data");
            o->data[o->n_data++] = optarg;
            break;
        case O_WITH_VAL: o->with_val = true; break;
        case O_OUT: o->out = optarg; break;
        case O_EMBEDDER: o->embedder = optarg; break;
        case O_INDEX: o->index = optarg; break;
        case O_RESUME: o->resume = true; break;
        case O_JSON: o->json = true; break;
        case O_TEXT: o->text = optarg; break;
        case O_PARAMS: o->params_raw = optarg; break;
        case O_EXACT: o->exact = optarg; break;
        case O_QUERIES: o->queries = optarg; break;
        case O_TOKENS: o->tokens = optarg; break;
        case O_DB: o->db = optarg; break;
        case O_CHUNK:
            if (!cli_parse_int(optarg, 1, 4096, &o->chunk)) return cli_usage_error(cmd, "%s: '%s' is not in [1, 4096]", name, optarg);
            break;
        case O_SHARDS:
            if (!cli_parse_int(optarg, 1, 256, &o->shards)) return cli_usage_error(cmd, "%s: '%s' is not in [1, 256]", name, optarg);
            break;
        case O_CKPT:
            if (!cli_parse_int(optarg, 1, 1 << 20, &o->checkpoint_every))
                return cli_usage_error(cmd, "%s: '%s' is not a positive integer", name, optarg);
            break;
        case O_BATCH:
            if (!cli_parse_int(optarg, 1, 1 << 20, &o->batch)) return cli_usage_error(cmd, "%s: '%s' is not a positive integer", name, optarg);
            break;
        case O_THREADS:
            if (!cli_parse_int(optarg, 0, 4096, &o->threads)) return cli_usage_error(cmd, "%s: '%s' is not in [0, 4096]", name, optarg);
            break;
        case 'k':
            if (!cli_parse_int(optarg, 1, 1024, &o->k)) return cli_usage_error(cmd, "-k: '%s' is not in [1, 1024]", optarg);
            break;
        case 'n':
            if (!cli_parse_int(optarg, 1, 1 << 24, &o->n)) return cli_usage_error(cmd, "-n: '%s' is not a positive integer", optarg);
            break;
        case O_NPROBE:
            if (!cli_parse_int(optarg, 1, 1 << 24, &o->nprobe)) return cli_usage_error(cmd, "%s: '%s' is not a positive integer", name, optarg);
            break;
        case O_EF:
            if (!cli_parse_int(optarg, 1, 1 << 24, &o->ef)) return cli_usage_error(cmd, "%s: '%s' is not a positive integer", name, optarg);
            break;
        case O_SEED:
            CLI_CHECK(cli_u64_option(cmd, name, optarg, &o->seed));
            break;
        case O_MAX_CHUNKS:
            if (!cli_parse_u64(optarg, &o->max_chunks) || o->max_chunks == 0)
                return cli_usage_error(cmd, "%s: '%s' is not a positive integer", name, optarg);
            break;
        case O_EXCLUDE:
            if (!cli_parse_u64(optarg, &o->exclude)) return cli_usage_error(cmd, "%s: '%s' is not a document id", name, optarg);
            break;
        default:
            return cli_bad_option(cmd, c, argv);
        }
    }
    /* DIR: positional or --db */
    if (optind < argc) {
        if (o->db) return cli_usage_error(cmd, "give the database once (DIR or --db)");
        o->db = argv[optind++];
    }
    if (optind < argc) return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    int len = 0;
    if (o->nprobe) len += snprintf(o->params + len, sizeof o->params - (size_t)len, "nprobe=%d", o->nprobe);
    if (o->ef) len += snprintf(o->params + len, sizeof o->params - (size_t)len, "%sefSearch=%d", len ? "," : "", o->ef);
    if (o->params_raw)
        snprintf(o->params + len, sizeof o->params - (size_t)len, "%s%s", len ? "," : "", o->params_raw);
    cli_setup_threads(o->threads);
    return 0;
}

/* Opens the database (DIR must be given) and applies the search parameters. */
static int open_db(const char *cmd, const db_opts *o, joule_retro_db **db) {
    if (!o->db) return cli_usage_error(cmd, "no database given (DIR)");
    struct stat st;
    if (stat(o->db, &st) != 0 || !S_ISDIR(st.st_mode)) {
        return cli_error(EXIT_USAGE, cmd, "%s: not a database folder (build one with 'joule db build')", o->db);
    }
    int rc = joule_db_open(db, o->db);
    if (!rc) rc = joule_db_set_params(*db, o->params);
    if (rc) {
        joule_db_close(*db);
        *db = NULL;
        return cli_fail(cmd, rc);
    }
    return 0;
}

/* ---- build ---- */

static volatile sig_atomic_t g_stop;
static void on_signal(int sig) { g_stop = 1; }

static bool on_build_progress(void *ctx, const char *phase, uint64_t done, uint64_t total) {
    cli_phases *ui = ctx;
    cli_phase_begin(ui, phase, strcmp(phase, "train") == 0 ? "embed training sample" : "embed+add", "chunk",
                    (double)total);
    cli_progress_update(&ui->bar, (double)done, NULL);
    return !g_stop;
}

static int cmd_build(int argc, char **argv) {
    const char *cmd = "db build";
    db_opts o = {.chunk = 64, .batch = 4096, .seed = 1};
    int rc = parse(cmd, BUILD_USAGE, "ABCDEFGHIJKVW", argc, argv, &o);
    if (rc) return rc < 0 ? 0 : rc;
    if (o.db) return cli_usage_error(cmd, "unexpected argument '%s' (the output is --out DIR)", o.db);
    if (o.n_data == 0) return cli_usage_error(cmd, "--data is required");
    if (!o.out) return cli_usage_error(cmd, "--out is required");
    static char paths[32][4096];
    const char *srcs[32];
    int n = 0;
    for (int i = 0; i < o.n_data; i++) {
        struct stat st;
        if (stat(o.data[i], &st) == 0 && S_ISDIR(st.st_mode)) {
            snprintf(paths[n], sizeof paths[n], "%s/train.bin", o.data[i]);
            srcs[n] = paths[n];
            n++;
            if (o.with_val) {
                snprintf(paths[n], sizeof paths[n], "%s/val.bin", o.data[i]);
                srcs[n] = paths[n];
                n++;
            }
        } else {
            srcs[n++] = o.data[i];
        }
    }
    for (int i = 0; i < n; i++)
        if ((rc = cli_check_input(cmd, srcs[i], "prepare a corpus with 'joule data prepare'"))) return rc;
    /* --out DIR/ names DIR (its .partial sibling is built beside it, not inside) */
    static char out[4096];
    snprintf(out, sizeof out, "%s", o.out);
    for (size_t k = strlen(out); k > 1 && out[k - 1] == '/'; k--) out[k - 1] = '\0';
    o.out = out;
    /* like train --out: the folders above DIR are made here, DIR itself by the crash-safe build */
    if ((rc = cli_make_parent_dirs(cmd, o.out)) || (rc = cli_check_writable_parent(cmd, o.out))) return rc;
    joule_db_build_opts b;
    joule_db_build_opts_init(&b);
    b.sources = srcs;
    b.n_sources = n;
    b.out_dir = o.out;
    b.chunk = o.chunk;
    if (o.embedder) b.embedder = o.embedder;
    b.index = o.index;
    b.seed = o.seed;
    b.max_chunks = o.max_chunks;
    b.batch = o.batch;
    b.checkpoint_every = o.checkpoint_every;
    b.shards = o.shards;
    b.resume = o.resume;
    cli_phases ui = {0};
    b.progress = on_build_progress;
    b.ctx = &ui;
    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    double t0 = joule_now(), emb_s = 0, idx_s = 0;
    rc = joule_db_build(&b, &emb_s, &idx_s);
    double wall = joule_now() - t0;
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    cli_phase_end(&ui, !rc);
    if (rc) {
        cli_fail(cmd, rc);
        return g_stop ? EXIT_INTERRUPTED : joule_exit_code(rc);
    }
    joule_retro_db *db;
    if ((rc = joule_db_open(&db, o.out))) return cli_fail(cmd, rc);
    uint64_t N = joule_db_size(db);
    printf("built %s: %" PRIu64 " entries of %d tokens, embedder %s (%d dims), index %s", o.out, N, joule_db_chunk(db),
           joule_embedder_spec(joule_db_embedder(db)), joule_db_dim(db), joule_db_factory(db));
    if (joule_db_n_shards(db) > 1) printf(" in %d shards", joule_db_n_shards(db));
    printf(", id %s\n", joule_db_id(db));
    if (o.resume) /* only part of the entries went through this run */
        printf("  resumed: %.1fs in this run: embedding %.1fs, index add+write %.1fs\n", wall, emb_s, idx_s);
    else
        printf("  %.1fs: embedding %.1fs (%.0f chunks/s), index train+add+write %.1fs (%.0f chunks/s)\n", wall,
               emb_s, emb_s > 0 ? (double)N / emb_s : 0.0, idx_s, idx_s > 0 ? (double)N / idx_s : 0.0);
    joule_db_close(db);
    return 0;
}

/* ---- info ---- */

static uint64_t file_size(const char *dir, const char *name) {
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    struct stat st;
    return stat(p, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* The shards a (validated) manifest lists: name, size, entry range, checksum. */
static void print_shards(const char *dir, const cJSON *m) {
    const cJSON *sh;
    cJSON_ArrayForEach(sh, cJSON_GetObjectItem(m, "shards")) {
        char b[32];
        const char *f = cJSON_GetStringValue(cJSON_GetObjectItem(sh, "file"));
        double first = cJSON_GetNumberValue(cJSON_GetObjectItem(sh, "first"));
        double n = cJSON_GetNumberValue(cJSON_GetObjectItem(sh, "entries"));
        uint64_t size = file_size(dir, f);
        printf("  %-13s %" PRIu64 " bytes (%sB), entries [%.0f, %.0f), crc32 %s\n", cli_text(f), size,
               cli_fmt_count(b, sizeof b, (double)size), first, first + n,
               cli_text(cJSON_GetStringValue(cJSON_GetObjectItem(sh, "crc32"))));
    }
}

static int cmd_info_db(int argc, char **argv) {
    const char *cmd = "db info";
    db_opts o = {0};
    int rc = parse(cmd, INFO_USAGE, "KLU", argc, argv, &o);
    if (rc) return rc < 0 ? 0 : rc;
    joule_retro_db *db;
    if ((rc = open_db(cmd, &o, &db))) return rc;
    static const char *files[] = {"manifest.json", "index.faiss", "chunks.bin"};
    cJSON *m = cJSON_Parse(joule_db_manifest_json(db));
    if (o.json) {
        cJSON *sizes = cJSON_CreateObject();
        for (int i = 0; i < 3; i++)
            if (i != 1 || joule_db_n_shards(db) == 1) cJSON_AddNumberToObject(sizes, files[i], (double)file_size(o.db, files[i]));
        const cJSON *sh;
        cJSON_ArrayForEach(sh, cJSON_GetObjectItem(m, "shards")) {
            const char *f = cJSON_GetStringValue(cJSON_GetObjectItem(sh, "file"));
            if (f) cJSON_AddNumberToObject(sizes, f, (double)file_size(o.db, f));
        }
        cJSON *all = cJSON_CreateObject();
        cJSON_AddStringToObject(all, "id", joule_db_id(db));
        cJSON_AddItemToObject(all, "manifest", m);
        cJSON_AddItemToObject(all, "sizes", sizes);
        cli_print_json(all);
    } else {
        const cJSON *emb = cJSON_GetObjectItem(m, "embedder"), *ix = cJSON_GetObjectItem(m, "index");
        printf("database %s (id %s)\n", o.db, joule_db_id(db));
        printf("  entries       %" PRIu64 " from %.0f documents\n", joule_db_size(db),
               cJSON_GetNumberValue(cJSON_GetObjectItem(m, "documents")));
        printf("  chunk         %d tokens (+ continuation), tokenizer %s\n", joule_db_chunk(db),
               cli_text(cJSON_GetStringValue(cJSON_GetObjectItem(m, "tokenizer"))));
        printf("  embedder      %s, %d dims\n", cli_text(cJSON_GetStringValue(cJSON_GetObjectItem(emb, "spec"))),
               joule_db_dim(db));
        const char *dp = cJSON_GetStringValue(cJSON_GetObjectItem(ix, "default_params"));
        printf("  index         %s (L2), default search %s, trained on %.0f vectors, seed %.0f\n",
               cli_text(joule_db_factory(db)), dp && *dp ? cli_text(dp) : "FAISS's",
               cJSON_GetNumberValue(cJSON_GetObjectItem(ix, "trained_on")),
               cJSON_GetNumberValue(cJSON_GetObjectItem(ix, "seed")));
        const cJSON *s;
        cJSON_ArrayForEach(s, cJSON_GetObjectItem(m, "sources"))
            printf("  source        %s (%.0f tokens, %.0f documents, crc32 %s)\n",
                   cli_text(cJSON_GetStringValue(cJSON_GetObjectItem(s, "path"))),
                   cJSON_GetNumberValue(cJSON_GetObjectItem(s, "tokens")),
                   cJSON_GetNumberValue(cJSON_GetObjectItem(s, "documents")),
                   cli_text(cJSON_GetStringValue(cJSON_GetObjectItem(s, "crc32"))));
        const cJSON *fl = cJSON_GetObjectItem(m, "files");
        for (int i = 0; i < 3; i++) {
            if (i == 1 && joule_db_n_shards(db) > 1) {
                print_shards(o.db, m);
                continue;
            }
            char b[32];
            const cJSON *f = cJSON_GetObjectItem(fl, files[i]);
            printf("  %-13s %" PRIu64 " bytes (%sB)%s%s\n", files[i], file_size(o.db, files[i]),
                   cli_fmt_count(b, sizeof b, (double)file_size(o.db, files[i])), f ? ", crc32 " : "",
                   f ? cli_text(cJSON_GetStringValue(cJSON_GetObjectItem(f, "crc32"))) : "");
        }
        printf("  created by    %s\n", cli_text(cJSON_GetStringValue(cJSON_GetObjectItem(m, "created_by"))));
        cJSON_Delete(m);
    }
    joule_db_close(db);
    return 0;
}

/* ---- query ---- */

static void print_tokens(const int32_t *t, int n) {
    putchar('"');
    for (int i = 0; i < n && t[i] != JOULE_DB_PAD; i++) {
        int c = t[i];
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c == '\n') fputs("\\n", stdout);
        else if (c == 0) fputs("<EOD>", stdout);
        else if (c < 32 || c == 127) printf("\\x%02x", c);
        else putchar(c);
    }
    putchar('"');
}

static int cmd_query(int argc, char **argv) {
    const char *cmd = "db query";
    db_opts o = {.k = 4, .exclude = UINT64_MAX};
    int rc = parse(cmd, QUERY_USAGE, "KMNOPQUk", argc, argv, &o);
    if (rc) return rc < 0 ? 0 : rc;
    if (!o.text) return cli_usage_error(cmd, "--text is required");
    if (!*o.text) return cli_usage_error(cmd, "--text is empty");
    joule_retro_db *db;
    if ((rc = open_db(cmd, &o, &db))) return rc;
    const int m = joule_db_chunk(db), k = o.k;
    size_t len = strlen(o.text);
    int nq = (int)((len + (size_t)m - 1) / (size_t)m);
    int32_t *q = malloc((size_t)nq * m * sizeof *q), *tok = malloc((size_t)2 * m * sizeof *tok);
    int64_t *ids = malloc((size_t)nq * k * sizeof *ids);
    float *dist = malloc((size_t)nq * k * sizeof *dist);
    uint64_t *ex = malloc((size_t)nq * sizeof *ex);
    if (!q || !tok || !ids || !dist || !ex) {
        rc = cli_error(EXIT_RUNTIME, cmd, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < (size_t)nq * m; i++) q[i] = i < len ? (uint8_t)o.text[i] : JOULE_DB_PAD;
    for (int i = 0; i < nq; i++) ex[i] = o.exclude;
    double t0 = joule_now();
    if ((rc = joule_db_search(db, q, nq, k, ex, ids, dist))) {
        rc = cli_fail(cmd, rc);
        goto done;
    }
    double ms = (joule_now() - t0) * 1e3;
    for (int i = 0; i < nq; i++) {
        printf("chunk %d: ", i);
        print_tokens(q + (size_t)i * m, m);
        putchar('\n');
        for (int j = 0; j < k; j++) {
            int64_t id = ids[(size_t)i * k + j];
            if (id < 0) {
                printf("  %d. (none)\n", j + 1);
                continue;
            }
            uint64_t doc;
            joule_db_entry(db, id, tok, &doc);
            printf("  %d. id %" PRId64 "  doc %" PRIu64 "  dist %.4f  ", j + 1, id, doc, (double)dist[(size_t)i * k + j]);
            print_tokens(tok, m);
            fputs(" + ", stdout);
            print_tokens(tok + m, m);
            putchar('\n');
        }
    }
    printf("%d chunk%s searched in %.2f ms (embedding + search, %s%s%s)\n", nq, nq == 1 ? "" : "s", ms,
           cli_text(joule_db_factory(db)), *o.params ? ", " : "", o.params);
done:
    free(q);
    free(tok);
    free(ids);
    free(dist);
    free(ex);
    joule_db_close(db);
    return rc;
}

/* ---- verify ---- */

static int cmd_verify(int argc, char **argv) {
    const char *cmd = "db verify";
    db_opts o = {0};
    int rc = parse(cmd, VERIFY_USAGE, "KNOPU", argc, argv, &o);
    if (rc) return rc < 0 ? 0 : rc;
    joule_retro_db *db;
    if ((rc = open_db(cmd, &o, &db))) return rc;
    double self = 0;
    rc = joule_db_verify(db, &self);
    if (!rc)
        printf("%s: ok: %" PRIu64 " entries, checksums match, every record valid, %.1f%% of sampled entries find "
               "themselves (index %s", o.db, joule_db_size(db), 100 * self, cli_text(joule_db_factory(db)));
    if (!rc && joule_db_n_shards(db) > 1) printf(" in %d shards", joule_db_n_shards(db));
    if (!rc) printf(")\n");
    joule_db_close(db);
    return rc ? cli_fail(cmd, rc) : 0;
}

/* ---- recall ---- */

/* A corpus folder stands for its val.bin. */
static const char *tokens_of(const char *path, char *buf, size_t n) {
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(buf, n, "%s/val.bin", path);
        return buf;
    }
    return path;
}

static int cmd_recall(int argc, char **argv) {
    const char *cmd = "db recall";
    db_opts o = {.k = 10, .n = 1000, .seed = 1};
    int rc = parse(cmd, RECALL_USAGE, "GKNOPRSUkn", argc, argv, &o);
    if (rc) return rc < 0 ? 0 : rc;
    if (!o.exact) return cli_usage_error(cmd, "--exact FLATDIR is required");
    if (!o.queries) return cli_usage_error(cmd, "--queries PATH is required");
    char qbuf[4200];
    const char *qpath = tokens_of(o.queries, qbuf, sizeof qbuf);
    if ((rc = cli_check_input(cmd, qpath, NULL))) return rc;
    joule_retro_db *db = NULL, *ex = NULL;
    if ((rc = open_db(cmd, &o, &db))) return rc;
    db_opts eo = o;
    eo.db = o.exact;
    eo.params[0] = 0;
    if ((rc = open_db(cmd, &eo, &ex))) {
        joule_db_close(db);
        return rc;
    }
    int m = joule_db_chunk(db);
    int32_t *q = malloc((size_t)o.n * m * sizeof *q);
    double recall = 0;
    int st = q ? joule_db_sample_queries(qpath, m, o.n, o.seed, q) : joule_fail(JOULE_ERR_NOMEM, "out of memory");
    double t0 = joule_now();
    if (!st) st = joule_db_recall(db, ex, q, o.n, o.k, &recall);
    if (!st)
        printf("recall@%d of %s (%s%s%s) against %s (%s): %.4f over %d queries from %s (%.1fs)\n", o.k, o.db,
               cli_text(joule_db_factory(db)), *o.params ? ", " : "", o.params, o.exact, cli_text(joule_db_factory(ex)), recall, o.n,
               qpath, joule_now() - t0);
    free(q);
    joule_db_close(db);
    joule_db_close(ex);
    return st ? cli_fail(cmd, st) : 0;
}

/* ---- neighbours ---- */

static void on_nbr_progress(void *ctx, uint64_t done, uint64_t total) {
    cli_phases *ui = ctx;
    cli_phase_begin(ui, "neighbours", "neighbours", "chunk", (double)total);
    cli_progress_update(&ui->bar, (double)done, NULL);
}

static int cmd_neighbours(int argc, char **argv) {
    const char *cmd = "db neighbours";
    db_opts o = {.k = 2};
    int rc = parse(cmd, NBR_USAGE, "CKNOPTUk", argc, argv, &o);
    if (rc) return rc < 0 ? 0 : rc;
    if (!o.tokens) return cli_usage_error(cmd, "--tokens FILE.bin is required");
    if ((rc = cli_check_input(cmd, o.tokens, NULL))) return rc;
    char out[4200];
    if (o.out) snprintf(out, sizeof out, "%s", o.out);
    else {
        size_t n = strlen(o.tokens);
        if (n < 4 || strcmp(o.tokens + n - 4, ".bin") != 0) return cli_usage_error(cmd, "--tokens must end in .bin (or give --out)");
        snprintf(out, sizeof out, "%.*s.nbr", (int)(n - 4), o.tokens);
    }
    joule_retro_db *db;
    if ((rc = open_db(cmd, &o, &db))) return rc;
    cli_phases ui = {0};
    double t0 = joule_now();
    int st = joule_neighbours_build(db, o.tokens, out, o.k, on_nbr_progress, &ui);
    cli_phase_end(&ui, !st);
    if (!st) printf("wrote %s: %d neighbours per chunk of %d tokens, database %s (%.1fs)\n", out, o.k,
                    joule_db_chunk(db), joule_db_id(db), joule_now() - t0);
    joule_db_close(db);
    return st ? cli_fail(cmd, st) : 0;
}

int cmd_db(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "build")) return cmd_build(argc - 1, argv + 1);
    if (!strcmp(sub, "info")) return cmd_info_db(argc - 1, argv + 1);
    if (!strcmp(sub, "query")) return cmd_query(argc - 1, argv + 1);
    if (!strcmp(sub, "verify")) return cmd_verify(argc - 1, argv + 1);
    if (!strcmp(sub, "recall")) return cmd_recall(argc - 1, argv + 1);
    if (!strcmp(sub, "neighbours")) return cmd_neighbours(argc - 1, argv + 1);
    return cli_error(EXIT_USAGE, "db", "unknown subcommand '%s' (build, info, query, verify, recall, neighbours)", sub);
}
