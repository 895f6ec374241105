/* core/dist.c — the only file that calls MPI (see joule/dist.h). */
#include "joule/dist.h"

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "joule/common.h"

static int g_active, g_rank, g_size = 1, g_inited_mpi;
static char g_host[256];
static joule_dist_stats g_stats;

/* mpirun/mpiexec (Open MPI, or a PMI launcher such as srun) leaves these; a plain run
 * has none, and then MPI is never initialised (no singleton start-up cost, no orted). */
static int launched_by_mpirun(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}

int joule_dist_init(int *argc, char ***argv) {
    if (g_active) return JOULE_OK;
    if (gethostname(g_host, sizeof g_host - 1) != 0) strcpy(g_host, "localhost");
    if (!launched_by_mpirun()) return JOULE_OK;
    int already = 0;
    MPI_Initialized(&already);
    if (!already) {
        int provided = 0;
        /* FUNNELED: only the main thread calls MPI; OpenMP regions never do. */
        if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
            return joule_fail(JOULE_ERR_RUNTIME, "MPI_Init_thread failed");
        g_inited_mpi = 1;
    }
    /* Errors come back as codes, so a failing call can name itself before aborting. */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    int len = 0;
    char name[MPI_MAX_PROCESSOR_NAME];
    if (MPI_Get_processor_name(name, &len) == MPI_SUCCESS && len > 0) {
        snprintf(g_host, sizeof g_host, "%s", name);
    }
    g_active = 1;
    return JOULE_OK;
}

void joule_dist_finalize(void) {
    if (!g_active) return;
    g_active = 0;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (g_inited_mpi && !finalized) MPI_Finalize();
}

int joule_dist_active(void) { return g_active; }
int joule_dist_rank(void) { return g_active ? g_rank : 0; }
int joule_dist_size(void) { return g_active ? g_size : 1; }
const char *joule_dist_host(void) {
    if (!g_host[0] && gethostname(g_host, sizeof g_host - 1) != 0) strcpy(g_host, "localhost");
    return g_host;
}

void joule_dist_abort(int code, const char *msg) {
    char line[1024];
    joule_sanitize_line(line, sizeof line, msg ? msg : "");
    if (code == 0) code = 1;
    if (!g_active) {
        if (msg) fprintf(stderr, "joule: %s\n", line);
        fflush(NULL);
        exit(code);
    }
    if (msg) fprintf(stderr, "joule: rank %d: %s\n", g_rank, line);
    fflush(NULL);
    MPI_Abort(MPI_COMM_WORLD, code);
    _exit(code); /* MPI_Abort does not return; keep the compiler and the contract honest */
}

static int mpi_failed(int rc, const char *what) {
    char err[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, err, &len) != MPI_SUCCESS) snprintf(err, sizeof err, "code %d", rc);
    return joule_fail(JOULE_ERR_RUNTIME, "%s failed on rank %d: %s", what, g_rank, err);
}

static void account(joule_dist_kind k, double t0, double bytes) {
    g_stats.seconds[k] += MPI_Wtime() - t0;
    g_stats.bytes[k] += bytes;
    g_stats.calls[k]++;
}

/* In place, split into calls of at most INT_MAX elements. */
static int allreduce(void *buf, size_t n, size_t elem, MPI_Datatype t, MPI_Op op, const char *what) {
    if (!g_active || n == 0) return JOULE_OK;
    double t0 = MPI_Wtime();
    char *p = buf;
    for (size_t done = 0; done < n;) {
        size_t c = n - done < (size_t)INT_MAX ? n - done : (size_t)INT_MAX;
        int rc = MPI_Allreduce(MPI_IN_PLACE, p + done * elem, (int)c, t, op, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_failed(rc, what);
        done += c;
    }
    account(JOULE_DIST_ALLREDUCE, t0, (double)n * (double)elem);
    return JOULE_OK;
}

int joule_dist_allreduce_sum_f32(float *buf, size_t n) {
    return allreduce(buf, n, sizeof *buf, MPI_FLOAT, MPI_SUM, "MPI_Allreduce(float sum)");
}
int joule_dist_allreduce_sum_f64(double *buf, size_t n) {
    return allreduce(buf, n, sizeof *buf, MPI_DOUBLE, MPI_SUM, "MPI_Allreduce(double sum)");
}
int joule_dist_allreduce_sum_i64(int64_t *buf, size_t n) {
    return allreduce(buf, n, sizeof *buf, MPI_INT64_T, MPI_SUM, "MPI_Allreduce(int64 sum)");
}
int joule_dist_allreduce_max_f64(double *buf, size_t n) {
    return allreduce(buf, n, sizeof *buf, MPI_DOUBLE, MPI_MAX, "MPI_Allreduce(double max)");
}

int joule_dist_iallreduce_sum_f32(float *buf, size_t n, joule_dist_request *r) {
    memset(r, 0, sizeof *r);
    if (!g_active || n == 0) return JOULE_OK;
    if (n > (size_t)INT_MAX)
        return joule_fail(JOULE_ERR_ARG, "MPI_Iallreduce: bucket of %zu floats is over INT_MAX", n);
    MPI_Request *req = malloc(sizeof *req);
    if (!req) return joule_fail(JOULE_ERR_NOMEM, "MPI_Iallreduce: out of memory");
    r->t0 = MPI_Wtime();
    r->bytes = n * sizeof *buf;
    int rc = MPI_Iallreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, req);
    if (rc != MPI_SUCCESS) {
        free(req);
        return mpi_failed(rc, "MPI_Iallreduce(float sum)");
    }
    r->req = req;
    return JOULE_OK;
}

int joule_dist_wait(joule_dist_request *r) {
    if (!r->req) return JOULE_OK;
    MPI_Request *req = r->req;
    int rc = MPI_Wait(req, MPI_STATUS_IGNORE);
    free(req);
    r->req = NULL;
    if (rc != MPI_SUCCESS) return mpi_failed(rc, "MPI_Wait(Iallreduce)");
    /* seconds from start to completion: an upper bound on the time the reduction cost */
    account(JOULE_DIST_ALLREDUCE, r->t0, (double)r->bytes);
    return JOULE_OK;
}

int joule_dist_bcast(void *buf, size_t bytes, int root) {
    if (!g_active || bytes == 0) return JOULE_OK;
    double t0 = MPI_Wtime();
    char *p = buf;
    for (size_t done = 0; done < bytes;) {
        size_t c = bytes - done < (size_t)INT_MAX ? bytes - done : (size_t)INT_MAX;
        int rc = MPI_Bcast(p + done, (int)c, MPI_BYTE, root, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_failed(rc, "MPI_Bcast");
        done += c;
    }
    account(JOULE_DIST_BCAST, t0, (double)bytes);
    return JOULE_OK;
}

int joule_dist_allgather(const void *send, void *recv, size_t bytes) {
    if (!g_active) {
        if (bytes) memmove(recv, send, bytes);
        return JOULE_OK;
    }
    if (bytes > (size_t)INT_MAX) return joule_fail(JOULE_ERR_ARG, "MPI_Allgather: %zu bytes is over INT_MAX", bytes);
    double t0 = MPI_Wtime();
    int rc = MPI_Allgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) return mpi_failed(rc, "MPI_Allgather");
    account(JOULE_DIST_GATHER, t0, (double)bytes);
    return JOULE_OK;
}

/* size_t counts and offsets as the int arrays MPI takes, each checked. */
static int to_ints(const size_t *v, int *out, int n, const char *what) {
    for (int i = 0; i < n; i++) {
        if (v[i] > (size_t)INT_MAX) return joule_fail(JOULE_ERR_ARG, "%s: %zu is over INT_MAX", what, v[i]);
        out[i] = (int)v[i];
    }
    return JOULE_OK;
}

int joule_dist_allgatherv(const void *send, size_t send_bytes, void *recv, const size_t *counts,
                          const size_t *displs) {
    if (!g_active) {
        if (send_bytes) memmove((char *)recv + displs[0], send, send_bytes);
        return JOULE_OK;
    }
    int *ic = malloc(2 * (size_t)g_size * sizeof *ic);
    if (!ic) return joule_fail(JOULE_ERR_NOMEM, "MPI_Allgatherv: out of memory");
    int st = to_ints(counts, ic, g_size, "MPI_Allgatherv count");
    if (st == JOULE_OK) st = to_ints(displs, ic + g_size, g_size, "MPI_Allgatherv offset");
    if (st == JOULE_OK && send_bytes > (size_t)INT_MAX)
        st = joule_fail(JOULE_ERR_ARG, "MPI_Allgatherv: %zu bytes is over INT_MAX", send_bytes);
    if (st == JOULE_OK) {
        double t0 = MPI_Wtime();
        int rc = MPI_Allgatherv(send, (int)send_bytes, MPI_BYTE, recv, ic, ic + g_size, MPI_BYTE, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) st = mpi_failed(rc, "MPI_Allgatherv");
        else account(JOULE_DIST_GATHER, t0, (double)send_bytes);
    }
    free(ic);
    return st;
}

int joule_dist_alltoall_int(const int *send, int *recv, int n_per_rank) {
    if (!g_active) {
        memmove(recv, send, (size_t)n_per_rank * sizeof *send);
        return JOULE_OK;
    }
    double t0 = MPI_Wtime();
    int rc = MPI_Alltoall(send, n_per_rank, MPI_INT, recv, n_per_rank, MPI_INT, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) return mpi_failed(rc, "MPI_Alltoall");
    account(JOULE_DIST_ALLTOALL, t0, (double)n_per_rank * g_size * sizeof(int));
    return JOULE_OK;
}

int joule_dist_alltoallv_f32(const float *send, const size_t *scounts, const size_t *sdispls,
                             float *recv, const size_t *rcounts, const size_t *rdispls) {
    if (!g_active) {
        if (scounts[0]) memmove(recv + rdispls[0], send + sdispls[0], scounts[0] * sizeof *send);
        return JOULE_OK;
    }
    int *iv = malloc(4 * (size_t)g_size * sizeof *iv);
    if (!iv) return joule_fail(JOULE_ERR_NOMEM, "MPI_Alltoallv: out of memory");
    int n = g_size;
    int st = to_ints(scounts, iv, n, "MPI_Alltoallv send count");
    if (st == JOULE_OK) st = to_ints(sdispls, iv + n, n, "MPI_Alltoallv send offset");
    if (st == JOULE_OK) st = to_ints(rcounts, iv + 2 * n, n, "MPI_Alltoallv receive count");
    if (st == JOULE_OK) st = to_ints(rdispls, iv + 3 * n, n, "MPI_Alltoallv receive offset");
    if (st == JOULE_OK) {
        double sent = 0;
        for (int r = 0; r < n; r++)
            if (r != g_rank) sent += (double)scounts[r] * sizeof(float);
        double t0 = MPI_Wtime();
        int rc = MPI_Alltoallv(send, iv, iv + n, MPI_FLOAT, recv, iv + 2 * n, iv + 3 * n, MPI_FLOAT, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) st = mpi_failed(rc, "MPI_Alltoallv");
        else account(JOULE_DIST_ALLTOALL, t0, sent);
    }
    free(iv);
    return st;
}

int joule_dist_barrier(void) {
    if (!g_active) return JOULE_OK;
    int rc = MPI_Barrier(MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? JOULE_OK : mpi_failed(rc, "MPI_Barrier");
}

const joule_dist_stats *joule_dist_get_stats(void) { return &g_stats; }
void joule_dist_stats_reset(void) { memset(&g_stats, 0, sizeof g_stats); }

int joule_dist_local_size(void) {
    if (!g_active) return 1;
    const char *s = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    int n = s ? atoi(s) : 0;
    return n >= 1 && n <= g_size ? n : 1;
}
