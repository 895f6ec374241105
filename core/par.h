/* Shared by the files of core/; not installed.
 *
 * Whether a loop is worth an OpenMP parallel region. libgomp opens a region even for a
 * team of one, and even under a false if() clause, and its closing barrier then makes a
 * futex system call: about 2 us each here, and a batch-1 decode step opened about 30
 * (3-6% of the step). With two threads, waking the second costs more than a few rows of
 * a norm take. So a small loop, or any loop on one thread, runs outside any region. */
#ifndef JOULE_PAR_H
#define JOULE_PAR_H
#include <omp.h>
#include <stdbool.h>
#include <stdint.h>

/* Below this many elements an elementwise row loop (norm, RoPE, SwiGLU, copy) stays serial. */
#define JOULE_PAR_MIN_WORK 32768u

static inline bool joule_par_worth(uint64_t work, uint64_t min_work) {
    return work >= min_work && omp_get_max_threads() > 1;
}

/* for (int I = 0; I < N; I++) CALL; as one static OpenMP parallel loop when PAR (say
 * joule_par_worth(...)), else with no region at all. */
#define JOULE_PAR_FOR(PAR, I, N, CALL)                                                       \
    do {                                                                                   \
        if (PAR) {                                                                         \
            _Pragma("omp parallel for schedule(static)") for (int I = 0; I < (N); I++) CALL; \
        } else {                                                                           \
            for (int I = 0; I < (N); I++) CALL;                                            \
        }                                                                                  \
    } while (0)
#endif
