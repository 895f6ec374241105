/* cli/retro_cli.h — the RETRO parts of `joule train`, `joule eval` and `joule generate`,
 * kept here so those commands only gain a few calls (cli/retro_cli.c). */
#ifndef JOULE_RETRO_CLI_H
#define JOULE_RETRO_CLI_H

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>

#include "joule/model.h"
#include "joule/retro.h"
#include "joule/train.h"

/* Option values above every command's own enum. */
enum {
    OPT_RETRO_ARCH = 1024, OPT_RETRO_DB, OPT_RETRO_CCA_START, OPT_RETRO_CCA_EVERY, OPT_RETRO_K, OPT_RETRO_CHUNK,
    OPT_RETRO_ENC_LAYERS, OPT_RETRO_ENC_D_MODEL, OPT_RETRO_INIT, OPT_RETRO_FREEZE, OPT_RETRO_ALLOW, OPT_RETRO_OWN_DOC,
    OPT_RETRO_ON_DEMAND, OPT_RETRO_POSITIONS, OPT_RETRO_LEAKAGE, OPT_RETRO_BASELINE, OPT_RETRO_LEAK_K,
};

/* Entries for a command's getopt_long table. */
#define RETRO_TRAIN_LONG_OPTIONS                                                                              \
    {"db", required_argument, NULL, OPT_RETRO_DB},                                                            \
        {"cca-start", required_argument, NULL, OPT_RETRO_CCA_START},                                          \
        {"cca-every", required_argument, NULL, OPT_RETRO_CCA_EVERY},                                          \
        {"neighbours", required_argument, NULL, OPT_RETRO_K}, {"chunk", required_argument, NULL, OPT_RETRO_CHUNK}, \
        {"enc-layers", required_argument, NULL, OPT_RETRO_ENC_LAYERS},                                        \
        {"enc-d-model", required_argument, NULL, OPT_RETRO_ENC_D_MODEL},                                      \
        {"init", required_argument, NULL, OPT_RETRO_INIT}, {"freeze-base", no_argument, NULL, OPT_RETRO_FREEZE}, \
        {"allow-db-mismatch", no_argument, NULL, OPT_RETRO_ALLOW},                                         \
        {"neighbours-on-demand", no_argument, NULL, OPT_RETRO_ON_DEMAND},                                  \
        {"retro-positions", required_argument, NULL, OPT_RETRO_POSITIONS}
#define RETRO_DB_LONG_OPTIONS \
    {"db", required_argument, NULL, OPT_RETRO_DB}, {"allow-db-mismatch", no_argument, NULL, OPT_RETRO_ALLOW}
#define RETRO_EVAL_LONG_OPTIONS                                                                               \
    RETRO_DB_LONG_OPTIONS, {"include-own-doc", no_argument, NULL, OPT_RETRO_OWN_DOC},                       \
        {"leaky", no_argument, NULL, OPT_RETRO_OWN_DOC},                                                    \
        {"neighbours-on-demand", no_argument, NULL, OPT_RETRO_ON_DEMAND},                                   \
        {"leakage", no_argument, NULL, OPT_RETRO_LEAKAGE}, {"baseline", required_argument, NULL, OPT_RETRO_BASELINE}, \
        {"leakage-neighbours", required_argument, NULL, OPT_RETRO_LEAK_K}

#define RETRO_TRAIN_USAGE                                                                                   \
    "\n"                                                                                                    \
    "RETRO (docs/MODEL.md §7; a new run unless noted):\n"                                                   \
    "  --db DIR           retrieval database (joule db build); required for retro, also when resuming.\n"  \
    "                     Neighbours of the train/val files are computed once next to them\n"             \
    "                     (<file>.<database id>.nbr), same-document neighbours excluded\n"                 \
    "  --neighbours-on-demand  no files: search each chunk the first time a batch reads it (a\n"      \
    "                     short run pays only for what it reads; nothing is kept for later runs)\n"      \
    "  --chunk N          chunk length m; must equal the database's (default: the database's)\n"           \
    "  --neighbours K     neighbours per chunk (default 2)\n"                                              \
    "  --cca-start L      first layer with chunked cross-attention (default round(layers/6), at\n"         \
    "                     least 1 when layers >= 2: the paper's layer 6 of 32, scaled to depth)\n"        \
    "  --cca-every N      then every N-th layer (default 3)\n"                                             \
    "  --enc-layers N     neighbour encoder layers (default 2)\n"                                          \
    "  --enc-d-model N    neighbour encoder width (default about d-model/2)\n"                             \
    "  --retro-positions P  rope (default): relative positions in chunked cross-attention and the\n"    \
    "                     encoder's cross-attention; none: without (an ablation; older checkpoints)\n" \
    "  --init PATH        RETRO-fit: start from this dense checkpoint (its sizes are used)\n"              \
    "  --freeze-base      train only the encoder and CCA weights (give it again with --resume)\n"          \
    "  --allow-db-mismatch  use a database other than the one the model was trained with\n"

typedef struct {
    bool retro, freeze, allow_mismatch, on_demand, no_positions;
    const char *db, *init;
    int chunk, k, cca_start, cca_every, enc_layers, enc_d_model; /* -1: default */
    bool any;             /* some RETRO option given */
    joule_model *base;    /* --init's dense model until attach copies it */
    joule_retro_data *rd;
} retro_train_cli;

void retro_train_cli_init(retro_train_cli *r);
/* 0: handled; -1: not a RETRO option; otherwise the exit code of a usage error printed. */
int retro_train_cli_option(retro_train_cli *r, const char *cmd, int c, const char *arg);
/* A new run: makes cfg a RETRO config when asked (--init's dense model gives the sizes).
 * 0 or an exit code after printing. */
int retro_train_cli_config(retro_train_cli *r, const char *cmd, joule_config *cfg, bool resume, bool model_flags);
/* Once the model exists: --init weights, --freeze-base, the database and neighbour files,
 * and the training hooks in o. 0 or an exit code after printing. */
int retro_train_cli_attach(retro_train_cli *r, const char *cmd, joule_model *m, joule_train_opts *o, bool resume,
                           const char *train_path, const char *val_path);
void retro_train_cli_free(retro_train_cli *r);

/* The database options of `joule eval` and `joule generate` (RETRO_EVAL_LONG_OPTIONS;
 * generate takes only RETRO_DB_LONG_OPTIONS). */
typedef struct {
    const char *dir;
    bool allow_mismatch, own_doc, on_demand;
    bool leakage;         /* --leakage: the table by overlap with the database */
    const char *baseline; /* --baseline: a dense model scored on the same bytes */
    int leak_k;           /* --leakage-neighbours (default 10) */
} retro_db_cli;
/* 0: handled; -1: not one of them; otherwise the exit code of a usage error printed. */
int retro_db_cli_option(retro_db_cli *d, const char *cmd, int c, const char *arg);

/* `joule eval --db`: bits-per-byte with retrieval on and off over the same windows;
 * prints text or JSON. Returns an exit code. */
int retro_cli_eval(const char *cmd, joule_model *m, joule_tokens *t, const retro_db_cli *d, int seq, int batch,
                   uint64_t windows, bool json, const char *model_path);

/* `joule generate --db`: opens the database for the model (0 or an exit code). */
int retro_cli_open_db(const char *cmd, const joule_model *m, const char *db_dir, bool allow_mismatch,
                      struct joule_retro_db **db);

/* `joule info`: RETRO's FLOP terms per token (text), nothing for other models. */
void retro_cli_print_terms(const joule_config *cfg);

/* The accountant's retrieval lines for a database: analytic search FLOPs per query (FAISS's
 * work, not counted) and the query embedder; into o (a cJSON object) when non-NULL, else
 * printed. m: tokens per query chunk. */
void retro_cli_retrieval_cost(struct joule_retro_db *db, int m, void *o);

#endif
