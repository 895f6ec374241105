/* tests/mpi_dist.c — core/dist.c's collectives on 2+ ranks (run by ctest under mpirun).
 * A plain program: Check forks each test, and a fork after MPI_Init is not safe. Each
 * rank checks what it received; rank 0 prints the verdict; any failure aborts the job. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "joule/common.h"
#include "joule/dist.h"

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            char m[256];                                                                 \
            snprintf(m, sizeof m, "%s:%d: check failed: %s", __FILE__, __LINE__, #cond); \
            joule_dist_abort(1, m);                                                      \
        }                                                                                \
    } while (0)

static void test_allreduce(int rank, int size) {
    float f[1000];
    double d[3] = {rank, 1.0, -rank};
    int64_t i[2] = {rank, (int64_t)1 << 40};
    for (int k = 0; k < 1000; k++) f[k] = (float)(k + rank);
    CHECK(joule_dist_allreduce_sum_f32(f, 1000) == JOULE_OK);
    CHECK(joule_dist_allreduce_sum_f64(d, 3) == JOULE_OK);
    CHECK(joule_dist_allreduce_sum_i64(i, 2) == JOULE_OK);
    int rsum = size * (size - 1) / 2;
    for (int k = 0; k < 1000; k++) CHECK(f[k] == (float)(size * k + rsum));
    CHECK(d[0] == rsum && d[1] == size && d[2] == -rsum);
    CHECK(i[0] == rsum && i[1] == (int64_t)size << 40);
    double mx = rank;
    CHECK(joule_dist_allreduce_max_f64(&mx, 1) == JOULE_OK && mx == size - 1);
    /* the non-blocking form gives the same sums */
    float g[64];
    for (int k = 0; k < 64; k++) g[k] = (float)(rank * 64 + k);
    joule_dist_request r;
    CHECK(joule_dist_iallreduce_sum_f32(g, 64, &r) == JOULE_OK);
    CHECK(joule_dist_wait(&r) == JOULE_OK);
    for (int k = 0; k < 64; k++) CHECK(g[k] == (float)(64 * rsum + size * k));
}

/* Rank r sends r+1+dest floats to each dest, valued 1000*r + dest. */
static void test_alltoallv(int rank, int size) {
    size_t sc[64], sd[64], rc[64], rd[64], st = 0, rt = 0;
    int sn[64], rn[64];
    for (int p = 0; p < size; p++) {
        sc[p] = (size_t)(rank + 1 + p), sd[p] = st, st += sc[p];
        sn[p] = (int)sc[p];
    }
    CHECK(joule_dist_alltoall_int(sn, rn, 1) == JOULE_OK);
    for (int p = 0; p < size; p++) {
        CHECK(rn[p] == p + 1 + rank);
        rc[p] = (size_t)rn[p], rd[p] = rt, rt += rc[p];
    }
    float *send = malloc(st * sizeof *send), *recv = malloc(rt * sizeof *recv);
    CHECK(send && recv);
    for (int p = 0; p < size; p++)
        for (size_t k = 0; k < sc[p]; k++) send[sd[p] + k] = (float)(1000 * rank + p);
    CHECK(joule_dist_alltoallv_f32(send, sc, sd, recv, rc, rd) == JOULE_OK);
    for (int p = 0; p < size; p++)
        for (size_t k = 0; k < rc[p]; k++) CHECK(recv[rd[p] + k] == (float)(1000 * p + rank));
    free(send);
    free(recv);
}

static void test_gather_bcast(int rank, int size) {
    int mine = 7 * rank, all[64];
    CHECK(joule_dist_allgather(&mine, all, sizeof mine) == JOULE_OK);
    for (int p = 0; p < size; p++) CHECK(all[p] == 7 * p);
    /* rank r contributes r+1 bytes of value r */
    size_t counts[64], displs[64], at = 0;
    for (int p = 0; p < size; p++) counts[p] = (size_t)p + 1, displs[p] = at, at += counts[p];
    unsigned char send[64], recv[4096];
    memset(send, rank, sizeof send);
    CHECK(joule_dist_allgatherv(send, (size_t)rank + 1, recv, counts, displs) == JOULE_OK);
    for (int p = 0; p < size; p++)
        for (size_t k = 0; k < counts[p]; k++) CHECK(recv[displs[p] + k] == p);
    char msg[32] = {0};
    if (rank == 0) strcpy(msg, "from rank 0");
    CHECK(joule_dist_bcast(msg, sizeof msg, 0) == JOULE_OK && strcmp(msg, "from rank 0") == 0);
    CHECK(joule_dist_barrier() == JOULE_OK);
}

int main(int argc, char **argv) {
    CHECK(joule_dist_init(&argc, &argv) == JOULE_OK);
    int rank = joule_dist_rank(), size = joule_dist_size();
    CHECK(joule_dist_active() && size >= 2 && size <= 64);
    test_allreduce(rank, size);
    test_alltoallv(rank, size);
    test_gather_bcast(rank, size);
    const joule_dist_stats *s = joule_dist_get_stats();
    CHECK(s->calls[JOULE_DIST_ALLREDUCE] == 5 && s->bytes[JOULE_DIST_ALLTOALL] > 0);
    if (rank == 0) printf("mpi_dist: %d ranks, collectives ok\n", size);
    joule_dist_finalize();
    return 0;
}
