/* cli/moe_cli.h — the MoE parts of the commands: `joule train`'s options (--arch moe,
 * --experts, ...) and summary line, `joule eval`'s routing statistics. Kept out of the
 * command files so that they only forward to them. */
#ifndef JOULE_CLI_MOE_H
#define JOULE_CLI_MOE_H

#include <getopt.h>
#include <stdbool.h>

#include "joule/model.h"

/* getopt_long values of the MoE options (above cmd_train's own). */
enum {
    OPT_MOE_FIRST = 1000,
    OPT_MOE_ARCH = OPT_MOE_FIRST, OPT_MOE_EXPERTS, OPT_MOE_TOP_K, OPT_MOE_EVERY, OPT_MOE_CF, OPT_MOE_EVAL_CF,
    OPT_MOE_D_FF_EXPERT, OPT_MOE_ALPHA, OPT_MOE_BETA, OPT_MOE_NO_RENORM, OPT_MOE_RANDOM_SECOND, OPT_MOE_LAST,
};

#define CLI_MOE_LONG_OPTIONS                                                                            \
    {"experts", required_argument, NULL, OPT_MOE_EXPERTS},                                               \
    {"top-k", required_argument, NULL, OPT_MOE_TOP_K}, {"moe-every", required_argument, NULL, OPT_MOE_EVERY}, \
    {"capacity-factor", required_argument, NULL, OPT_MOE_CF},                                            \
    {"eval-capacity-factor", required_argument, NULL, OPT_MOE_EVAL_CF},                                  \
    {"d-ff-expert", required_argument, NULL, OPT_MOE_D_FF_EXPERT},                                       \
    {"aux-alpha", required_argument, NULL, OPT_MOE_ALPHA}, {"z-beta", required_argument, NULL, OPT_MOE_BETA}, \
    {"router-no-renorm", no_argument, NULL, OPT_MOE_NO_RENORM},                                          \
    {"router-random-second", no_argument, NULL, OPT_MOE_RANDOM_SECOND}

#define CLI_MOE_USAGE                                                                                   \
    "  --arch NAME        dense, moe or retro (default dense, or the --config file's); retro\n"          \
    "                     with MoE options gives a RETRO model whose FFNs are MoE\n"                   \
    "\n"                                                                                                \
    "Mixture of experts (with --arch moe; docs/MODEL.md section 7):\n"                                  \
    "  --experts N        experts per MoE layer (default 8)\n"                                          \
    "  --top-k N          experts per token, 1 or 2 (default 2)\n"                                      \
    "  --moe-every N      MoE FFN in layers l with l % N == N-1; 2 = every other layer as in\n"         \
    "                     GLaM, 1 = all (default 2)\n"                                                  \
    "  --d-ff-expert N    hidden width of each expert's SwiGLU (default d-ff)\n"                        \
    "  --capacity-factor F       expert capacity ceil(F k N / E) while training; 0 = dropless\n"        \
    "                            (default 1.25)\n"                                                      \
    "  --eval-capacity-factor F  the same for evaluation (default 0: dropless; generation is\n"         \
    "                            always dropless)\n"                                                    \
    "  --aux-alpha F      load-balancing loss weight (default 0.01)\n"                                  \
    "  --z-beta F         router z-loss weight (default 0.001)\n"                                       \
    "  --router-no-renorm       use the softmax probabilities as gates (default: the top-k\n"           \
    "                           gates renormalised to sum to 1)\n"                                      \
    "  --router-random-second   GShard: keep the second expert with probability 2*g2 (training)\n"

typedef struct {
    const char *arch;      /* NULL when not given */
    joule_moe_config e;    /* values given; which ones is in `given` */
    unsigned given;        /* bit (opt - OPT_MOE_FIRST) per option seen */
} cli_moe_opts;

/* Parses one MoE option into o; 0 or EXIT_USAGE after printing the problem. */
int cli_moe_parse(const char *cmd, cli_moe_opts *o, int opt, const char *arg);
/* Applies the options to cfg (arch from --arch or the config file; defaults for the
 * fields not given, or the config file's when it is already MoE); 0 or EXIT_USAGE. */
int cli_moe_finish(const char *cmd, const cli_moe_opts *o, joule_config *cfg);
/* Any model-shaping MoE option given (resume compares the model then). */
/* One "moe: ..." line describing m's MoE layers (nothing for a dense model). */
void cli_moe_print_summary(const joule_model *m);
/* Routing statistics summed over every forward since the model's buffers were allocated
 * (a whole evaluation): added to the cJSON object `json` as "moe" when it is not NULL,
 * printed as text otherwise. Nothing for a dense model. */
void cli_moe_eval_report(const joule_model *m, void *json);
static inline bool cli_moe_any(const cli_moe_opts *o) { return o->arch || o->given; }

#endif
