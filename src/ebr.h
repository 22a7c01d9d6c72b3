/*
 * ebr — epoch-based memory reclamation (internal).
 *
 * Lock-free readers dereference pointers that writers may unlink at any
 * moment; EBR tells the writer when nobody can still hold one.  A reader
 * brackets its accesses with xs__ebr_enter / xs__ebr_leave (a "guard"); a
 * writer that unlinks an object hands it to xs__ebr_retire, and the object's
 * free function runs only after every guard that was open at that moment has
 * closed.
 *
 * One process-wide domain: a global epoch and one record per thread.  Entering
 * a guard reads the global epoch and publishes it in the thread's own record
 * (a store to a cache line no other thread writes); leaving publishes
 * "quiescent".  Readers never write shared memory.  The store-load ordering
 * that entering needs is paid by the reclaimer instead of the reader where
 * Linux offers membarrier(PRIVATE_EXPEDITED): the reader issues only a
 * compiler barrier and the reclaimer forces a full barrier on every running
 * thread of the process.  Elsewhere (and in the portable build) the reader
 * issues a seq_cst fence.  The protocol is the classic three-epoch one: the
 * global epoch advances from E to E+1 only when every thread inside a guard
 * has announced E, and an object sealed with epoch E is freed once the global
 * epoch reaches E+2.
 *
 * Retired objects are kept per owner (an xs__ebr_list, one per map), so an
 * owner can free everything it retired when it is destroyed, with its own
 * allocator still valid.  Guards nest; a guard held for long delays
 * reclamation everywhere (never correctness).
 */
#ifndef XSYNC_EBR_H
#define XSYNC_EBR_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <xsync/error.h>

/* A full fence.  ThreadSanitizer does not model fences (gcc refuses them
 * under -Werror): there a seq_cst read-modify-write of a thread-private
 * word stands in, which is a full barrier on the hardware it runs on. */
#if defined(__SANITIZE_THREAD__)
#define XS__EBR_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define XS__EBR_TSAN 1
#endif
#endif
#ifdef XS__EBR_TSAN
extern _Thread_local _Atomic int xs__ebr_fence_word;
#define XS__EBR_FENCE() \
    ((void)atomic_fetch_add_explicit(&xs__ebr_fence_word, 0, memory_order_seq_cst))
#else
#define XS__EBR_FENCE() atomic_thread_fence(memory_order_seq_cst)
#endif

/* Retirements between two reclaims: each costs a process-wide barrier, so
 * it is amortised over this many objects. */
#define XS__EBR_RECLAIM_EVERY 128

/* Embedded in every retirable object. */
typedef struct xs__ebr_node {
    struct xs__ebr_node *next;
    void (*free_fn)(struct xs__ebr_node *node, void *ctx);
} xs__ebr_node;

/* A batch of retired nodes sealed with an epoch. */
typedef struct xs__ebr_batch {
    xs__ebr_node *head, *tail;
    uint64_t epoch;
} xs__ebr_batch;

/* Retired objects of one owner.  Zero-initialise, then set ctx. */
typedef struct xs__ebr_list {
    _Atomic(xs__ebr_node *) unsealed;  /* Treiber stack of fresh retirements */
    _Atomic uint32_t since;            /* retirements since the last reclaim */
    _Atomic int busy;                  /* one reclaimer at a time (trylock) */
    xs__ebr_batch sealed[3];           /* under busy: at most 3 live epochs */
    void *ctx;                         /* passed to every free_fn */
} xs__ebr_list;

/* Per-thread record (internal; visible for the inline fast path).  128
 * bytes, 128-aligned: every guard writes it, and a core that reads one line
 * of an aligned 128-byte pair tends to pull in the other, so two records in
 * one pair would bounce between their threads' cores. */
typedef struct xs__ebr_rec {
    _Atomic uint64_t epoch;   /* 0: quiescent; else 2*E+1 while in a guard */
    uint32_t nest;            /* guard depth, touched only by the owner */
    _Atomic int used;         /* owned by a live thread */
    struct xs__ebr_rec *next; /* immutable once published */
    char pad_[128 - 8 - 4 - 4 - sizeof(void *)];
} xs__ebr_rec;

extern _Atomic uint64_t xs__ebr_global;
extern bool xs__ebr_reader_fence;
extern _Thread_local xs__ebr_rec *xs__ebr_self __attribute__((tls_model("initial-exec")));

/* Registers the calling thread; NULL if out of memory. */
xs__ebr_rec *xs__ebr_register(void);

/* Announces the thread inside a guard (the outermost enter, nest now 1). */
static inline void xs__ebr_publish(xs__ebr_rec *r)
{
    uint64_t e = atomic_load_explicit(&xs__ebr_global, memory_order_relaxed);
    /* Release: a reclaimer that reads this value also sees everything this
     * thread did before (its earlier guards' accesses). */
    atomic_store_explicit(&r->epoch, 2 * e + 1, memory_order_release);
    /* The announcement must be visible before any pointer load that
     * follows; see the file comment for who pays for the barrier. */
    if (xs__ebr_reader_fence)
        XS__EBR_FENCE();
    else
        atomic_signal_fence(memory_order_seq_cst);
}

/*
 * Opens a guard (nestable).  Until the matching leave, nothing retired after
 * this point is freed.  Returns 0, or XS_ENOMEM when the thread's record
 * cannot be allocated (its first guard only).
 */
static inline int xs__ebr_enter(void)
{
    xs__ebr_rec *r = xs__ebr_self;
    if (__builtin_expect(r == NULL, 0) && (r = xs__ebr_register()) == NULL)
        return XS_ENOMEM;
    if (r->nest++ == 0)
        xs__ebr_publish(r);
    return 0;
}

/* Closes a guard.  Only after a successful xs__ebr_enter. */
static inline void xs__ebr_leave(void)
{
    xs__ebr_rec *r = xs__ebr_self;
    if (--r->nest == 0)
        /* Release: every access made inside the guard happens before the
         * reclaimer that sees quiescence frees anything. */
        atomic_store_explicit(&r->epoch, 0, memory_order_release);
}

/* The calling thread's guard depth (0: not in a guard). */
static inline uint32_t xs__ebr_depth(void)
{
    xs__ebr_rec *r = xs__ebr_self;
    return r ? r->nest : 0;
}

/*
 * Hands `node` to the list: free_fn(node, list->ctx) runs after every guard
 * open now has closed, from some later xs__ebr_reclaim (possibly in another
 * thread) or xs__ebr_drain.  The object must already be unreachable for new
 * readers.  Lock-free, never runs a free function itself, so it may be
 * called under any lock.  Returns true when enough has been retired that the
 * caller should call xs__ebr_reclaim once it holds no lock.
 */
bool xs__ebr_retire(xs__ebr_list *l, xs__ebr_node *node,
                    void (*free_fn)(xs__ebr_node *node, void *ctx));

/* Whether a reclaim is due (cheap: one relaxed load). */
static inline bool xs__ebr_due(xs__ebr_list *l)
{
    return atomic_load_explicit(&l->since, memory_order_relaxed) >= XS__EBR_RECLAIM_EVERY;
}

/*
 * Tries to advance the global epoch and frees the list's expired objects,
 * running their free functions in the caller (which must hold no lock a free
 * function might take).  Never blocks: returns at once if another thread is
 * reclaiming this list.
 * Returns true when nothing retired to this list is left waiting.
 */
bool xs__ebr_reclaim(xs__ebr_list *l);

/*
 * Frees everything the list holds right away, without waiting for guards:
 * only when no thread can still reach any of it (owner destruction).
 */
void xs__ebr_drain(xs__ebr_list *l);

#endif
