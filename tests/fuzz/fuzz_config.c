/* Fuzz target: the JSON readers of configuration: a model config (joule_config_from_json,
 * as in checkpoints and --config), a hardware profile (joule_hw_from_json) and a published
 * model preset (joule_acct_from_json), all on the same text. Seeds: configs of models joule
 * train wrote (from joule info --json), and the hardware profiles and presets in docs/. */
#include "fuzz_util.h"

#include "joule/account.h"
#include "joule/energy.h"
#include "joule/model.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fz_register();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    joule_config c;
    int rc = joule_config_from_json(&c, text, "config.json");
    fz_check_message(rc);
    if (rc == JOULE_OK) {
        joule_model *m; /* the parameter table of what it describes (no arena) */
        rc = joule_model_describe(&m, &c);
        fz_check_message(rc);
        if (rc == JOULE_OK) joule_model_free(m);
        free(joule_config_to_json(&c));
    }
    joule_hw_profile hw;
    fz_check_message(joule_hw_from_json(&hw, text, "hardware.json"));
    joule_acct_model a;
    fz_check_message(joule_acct_from_json(&a, text, "preset.json"));
    free(text);
    return 0;
}
