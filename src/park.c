/* park — futex on Linux, hashed condvar buckets in the portable build. */
#include "park.h"

#include "internal.h"

#include <limits.h>
#include <time.h>

#include <xsync/error.h>
#include <xsync/time.h>

#if defined(__linux__) && !defined(XS_PORTABLE)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

int xs__park_sleep(_Atomic uint32_t *addr, uint32_t expected, int64_t deadline)
{
    struct timespec ts, *tsp = NULL;
    if (deadline != XS_FOREVER) {
        if (deadline <= xs_now())
            return XS_EDEADLINE;
        ts.tv_sec = deadline / XS_SEC;
        ts.tv_nsec = deadline % XS_SEC;
        tsp = &ts;
    }
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC timeout. */
    long r = syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, expected,
                     tsp, NULL, FUTEX_BITSET_MATCH_ANY);
    if (r == -1 && errno == ETIMEDOUT)
        return XS_EDEADLINE;
    return 0;
}

void xs__park_wake(_Atomic uint32_t *addr, int n)
{
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, n, NULL, NULL, 0);
}

#else /* portable: buckets of mutex + condvar */
#include <pthread.h>

#define NBUCKETS 64

static struct bucket {
    pthread_mutex_t mu;
    pthread_cond_t cond;
} buckets[NBUCKETS];
static pthread_once_t buckets_once = PTHREAD_ONCE_INIT;

static void buckets_init(void)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    for (int i = 0; i < NBUCKETS; i++) {
        pthread_mutex_init(&buckets[i].mu, NULL);
        pthread_cond_init(&buckets[i].cond, &attr);
    }
    pthread_condattr_destroy(&attr);
}

static struct bucket *bucket_of(const void *addr)
{
    pthread_once(&buckets_once, buckets_init);
    uintptr_t h = (uintptr_t)addr;
    h ^= h >> 17;
    h *= UINT64_C(0x9E3779B97F4A7C15);
    return &buckets[(h >> 32) % NBUCKETS];
}

int xs__park_sleep(_Atomic uint32_t *addr, uint32_t expected, int64_t deadline)
{
    struct bucket *b = bucket_of(addr);
    int r = 0;
    pthread_mutex_lock(&b->mu);
    /* Checked under the bucket lock, which every waker takes after changing
     * the word: a change either happens before this load or its wake comes
     * after we sleep. */
    if (atomic_load_explicit(addr, memory_order_acquire) == expected) {
        if (deadline == XS_FOREVER) {
            pthread_cond_wait(&b->cond, &b->mu);
        } else if (deadline <= xs_now()) {
            r = XS_EDEADLINE;
        } else {
            struct timespec ts = {deadline / XS_SEC, deadline % XS_SEC};
            if (pthread_cond_timedwait(&b->cond, &b->mu, &ts) == ETIMEDOUT)
                r = XS_EDEADLINE;
        }
    }
    pthread_mutex_unlock(&b->mu);
    return r;
}

void xs__park_wake(_Atomic uint32_t *addr, int n)
{
    (void)n; /* buckets are shared: wake everyone, they recheck */
    struct bucket *b = bucket_of(addr);
    pthread_mutex_lock(&b->mu);
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->mu);
}
#endif

/* ---- the hook ---- */

static _Thread_local xs__park_hook *park_hook;

xs__park_hook *xs__park_swap_hook(xs__park_hook *h)
{
    xs__park_hook *old = park_hook;
    park_hook = h;
    return old;
}

int xs__park_wait(_Atomic uint32_t *addr, uint32_t expected, int64_t deadline)
{
    xs__park_hook *h = park_hook;
    if (__builtin_expect(h == NULL, 1))
        return xs__park_sleep(addr, expected, deadline);
    /* A word that already changed needs no sleep and no hand-over. */
    if (atomic_load_explicit(addr, memory_order_relaxed) != expected)
        return 0;
    park_hook = NULL;
    h->block(h);
    int r = xs__park_sleep(addr, expected, deadline);
    h->unblock(h);
    park_hook = h;
    return r;
}

void xs__lock_slow(xs__lock *l)
{
    /* Spin briefly: critical sections here are short. */
    for (int i = 0; i < 64; i++) {
        uint32_t expect = 0;
        if (atomic_load_explicit(&l->word, memory_order_relaxed) == 0 &&
            atomic_compare_exchange_weak_explicit(&l->word, &expect, 1, memory_order_acquire,
                                                  memory_order_relaxed))
            return;
        xs__cpu_relax();
    }
    /* Mark contended (2) and sleep until we take it, keeping it marked 2
     * because other sleepers may remain. */
    while (atomic_exchange_explicit(&l->word, 2, memory_order_acquire) != 0)
        xs__park_wait(&l->word, 2, XS_FOREVER);
}

void xs__unlock_slow(xs__lock *l)
{
    xs__park_wake(&l->word, 1);
}
