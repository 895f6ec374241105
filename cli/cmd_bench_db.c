#define _GNU_SOURCE /* nftw flags */
/* `joule bench db`: parses, sets up the work folder and prints; the measurements (build,
 * query latency and recall of Flat / IVF / HNSW, overhead over bare FAISS) are bench/'s
 * (joule_bench_db_*, bench/bench_db.c). */
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "joule/bench.h"
#include "joule/ops.h"

typedef struct {
    const char *data, *work, *ivf, *hnsw;
    uint64_t max_chunks;
    int chunk, queries, k, reps, threads;
    bool keep, reuse;
} dbb_opts;

static void usage(void) {
    puts("Usage: joule bench db [options]\n"
         "\n"
         "Builds Flat, IVF and HNSW databases over the first --max-chunks entries of a prepared\n"
         "corpus's train.bin (ngram embedder), then searches query chunks sampled from its val.bin.\n"
         "Reports: build throughput (chunks/s, embedding and indexing measured apart); query latency\n"
         "(batch 1, p50/p90) and throughput (one batch of all queries); recall@k against Flat for\n"
         "several nprobe / efSearch; and joule's search path against faiss_Index_search on the same\n"
         "pre-embedded queries (alternating repetitions, medians).\n"
         "\n"
         "options:\n"
         "  --data DIR        prepared corpus (data/default)\n"
         "  --max-chunks N    entries per database, a prefix of train.bin (200000; 0 = all)\n"
         "  --chunk M         chunk size (64)\n"
         "  --queries N       query chunks (1000)\n"
         "  -k N              neighbours (10)\n"
         "  --reps N          repetitions of each timed search (5)\n"
         "  --ivf STRING      IVF factory (default IVF<nlist>,Flat, nlist the power of two nearest 4 sqrt(N))\n"
         "  --hnsw STRING     HNSW factory (HNSW32)\n"
         "  --work DIR        where the databases are built (a fresh folder under /tmp)\n"
         "  --keep            keep the databases\n"
         "  --reuse           with --work: use the databases already there instead of building\n"
         "  --threads N       OpenMP/BLAS threads (all cores)");
}

static int fail(int rc) { return cli_fail("bench db", rc); }

static int build_one(const dbb_opts *o, const char *factory, const char *dir, const char *src) {
    struct stat st;
    if (o->reuse && stat(dir, &st) == 0) {
        printf("build %-14s reusing %s\n", factory, dir);
        return 0;
    }
    joule_bench_db_build_result r;
    int rc = joule_bench_db_build(src, dir, factory, o->chunk, o->max_chunks, &r);
    if (rc) return fail(rc);
    printf("build %-14s %8.0f entries  wall %6.1fs  embedding %6.2fs (%8.0f chunks/s)  indexing %6.2fs (%8.0f "
           "chunks/s, train+add+write)\n",
           r.factory, r.entries, r.wall_s, r.embed_s, r.entries / r.embed_s, r.index_s, r.entries / r.index_s);
    return 0;
}

static int query_one(const dbb_opts *o, const char *dir, const char *params, joule_retro_db *flat,
                     const int32_t *q) {
    joule_bench_db_query_result r;
    int rc = joule_bench_db_query(dir, params, flat, q, o->queries, o->k, o->reps, &r);
    if (rc) return fail(rc);
    printf("query %-26s latency p50 %8.3f ms  p90 %8.3f ms (batch 1)  throughput %9.0f q/s (batch %d)  "
           "recall@%d %.4f\n",
           r.name, r.p50_s * 1e3, r.p90_s * 1e3, o->queries / r.batch_s, o->queries, o->k, r.recall);
    return 0;
}

static int overhead(const dbb_opts *o, const char *dir, const int32_t *q, int nq, int batch) {
    joule_bench_db_overhead_result r;
    int rc = joule_bench_db_overhead(dir, q, nq, batch, o->k, o->reps, &r);
    if (rc) return fail(rc);
    printf("overhead %-14s %d queries in batches of %4d: joule %9.3f ms  faiss %9.3f ms (medians of %d)  "
           "joule/faiss: median of ratios %.4f (%+.2f%%), ratio of minima %.4f (%+.2f%%)\n",
           r.factory, nq, batch, r.joule_s * 1e3, r.faiss_s * 1e3, o->reps, r.ratio_median,
           100 * (r.ratio_median - 1), r.ratio_min, 100 * (r.ratio_min - 1));
    return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) { return remove(path); }

int cmd_bench_db(int argc, char **argv) {
    dbb_opts o = {"data/default", NULL, NULL, "HNSW32", 200000, 64, 1000, 10, 5, 0, false, false};
    static const struct option opts[] = {
        {"data", 1, 0, 'D'}, {"max-chunks", 1, 0, 'M'}, {"chunk", 1, 0, 'c'}, {"queries", 1, 0, 'q'},
        {"reps", 1, 0, 'r'}, {"ivf", 1, 0, 'I'},        {"hnsw", 1, 0, 'H'},  {"work", 1, 0, 'w'},
        {"keep", 0, 0, 'K'}, {"threads", 1, 0, 't'},    {"help", 0, 0, 'h'},  {"reuse", 0, 0, 'R'},
        {0, 0, 0, 0}};
    optind = 0;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":hk:", opts, NULL)) != -1) {
        bool ok = true;
        switch (ch) {
        case 'h': usage(); return 0;
        case 'D': o.data = optarg; break;
        case 'I': o.ivf = optarg; break;
        case 'H': o.hnsw = optarg; break;
        case 'w': o.work = optarg; break;
        case 'K': o.keep = true; break;
        case 'R': o.reuse = o.keep = true; break;
        case 'M': ok = cli_parse_u64(optarg, &o.max_chunks); break;
        case 'c': ok = cli_parse_int(optarg, 1, 4096, &o.chunk); break;
        case 'q': ok = cli_parse_int(optarg, 1, 1 << 20, &o.queries); break;
        case 'k': ok = cli_parse_int(optarg, 1, 1024, &o.k); break;
        case 'r': ok = cli_parse_int(optarg, 1, 1000, &o.reps); break;
        case 't': ok = cli_parse_int(optarg, 0, 4096, &o.threads); break;
        default: return cli_bad_option("bench db", ch, argv);
        }
        if (!ok) return cli_usage_error("bench db", "invalid value '%s' for %s", optarg, argv[optind - 1]);
    }
    if (optind < argc) return cli_usage_error("bench db", "unexpected argument '%s'", argv[optind]);
    cli_setup_threads(o.threads);
    setvbuf(stdout, NULL, _IOLBF, 0); /* results as they come: the whole run takes minutes */
    char train[4200], val[4200], work[4200], flat[4300], ivf[4300], hnsw[4300];
    snprintf(train, sizeof train, "%s/train.bin", o.data);
    snprintf(val, sizeof val, "%s/val.bin", o.data);
    int rc = cli_check_input("bench db", train, "prepare it with 'joule data prepare --preset default'");
    if (!rc) rc = cli_check_input("bench db", val, NULL);
    if (rc) return rc;
    if (o.work) snprintf(work, sizeof work, "%s", o.work);
    else snprintf(work, sizeof work, "/tmp/joule_bench_db.%d", (int)getpid());
    if (mkdir(work, 0777) != 0 && !(o.reuse && o.work)) {
        fprintf(stderr, "joule bench db: %s: cannot create (exists?)\n", work);
        return EXIT_RUNTIME;
    }
    snprintf(flat, sizeof flat, "%s/flat", work);
    snprintf(ivf, sizeof ivf, "%s/ivf", work);
    snprintf(hnsw, sizeof hnsw, "%s/hnsw", work);
    printf("joule bench db: %s, first %" PRIu64 " entries of %s, chunk %d, ngram embedder, %d queries from %s, "
           "k %d, threads %d\n",
           o.data, o.max_chunks, train, o.chunk, o.queries, val, o.k, joule_get_threads());
    int32_t *q = malloc((size_t)o.queries * o.chunk * sizeof *q);
    if (!q) return EXIT_RUNTIME;
    if ((rc = joule_db_sample_queries(val, o.chunk, o.queries, 1, q))) return fail(rc);
    rc = build_one(&o, "Flat", flat, train);
    joule_retro_db *fdb = NULL;
    if (!rc && (rc = joule_db_open(&fdb, flat))) rc = fail(rc);
    char ivf_factory[64];
    if (!rc && !o.ivf) {
        joule_db_ivf_index(joule_db_size(fdb), ivf_factory, sizeof ivf_factory);
        o.ivf = ivf_factory;
    }
    if (!rc) rc = build_one(&o, o.ivf, ivf, train);
    if (!rc) rc = build_one(&o, o.hnsw, hnsw, train);
    if (!rc) rc = query_one(&o, flat, "", NULL, q);
    static const char *ivf_params[] = {"nprobe=1", "nprobe=8", "nprobe=32"};
    static const char *hnsw_params[] = {"efSearch=16", "efSearch=64", "efSearch=256"};
    for (int i = 0; i < 3 && !rc; i++) rc = query_one(&o, ivf, ivf_params[i], fdb, q);
    for (int i = 0; i < 3 && !rc; i++) rc = query_one(&o, hnsw, hnsw_params[i], fdb, q);
    const char *dirs[] = {flat, ivf, hnsw};
    for (int i = 0; i < 3 && !rc; i++) rc = overhead(&o, dirs[i], q, o.queries, o.queries);
    /* batch 1 pays per call: fewer queries keep the Flat run short */
    for (int i = 0; i < 3 && !rc; i++) rc = overhead(&o, dirs[i], q, o.queries < 200 ? o.queries : 200, 1);
    joule_db_close(fdb);
    free(q);
    if (!o.keep) nftw(work, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    else printf("databases kept in %s\n", work);
    return rc;
}
