/* joule quantize — a bf16 or int8 copy of a checkpoint for inference (docs/FORMATS.md). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "joule/checkpoint.h"
#include "joule/quant.h"

static const char USAGE[] =
    "Usage: joule quantize --model IN --to bf16|int8 --out OUT\n"
    "\n"
    "Writes a copy of checkpoint IN whose matrices (all 2-D weights but the embedding and an\n"
    "untied lm_head: attention, SwiGLU, MoE router and experts, RETRO encoder and CCA) are\n"
    "bf16 (round to nearest even) or int8 with one fp32 scale per output row\n"
    "(scale = max |w| / 127, stored as tensor NAME.scale); embeddings and norm gains stay\n"
    "fp32. The file is standard safetensors (docs/FORMATS.md, 'Quantised models', has the\n"
    "PyTorch one-liner). eval, generate, bench energy, info and account --model load it;\n"
    "training refuses it. Prints the mean and max relative error of the quantised matrices.\n"
    "\n"
    "Options:\n"
    "  --model IN     fp32 checkpoint (.safetensors) to quantise (required)\n"
    "  --to P         bf16 or int8 (required)\n"
    "  --out OUT      file to write (required; written atomically)\n"
    "  -h, --help     show this help and exit\n";

enum { OPT_MODEL = 256, OPT_TO, OPT_OUT };

static const char *CMD = "quantize";

int cli_quantised_refusal(const char *cmd, const char *path, const joule_model *m) {
    return cli_error(EXIT_USAGE, cmd, "%s: a %s (quantised) checkpoint is for inference only; train from the fp32 one",
                     path, joule_precision_name(m->quant->prec));
}

typedef struct {
    const char *in, *out;
    joule_precision to;
    bool have_to;
} quant_args;

static int parse_args(int argc, char **argv, quant_args *a) {
    static const struct option LONG[] = {
        {"model", required_argument, NULL, OPT_MODEL},
        {"to", required_argument, NULL, OPT_TO},
        {"out", required_argument, NULL, OPT_OUT},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    cli_opt_start();
    while ((c = cli_getopt(argc, argv, ":h", LONG, USAGE)) != -1) {
        if (c == CLI_HELP) return -1;
        if (c == OPT_MODEL) a->in = optarg;
        else if (c == OPT_OUT) a->out = optarg;
        else if (c == OPT_TO) {
            if (joule_precision_parse(optarg, &a->to) || a->to == JOULE_PREC_F32)
                return cli_usage_error(CMD, "--to: '%s' is not bf16 or int8", joule_q(optarg));
            a->have_to = true;
        } else return cli_bad_option(CMD, c, argv);
    }
    if (optind < argc) return cli_usage_error(CMD, "unexpected argument '%s'", joule_q(argv[optind]));
    if (!a->in || !a->out || !a->have_to) return cli_usage_error(CMD, "--model IN, --to P and --out OUT are required");
    return cli_check_input(CMD, a->in, NULL);
}

/* Mean and max of |w_q - w| / max|row| over the quantised matrices (fp32 copy in ref). */
static void report(const joule_model *m, const float *ref, const char *out) {
    double sum = 0, mx = 0;
    size_t n = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const joule_param_info *t = &m->tensors[i];
        if (!m->quant->quantised[i]) continue;
        const float *a = ref + t->offset, *b = m->params + t->offset;
        double num = 0, den = 0;
        for (size_t k = 0; k < t->numel; k++) {
            num += ((double)a[k] - b[k]) * ((double)a[k] - b[k]);
            den += (double)a[k] * a[k];
        }
        const double rel = den > 0 ? num / den : 0;
        sum += rel;
        mx = rel > mx ? rel : mx;
        n++;
    }
    printf("wrote %s: %s, %zu matrices quantised (relative RMS error mean %.3g, max %.3g), %.1f MB of weights read "
           "per decoded token\n",
           out, joule_precision_name(m->quant->prec), n, n ? sqrt(sum / (double)n) : 0, sqrt(mx),
           (double)joule_quant_decode_weight_bytes(m) / 1e6);
}

int cmd_quantize(int argc, char **argv) {
    quant_args a = {0};
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    joule_model *m = NULL;
    if ((rc = joule_checkpoint_load(&m, a.in, NULL))) return cli_fail(CMD, rc);
    if (m->quant) {
        rc = cli_error(EXIT_USAGE, CMD, "%s: already %s; quantise the fp32 checkpoint", a.in,
                       joule_precision_name(m->quant->prec));
        joule_model_free(m);
        return rc;
    }
    float *ref = malloc(m->n_params * sizeof(float));
    joule_quant *q = NULL;
    if (!ref) rc = cli_error(1, CMD, "out of memory copying %zu weights", m->n_params);
    else memcpy(ref, m->params, m->n_params * sizeof(float));
    if (!rc && (rc = joule_quant_from_model(&q, m, a.to))) rc = cli_fail(CMD, rc);
    if (!rc) {
        m->quant = q;
        if ((rc = joule_quant_save(m, a.out))) rc = cli_fail(CMD, rc);
        else report(m, ref, a.out);
    }
    free(ref);
    joule_model_free(m);
    return rc;
}
