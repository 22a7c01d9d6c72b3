/* ebr — epoch-based reclamation: thread records, the global epoch, retire lists. */
#include "ebr.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__linux__) && !defined(XS_PORTABLE)
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>
#define XS_EBR_MEMBARRIER 1
#endif

/* Starts at 1 so that a record value of 0 always means quiescent. */
_Atomic uint64_t xs__ebr_global = 1;
/* Written once under pthread_once, before any thread enters a guard. */
bool xs__ebr_reader_fence = true;
_Thread_local xs__ebr_rec *xs__ebr_self __attribute__((tls_model("initial-exec")));
#ifdef XS__EBR_TSAN
_Thread_local _Atomic int xs__ebr_fence_word;
#endif

/* Every record ever registered; push-only, records are recycled, never freed. */
static _Atomic(xs__ebr_rec *) records;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static pthread_key_t exit_key;
static bool use_membarrier;

static void on_thread_exit(void *p)
{
    xs__ebr_rec *r = p;
    r->nest = 0;
    atomic_store_explicit(&r->epoch, 0, memory_order_release);
    xs__ebr_self = NULL;
    /* Release: the next owner starts after everything this thread did. */
    atomic_store_explicit(&r->used, 0, memory_order_release);
}

/* In a forked child only the forking thread exists: every other record's
 * owner is gone, so none of them may hold the epoch back. */
static void fork_child(void)
{
    for (xs__ebr_rec *r = atomic_load_explicit(&records, memory_order_relaxed); r; r = r->next) {
        if (r == xs__ebr_self)
            continue;
        r->nest = 0;
        atomic_store_explicit(&r->epoch, 0, memory_order_relaxed);
        atomic_store_explicit(&r->used, 0, memory_order_relaxed);
    }
}

static void init(void)
{
    (void)pthread_key_create(&exit_key, on_thread_exit);
    (void)pthread_atfork(NULL, NULL, fork_child);
#ifdef XS_EBR_MEMBARRIER
    long cmds = syscall(__NR_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
    if (cmds > 0 && (cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED) &&
        syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0)
        use_membarrier = true;
#endif
    xs__ebr_reader_fence = !use_membarrier;
}

xs__ebr_rec *xs__ebr_register(void)
{
    pthread_once(&init_once, init);
    xs__ebr_rec *r;
    for (r = atomic_load_explicit(&records, memory_order_acquire); r; r = r->next) {
        int expect = 0;
        /* Acquire: pairs with the previous owner's release on exit. */
        if (atomic_load_explicit(&r->used, memory_order_relaxed) == 0 &&
            atomic_compare_exchange_strong_explicit(&r->used, &expect, 1, memory_order_acquire,
                                                    memory_order_relaxed))
            break;
    }
    if (!r) {
        r = aligned_alloc(128, sizeof *r);
        if (!r)
            return NULL;
        memset(r, 0, sizeof *r);
        atomic_init(&r->epoch, 0);
        atomic_init(&r->used, 1);
        r->next = atomic_load_explicit(&records, memory_order_relaxed);
        /* Release: a reclaimer walking the list sees the record initialised. */
        while (!atomic_compare_exchange_weak_explicit(&records, &r->next, r, memory_order_release,
                                                      memory_order_relaxed))
            ;
    }
    r->nest = 0;
    (void)pthread_setspecific(exit_key, r);
    xs__ebr_self = r;
    return r;
}

/*
 * A full barrier on every running thread of the process (membarrier), or on
 * this one only when readers fence for themselves.  False if the system call
 * failed: then nothing may be concluded from the records.
 */
static bool heavy_barrier(void)
{
#ifdef XS_EBR_MEMBARRIER
    if (use_membarrier)
        return syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0;
#endif
    XS__EBR_FENCE();
    return true;
}

static void free_chain(xs__ebr_node *n, void *ctx)
{
    while (n) {
        xs__ebr_node *next = n->next;
        n->free_fn(n, ctx);
        n = next;
    }
}

static void push_chain(xs__ebr_list *l, xs__ebr_node *head)
{
    xs__ebr_node *tail = head;
    while (tail->next)
        tail = tail->next;
    tail->next = atomic_load_explicit(&l->unsealed, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&l->unsealed, &tail->next, head,
                                                  memory_order_release, memory_order_relaxed))
        ;
}

bool xs__ebr_retire(xs__ebr_list *l, xs__ebr_node *node,
                    void (*free_fn)(xs__ebr_node *node, void *ctx))
{
    node->free_fn = free_fn;
    node->next = atomic_load_explicit(&l->unsealed, memory_order_relaxed);
    /* Release: the reclaimer that takes the stack sees the node (and the
     * unlink that preceded this call) before its barrier. */
    while (!atomic_compare_exchange_weak_explicit(&l->unsealed, &node->next, node,
                                                  memory_order_release, memory_order_relaxed))
        ;
    return atomic_fetch_add_explicit(&l->since, 1, memory_order_relaxed) + 1 >=
           XS__EBR_RECLAIM_EVERY;
}

bool xs__ebr_reclaim(xs__ebr_list *l)
{
    pthread_once(&init_once, init);
    int expect = 0;
    if (!atomic_compare_exchange_strong_explicit(&l->busy, &expect, 1, memory_order_acquire,
                                                 memory_order_relaxed))
        return false;
    atomic_store_explicit(&l->since, 0, memory_order_relaxed);
    /* Acquire: pairs with retire's release push. */
    xs__ebr_node *fresh = atomic_exchange_explicit(&l->unsealed, NULL, memory_order_acquire);

    /* One barrier serves both halves of the protocol: the epoch to advance
     * from is read before it (as a reclaimer must), the seal of the fresh
     * batch after it (so every unlink above precedes the seal's epoch). */
    uint64_t from = atomic_load_explicit(&xs__ebr_global, memory_order_acquire);
    if (!heavy_barrier()) {
        if (fresh)
            push_chain(l, fresh);
        atomic_store_explicit(&l->busy, 0, memory_order_release);
        return false;
    }
    uint64_t seal = atomic_load_explicit(&xs__ebr_global, memory_order_acquire);

    bool all_seen = true;
    for (xs__ebr_rec *r = atomic_load_explicit(&records, memory_order_acquire); r; r = r->next) {
        /* Acquire: a quiescent (or newer) value orders that thread's guarded
         * accesses before the frees below. */
        uint64_t e = atomic_load_explicit(&r->epoch, memory_order_acquire);
        if (e != 0 && e != 2 * from + 1) {
            all_seen = false;
            break;
        }
    }
    if (all_seen)
        atomic_compare_exchange_strong_explicit(&xs__ebr_global, &from, from + 1,
                                                memory_order_acq_rel, memory_order_acquire);
    uint64_t now = atomic_load_explicit(&xs__ebr_global, memory_order_acquire);

    /* Free expired batches first: afterwards at most two epochs remain
     * (seal - 1 and seal), so the fresh batch always finds a slot. */
    for (int i = 0; i < 3; i++) {
        xs__ebr_batch *b = &l->sealed[i];
        if (b->head && b->epoch + 2 <= now) {
            xs__ebr_node *h = b->head;
            b->head = b->tail = NULL;
            free_chain(h, l->ctx);
        }
    }
    if (fresh) {
        xs__ebr_node *tail = fresh;
        while (tail->next)
            tail = tail->next;
        xs__ebr_batch *slot = NULL;
        for (int i = 0; i < 3 && !slot; i++)
            if (l->sealed[i].head && l->sealed[i].epoch == seal)
                slot = &l->sealed[i];
        for (int i = 0; i < 3 && !slot; i++)
            if (!l->sealed[i].head)
                slot = &l->sealed[i];
        if (!slot) /* cannot happen (see above); keep the batch for later */
            push_chain(l, fresh);
        else if (slot->head) {
            slot->tail->next = fresh;
            slot->tail = tail;
        } else {
            slot->head = fresh;
            slot->tail = tail;
            slot->epoch = seal;
        }
    }
    bool empty = atomic_load_explicit(&l->unsealed, memory_order_relaxed) == NULL;
    for (int i = 0; i < 3; i++)
        empty = empty && l->sealed[i].head == NULL;
    atomic_store_explicit(&l->busy, 0, memory_order_release);
    return empty;
}

void xs__ebr_drain(xs__ebr_list *l)
{
    for (;;) {
        xs__ebr_node *n = atomic_exchange_explicit(&l->unsealed, NULL, memory_order_acquire);
        bool any = n != NULL;
        free_chain(n, l->ctx);
        for (int i = 0; i < 3; i++) {
            xs__ebr_node *h = l->sealed[i].head;
            l->sealed[i].head = l->sealed[i].tail = NULL;
            any = any || h != NULL;
            free_chain(h, l->ctx);
        }
        if (!any) /* free functions may have retired more */
            return;
    }
}
