/* faiss_smoke.c — smoke test of the installed FAISS C API (libfaiss_c from scripts/setup.sh).
 *
 * Plain C against the faiss/c_api headers only: flat and IVF indexes (the latter via the
 * index factory, with training), self-match searches on both the per-query and the BLAS
 * (sgemm, many queries) paths, a write/read round trip through a file, and the error paths
 * (faiss_get_last_error after failing calls). Check forks every test; nothing FAISS or
 * OpenMP runs in main(), so each child starts its own OpenMP thread pool.
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>

enum { D = 32, N = 1000, K = 5 };

/* Deterministic data: xorshift64*, uniform in [0, 1). */
static float *random_vectors(size_t n, uint64_t seed) {
    float *x = malloc(n * D * sizeof *x);
    ck_assert_ptr_nonnull(x);
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n * D; i++) {
        s ^= s >> 12; s ^= s << 25; s ^= s >> 27;
        x[i] = (float)((s * 0x2545F4914F6CDD1Dull) >> 40) / (float)(1u << 24);
    }
    return x;
}

static const char *last_error(void) {
    const char *e = faiss_get_last_error();
    return e ? e : "(null)";
}

#define FAISS_OK(call)                                                                  \
    do {                                                                                \
        int rc_ = (call);                                                               \
        ck_assert_msg(rc_ == 0, "%s failed (%d): %s", #call, rc_, last_error());        \
    } while (0)

/* Search all N stored vectors (one batch: the BLAS path for flat L2) and check each one's
 * nearest neighbour is itself at distance ~0, with distances sorted. */
static void check_self_match(const FaissIndex *idx, const float *x, float *dist, idx_t *lab) {
    FAISS_OK(faiss_Index_search(idx, N, x, K, dist, lab));
    for (idx_t i = 0; i < N; i++) {
        ck_assert_msg(lab[i * K] == i, "query %ld: nearest is %ld, not itself", (long)i,
                      (long)lab[i * K]);
        ck_assert_msg(fabsf(dist[i * K]) < 1e-3f, "query %ld: self distance %g", (long)i,
                      (double)dist[i * K]);
        for (int j = 1; j < K; j++) {
            ck_assert_msg(lab[i * K + j] >= 0 && lab[i * K + j] < N, "query %ld: label %ld",
                          (long)i, (long)lab[i * K + j]);
            ck_assert(dist[i * K + j] >= dist[i * K + j - 1]);
        }
    }
}

static FaissIndex *make_ivf(const float *x) {
    FaissIndex *idx = NULL;
    FAISS_OK(faiss_index_factory(&idx, D, "IVF4,Flat", METRIC_L2));
    ck_assert_ptr_nonnull(idx);
    FAISS_OK(faiss_Index_train(idx, N, x));
    ck_assert_int_eq(faiss_Index_is_trained(idx), 1);
    FAISS_OK(faiss_Index_add(idx, N, x));
    FaissIndexIVF *ivf = faiss_IndexIVF_cast(idx);
    ck_assert_ptr_nonnull(ivf);
    ck_assert_uint_eq(faiss_IndexIVF_nlist(ivf), 4);
    faiss_IndexIVF_set_nprobe(ivf, 4); /* all lists: exhaustive */
    return idx;
}

START_TEST(test_flat_l2) {
    float *x = random_vectors(N, 1);
    FaissIndexFlatL2 *idx = NULL;
    FAISS_OK(faiss_IndexFlatL2_new_with(&idx, D));
    ck_assert_ptr_nonnull(idx);
    ck_assert_int_eq(faiss_Index_d(idx), D);
    ck_assert_int_eq(faiss_Index_is_trained(idx), 1);
    FAISS_OK(faiss_Index_add(idx, N, x));
    ck_assert_int_eq(faiss_Index_ntotal(idx), N);

    float *dist = malloc(sizeof(float) * N * K);
    idx_t *lab = malloc(sizeof(idx_t) * N * K);
    ck_assert(dist && lab);
    check_self_match(idx, x, dist, lab); /* BLAS path: N >= 20 queries */

    /* single queries take the non-BLAS path; must agree with the batch */
    for (idx_t q = 0; q < N; q += 97) {
        float d1[K];
        idx_t l1[K];
        FAISS_OK(faiss_Index_search(idx, 1, x + q * D, K, d1, l1));
        ck_assert_int_eq(l1[0], q);
        ck_assert_float_le(fabsf(d1[0]), 1e-5f);
        ck_assert_float_eq_tol(d1[K - 1], dist[q * K + K - 1], 1e-3f);
    }

    /* a fresh query: the reported distance is the true squared L2 distance */
    float *y = random_vectors(1, 99);
    float dy;
    idx_t ly;
    FAISS_OK(faiss_Index_search(idx, 1, y, 1, &dy, &ly));
    ck_assert(ly >= 0 && ly < N);
    float ref = 0;
    for (int j = 0; j < D; j++) {
        float t = y[j] - x[ly * D + j];
        ref += t * t;
    }
    ck_assert_float_eq_tol(dy, ref, 1e-4f);

    faiss_Index_free(idx);
    free(y); free(dist); free(lab); free(x);
}
END_TEST

START_TEST(test_ivf_factory) {
    float *x = random_vectors(N, 2);
    FaissIndex *idx = NULL;
    FAISS_OK(faiss_index_factory(&idx, D, "IVF4,Flat", METRIC_L2));
    ck_assert_ptr_nonnull(idx);
    ck_assert_int_eq(faiss_Index_is_trained(idx), 0);

    /* adding to an untrained IVF index is an error reported through the C API */
    int rc = faiss_Index_add(idx, N, x);
    ck_assert_int_ne(rc, 0);
    ck_assert_ptr_nonnull(faiss_get_last_error());
    ck_assert_msg(strlen(faiss_get_last_error()) > 0, "empty error message");
    ck_assert_int_eq(faiss_Index_ntotal(idx), 0);
    faiss_Index_free(idx);

    idx = make_ivf(x);
    ck_assert_int_eq(faiss_Index_ntotal(idx), N);
    float *dist = malloc(sizeof(float) * N * K);
    idx_t *lab = malloc(sizeof(idx_t) * N * K);
    ck_assert(dist && lab);
    check_self_match(idx, x, dist, lab);

    /* nprobe = nlist: same nearest neighbours as the flat index */
    FaissIndex *flat = NULL;
    FAISS_OK(faiss_index_factory(&flat, D, "Flat", METRIC_L2));
    FAISS_OK(faiss_Index_add(flat, N, x));
    float *fdist = malloc(sizeof(float) * N * K);
    idx_t *flab = malloc(sizeof(idx_t) * N * K);
    ck_assert(fdist && flab);
    FAISS_OK(faiss_Index_search(flat, N, x, K, fdist, flab));
    for (idx_t i = 0; i < N; i++) {
        ck_assert_int_eq(lab[i * K], flab[i * K]);
        ck_assert_float_eq_tol(dist[i * K + 1], fdist[i * K + 1], 1e-3f);
    }

    faiss_Index_free(flat);
    faiss_Index_free(idx);
    free(fdist); free(flab); free(dist); free(lab); free(x);
}
END_TEST

START_TEST(test_write_read) {
    float *x = random_vectors(N, 3);
    char path[] = "/tmp/joule_faiss_smoke.XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);

    FaissIndex *idx = make_ivf(x);
    FAISS_OK(faiss_write_index_fname(idx, path));

    FaissIndex *back = NULL;
    FAISS_OK(faiss_read_index_fname(path, 0, &back));
    unlink(path);
    ck_assert_ptr_nonnull(back);
    ck_assert_int_eq(faiss_Index_d(back), D);
    ck_assert_int_eq(faiss_Index_ntotal(back), N);
    ck_assert_int_eq(faiss_Index_is_trained(back), 1);
    FaissIndexIVF *ivf = faiss_IndexIVF_cast(back);
    ck_assert_ptr_nonnull(ivf);
    ck_assert_uint_eq(faiss_IndexIVF_nlist(ivf), 4);
    ck_assert_uint_eq(faiss_IndexIVF_nprobe(ivf), 4);

    float *d1 = malloc(sizeof(float) * N * K), *d2 = malloc(sizeof(float) * N * K);
    idx_t *l1 = malloc(sizeof(idx_t) * N * K), *l2 = malloc(sizeof(idx_t) * N * K);
    ck_assert(d1 && d2 && l1 && l2);
    FAISS_OK(faiss_Index_search(idx, N, x, K, d1, l1));
    FAISS_OK(faiss_Index_search(back, N, x, K, d2, l2));
    for (size_t i = 0; i < (size_t)N * K; i++) {
        ck_assert_int_eq(l1[i], l2[i]);
        ck_assert_float_eq_tol(d1[i], d2[i], 1e-6f);
    }
    check_self_match(back, x, d2, l2);

    faiss_Index_free(back);
    faiss_Index_free(idx);
    free(d1); free(d2); free(l1); free(l2); free(x);
}
END_TEST

START_TEST(test_errors) {
    /* reading a file that does not exist */
    const char *missing = "/nonexistent-joule-dir/no-such-index.faiss";
    FaissIndex *idx = NULL;
    int rc = faiss_read_index_fname(missing, 0, &idx);
    ck_assert_int_ne(rc, 0);
    ck_assert_ptr_null(idx);
    const char *err = faiss_get_last_error();
    ck_assert_ptr_nonnull(err);
    ck_assert_msg(strstr(err, missing) != NULL, "error does not name the file: %s", err);

    /* reading a file that is not an index */
    char path[] = "/tmp/joule_faiss_smoke.XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, "not a faiss index, just text\n", 29), 29);
    close(fd);
    rc = faiss_read_index_fname(path, 0, &idx);
    unlink(path);
    ck_assert_int_ne(rc, 0);
    ck_assert_ptr_null(idx);
    ck_assert_msg(strlen(last_error()) > 0, "empty error message");

    /* writing into a directory that does not exist */
    FaissIndexFlatL2 *flat = NULL;
    FAISS_OK(faiss_IndexFlatL2_new_with(&flat, D));
    rc = faiss_write_index_fname(flat, "/nonexistent-joule-dir/out.faiss");
    ck_assert_int_ne(rc, 0);
    ck_assert_msg(strstr(last_error(), "/nonexistent-joule-dir/out.faiss") != NULL,
                  "error does not name the file: %s", last_error());
    faiss_Index_free(flat);

    /* a description the index factory does not know */
    rc = faiss_index_factory(&idx, D, "NoSuchIndexType", METRIC_L2);
    ck_assert_int_ne(rc, 0);
    ck_assert_ptr_null(idx);
    ck_assert_msg(strlen(last_error()) > 0, "empty error message");

    /* a failed call leaves the library usable */
    FAISS_OK(faiss_index_factory(&idx, D, "Flat", METRIC_L2));
    ck_assert_int_eq(faiss_Index_d(idx), D);
    faiss_Index_free(idx);
}
END_TEST

static Suite *faiss_suite(void) {
    Suite *s = suite_create("faiss_c_api");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_flat_l2);
    tcase_add_test(tc, test_ivf_factory);
    tcase_add_test(tc, test_write_read);
    tcase_add_test(tc, test_errors);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(faiss_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
