/* Fuzz target: a token file and its document index (joule_tokens_open), then what
 * training and evaluation read through them (documents, batches, evaluation windows).
 * Input: u32 little-endian length L, then L bytes of the .bin, then the .idx. Seeds: the
 * train.bin/.idx and val.bin/.idx that joule data prepare wrote, so joined. */
#include "fuzz_util.h"

#include "joule/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 4) return 0;
    uint32_t len;
    memcpy(&len, data, 4);
    size_t bin = len < size - 4 ? len : size - 4;
    fz_write(fz_path("t.bin"), data + 4, bin);
    fz_write(fz_path("t.idx"), data + 4 + bin, size - 4 - bin);
    joule_tokens t;
    int rc = joule_tokens_open(&t, fz_path("t.bin"));
    fz_check_message(rc);
    if (rc) return 0;
    volatile uint64_t sink = 0;
    for (uint64_t d = 0; d < t.n_docs && d < 64; d++) sink += joule_tokens_doc_at(&t, t.doc_offsets[d]) + t.doc_ids[d];
    enum { B = 2, T = 8 };
    int32_t in[B * T], tg[B * T];
    uint64_t starts[B];
    rc = joule_batch_sample_aligned(&t, 1, 0, 0, B, T, 4, in, tg, starts);
    fz_check_message(rc);
    uint64_t nw = joule_eval_windows(&t, T);
    if (nw > 0) joule_eval_window(&t, T, nw - 1, in, tg);
    joule_tokens_close(&t);
    return 0;
}
