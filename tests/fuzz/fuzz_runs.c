/* Fuzz target: the runs of a scaling-law fit, CSV or JSON lines (joule_runs_load); every
 * value it returns must be finite (the fits take logs and products of them). Seeds:
 * tests/data's published runs, and runs in both forms written by scripts/fuzz.sh. */
#include "fuzz_util.h"

#include <math.h>

#include "joule/fit.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    joule_run *runs;
    size_t n;
    int rc = joule_runs_load(fz_input(data, size, "runs.csv"), &runs, &n);
    fz_check_message(rc);
    if (rc) return 0;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(runs[i].N) || !isfinite(runs[i].D) || !isfinite(runs[i].C) || !isfinite(runs[i].loss) ||
            !(runs[i].C > 0) || !(runs[i].loss > 0))
            abort(); /* a run the fit cannot take passed the reader */
    free(runs);
    return 0;
}
