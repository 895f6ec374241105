/* joule/checkpoint.h — model checkpoints as safetensors files.
 *
 * <name>.safetensors        the weights under PyTorch state-dict names (docs/MODEL.md),
 *                           float32, with "format": "joule", "format_version" and the
 *                           model "config" (JSON) in __metadata__.
 * <name>.optim.safetensors  AdamW moments "m.<param>" / "v.<param>" and the training state
 *                           (step, schedule length, tokens, FLOPs, seed, run id) so a run
 *                           resumes exactly. Written only by training.
 * Each file is written to a temporary name, fsynced and renamed; a save keeps the previous
 * optimizer file until the new pair is complete (the new one waits as
 * <name>.optim.next.safetensors until the weights are in place), so a kill at any instant
 * leaves a pair that resumes (docs/FORMATS.md §7). The files hold no wall times: two
 * identical runs write identical bytes. The reader validates the file, the format version,
 * the config, and every tensor's presence, dtype and shape against the file before it
 * allocates anything, and names the file and the problem on failure.
 */
#ifndef JOULE_CHECKPOINT_H
#define JOULE_CHECKPOINT_H

#include <stdint.h>

#include "joule/model.h"
#include "joule/optim.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    uint64_t step;        /* optimizer steps done */
    uint64_t total_steps; /* schedule length */
    uint64_t tokens;      /* training tokens consumed */
    uint64_t flops;       /* counted training FLOPs */
    uint64_t seed;        /* data and init seed */
    char run_id[40];      /* ties a weights file to its optimizer file */
    char opts_json[4096]; /* the run's training options, for exact resume */
} joule_train_state;

/* Path of the optimizer file belonging to a weights path. Caller frees. */
char *joule_checkpoint_optim_path(const char *path);
/* Where a save puts the new optimizer file until the weights are in place. Caller frees. */
char *joule_checkpoint_optim_next_path(const char *path);

/* Write the weights (and, when opt and st are non-NULL, the optimizer file). */
int joule_checkpoint_save(const joule_model *m, const char *path, const joule_adamw *opt,
                          const joule_train_state *st);

/* Finishes or undoes a save that a kill interrupted: a .next optimizer file that pairs with
 * the weights at path is renamed into place, one that does not is removed. Resume calls it
 * first (joule_train does); a no-op when no save was interrupted. */
int joule_checkpoint_recover(const char *path);

/* Read weights into a new model (caller frees with joule_model_free). When st is
 * non-NULL it receives the training summary stored with the weights (zeros if none). */
int joule_checkpoint_load(joule_model **out, const char *path, joule_train_state *st);

/* Read the optimizer file of `path` into opt (initialised here; caller frees with
 * joule_adamw_free) and the training state into st; checks it belongs to m and to the
 * weights at path (same run and step), taking the .next file when that is the one. */
int joule_checkpoint_load_optim(const char *path, const joule_model *m, joule_adamw *opt,
                                joule_train_state *st);

#ifdef __cplusplus
}
#endif
#endif
