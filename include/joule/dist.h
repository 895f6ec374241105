/* joule/dist.h — one process, or N processes launched by mpirun (Open MPI).
 *
 * Every MPI call of joule sits behind this header (core/dist.c); the rest of the library
 * calls these functions on its own buffers and stays testable without mpirun.
 *
 * When MPI starts: joule_dist_init() initialises MPI only when the process was launched by
 * mpirun/mpiexec (Open MPI's OMPI_COMM_WORLD_SIZE, or PMI_SIZE/PMIX_RANK in the environment).
 * A plain `joule ...` never touches MPI: rank 0 of 1, every collective is a copy (or
 * nothing), exactly today's behaviour and cost.
 *
 * Errors (FAISS C API convention): collectives return a joule_status with
 * joule_last_error() set. A rank that fails calls joule_dist_abort(), which prints its
 * one-line message prefixed with the rank and ends every rank (MPI_Abort), so a job never
 * hangs waiting on a rank that has gone.
 *
 * Counts are size_t; calls larger than INT_MAX elements are split.
 */
#ifndef JOULE_DIST_H
#define JOULE_DIST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What the collectives have cost so far in this process (wall seconds inside MPI, bytes
 * this rank sent), per kind. Read-only for callers; reset with joule_dist_stats_reset. */
typedef enum {
    JOULE_DIST_ALLREDUCE = 0,
    JOULE_DIST_ALLTOALL = 1,
    JOULE_DIST_BCAST = 2,
    JOULE_DIST_GATHER = 3, /* allgather and gather */
    JOULE_DIST_N_KINDS = 4
} joule_dist_kind;

typedef struct {
    double seconds[JOULE_DIST_N_KINDS];
    double bytes[JOULE_DIST_N_KINDS];
    int64_t calls[JOULE_DIST_N_KINDS];
} joule_dist_stats;

/* Initialise (MPI only under mpirun; idempotent). Returns JOULE_OK, or JOULE_ERR_RUNTIME
 * when MPI_Init fails. Call before any thread pool starts work. */
int joule_dist_init(int *argc, char ***argv);
/* MPI_Finalize when MPI was initialised (idempotent; a no-op otherwise). */
void joule_dist_finalize(void);
/* 1 when running as an MPI job (even of size 1 under `mpirun -np 1`), 0 otherwise. */
int joule_dist_active(void);
int joule_dist_rank(void); /* 0 when not active */
int joule_dist_size(void); /* 1 when not active */
/* This process's node name (MPI_Get_processor_name, or gethostname). */
const char *joule_dist_host(void);

/* End every rank: prints "joule: rank R: <msg>" on stderr (msg sanitised to one line) and
 * calls MPI_Abort(code); without MPI, prints "joule: <msg>" and exits with `code`.
 * msg NULL: prints nothing (the caller has already said why). */
void joule_dist_abort(int code, const char *msg) __attribute__((noreturn));

/* In-place sums over all ranks (MPI_Allreduce, MPI_IN_PLACE). */
int joule_dist_allreduce_sum_f32(float *buf, size_t n);
int joule_dist_allreduce_sum_f64(double *buf, size_t n);
int joule_dist_allreduce_sum_i64(int64_t *buf, size_t n);
/* In-place max (e.g. "did any rank fail", or the slowest rank's time). */
int joule_dist_allreduce_max_f64(double *buf, size_t n);

/* Non-blocking in-place float sum, for buckets overlapped with the backward pass. The
 * request handle is opaque; joule_dist_wait completes it (and records its cost). Without
 * MPI both are no-ops. */
typedef struct { void *req; double t0; size_t bytes; } joule_dist_request;
int joule_dist_iallreduce_sum_f32(float *buf, size_t n, joule_dist_request *r);
int joule_dist_wait(joule_dist_request *r);

/* Broadcast `bytes` bytes of buf from `root`. */
int joule_dist_bcast(void *buf, size_t bytes, int root);
/* Every rank contributes `bytes` bytes; recv holds size*bytes, rank r's at r*bytes. */
int joule_dist_allgather(const void *send, void *recv, size_t bytes);
/* Variable-size allgather of bytes: counts[r] bytes from rank r land at displs[r]. */
int joule_dist_allgatherv(const void *send, size_t send_bytes, void *recv, const size_t *counts,
                          const size_t *displs);
/* MPI_Alltoall of n_per_rank ints (e.g. how many rows go to each rank). */
int joule_dist_alltoall_int(const int *send, int *recv, int n_per_rank);
/* MPI_Alltoallv of floats: send[sdispls[r] .. +scounts[r]) goes to rank r, and rank r's
 * rows land at recv[rdispls[r] .. +rcounts[r]). Counts in floats. */
int joule_dist_alltoallv_f32(const float *send, const size_t *scounts, const size_t *sdispls,
                             float *recv, const size_t *rcounts, const size_t *rdispls);
int joule_dist_barrier(void);

const joule_dist_stats *joule_dist_get_stats(void);
void joule_dist_stats_reset(void);

/* Ranks of this job on this node (Open MPI's OMPI_COMM_WORLD_LOCAL_SIZE; 1 without MPI or
 * when the launcher does not say): commands divide the cores among them by default. */
int joule_dist_local_size(void);

#ifdef __cplusplus
}
#endif
#endif
