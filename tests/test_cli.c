/* The `joule` command end to end: help texts, exit codes and one-line errors, and a tiny
 * real run (prepare -> train -> eval -> generate -> info), exact resume and Ctrl-C.
 * The binary comes from $JOULE_BIN (set by CMake); everything runs in a temp folder. */
#define _GNU_SOURCE
#include <check.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "joule/checkpoint.h"
#include "joule/model.h"
#include "testutil.h"

extern char **environ;

/* A tiny model that trains in well under a second. */
#define TINY "--layers 1 --d-model 32 --heads 2 --d-ff 64 --ctx 32 --batch 4"

/* ---- helpers ---- */

/* A few KB of varied English, in paragraphs. Deterministic. */
static void write_corpus(const char *name) {
    static const char *subj[] = {"The old sailor", "A small child", "The committee", "My neighbour", "The river",
                                 "Every engineer", "The quiet library", "A wandering cat", "The orchestra",
                                 "Our teacher"};
    static const char *verb[] = {"remembered", "painted", "carried", "ignored", "described", "discovered",
                                 "measured", "admired", "questioned", "followed"};
    static const char *obj[] = {"the northern lights", "a broken compass", "seven green apples",
                                "the long winter", "an unfinished letter", "the price of bread",
                                "a distant mountain", "the morning train", "an honest answer", "the stars"};
    static const char *tail[] = {"before dawn.", "with great care.", "for no reason at all.", "again and again.",
                                 "without a word.", "in the rain.", "as the bells rang.", "until evening.",
                                 "quite by accident.", "with a smile."};
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    ck_assert_ptr_nonnull(buf);
    unsigned x = 12345;
    for (int para = 0; para < 60; para++) {
        int sentences = 2 + para % 4;
        for (int s = 0; s < sentences; s++) {
            x = x * 1103515245u + 12345u;
            unsigned r = x >> 8;
            n += (size_t)snprintf(buf + n, cap - n, "%s %s %s %s ", subj[r % 10], verb[(r / 10) % 10],
                                  obj[(r / 100) % 10], tail[(r / 1000) % 10]);
        }
        n += (size_t)snprintf(buf + n, cap - n, "\n\n");
    }
    tu_write(tu_path("%s", name), buf, n);
    free(buf);
}

/* Trains a tiny model into `name` unless it is already there. */
static void ensure_model(const char *name) {
    if (tu_exists(tu_path("%s", name))) return;
    ck_assert_int_eq(tu_joule("train --data d " TINY " --steps 30 --out %s --threads 1", name), 0);
}

/* ---- fixture: one temp folder with a prepared corpus for the whole suite ---- */

static void suite_setup(void) {
    tu_make_dir("joule_test_cli.");
    write_corpus("corpus.txt");
    ck_assert_int_eq(tu_joule("data prepare corpus.txt --out d --split blank-line --val-fraction 0.2"), 0);
}

/* ---- help and usage ---- */

START_TEST(test_help_texts) {
    struct {
        const char *args;
        const char *needles[6];
    } cases[] = {
        {"--help", {"data prepare", "train", "eval", "generate", "info", "--threads"}},
        {"help", {"data prepare", "train", "eval", "generate", "info", "bench"}},
        {"-h", {"Usage", NULL}},
        {"help train", {"--steps", "--tokens", "--flops", "--resume", NULL}},
        {"data --help", {"prepare", "info", NULL}},
        {"data prepare --help", {"--preset", "--out", "--val-fraction", "--seed", "--split", NULL}},
        {"data info --help", {"DIR", "--json", NULL}},
        {"train --help",
         {"--steps", "--tokens", "--flops", "--layers", "--d-model", "--resume"}},
        {"train -h", {"--batch", "--lr", "--warmup", "--eval-every", "--stop-after", "--threads"}},
        {"eval --help", {"--model", "--data", "--windows", "--json", "bits-per-byte = loss / ln 2", NULL}},
        {"generate --help", {"--model", "--prompt", "--temperature", "--top-k", "--top-p", "--seed"}},
        {"info --help", {"--model", "--json", "6N", NULL}},
        {"bench --help", {"train", "decode", NULL}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ck_assert_msg(tu_joule("%s", cases[i].args) == 0, "joule %s did not exit 0", cases[i].args);
        char *o = tu_read_in("out.txt", NULL);
        for (int k = 0; k < 6 && cases[i].needles[k]; k++)
            ck_assert_msg(strstr(o, cases[i].needles[k]) != NULL, "joule %s: help does not mention '%s'",
                          cases[i].args, cases[i].needles[k]);
        free(o);
    }
    /* The defaults are in the help text. */
    ck_assert_int_eq(tu_joule("train --help"), 0);
    tu_expect_in("out.txt", "(default 8)");
    tu_expect_in("out.txt", "(default 1e-3)");
    tu_expect_in("out.txt", "default runs/model.safetensors");
}
END_TEST

START_TEST(test_version_and_no_args) {
    ck_assert_int_eq(tu_joule("--version"), 0);
    tu_expect_in("out.txt", "joule 0.");
    ck_assert_int_eq(tu_joule("%s", ""), 2); /* no command: the list, on stderr */
    char *e = tu_read_in("err.txt", NULL);
    ck_assert_ptr_nonnull(strstr(e, "Commands"));
    free(e);
}
END_TEST

START_TEST(test_bad_usage_exits_2) {
    const char *cases[] = {
        "frobnicate",                          /* unknown command */
        "--frobnicate",                        /* unknown global option */
        "train --bogus",                       /* unknown option */
        "train --steps",                       /* missing value */
        "train --steps abc",                   /* bad number */
        "train --steps 0",                     /* out of range */
        "train --steps 10 --tokens 1M",        /* two budgets */
        "train --data d",                      /* no budget */
        "train --data d --steps 5 --lr -1",    /* bad value */
        "train --data d --steps 5 extra",      /* stray argument */
        "train --data d --steps 5 --heads 3 --d-model 32", /* d_model not a multiple of heads */
        "train --data d --steps 5 " TINY " --seq 64",      /* seq longer than ctx */
        "eval",                                /* --model required */
        "eval --model m.safetensors --batch 0",
        "eval --json=1 --model m.safetensors",
        "generate --model m.safetensors --temperature -1",
        "generate --model m.safetensors --top-p 1.5",
        "generate --model m.safetensors -n x",
        "info",
        "info --model a b",
        "data",
        "data frob",
        "data prepare --split nonsense corpus.txt --out x",
        "data prepare corpus.txt",             /* --out required with paths */
        "data prepare --preset default corpus.txt --out x",
        "--threads 2 info --model m.safetensors", /* --threads is for compute commands */
        "--threads x train --steps 1",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = tu_joule("%s", cases[i]);
        ck_assert_msg(rc == 2, "joule %s: exit %d, expected 2", cases[i], rc);
        char *e = tu_read_in("err.txt", NULL);
        ck_assert_msg(tu_count_lines(e) >= 1 && strncmp(e, "joule", 5) == 0, "joule %s: stderr '%s'", cases[i], e);
        free(e);
    }
    ck_assert_int_eq(tu_joule("train --data d --steps 5 --bogus"), 2);
    tu_expect_one_line("err.txt", "--bogus");
    ck_assert_int_eq(tu_joule("train --data d"), 2);
    tu_expect_one_line("err.txt", "budget");
}
END_TEST

/* ---- bad input files ---- */

START_TEST(test_missing_files_exit_2) {
    ck_assert_int_eq(tu_joule("info --model /nonexistent/model.safetensors"), 2);
    tu_expect_one_line("err.txt", "/nonexistent/model.safetensors");
    ck_assert_int_eq(tu_joule("eval --model /nonexistent.safetensors --data d"), 2);
    tu_expect_one_line("err.txt", "/nonexistent.safetensors");
    ck_assert_int_eq(tu_joule("generate --model /nonexistent.safetensors"), 2);
    tu_expect_one_line("err.txt", "/nonexistent.safetensors");
    ck_assert_int_eq(tu_joule("train --data nowhere --steps 3"), 2);
    tu_expect_one_line("err.txt", "nowhere/train.bin");
    ck_assert_int_eq(tu_joule("train --train d/train.bin --val nowhere.bin --steps 3"), 2);
    tu_expect_one_line("err.txt", "nowhere.bin");
    ck_assert_int_eq(tu_joule("data prepare missing.txt --out x"), 2);
    tu_expect_one_line("err.txt", "missing.txt");
    ck_assert_int_eq(tu_joule("data info nowhere"), 2);
    tu_expect_one_line("err.txt", "nowhere/train.bin");
    ck_assert_int_eq(tu_joule("train --data d --steps 3 --resume --out none.safetensors"), 2);
    tu_expect_one_line("err.txt", "none.safetensors");
    ck_assert_int_eq(tu_joule("train --data d --steps 3 --config none.json"), 2);
    tu_expect_one_line("err.txt", "none.json");
    ensure_model("m.safetensors");
    ck_assert_int_eq(tu_joule("eval --model m.safetensors --tokens none.bin"), 2);
    tu_expect_one_line("err.txt", "none.bin");
    ck_assert_int_eq(tu_joule("generate --model m.safetensors --prompt-file none.txt"), 2);
    tu_expect_one_line("err.txt", "none.txt");
}
END_TEST

START_TEST(test_corrupt_files_exit_2) {
    char garbage[3000];
    for (size_t i = 0; i < sizeof garbage; i++) garbage[i] = (char)(i * 7919 % 251);
    tu_write(tu_path("garbage.safetensors"), garbage, sizeof garbage);
    const char *cmds[] = {"info --model garbage.safetensors", "eval --model garbage.safetensors --data d",
                          "generate --model garbage.safetensors -n 5"};
    for (int i = 0; i < 3; i++) {
        int rc = tu_joule("%s", cmds[i]);
        ck_assert_msg(rc == 2, "joule %s: exit %d, expected 2", cmds[i], rc);
        tu_expect_one_line("err.txt", "garbage.safetensors");
    }
    /* A real checkpoint cut in half. */
    ensure_model("m.safetensors");
    size_t n = 0;
    char *good = tu_read_in("m.safetensors", &n);
    ck_assert_ptr_nonnull(good);
    tu_write(tu_path("half.safetensors"), good, n / 2);
    free(good);
    ck_assert_int_eq(tu_joule("info --model half.safetensors"), 2);
    tu_expect_one_line("err.txt", "half.safetensors");
    ck_assert_int_eq(tu_joule("eval --model half.safetensors --data d"), 2);
    tu_expect_one_line("err.txt", "half.safetensors");
    /* A token file that is not one. */
    tu_write(tu_path("bad.bin"), garbage, sizeof garbage);
    tu_write(tu_path("bad.idx"), garbage, sizeof garbage);
    ck_assert_int_eq(tu_joule("eval --model m.safetensors --tokens bad.bin"), 2);
    tu_expect_one_line("err.txt", "bad.bin");
    /* A config file that is not JSON. */
    tu_write(tu_path("bad.json"), "{not json", 9);
    ck_assert_int_eq(tu_joule("train --data d --steps 3 --config bad.json --out x.safetensors"), 2);
    tu_expect_one_line("err.txt", "bad.json");
}
END_TEST

/* ---- the real thing ---- */

START_TEST(test_data_prepare_and_info) {
    ck_assert_int_eq(tu_joule("data prepare corpus.txt --out d2 --split blank-line --val-fraction 0.2 --seed 3"), 0);
    tu_expect_in("out.txt", "train:");
    tu_expect_in("out.txt", "val:");
    tu_expect_in("out.txt", "d2/train.bin");
    ck_assert(tu_exists(tu_path("d2/train.bin")) && tu_exists(tu_path("d2/val.idx")) &&
              tu_exists(tu_path("d2/meta.json")));
    ck_assert_int_eq(tu_joule("data info d2 --json"), 0);
    char *o = tu_read_in("out.txt", NULL);
    cJSON *j = cJSON_Parse(o);
    ck_assert_msg(j != NULL, "data info --json is not JSON: %s", o);
    const cJSON *tr = cJSON_GetObjectItem(j, "train"), *va = cJSON_GetObjectItem(j, "val");
    ck_assert(cJSON_GetObjectItem(tr, "tokens")->valuedouble > 1000);
    ck_assert(cJSON_GetObjectItem(va, "documents")->valuedouble >= 1);
    cJSON_Delete(j);
    free(o);
    ck_assert_int_eq(tu_joule("data info d2"), 0);
    tu_expect_in("out.txt", "blank-line");
}
END_TEST

START_TEST(test_train_eval_generate_info) {
    ck_assert_int_eq(tu_joule("train --data d " TINY " --steps 30 --out run/t.safetensors --eval-every 10 --threads 2"),
                     0);
    tu_expect_in("out.txt", "params");
    tu_expect_in("out.txt", "tokens/step");
    tu_expect_in("out.txt", "counted/analytic");
    tu_expect_in("out.txt", "val bpb");
    ck_assert(tu_exists(tu_path("run/t.safetensors")));
    ck_assert(tu_exists(tu_path("run/t.optim.safetensors")));
    ck_assert(tu_exists(tu_path("run/t.log.jsonl")));

    /* The log: one JSON object per step with the documented fields. */
    char *log = tu_read_in("run/t.log.jsonl", NULL);
    ck_assert_int_eq(tu_count_lines(log), 30);
    int line = 0, with_val = 0;
    for (char *save = NULL, *s = strtok_r(log, "\n", &save); s; s = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(s);
        ck_assert_msg(j != NULL, "log line %d is not JSON: %s", line + 1, s);
        const char *keys[] = {"step", "tokens", "loss", "lr", "grad_norm", "wall_s", "flops"};
        for (int k = 0; k < 7; k++)
            ck_assert_msg(cJSON_IsNumber(cJSON_GetObjectItem(j, keys[k])), "log line %d lacks '%s'", line + 1,
                          keys[k]);
        ck_assert_int_eq((int)cJSON_GetObjectItem(j, "step")->valuedouble, line + 1);
        ck_assert_int_eq((int)cJSON_GetObjectItem(j, "tokens")->valuedouble, (line + 1) * 4 * 32);
        with_val += cJSON_GetObjectItem(j, "val_bpb") != NULL;
        cJSON_Delete(j);
        line++;
    }
    ck_assert_int_eq(line, 30);
    ck_assert_int_eq(with_val, 3); /* steps 10, 20, 30 */
    free(log);

    /* eval --json */
    ck_assert_int_eq(tu_joule("eval --model run/t.safetensors --data d --json --threads 1"), 0);
    char *o = tu_read_in("out.txt", NULL);
    cJSON *j = cJSON_Parse(o);
    ck_assert_msg(j != NULL, "eval --json is not JSON: %s", o);
    const cJSON *bpb = cJSON_GetObjectItem(j, "bpb"), *loss = cJSON_GetObjectItem(j, "loss");
    ck_assert(cJSON_IsNumber(bpb) && cJSON_IsNumber(loss));
    ck_assert_double_eq_tol(bpb->valuedouble, loss->valuedouble / 0.69314718055994530942, 1e-9);
    ck_assert(bpb->valuedouble > 0.5 && bpb->valuedouble < 8.5);
    ck_assert(cJSON_GetObjectItem(j, "windows")->valuedouble >= 1);
    ck_assert(cJSON_GetObjectItem(j, "flops")->valuedouble > 0);
    cJSON_Delete(j);
    free(o);
    ck_assert_int_eq(tu_joule("eval --model run/t.safetensors --data d --windows 1 --json"), 0);
    o = tu_read_in("out.txt", NULL);
    j = cJSON_Parse(o);
    ck_assert_int_eq((int)cJSON_GetObjectItem(j, "windows")->valuedouble, 1);
    ck_assert_int_eq((int)cJSON_GetObjectItem(j, "tokens")->valuedouble, 32);
    cJSON_Delete(j);
    free(o);
    ck_assert_int_eq(tu_joule("eval --model run/t.safetensors --data d"), 0);
    tu_expect_in("out.txt", "bpb:");

    /* generate: greedy is deterministic; output = prompt + up to 20 bytes */
    ck_assert_int_eq(tu_joule("generate --model run/t.safetensors -n 20 --temperature 0 --prompt 'The old '"), 0);
    char *g1 = tu_read_in("out.txt", NULL);
    ck_assert(strncmp(g1, "The old ", 8) == 0);
    ck_assert(strlen(g1) > 8);
    char *e = tu_read_in("err.txt", NULL);
    ck_assert_msg(strstr(e, "tokens") && strstr(e, "tok/s"), "generate stderr: %s", e);
    free(e);
    ck_assert_int_eq(tu_joule("generate --model run/t.safetensors -n 20 --temperature 0 --prompt 'The old '"), 0);
    char *g2 = tu_read_in("out.txt", NULL);
    ck_assert_str_eq(g1, g2);
    free(g1);
    free(g2);
    ck_assert_int_eq(tu_joule("generate --model run/t.safetensors -n 50 --seed 3 --no-stop"), 0);
    tu_write(tu_path("prompt.txt"), "A small", 7);
    ck_assert_int_eq(tu_joule("generate --model run/t.safetensors -n 5 --prompt-file prompt.txt --no-echo"), 0);

    /* info */
    ck_assert_int_eq(tu_joule("info --model run/t.safetensors"), 0);
    tu_expect_in("out.txt", "non-embedding");
    tu_expect_in("out.txt", "6N");
    tu_expect_in("out.txt", "step 30 of 30");
    ck_assert_int_eq(tu_joule("info --model run/t.safetensors --json"), 0);
    o = tu_read_in("out.txt", NULL);
    j = cJSON_Parse(o);
    ck_assert_msg(j != NULL, "info --json is not JSON: %s", o);
    const cJSON *cfg = cJSON_GetObjectItem(j, "config");
    ck_assert_int_eq((int)cJSON_GetObjectItem(cfg, "d_model")->valuedouble, 32);
    const cJSON *tr = cJSON_GetObjectItem(j, "training");
    ck_assert_int_eq((int)cJSON_GetObjectItem(tr, "step")->valuedouble, 30);
    ck_assert_int_eq((int)cJSON_GetObjectItem(tr, "tokens")->valuedouble, 30 * 4 * 32);
    const cJSON *p = cJSON_GetObjectItem(j, "params");
    ck_assert(cJSON_GetObjectItem(p, "total")->valuedouble ==
              cJSON_GetObjectItem(p, "embedding")->valuedouble + cJSON_GetObjectItem(p, "non_embedding")->valuedouble);

    /* The config of `info --json` builds the same model through --config. */
    char *cj = cJSON_PrintUnformatted(cfg);
    tu_write(tu_path("cfg.json"), cj, strlen(cj));
    free(cj);
    cJSON_Delete(j);
    free(o);
    ck_assert_int_eq(tu_joule("train --data d --config cfg.json --batch 4 --steps 2 --out run/c.safetensors --no-log"),
                     0);
    ck_assert(!tu_exists(tu_path("run/c.log.jsonl")));
    ck_assert_int_eq(tu_joule("info --model run/c.safetensors --json"), 0);
    o = tu_read_in("out.txt", NULL);
    j = cJSON_Parse(o);
    ck_assert_int_eq((int)cJSON_GetObjectItem(cJSON_GetObjectItem(j, "config"), "d_ff")->valuedouble, 64);
    cJSON_Delete(j);
    free(o);
}
END_TEST

/* Loads two checkpoints and checks their weights are bit-identical. */
static void expect_same_weights(const char *a, const char *b) {
    char pa[8192], pb[8192];
    snprintf(pa, sizeof pa, "%s", tu_path("%s", a));
    snprintf(pb, sizeof pb, "%s", tu_path("%s", b));
    joule_model *ma = NULL, *mb = NULL;
    joule_train_state sa, sb;
    ck_assert_msg(joule_checkpoint_load(&ma, pa, &sa) == 0, "%s", joule_last_error());
    ck_assert_msg(joule_checkpoint_load(&mb, pb, &sb) == 0, "%s", joule_last_error());
    ck_assert_uint_eq(ma->n_params, mb->n_params);
    ck_assert_msg(memcmp(ma->params, mb->params, ma->n_params * sizeof(float)) == 0, "%s and %s differ", a, b);
    ck_assert_uint_eq(sa.step, sb.step);
    ck_assert_uint_eq(sa.tokens, sb.tokens);
    joule_model_free(ma);
    joule_model_free(mb);
}

START_TEST(test_resume_is_exact) {
    const char *common = "train --data d " TINY " --steps 40 --seed 7 --threads 1 --eval-every 15";
    ck_assert_int_eq(tu_joule("%s --out r/straight.safetensors", common), 0);

    ck_assert_int_eq(tu_joule("%s --out r/split.safetensors --stop-after 20", common), 0);
    tu_expect_in("out.txt", "--resume");
    ck_assert_int_eq(tu_joule("info --model r/split.safetensors"), 0);
    tu_expect_in("out.txt", "step 20 of 40");
    ck_assert_int_eq(tu_joule("%s --out r/split.safetensors --resume", common), 0);
    expect_same_weights("r/straight.safetensors", "r/split.safetensors");
    char *log = tu_read_in("r/split.log.jsonl", NULL);
    ck_assert_int_eq(tu_count_lines(log), 40);
    free(log);

    /* --resume alone takes the model, budget, seed and schedule from the checkpoint. */
    ck_assert_int_eq(tu_joule("%s --out r/bare.safetensors --stop-after 13", common), 0);
    ck_assert_int_eq(tu_joule("train --data d --resume --out r/bare.safetensors --threads 1 --eval-every 15"), 0);
    expect_same_weights("r/straight.safetensors", "r/bare.safetensors");
    /* Already finished: nothing to do. */
    ck_assert_int_eq(tu_joule("train --data d --resume --out r/bare.safetensors --threads 1"), 0);
    tu_expect_in("out.txt", "nothing to do");

    /* Resuming with a different model or schedule is refused. */
    ck_assert_int_eq(tu_joule("%s --out r/other.safetensors --stop-after 10", common), 0);
    ck_assert_int_eq(tu_joule("train --data d --layers 2 --resume --out r/other.safetensors --threads 1"), 2);
    tu_expect_one_line("err.txt", "r/other.safetensors");
    ck_assert_int_eq(tu_joule("%s --out r/other.safetensors --resume --lr 3e-3", common), 2);
    tu_expect_one_line("err.txt", "r/other.safetensors");
}
END_TEST

/* Ctrl-C saves and stops after the current step, exit 130; the run resumes. */
START_TEST(test_interrupt_saves) {
    char args[16384];
    snprintf(args, sizeof args, "cd '%s' && exec '%s' train --data d " TINY
             " --steps 1000000 --eval-every 0 --threads 1 --out i/m.safetensors > i.out 2> i.err",
             tu_dir, getenv("JOULE_BIN"));
    char *argv[] = {"sh", "-c", args, NULL};
    pid_t pid;
    ck_assert_int_eq(posix_spawn(&pid, "/bin/sh", NULL, NULL, argv, environ), 0);
    /* Wait until a few steps are logged. */
    int lines = 0;
    for (int i = 0; i < 600 && lines < 3; i++) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
        char *log = tu_read_in("i/m.log.jsonl", NULL);
        if (log) lines = tu_count_lines(log);
        free(log);
    }
    ck_assert_int_ge(lines, 3);
    ck_assert_int_eq(kill(pid, SIGINT), 0);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 130, "status %d", status);
    char *e = tu_read_in("i.err", NULL);
    ck_assert_msg(strstr(e, "saving and stopping") != NULL, "stderr: %s", e);
    free(e);
    char *log = tu_read_in("i/m.log.jsonl", NULL);
    int steps = tu_count_lines(log);
    free(log);
    ck_assert_int_eq(tu_joule("info --model i/m.safetensors --json"), 0);
    char *o = tu_read_in("out.txt", NULL);
    cJSON *j = cJSON_Parse(o);
    ck_assert_int_eq((int)cJSON_GetObjectItem(cJSON_GetObjectItem(j, "training"), "step")->valuedouble, steps);
    cJSON_Delete(j);
    free(o);
}
END_TEST

/* Global --threads before the command reaches the command. */
START_TEST(test_global_threads) {
    ensure_model("m.safetensors");
    ck_assert_int_eq(tu_joule("--threads 1 eval --model m.safetensors --data d --json"), 0);
    char *o = tu_read_in("out.txt", NULL);
    cJSON *j = cJSON_Parse(o);
    ck_assert_int_eq((int)cJSON_GetObjectItem(j, "threads")->valuedouble, 1);
    cJSON_Delete(j);
    free(o);
}
END_TEST

static Suite *cli_suite(void) {
    Suite *s = suite_create("cli");
    TCase *tc = tu_tcase(s, "cli", 120, NULL, NULL);
    tcase_add_unchecked_fixture(tc, suite_setup, tu_remove_dir);
    tcase_add_test(tc, test_help_texts);
    tcase_add_test(tc, test_version_and_no_args);
    tcase_add_test(tc, test_bad_usage_exits_2);
    tcase_add_test(tc, test_missing_files_exit_2);
    tcase_add_test(tc, test_corrupt_files_exit_2);
    tcase_add_test(tc, test_data_prepare_and_info);
    tcase_add_test(tc, test_train_eval_generate_info);
    tcase_add_test(tc, test_resume_is_exact);
    tcase_add_test(tc, test_interrupt_saves);
    tcase_add_test(tc, test_global_threads);
    return s;
}

int main(void) {
    return tu_run_suite(cli_suite());
}
