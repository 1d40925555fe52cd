/* How netspec's parallel regions start and end their work (OpenMP teams).
 *
 * Every parallel loop in the compiled backend ends the same way: the loop carries no barrier
 * of its own (nowait, or no worksharing construct at all) and each thread's last statement is
 * ns_team_done. Light passes over memory (batchnorm, ReLU, pooling) also hand out their work
 * in chunks claimed from a shared counter (ns_claim) instead of a static split: whichever
 * thread is running takes the next chunk, so a thread that is slow to start (a sleeping
 * OpenMP worker takes 70-125 us to wake on the 2-core VMs this is measured on) or slowed by a
 * busy neighbour process simply takes fewer. Which thread computes which chunk never changes
 * a result: every chunk writes its own elements (or its own slot of per-block partial sums,
 * added later in a fixed order).
 */
#ifndef NETSPEC_TEAM_H
#define NETSPEC_TEAM_H

#include <stddef.h>
#include <sched.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* The last statement of a thread's work in a parallel region (the work loop ends with nowait).
 * Every thread counts itself in *done; the master thread (0) then waits, spinning and after
 * NS_JOIN_SPINS spins yielding its core, until all have, so that it reaches the region's closing
 * barrier last. Why: with OMP_WAIT_POLICY=PASSIVE a thread that reaches a barrier before the
 * others sleeps, and waking it cost 70-125 us on the 2-core VMs this is measured on; a sleeping
 * worker costs the master nothing (the last to arrive only posts the wake-up), a sleeping master
 * costs the whole wake-up. The yield keeps a busy neighbour process from starving the worker
 * the master waits for. */
#ifndef NS_JOIN_SPINS
#define NS_JOIN_SPINS 5000   /* about 0.1 ms of PAUSE on Zen 4: as long as a wake-up takes */
#endif
static inline void ns_team_done(int *done) {
#ifdef _OPENMP
    const int n = omp_get_num_threads();
    __atomic_add_fetch(done, 1, __ATOMIC_ACQ_REL);
    if (n == 1 || omp_get_thread_num() != 0) return;
    for (long spins = 0; __atomic_load_n(done, __ATOMIC_ACQUIRE) < n; spins++) {
        if (spins < NS_JOIN_SPINS) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        } else {
            sched_yield();
        }
    }
#else
    (void)done;
#endif
}

/* The first item of the next chunk of items [start, start + chunk) out of [0, total), from the
 * shared counter *next (0 before the region); -1 once all are taken. (The caller clips the end
 * to total; it is not returned through a pointer, which OpenMP code generators would not see
 * as a write to a thread's private variable.) */
static inline ptrdiff_t ns_claim(ptrdiff_t *next, ptrdiff_t chunk, ptrdiff_t total) {
    const ptrdiff_t start = __atomic_fetch_add(next, chunk, __ATOMIC_RELAXED);
    return start < total ? start : -1;
}

/* Items per chunk for total items of work_per_item elements each: about 16 chunks per thread,
 * none smaller than about 16K elements (the claim and the cache lines it shares cost ~0.1 us). */
static inline ptrdiff_t ns_chunk(ptrdiff_t total, ptrdiff_t work_per_item, int nthreads) {
    ptrdiff_t c = total / (16 * (ptrdiff_t)(nthreads > 0 ? nthreads : 1));
    const ptrdiff_t min_items = work_per_item > 0 ? (16384 + work_per_item - 1) / work_per_item : 1;
    if (c < min_items) c = min_items;
    return c > 0 ? c : 1;
}

#endif
