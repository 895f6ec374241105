/* test_faults.c — what a kill -9 or a full disk leaves behind, for the two long writers:
 * checkpoint saves (joule train --save-every 1) and database builds (joule db build).
 *
 * Kills: strace kills joule at the N-th rename, and (separately) at the N-th fsync, for
 * every N the uninterrupted run reaches; each time --resume (or, when the kill came before
 * anything resumable existed, a fresh run) must finish with files byte-identical to an
 * uninterrupted run's, and no temporary file left. Runs are deterministic (no wall time or
 * clock-based id in the files), which is what makes byte equality the test.
 *
 * Full disk: a small tmpfs mounted in a private mount namespace (unshare -m; needs root).
 * Where that cannot be mounted, the same is simulated by strace failing with ENOSPC the
 * first write into the file that no longer fits, and the test says so.
 *
 * Needs strace (scripts/setup.sh installs it). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <unistd.h>

#include "testutil.h"

#define TRAIN "train --data d --layers 1 --d-model 16 --heads 2 --d-ff 32 --ctx 32 --batch 2 --steps 2 " \
              "--save-every 1 --eval-every 0 --threads 1"
#define BUILD "db build --data d/train.bin --chunk 16 --embedder ngram:16 --index IVF4,Flat --batch 128 " \
              "--max-chunks 384 --checkpoint-every 1 --threads 1"

/* Environment of runs under strace: LeakSanitizer cannot work in a traced process (it
 * exits 1 at the end of the ASan build's runs), so those runs skip it; the runs that
 * recover, untraced, keep it. */
#define UNDER_STRACE "ASAN_OPTIONS=detect_leaks=0 "

/* `sh -c CMD` in tu_dir, output to out.txt/err.txt; the exit status, or 1000 + signal. */
static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...) {
    char cmd[8192], full[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    snprintf(full, sizeof full, "cd '%s' && { %s; } > out.txt 2> err.txt", tu_dir, cmd);
    int st = system(full);
    ck_assert_int_ne(st, -1);
    return WIFSIGNALED(st) ? 1000 + WTERMSIG(st) : WEXITSTATUS(st) >= 128 ? 1000 + WEXITSTATUS(st) - 128
                                                                           : WEXITSTATUS(st);
}

static const char *bin(void) { return getenv("JOULE_BIN"); }

static void setup(void) {
    tu_make_dir("joule_faults_");
    ck_assert_msg(sh("command -v strace") == 0, "strace is missing: run scripts/setup.sh as root");
    /* a corpus of a few hundred short documents */
    char *text = malloc(1 << 17);
    size_t n = 0;
    for (int i = 0; n < (1 << 17) - 200; i++)
        n += (size_t)snprintf(text + n, (1 << 17) - n, "document %d: the %d-th line of fault text, %x.\n\n", i,
                              i * 7, i * 2654435761u);
    tu_write(tu_path("corpus.txt"), text, n);
    free(text);
    ck_assert_int_eq(tu_joule("data prepare corpus.txt --split blank-line --out d"), 0);
}

static void teardown(void) { tu_remove_dir(); }

static void same_file(const char *a, const char *b) {
    size_t la, lb;
    char *x = tu_must_read(tu_path("%s", a), &la), *y = tu_must_read(tu_path("%s", b), &lb);
    ck_assert_msg(la == lb && memcmp(x, y, la) == 0, "%s and %s differ", a, b);
    free(x);
    free(y);
}

/* No "*.tmp.<pid>" or leftover ".next"/".partial" below tu_dir/dir. */
static void no_leftovers(const char *dir) {
    DIR *d = opendir(tu_path("%s", dir));
    ck_assert_ptr_nonnull(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        ck_assert_msg(!strstr(e->d_name, ".tmp") && !strstr(e->d_name, ".next") && !strstr(e->d_name, ".partial") &&
                          !strstr(e->d_name, "ckpt") && strcmp(e->d_name, "state.json") != 0,
                      "%s/%s left behind", dir, e->d_name);
    closedir(d);
}

/* Runs ARGS with strace killing joule at the n-th call of syscall sc: 1009 when killed,
 * 0 when the run never made an n-th call. */
static int killed_at(const char *sc, int n, const char *args) {
    return sh(UNDER_STRACE "strace -f -o /dev/null -e trace=%s -e inject=%s:signal=KILL:when=%d '%s' %s", sc, sc, n,
              bin(), args);
}

/* ---- checkpoints ---- */

static void train_recovers(const char *sc) {
    int points = 0;
    for (int n = 1;; n++) {
        sh("rm -rf k");
        int st = killed_at(sc, n, TRAIN " --out k/m.safetensors");
        if (st == 0) break;
        ck_assert_msg(st == 1009, "%s %d: strace run ended with %d", sc, n, st);
        points++;
        /* before the first save there is nothing to resume: the run starts again */
        const char *resume = tu_exists(tu_path("k/m.safetensors")) ? " --resume" : "";
        ck_assert_msg(tu_joule(TRAIN " --out k/m.safetensors%s", resume) == 0, "%s %d: recovery failed", sc, n);
        same_file("k/m.safetensors", "ref/m.safetensors");
        same_file("k/m.optim.safetensors", "ref/m.optim.safetensors");
        no_leftovers("k");
        char *log = tu_must_read(tu_path("k/m.log.jsonl"), NULL);
        ck_assert_msg(tu_count_lines(log) == 2 && strstr(log, "\"step\":1,") && strstr(log, "\"step\":2,"),
                      "%s %d: log %s", sc, n, log);
        free(log);
    }
    ck_assert_msg(points >= 4, "only %d %s calls to kill at", points, sc);
}

START_TEST(test_checkpoint_kills) {
    ck_assert_int_eq(tu_joule(TRAIN " --out ref/m.safetensors"), 0);
    /* two identical runs write identical files */
    ck_assert_int_eq(tu_joule(TRAIN " --out twin/m.safetensors"), 0);
    same_file("twin/m.safetensors", "ref/m.safetensors");
    same_file("twin/m.optim.safetensors", "ref/m.optim.safetensors");
    train_recovers("rename");
    train_recovers("fsync");
}
END_TEST

/* ---- database builds ---- */

/* shards: 0 for one index.faiss, else --shards (shard.<s>.faiss) */
static void build_recovers(const char *sc, int shards) {
    int points = 0;
    char args[512], resume[600];
    snprintf(args, sizeof args, BUILD " --shards %d --out k", shards ? shards : 1);
    snprintf(resume, sizeof resume, "%s --resume", args);
    for (int n = 1;; n++) {
        sh("rm -rf k k.partial");
        int st = killed_at(sc, n, args);
        if (st == 0) break;
        ck_assert_msg(st == 1009, "%s %d: strace run ended with %d", sc, n, st);
        points++;
        int rc = tu_joule("%s", resume);
        if (rc == 2 && tu_file_has("err.txt", "no unfinished build")) rc = tu_joule("%s", args);
        ck_assert_msg(rc == 0, "%s %d: recovery failed", sc, n);
        const char *ref = shards ? "ref_sharded" : "ref";
        char a[64], b[96];
        static const char *const files[] = {"manifest.json", "chunks.bin", "index.faiss"};
        for (int f = 0; f < 3 + (shards ? shards - 1 : 0); f++) {
            if (f >= 2 && shards) snprintf(a, sizeof a, "k/shard.%d.faiss", f - 2);
            else snprintf(a, sizeof a, "k/%s", files[f]);
            snprintf(b, sizeof b, "%s%s", ref, a + 1);
            same_file(a, b);
        }
        no_leftovers("k");
        ck_assert(!tu_exists(tu_path("k.partial")));
    }
    ck_assert_msg(points >= 4, "only %d %s calls to kill at", points, sc);
}

START_TEST(test_build_kills) {
    ck_assert_int_eq(tu_joule(BUILD " --out ref"), 0);
    build_recovers("rename", 0);
    build_recovers("fsync", 0);
}
END_TEST

/* The same with 2 shards, killed at every fsync (the shards' writes included). */
START_TEST(test_sharded_build_kills) {
    ck_assert_int_eq(tu_joule(BUILD " --shards 2 --out ref_sharded"), 0);
    build_recovers("fsync", 2);
}
END_TEST

/* ---- full disk ---- */

/* Whether a tmpfs can be mounted here (root, and mount namespaces). */
static bool tmpfs_ok(void) {
    static int ok = -1;
    if (ok < 0) {
        sh("mkdir -p mnt");
        /* JOULE_TEST_NO_TMPFS=1 tries the fallback where tmpfs would work */
        ok = !getenv("JOULE_TEST_NO_TMPFS") && sh("unshare -m sh -c 'mount -t tmpfs -o size=64k tmpfs mnt'") == 0;
        if (!ok) fprintf(stderr, "test_faults: no tmpfs here (not root?): a full disk is simulated with strace ENOSPC\n");
    }
    return ok;
}

/* Runs `joule ARGS` (its outputs under mnt/) on a disk of `size` bytes, after the shell
 * command `prep` (no double quotes in it) put its starting files there, then copies what
 * is left to `keep`/. tmpfs when possible; else every write from the first write into a
 * file whose name holds `full_at` fails with ENOSPC. The exit status of joule. */
static int on_full_disk(const char *size, const char *full_at, const char *keep, const char *prep, const char *args) {
    sh("rm -rf mnt %s && mkdir -p mnt %s", keep, keep);
    if (tmpfs_ok())
        return sh("unshare -m sh -c \"mount -t tmpfs -o size=%s tmpfs mnt && %s && { '%s' %s; rc=\\$?; "
                  "cp -r mnt/. %s/ 2>/dev/null; exit \\$rc; }\"",
                  size, prep, bin(), args, keep);
    /* the writes up to the first one into full_at, counted on a run that has room */
    sh("%s && " UNDER_STRACE "strace -o trace.txt -y -e trace=write '%s' %s; rm -rf mnt && mkdir mnt", prep, bin(),
       args);
    char *trace = tu_must_read(tu_path("trace.txt"), NULL);
    int k = 0;
    for (char *l = trace; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (strncmp(l, "write(", 6) != 0) continue;
        k++;
        char *close = strchr(l, '>');
        if (close && memmem(l, (size_t)(close - l), full_at, strlen(full_at))) break;
    }
    free(trace);
    /* only that write fails: joule stops there, and its message still reaches stderr */
    return sh("%s && " UNDER_STRACE "strace -o /dev/null -e trace=write -e inject=write:error=ENOSPC:when=%d '%s' %s; "
              "rc=$?; "
              "cp -r mnt/. %s/ 2>/dev/null; exit $rc",
              prep, k, bin(), args, keep);
}

START_TEST(test_checkpoint_full_disk) {
    ck_assert_int_eq(tu_joule(TRAIN " --out ref/m.safetensors"), 0);
    /* a new run: the optimizer file fits, the weights do not; nothing half is left */
    ck_assert_int_eq(on_full_disk("64k", "m.safetensors.tmp", "left", "true", TRAIN " --out mnt/m.safetensors"), 1);
    tu_expect_one_line("err.txt", "No space left on device");
    ck_assert(!tu_exists(tu_path("left/m.safetensors")));
    ck_assert(!tu_exists(tu_path("left/m.optim.safetensors")));
    no_leftovers("left");
    /* a run at step 1 whose next save does not fit keeps its pair, which then resumes */
    ck_assert_int_eq(tu_joule(TRAIN " --out one/m.safetensors --stop-after 1"), 0);
    ck_assert_int_eq(on_full_disk("150k", "m.safetensors.tmp", "left", "cp one/* mnt/",
                                  TRAIN " --out mnt/m.safetensors --resume"),
                     1);
    tu_expect_one_line("err.txt", "No space left on device");
    same_file("left/m.safetensors", "one/m.safetensors");
    same_file("left/m.optim.safetensors", "one/m.optim.safetensors");
    no_leftovers("left");
    ck_assert_int_eq(tu_joule(TRAIN " --out left/m.safetensors --resume"), 0);
    same_file("left/m.safetensors", "ref/m.safetensors");
    same_file("left/m.optim.safetensors", "ref/m.optim.safetensors");
}
END_TEST

/* The last line of err.txt (progress bars may come before it) is joule's error about needle. */
static void error_line(const char *needle) {
    char *text = tu_must_read(tu_path("err.txt"), NULL);
    size_t n = strlen(text);
    ck_assert_msg(n > 0 && text[n - 1] == '\n', "err.txt: %s", text);
    text[n - 1] = '\0';
    const char *last = strrchr(text, '\n') ? strrchr(text, '\n') + 1 : text;
    ck_assert_msg(strncmp(last, "joule ", 6) == 0 && strstr(last, needle), "last line of err.txt: %s", last);
    free(text);
}

START_TEST(test_build_full_disk) {
    ck_assert_int_eq(tu_joule(BUILD " --out ref"), 0);
    /* out of room at several points: the first snapshot, a later one, the final index */
    static const char *const sizes[] = {"16k", "40k", "64k"}, *const full_at[] = {"ckpt.128", "ckpt.256", "/index.faiss"};
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(on_full_disk(sizes[i], full_at[i], "left", "true", BUILD " --out mnt/db"), 1);
        error_line("No space left on device");
        /* on a disk with room, what was left resumes (or, with nothing to resume, is gone) */
        int rc = tu_exists(tu_path("left/db.partial")) ? tu_joule(BUILD " --out left/db --resume")
                                                       : tu_joule(BUILD " --out left/db");
        ck_assert_msg(rc == 0, "disk of %s: recovery failed", sizes[i]);
        same_file("left/db/index.faiss", "ref/index.faiss");
        same_file("left/db/chunks.bin", "ref/chunks.bin");
        same_file("left/db/manifest.json", "ref/manifest.json");
    }
}
END_TEST

/* ---- partial outputs ---- */

START_TEST(test_partial_outputs) {
    /* --out naming a folder is refused before any training (no optimizer file either) */
    sh("mkdir -p run/m.safetensors");
    ck_assert_int_eq(tu_joule(TRAIN " --out run/m.safetensors"), 2);
    tu_expect_one_line("err.txt", "run/m.safetensors: is a folder");
    ck_assert(!tu_exists(tu_path("run/m.optim.safetensors")) && !tu_exists(tu_path("run/m.optim.next.safetensors")));
    /* a bad index string leaves no DIR.partial */
    ck_assert_int_eq(tu_joule(BUILD " --out x --index bogus"), 2);
    tu_expect_one_line("err.txt", "bogus");
    ck_assert(!tu_exists(tu_path("x.partial")) && !tu_exists(tu_path("x")));
    /* temporary files of killed writers (no such process) go at the next write of the same
     * output; one of a live process (this one) stays */
    pid_t dead = 4000000;
    while (kill(dead, 0) == 0 || errno != ESRCH) dead++;
    sh("mkdir -p s && touch s/m.safetensors.tmp.%d s/m.optim.next.safetensors.tmp.%d s/m.safetensors.tmp.%d", dead,
       dead, getpid());
    ck_assert_int_eq(tu_joule(TRAIN " --out s/m.safetensors"), 0);
    ck_assert(!tu_exists(tu_path("s/m.safetensors.tmp.%d", dead)));
    ck_assert(!tu_exists(tu_path("s/m.optim.next.safetensors.tmp.%d", dead)));
    ck_assert(tu_exists(tu_path("s/m.safetensors.tmp.%d", getpid())));
}
END_TEST

int main(void) {
    Suite *s = suite_create("faults");
    TCase *tc = tu_tcase(s, "kills", 600, setup, teardown);
    tcase_add_test(tc, test_checkpoint_kills);
    tcase_add_test(tc, test_build_kills);
    tcase_add_test(tc, test_sharded_build_kills);
    tc = tu_tcase(s, "full_disk", 300, setup, teardown);
    tcase_add_test(tc, test_checkpoint_full_disk);
    tcase_add_test(tc, test_build_full_disk);
    tc = tu_tcase(s, "partial", 120, setup, teardown);
    tcase_add_test(tc, test_partial_outputs);
    return tu_run_suite(s);
}
