/* Clocks and their timer queues: a binary min-heap per clock. */
#include "timer.h"

#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "internal.h"

struct xs_clock {
    bool manual;
    _Atomic int64_t now;           /* manual clocks only */
    const xs_allocator *alloc;
    pthread_mutex_t mu;            /* guards everything below */
    pthread_cond_t wake;           /* system clock: the thread's sleep */
    pthread_cond_t idle;           /* signalled when a callback returns */
    pthread_mutex_t advance_mu;    /* serialises xs_clock_advance */
    xs__timer **heap;              /* the heap array is process-internal: libc */
    size_t len, cap;
    xs__timer *running;            /* callback in progress, or NULL */
    size_t owners;                 /* timers added and not yet deleted as final */
    bool thread_started;
    /* System clock: the time its thread sleeps until (XS_FOREVER: no timer),
     * or INT64_MIN while it is awake and will look at the heap again.  An
     * add wakes it only for a timer earlier than that, so arming timers
     * later than the earliest costs no wake-up. */
    int64_t sleep_until;
};

/* Which clock's callback this thread is running, so a callback that deletes
 * its own timer does not wait for itself. */
static _Thread_local xs_clock *firing_clock;

static xs_clock system_clock = {
    .manual = false,
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .advance_mu = PTHREAD_MUTEX_INITIALIZER,
};
static pthread_once_t system_once = PTHREAD_ONCE_INIT;

static void init_conds(xs_clock *c)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&c->wake, &attr);
    pthread_cond_init(&c->idle, &attr);
    pthread_condattr_destroy(&attr);
}

static void *timer_thread(void *arg);

/* Starts the system clock's thread; c->mu is held. */
static int start_thread(xs_clock *c)
{
    c->sleep_until = INT64_MIN; /* it looks at the heap before sleeping */
    pthread_t th;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int r = pthread_create(&th, &attr, timer_thread, c);
    pthread_attr_destroy(&attr);
    c->thread_started = r == 0;
    return r;
}

/* fork(): the child inherits the heap but not the thread.  The clock's lock
 * is held across the fork so the heap is consistent, and the child gets a
 * fresh lock and thread. */
static void fork_prepare(void)
{
    pthread_mutex_lock(&system_clock.mu);
}

static void fork_parent(void)
{
    pthread_mutex_unlock(&system_clock.mu);
}

static void fork_child(void)
{
    xs_clock *c = &system_clock;
    pthread_mutex_init(&c->mu, NULL);
    init_conds(c);
    c->running = NULL;
    c->thread_started = false;
    pthread_mutex_lock(&c->mu);
    if (c->len)
        start_thread(c); /* on failure, the next xs__timer_add retries */
    pthread_mutex_unlock(&c->mu);
}

static void system_init(void)
{
    init_conds(&system_clock);
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

int64_t xs_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * XS_SEC + ts.tv_nsec;
}

xs_clock *xs_clock_system(void)
{
    return &system_clock;
}

int64_t xs_clock_now(const xs_clock *c)
{
    if (!c || !c->manual)
        return xs_now();
    return atomic_load_explicit(&((xs_clock *)c)->now, memory_order_acquire);
}

/* ---- heap ---- */

static void heap_set(xs_clock *c, size_t i, xs__timer *t)
{
    c->heap[i] = t;
    t->slot = i + 1;
}

static void heap_up(xs_clock *c, size_t i)
{
    xs__timer *t = c->heap[i];
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (c->heap[p]->when <= t->when)
            break;
        heap_set(c, i, c->heap[p]);
        i = p;
    }
    heap_set(c, i, t);
}

static void heap_down(xs_clock *c, size_t i)
{
    xs__timer *t = c->heap[i];
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        int64_t best = t->when;
        if (l < c->len && c->heap[l]->when < best)
            m = l, best = c->heap[l]->when;
        if (l + 1 < c->len && c->heap[l + 1]->when < best)
            m = l + 1;
        if (m == i)
            break;
        heap_set(c, i, c->heap[m]);
        i = m;
    }
    heap_set(c, i, t);
}

static void heap_remove(xs_clock *c, xs__timer *t)
{
    size_t i = t->slot - 1;
    t->slot = 0;
    xs__timer *last = c->heap[--c->len];
    if (i == c->len)
        return;
    heap_set(c, i, last);
    heap_up(c, i);
    heap_down(c, last->slot - 1);
}

/* Pops the earliest timer if due at `now`; marks it running.  Lock held. */
static xs__timer *pop_due(xs_clock *c, int64_t now)
{
    if (c->len == 0 || c->heap[0]->when > now)
        return NULL;
    xs__timer *t = c->heap[0];
    heap_remove(c, t);
    c->running = t;
    return t;
}

/* Runs t's callback without the lock, then clears `running`.  Lock held. */
static void run_unlocked(xs_clock *c, xs__timer *t)
{
    pthread_mutex_unlock(&c->mu);
    firing_clock = c;
    t->fn(t);
    firing_clock = NULL;
    pthread_mutex_lock(&c->mu);
    c->running = NULL;
    pthread_cond_broadcast(&c->idle);
}

static void *timer_thread(void *arg)
{
    xs_clock *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        xs__timer *t = pop_due(c, xs_now());
        if (t) {
            run_unlocked(c, t);
        } else if (c->len == 0) {
            c->sleep_until = XS_FOREVER;
            pthread_cond_wait(&c->wake, &c->mu);
        } else {
            int64_t when = c->heap[0]->when;
            struct timespec ts = {when / XS_SEC, when % XS_SEC};
            c->sleep_until = when;
            pthread_cond_timedwait(&c->wake, &c->mu, &ts);
        }
        c->sleep_until = INT64_MIN;
    }
    return NULL;
}

int xs__timer_add(xs_clock *c, xs__timer *t)
{
    if (!c->manual)
        pthread_once(&system_once, system_init);
    pthread_mutex_lock(&c->mu);
    if (!c->manual && !c->thread_started && start_thread(c) != 0) {
        pthread_mutex_unlock(&c->mu);
        return XS_ENOMEM;
    }
    if (c->len == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        xs__timer **h = realloc(c->heap, cap * sizeof *h);
        if (!h) {
            pthread_mutex_unlock(&c->mu);
            return XS_ENOMEM;
        }
        c->heap = h;
        c->cap = cap;
    }
    heap_set(c, c->len++, t);
    heap_up(c, c->len - 1);
    c->owners++;
    if (!c->manual && t->when < c->sleep_until)
        pthread_cond_signal(&c->wake);
    pthread_mutex_unlock(&c->mu);
    return 0;
}

bool xs__timer_del(xs_clock *c, xs__timer *t, bool final)
{
    bool removed = false;
    pthread_mutex_lock(&c->mu);
    if (t->slot) {
        heap_remove(c, t);
        removed = true;
    } else if (final && firing_clock != c) {
        while (c->running == t)
            pthread_cond_wait(&c->idle, &c->mu);
    }
    if (final)
        c->owners--;
    pthread_mutex_unlock(&c->mu);
    return removed;
}

/* ---- manual clocks ---- */

int xs_clock_manual_new(int64_t start, const xs_allocator *alloc, xs_clock **out)
{
    if (!out)
        return XS_EINVAL;
    alloc = xs__allocator_resolve(alloc);
    xs_clock *c = xs__calloc(alloc, sizeof *c);
    if (!c)
        return XS_ENOMEM;
    c->manual = true;
    c->alloc = alloc;
    atomic_init(&c->now, start);
    pthread_mutex_init(&c->mu, NULL);
    pthread_mutex_init(&c->advance_mu, NULL);
    init_conds(c);
    *out = c;
    return 0;
}

int xs_clock_advance(xs_clock *c, int64_t d)
{
    if (!c || !c->manual || d < 0)
        return XS_EINVAL;
    pthread_mutex_lock(&c->advance_mu);
    pthread_mutex_lock(&c->mu);
    int64_t now = xs__add_sat(atomic_load_explicit(&c->now, memory_order_relaxed), d);
    /* Release: a reader of the new time sees what happened before advance. */
    atomic_store_explicit(&c->now, now, memory_order_release);
    xs__timer *t;
    while ((t = pop_due(c, now)) != NULL)
        run_unlocked(c, t);
    pthread_mutex_unlock(&c->mu);
    pthread_mutex_unlock(&c->advance_mu);
    return 0;
}

int xs_clock_free(xs_clock *c)
{
    if (!c || !c->manual)
        return 0;
    pthread_mutex_lock(&c->mu);
    size_t owners = c->owners;
    pthread_mutex_unlock(&c->mu);
    if (owners)
        return XS_EBUSY;
    pthread_mutex_destroy(&c->mu);
    pthread_mutex_destroy(&c->advance_mu);
    pthread_cond_destroy(&c->wake);
    pthread_cond_destroy(&c->idle);
    free(c->heap);
    xs__free(c->alloc, c, sizeof *c);
    return 0;
}
