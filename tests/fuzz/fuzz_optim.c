/* Fuzz target: an optimizer-state file next to fixed, valid weights (a run joule train
 * wrote in $JOULE_FUZZ_DIR): joule_checkpoint_load_optim, which pairs it with the weights
 * by run and step and reads the moments, and joule_checkpoint_recover. Input: one byte
 * (bit 0: the file is <stem>.optim.next.safetensors, as a killed save leaves it), then the
 * file. Seeds: that run's optimizer file, both ways. */
#include "fuzz_util.h"

#include "joule/checkpoint.h"

static joule_model *g_model;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fz_register();
    fz_copy(fz_prepared("model/m.safetensors"), fz_path("m.safetensors"));
    if (joule_checkpoint_load(&g_model, fz_path("m.safetensors"), NULL) != JOULE_OK) {
        fprintf(stderr, "%s\n", joule_last_error());
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* the first byte says whether the rest is the optimizer file or the .next one a killed
     * save leaves */
    if (size < 1) return 0;
    const char *name = data[0] & 1 ? "m.optim.next.safetensors" : "m.optim.safetensors";
    unlink(fz_path("m.optim.safetensors"));
    unlink(fz_path("m.optim.next.safetensors"));
    fz_input(data + 1, size - 1, name);
    joule_adamw opt;
    joule_train_state st;
    int rc = joule_checkpoint_load_optim(fz_path("m.safetensors"), g_model, &opt, &st);
    fz_check_message(rc);
    if (rc == JOULE_OK) joule_adamw_free(&opt);
    rc = joule_checkpoint_recover(fz_path("m.safetensors"));
    fz_check_message(rc);
    return 0;
}
