/* Fuzz target: a safetensors file, read generically (joule_st_open and everything it
 * exposes) and as a model checkpoint (joule_checkpoint_load: config, tensor table, state).
 * Seeds: checkpoints joule train wrote (dense, MoE). */
#include "fuzz_util.h"

#include "joule/checkpoint.h"
#include "joule/safetensors.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fz_register();
    return 0;
}

/* Reads every byte the file hands out, so a bad offset shows up under ASan. */
static unsigned walk(const joule_st_file *f) {
    unsigned sum = 0;
    for (size_t i = 0; i < joule_st_count(f); i++) {
        const joule_st_tensor *t = joule_st_at(f, i);
        if (joule_st_find(f, t->name) == NULL) abort();
        for (size_t b = 0; b < t->nbytes; b++) sum += ((const unsigned char *)t->data)[b];
    }
    const char *k, *v;
    for (size_t i = 0; i < joule_st_meta_count(f); i++)
        if (joule_st_meta_at(f, i, &k, &v) == JOULE_OK) sum += (unsigned)strlen(k) + (unsigned)strlen(v);
    return sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *p = fz_input(data, size, "m.safetensors");
    joule_st_file *f;
    int rc = joule_st_open(&f, p);
    fz_check_message(rc);
    if (rc == JOULE_OK) {
        volatile unsigned sink = walk(f);
        (void)sink;
        joule_st_close(f);
    }
    joule_model *m;
    joule_train_state st;
    rc = joule_checkpoint_load(&m, p, &st);
    fz_check_message(rc);
    if (rc == JOULE_OK) joule_model_free(m);
    return 0;
}
