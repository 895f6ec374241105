/* joule/data.h — corpus preparation, token files, training and evaluation batches.
 *
 * ============================== FILE FORMATS ==============================
 * All integers are little-endian. The tokenizer is byte-level: a token is one
 * byte (vocabulary 256) and byte 0x00 is the end-of-document (EOD) token. NUL
 * bytes are dropped from the text when a corpus is prepared, so 0x00 occurs in a
 * token file only as the EOD that follows every document.
 *
 * Token file  <name>.bin
 *   offset size  field
 *   0      8     magic "JOULETOK" (ASCII, no terminator)
 *   8      4     u32 format version = 1
 *   12     4     u32 bytes per token = 1
 *   16     8     u64 n_tokens
 *   24     8     u64 n_docs
 *   32     32    reserved, zero
 *   64     n_tokens  the tokens (1 byte each); document i occupies
 *                    [doc_offset[i], doc_offset[i+1]) and its last token is 0x00
 *   The file size is exactly 64 + n_tokens.
 *
 * Document index  <name>.idx  (same stem as the .bin)
 *   offset size  field
 *   0      8     magic "JOULEIDX"
 *   8      4     u32 format version = 1
 *   12     4     u32 reserved, zero
 *   16     8     u64 n_docs (equal to the .bin's n_docs)
 *   24     40    reserved, zero
 *   64     8*(n_docs+1)  u64 doc_offset[]: token offset where document i starts;
 *                        doc_offset[0] = 0, strictly increasing (a document holds at
 *                        least its EOD), doc_offset[n_docs] = n_tokens
 *   ...    8*n_docs      u64 doc_id[]: the document's ordinal in the whole prepared
 *                        corpus (0-based, in source order). Train and validation ids
 *                        are disjoint and each file lists its ids in increasing order,
 *                        so a retriever can exclude neighbours from the same document.
 *   The file size is exactly 64 + 16*n_docs + 8.
 *
 * Prepared corpus directory (joule_data_prepare)
 *   train.bin train.idx val.bin val.idx   as above
 *   meta.json  {"format_version":1, "tokenizer":"bytes", "vocab_size":256,
 *               "eod_token":0, "preset":"default"|null, "sources":[paths...],
 *               "n_files":N, "split_mode":"file"|"blank-line"|"separator"|"preset",
 *               "separator":"%" (separator mode only), "seed":S, "val_fraction":F,
 *               "documents":N, "train":{"documents":N,"tokens":N},
 *               "val":{"documents":N,"tokens":N},
 *               "skipped":{"hidden":N,"binary":N,"other":N}, "created_by":"joule X.Y.Z"}
 *   Token counts include the EOD tokens. Every file is written atomically
 *   (temporary name, fsync, rename); meta.json is written last, so its presence
 *   means the other four files are complete.
 *
 * Documents and the split
 *   Documents keep their source order. Document d (its ordinal among non-empty
 *   documents) goes to validation when
 *       (joule_mix64(seed, d) >> 11) * 2^-53 < val_fraction
 *   and to training otherwise, with one correction that keeps both splits usable:
 *   if no document went to training, the last document (d = N-1) goes there; else if
 *   N >= 2 and none went to validation, the last document goes to validation.
 * ===========================================================================
 */
#ifndef JOULE_DATA_H
#define JOULE_DATA_H

#include <stdint.h>

#include "joule/common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define JOULE_DATA_FORMAT_VERSION 1u
#define JOULE_DATA_HEADER_BYTES 64u
#define JOULE_EOD_TOKEN 0

/* ---------------------------------------------------------------------------
 * Preparing a corpus
 * ------------------------------------------------------------------------- */

typedef enum {
    JOULE_SPLIT_FILE = 0,       /* each input file is one document */
    JOULE_SPLIT_BLANK_LINE = 1, /* paragraphs separated by one or more blank lines
                                   (lines of only spaces, tabs or CR count as blank) */
    JOULE_SPLIT_SEPARATOR = 2   /* documents separated by lines equal to `separator`
                                   (a trailing CR is ignored), e.g. "%" for fortunes */
} joule_split_mode;

typedef struct {
    /* Either inputs (files or folders) or preset, not both. Folders are read
     * recursively in byte-wise sorted name order; hidden entries (".name") inside
     * folders are skipped, as are files with a NUL byte in their first 8 KiB
     * (binary), symlinked folders and special files. Both are counted in the report. */
    const char *const *inputs;
    int n_inputs;
    /* "default" (GCIDE dictionary articles + fortunes), "gcide" or "fortunes". */
    const char *preset;
    /* Where the Debian packages put the preset files; NULL means "/usr/share". */
    const char *preset_root;

    const char *out_dir;        /* created if missing */
    double val_fraction;        /* in (0, 1); fraction of documents for validation */
    uint64_t seed;              /* seeds the train/validation split */
    joule_split_mode split;     /* for user inputs; presets split their own way */
    const char *separator;      /* JOULE_SPLIT_SEPARATOR only: the separator line */

    /* Optional: progress in input bytes (roughly every MiB and once at the end), and
     * one-line warnings about skipped inputs. Both get ctx. */
    void (*progress)(void *ctx, uint64_t bytes_done, uint64_t bytes_total);
    void (*warn)(void *ctx, const char *message);
    void *ctx;
} joule_prepare_opts;

typedef struct {
    uint64_t n_files;          /* files read */
    uint64_t skipped_hidden;   /* hidden entries skipped inside folders */
    uint64_t skipped_binary;   /* files skipped because they look binary */
    uint64_t skipped_other;    /* symlinked folders and special files skipped */
    uint64_t input_bytes;      /* bytes of source text read */
    uint64_t n_docs;           /* train_docs + val_docs */
    uint64_t train_docs, train_tokens; /* tokens include one EOD per document */
    uint64_t val_docs, val_tokens;
    double seconds;
} joule_prepare_report;

/* Defaults: val_fraction 0.05, seed 1, split JOULE_SPLIT_FILE, everything else zero. */
void joule_prepare_opts_init(joule_prepare_opts *opts);

/* Set opts->split (and opts->separator, pointing into `spec`) from a command-line
 * style string: "file", "blank-line" or "sep:LINE" (e.g. "sep:%"). JOULE_ERR_ARG if
 * the string is none of these. */
int joule_prepare_parse_split(joule_prepare_opts *opts, const char *spec);

/* Read the inputs or preset and write train/val token files and meta.json into
 * opts->out_dir (see FILE FORMATS). Streams: memory use is independent of the corpus
 * size except for 16 bytes per document for the index. report may be NULL.
 * Missing preset files fail with JOULE_ERR_IO naming the path and the package. */
int joule_data_prepare(const joule_prepare_opts *opts, joule_prepare_report *report);

/* ---------------------------------------------------------------------------
 * Writing token files (used by joule_data_prepare; usable for any byte corpus)
 * ------------------------------------------------------------------------- */

typedef struct joule_token_writer joule_token_writer;

/* Start writing <stem>.bin and <stem>.idx (temporary names until commit). */
int joule_token_writer_open(joule_token_writer **w, const char *bin_path);
/* Documents: begin, any number of appends (bytes must not contain 0x00), end.
 * end appends the EOD token. */
int joule_token_writer_begin_doc(joule_token_writer *w, uint64_t doc_id);
int joule_token_writer_append(joule_token_writer *w, const uint8_t *bytes, size_t len);
int joule_token_writer_end_doc(joule_token_writer *w);
/* Move the last complete document of `from` to the end of `to`. */
int joule_token_writer_move_last_doc(joule_token_writer *from, joule_token_writer *to);
uint64_t joule_token_writer_tokens(const joule_token_writer *w);
uint64_t joule_token_writer_docs(const joule_token_writer *w);
/* Finish both files (fsync, rename) and free the writer, also on failure. */
int joule_token_writer_commit(joule_token_writer *w);
/* Discard the temporary files and free the writer. NULL is ignored. */
void joule_token_writer_abort(joule_token_writer *w);

/* ---------------------------------------------------------------------------
 * Reading token files
 * ------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *tok;          /* n_tokens tokens */
    uint64_t n_tokens;
    uint64_t n_docs;
    const uint64_t *doc_offsets; /* n_docs + 1 entries */
    const uint64_t *doc_ids;     /* n_docs entries */
    /* private */
    char *path;
    joule_mmap bin_map, idx_map;
} joule_tokens;

/* Memory-map bin_path (must end in ".bin") and the .idx beside it, and validate both.
 * JOULE_ERR_ARG if a file is missing or not a file, JOULE_ERR_IO if it cannot be read,
 * JOULE_ERR_FORMAT if invalid. */
int joule_tokens_open(joule_tokens *t, const char *bin_path);
void joule_tokens_close(joule_tokens *t);

/* Index of the document containing token position pos (< n_tokens), or UINT64_MAX if
 * pos is out of range. Binary search over doc_offsets. */
uint64_t joule_tokens_doc_at(const joule_tokens *t, uint64_t pos);

/* ---------------------------------------------------------------------------
 * Batches
 * ------------------------------------------------------------------------- */

/* B windows of T+1 consecutive tokens starting at uniform positions in
 * [0, n_tokens - T - 1], drawn from joule_rng seeded with
 * joule_mix64(joule_mix64(seed, step), micro): the batch depends only on
 * (seed, step, micro), so a resumed run sees the same batches. Row b of inputs and
 * targets (B*T each, row-major) is window[0..T-1] and window[1..T].
 * JOULE_ERR_ARG if B or T < 1 or n_tokens < T + 1. */
int joule_batch_sample(const joule_tokens *t, uint64_t seed, uint64_t step, int micro, int B, int T,
                       int32_t *inputs, int32_t *targets);
/* The same with window starts drawn uniformly among the multiples of `align` in
 * [0, n_tokens - T - 1] (chunk-aligned windows for RETRO), written to starts[B] when
 * starts != NULL (inputs and targets NULL: the starts only). align 1 draws exactly
 * joule_batch_sample's windows. */
int joule_batch_sample_aligned(const joule_tokens *t, uint64_t seed, uint64_t step, int micro, int B, int T,
                               int align, int32_t *inputs, int32_t *targets, uint64_t *starts);

/* Inputs and targets of B windows at the given starts (each start + T + 1 <= n_tokens). */
int joule_batch_windows(const joule_tokens *t, const uint64_t *starts, int B, int T, int32_t *inputs,
                        int32_t *targets);

/* Number of consecutive non-overlapping evaluation windows: window w has inputs
 * tok[w*T .. w*T+T-1] and targets tok[w*T+1 .. w*T+T], for every w with
 * w*T + T + 1 <= n_tokens. 0 if T < 1. */
uint64_t joule_eval_windows(const joule_tokens *t, int T);
/* Fill inputs and targets (T each) with window w; requires w < joule_eval_windows(t, T). */
void joule_eval_window(const joule_tokens *t, int T, uint64_t w, int32_t *inputs, int32_t *targets);

#ifdef __cplusplus
}
#endif
#endif
