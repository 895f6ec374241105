/* Fuzz target: a neighbour file (.nbr) opened against the small database scripts/fuzz.sh
 * built, through the public joule_neighbours_open (and _close) only: the format and the
 * accessors belong to retro/ and change with it, this harness does not depend on them. The
 * token file the header names lies beside the input, as joule db neighbours leaves it.
 * Seeds: neighbour files joule db neighbours wrote (made when fuzz.sh runs, so they
 * follow the current format). */
#include "fuzz_util.h"

#include "joule/retro_db.h"

static joule_retro_db *g_db;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fz_register();
    fz_copy(fz_prepared("data/train.bin"), fz_path("train.bin"));
    fz_copy(fz_prepared("data/train.idx"), fz_path("train.idx"));
    if (joule_db_open(&g_db, fz_prepared("db")) != JOULE_OK) {
        fprintf(stderr, "%s\n", joule_last_error());
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    joule_neighbours *nb;
    int rc = joule_neighbours_open(&nb, fz_input(data, size, "train.nbr"), g_db);
    fz_check_message(rc);
    if (rc == JOULE_OK) joule_neighbours_close(nb);
    return 0;
}
