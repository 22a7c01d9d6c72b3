/*
 * pool — threads, run slots ("tokens"), work-stealing queues.
 *
 * Threads and slots are separate, as Go separates Ms and Ps: a pool has
 * `workers` tokens and up to workers + max_standins threads.  A thread runs
 * tasks only while it holds a token.  It gives its token back when it finds
 * nothing to do (and sleeps), when it blocks in a library wait (the park
 * hook) or a block_begin region, or when the watchdog takes it away; it
 * takes a token again at its next task boundary, or sleeps if none is free.
 *
 * Queues: one shared FIFO (`gq`, a ring under `mu`) for submissions from
 * outside, and per thread a fixed-size Chase-Lev deque for submissions by
 * its own tasks (owner pushes and pops at the bottom, thieves take from the
 * top).  A full deque spills into the shared queue.
 *
 * No lost wake-up.  Two facts must meet: "a task is queued" and "a token is
 * free".  Whoever makes one true checks the other afterwards, with seq_cst
 * operations on both sides (Dekker): a submitter pushes, then reads
 * `searching` and `tokens`; a thread giving back a token (going idle,
 * blocking) increments `tokens`, then looks at every queue.  If both see
 * the other, wakeup() wakes an idle thread or starts one.  wakeup() may skip
 * when a thread is already searching: a searcher that gives up decrements
 * `searching` before its final look at the queues.  An idle thread puts
 * itself on the idle list (under `mu`) before that final look, so a waker
 * that missed it in the list happened entirely before the look.  Code that
 * takes tasks out of sight for a moment (a batch moved from the shared
 * queue to a deque, a task popped and put back) calls wakeup() afterwards.
 *
 * Lifetimes: worker structs live until the pool is freed (thieves and the
 * watchdog read them without locks); threads exit only in xs_pool_free,
 * after the pool is quiescent: every thread idle, every queue empty, no
 * thread start in flight and no task taken by an outside helper still
 * running.  An outside submitter decides its wake-up under `mu`, with its
 * push, and afterwards touches only futex addresses, so it may race free.
 */
#include <xsync/pool.h>

#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <xsync/time.h>

#include "internal.h"
#include "park.h"
#include "pool_internal.h"

#define DQ_SIZE 256 /* power of two */
#define GQ_INITIAL 1024
#define MAX_WORKERS 4096
#define MAX_STANDINS 65536
#define SEARCH_ROUNDS 32 /* polls of every queue before a thread sleeps */

/* A queued task: run(f, a, b).  Public tasks are run_plain(fn, arg, -);
 * the group queues its own runner with the user's function and the group. */
typedef struct task {
    xs__task_run run;
    xs__fn f;
    void *a, *b;
} task;

/* Slots are atomic because a thief may read one while the owner rewrites it
 * after wrapping around; the thief's CAS on `top` then fails and it drops
 * what it read. */
typedef struct dq_slot {
    _Atomic(xs__task_run) run;
    _Atomic(xs__fn) f;
    _Atomic(void *) a, b;
} dq_slot;

typedef struct deque {
    _Atomic int64_t top; /* thieves: CAS */
    char pad_[56];
    _Atomic int64_t bottom; /* owner only writes */
    dq_slot buf[DQ_SIZE];
} deque;

typedef struct worker {
    deque dq;
    xs_pool *pool;
    xs__park_hook hook;
    pthread_t thread;           /* valid once `started` */
    /* 1 while the thread holds a token.  Only the thread sets it to 1; the
     * thread, its hook and the watchdog clear it with an RMW, and whoever
     * clears it returns the token. */
    _Atomic int holds;
    /* Odd while the thread runs a task, bumped by every task (the watchdog's
     * progress signal).  Only the thread writes it. */
    _Atomic uint64_t seq;
    /* Idle sleep: 0 asleep, 1 woken to search, 2 woken to exit.  Written by
     * the waker under `mu`. */
    _Atomic uint32_t wake;
    bool searching;              /* thread only: counted in pool->searching */
    int depth;                   /* thread only: block_begin nesting */
    xs__park_hook *saved_hook;   /* thread only */
    uint64_t rng;                /* thread only */
    clockid_t cpu;               /* set by the thread before its first task */
    bool have_cpu;
    /* Under `mu`. */
    struct worker *idle_next;
    bool idle, started, dead;
    /* Watchdog only. */
    uint64_t wd_seq;
    int64_t wd_cpu;
} worker;

struct xs_pool {
    const xs_allocator *alloc;
    int workers, max_threads;
    int64_t period;
    bool is_default;

    /* Hot shared counters, each on its own line (padding rather than
     * _Alignas: the block comes from any allocator). */
    char pad0_[64];
    _Atomic int tokens;
    char pad1_[64];
    _Atomic int searching;
    char pad2_[64];
    _Atomic size_t gq_len; /* written under mu; read without */
    char pad3_[64];
    _Atomic int nslots; /* published entries of `all` */
    _Atomic int nthreads;               /* live threads; written under mu */
    _Atomic int nidle;                  /* written under mu */

    pthread_mutex_t mu;
    pthread_cond_t quiet; /* xs_pool_free waits here */
    task *gq;
    size_t gq_cap, gq_head;
    worker *idle_head;
    worker **all; /* max_threads entries; an entry never changes once set */
    int spawning; /* thread creations in flight */
    int helping;  /* tasks taken by outside threads helping, still running */
    bool closing, stop;

    pthread_t wd_thread;
    bool wd_started;
    _Atomic uint32_t wd_word;  /* the watchdog's sleep */
    _Atomic int wd_sleeping;   /* 1: asleep until some thread wakes */
    _Atomic int wd_stop;
};

/* The pool thread the caller is, if any. */
static _Thread_local worker *self;
/* The pool whose task this thread runs by helping, and how deeply nested. */
static _Thread_local xs_pool *helping_pool;
static _Thread_local int help_depth;

/* Deeper than this, a waiter parks (lending its slot) instead of helping,
 * so helping never grows a thread's stack without bound. */
#define MAX_HELP_DEPTH 32

/* ---- Chase-Lev deque (Lê, Pop, Cohen, Zappa Nardelli, PPoPP 2013), with
 * seq_cst accesses where the paper has fences ---- */

/* Owner only.  False when full. */
static void slot_store(dq_slot *s, const task *t)
{
    atomic_store_explicit(&s->run, t->run, memory_order_relaxed);
    atomic_store_explicit(&s->f, t->f, memory_order_relaxed);
    atomic_store_explicit(&s->a, t->a, memory_order_relaxed);
    atomic_store_explicit(&s->b, t->b, memory_order_relaxed);
}

static void slot_load(dq_slot *s, task *t)
{
    t->run = atomic_load_explicit(&s->run, memory_order_relaxed);
    t->f = atomic_load_explicit(&s->f, memory_order_relaxed);
    t->a = atomic_load_explicit(&s->a, memory_order_relaxed);
    t->b = atomic_load_explicit(&s->b, memory_order_relaxed);
}

static bool dq_push(deque *d, const task *t)
{
    int64_t b = atomic_load_explicit(&d->bottom, memory_order_relaxed);
    /* Acquire: thieves' reads of the slot we may reuse are done. */
    int64_t top = atomic_load_explicit(&d->top, memory_order_acquire);
    if (b - top >= DQ_SIZE)
        return false;
    slot_store(&d->buf[b & (DQ_SIZE - 1)], t);
    /* seq_cst: publishes the slot (release) and is the "task queued" half
     * of the Dekker pairing with a thread giving back its token. */
    atomic_store_explicit(&d->bottom, b + 1, memory_order_seq_cst);
    return true;
}

/* Owner only: the newest task. */
static bool dq_pop(deque *d, task *out)
{
    int64_t b = atomic_load_explicit(&d->bottom, memory_order_relaxed) - 1;
    /* seq_cst store then seq_cst load: a thief that read the old bottom
     * has its CAS on top ordered against our read of top. */
    atomic_store_explicit(&d->bottom, b, memory_order_seq_cst);
    int64_t t = atomic_load_explicit(&d->top, memory_order_seq_cst);
    if (t > b) {
        /* Release (here and below): keeps every store to bottom a release,
         * so a thief synchronises with the pushes before it. */
        atomic_store_explicit(&d->bottom, b + 1, memory_order_release);
        return false;
    }
    slot_load(&d->buf[b & (DQ_SIZE - 1)], out);
    if (t < b)
        return true;
    /* The last one: race the thieves for it. */
    bool won = atomic_compare_exchange_strong_explicit(&d->top, &t, t + 1, memory_order_seq_cst,
                                                       memory_order_relaxed);
    atomic_store_explicit(&d->bottom, b + 1, memory_order_release);
    return won;
}

/* Any thread: the oldest task.  1 taken, 0 empty, -1 lost a race. */
static int dq_steal(deque *d, task *out)
{
    int64_t t = atomic_load_explicit(&d->top, memory_order_seq_cst);
    /* seq_cst (acquire included): pairs with the owner's pushes and pops. */
    int64_t b = atomic_load_explicit(&d->bottom, memory_order_seq_cst);
    if (t >= b)
        return 0;
    slot_load(&d->buf[t & (DQ_SIZE - 1)], out);
    if (!atomic_compare_exchange_strong_explicit(&d->top, &t, t + 1, memory_order_seq_cst,
                                                 memory_order_relaxed))
        return -1;
    return 1;
}

static bool dq_nonempty(deque *d)
{
    int64_t t = atomic_load_explicit(&d->top, memory_order_seq_cst);
    int64_t b = atomic_load_explicit(&d->bottom, memory_order_seq_cst);
    return b > t;
}

static void wakeup(xs_pool *p);

/* An allocation made while holding mu: the user's allocator might wait in
 * the library, whose hook would take mu again; so no hook meanwhile. */
static void *alloc_locked(xs_pool *p, size_t size, bool zero)
{
    xs__park_hook *h = xs__park_swap_hook(NULL);
    void *ptr = zero ? xs__calloc(p->alloc, size) : xs__alloc(p->alloc, size);
    xs__park_swap_hook(h);
    return ptr;
}

/* The same for a free made while holding mu. */
static void free_locked(xs_pool *p, void *ptr, size_t size)
{
    xs__park_hook *h = xs__park_swap_hook(NULL);
    xs__free(p->alloc, ptr, size);
    xs__park_swap_hook(h);
}

/* ---- the shared queue (under mu) ---- */

static bool gq_push_locked(xs_pool *p, const task *t)
{
    size_t len = atomic_load_explicit(&p->gq_len, memory_order_relaxed);
    if (len == p->gq_cap) {
        size_t cap = p->gq_cap * 2;
        task *q = alloc_locked(p, cap * sizeof *q, false);
        if (!q)
            return false;
        for (size_t i = 0; i < len; i++)
            q[i] = p->gq[(p->gq_head + i) % p->gq_cap];
        free_locked(p, p->gq, p->gq_cap * sizeof *q);
        p->gq = q;
        p->gq_cap = cap;
        p->gq_head = 0;
    }
    p->gq[(p->gq_head + len) % p->gq_cap] = *t;
    /* seq_cst: the "task queued" half of the Dekker pairing. */
    atomic_store_explicit(&p->gq_len, len + 1, memory_order_seq_cst);
    return true;
}

static task gq_take_head_locked(xs_pool *p)
{
    task t = p->gq[p->gq_head];
    p->gq_head = (p->gq_head + 1) % p->gq_cap;
    atomic_store_explicit(&p->gq_len, atomic_load_explicit(&p->gq_len, memory_order_relaxed) - 1,
                          memory_order_relaxed);
    return t;
}

/* Takes the oldest task for w, and a batch more into w's deque. */
static bool gq_grab(worker *w, task *out)
{
    xs_pool *p = w->pool;
    pthread_mutex_lock(&p->mu);
    size_t len = atomic_load_explicit(&p->gq_len, memory_order_relaxed);
    if (len == 0) {
        pthread_mutex_unlock(&p->mu);
        return false;
    }
    *out = gq_take_head_locked(p);
    size_t more = (len - 1) / (size_t)p->workers;
    if (more > DQ_SIZE / 2)
        more = DQ_SIZE / 2;
    bool moved = false;
    while (more--) {
        if (!dq_push(&w->dq, &p->gq[p->gq_head]))
            break;
        gq_take_head_locked(p);
        moved = true;
    }
    pthread_mutex_unlock(&p->mu);
    /* The batch was out of sight for a moment: a thread that went idle
     * then may have missed it.  (Cheap when no token is free.) */
    if (moved)
        wakeup(p);
    return true;
}

/* ---- looking for work ---- */

static bool has_work(xs_pool *p)
{
    if (atomic_load_explicit(&p->gq_len, memory_order_seq_cst))
        return true;
    int n = atomic_load_explicit(&p->nslots, memory_order_acquire);
    for (int i = 0; i < n; i++)
        if (dq_nonempty(&p->all[i]->dq))
            return true;
    return false;
}

static bool steal_any(worker *w, task *out)
{
    xs_pool *p = w->pool;
    int n = atomic_load_explicit(&p->nslots, memory_order_acquire);
    w->rng ^= w->rng << 13;
    w->rng ^= w->rng >> 7;
    w->rng ^= w->rng << 17;
    int start = (int)(w->rng % (uint64_t)n);
    for (int k = 0; k < n; k++) {
        worker *v = p->all[(start + k) % n];
        if (v == w)
            continue;
        for (int tries = 0; tries < 4; tries++) {
            int r = dq_steal(&v->dq, out);
            if (r == 1)
                return true;
            if (r == 0)
                break;
        }
    }
    return false;
}

/* One look at every queue. */
static bool look_once(worker *w, task *out)
{
    xs_pool *p = w->pool;
    return dq_pop(&w->dq, out) ||
           (atomic_load_explicit(&p->gq_len, memory_order_relaxed) && gq_grab(w, out)) ||
           steal_any(w, out);
}

/* Polls every queue for a while.  The caller counts itself as searching
 * meanwhile, so submitters need not wake anybody. */
static bool find_work(worker *w, task *out)
{
    for (int round = 0; round < SEARCH_ROUNDS; round++) {
        if (look_once(w, out))
            return true;
        xs__poll_pause(round, SEARCH_ROUNDS);
    }
    return false;
}

static void run_task(worker *w, task t)
{
    uint64_t s = atomic_load_explicit(&w->seq, memory_order_relaxed);
    /* Release: the watchdog reading an odd seq also sees cpu/have_cpu. */
    atomic_store_explicit(&w->seq, s + 1, memory_order_release);
    t.run(t.f, t.a, t.b);
    atomic_store_explicit(&w->seq, s + 2, memory_order_relaxed);
}

/* ---- tokens, sleeping and waking ---- */

static bool take_token(xs_pool *p)
{
    int t = atomic_load_explicit(&p->tokens, memory_order_relaxed);
    while (t > 0)
        if (atomic_compare_exchange_weak_explicit(&p->tokens, &t, t - 1, memory_order_seq_cst,
                                                  memory_order_relaxed))
            return true;
    return false;
}

/* Returns w's token, if it holds one.  seq_cst: the "token free" half of
 * the Dekker pairing; the caller looks at the queues afterwards. */
static bool give_token(worker *w)
{
    if (!atomic_exchange_explicit(&w->holds, 0, memory_order_seq_cst))
        return false;
    atomic_fetch_add_explicit(&w->pool->tokens, 1, memory_order_seq_cst);
    return true;
}

static void check_quiet_locked(xs_pool *p)
{
    if (p->closing && p->spawning == 0 && p->helping == 0 &&
        atomic_load_explicit(&p->nidle, memory_order_relaxed) ==
            atomic_load_explicit(&p->nthreads, memory_order_relaxed))
        pthread_cond_broadcast(&p->quiet);
}

/* mu held.  True if the watchdog sleeps and must be woken (on wd_word). */
static bool wake_watchdog_locked(xs_pool *p)
{
    /* seq_cst: pairs with the watchdog's "sleeping, then count idle". */
    if (atomic_load_explicit(&p->wd_sleeping, memory_order_seq_cst) &&
        atomic_exchange_explicit(&p->wd_sleeping, 0, memory_order_relaxed)) {
        atomic_fetch_add_explicit(&p->wd_word, 1, memory_order_release);
        return true;
    }
    return false;
}

static void *worker_main(void *arg);

/* mu held.  Reserves a thread: a worker struct and the counts. */
static worker *reserve_thread_locked(xs_pool *p)
{
    int n = atomic_load_explicit(&p->nthreads, memory_order_relaxed);
    if (n >= p->max_threads)
        return NULL;
    worker *w = NULL;
    int slots = atomic_load_explicit(&p->nslots, memory_order_relaxed);
    for (int i = 0; i < slots && !w; i++)
        if (p->all[i]->dead)
            w = p->all[i];
    if (!w) {
        if (slots == p->max_threads)
            return NULL;
        w = alloc_locked(p, sizeof *w, true);
        if (!w)
            return NULL;
        w->pool = p;
        w->rng = (uint64_t)(uintptr_t)w * UINT64_C(0x9E3779B97F4A7C15) | 1;
        p->all[slots] = w;
        /* Release: a reader of nslots sees the entry and the empty deque. */
        atomic_store_explicit(&p->nslots, slots + 1, memory_order_release);
    }
    w->dead = false;
    w->searching = true;
    atomic_store_explicit(&p->nthreads, n + 1, memory_order_seq_cst);
    atomic_fetch_add_explicit(&p->searching, 1, memory_order_seq_cst);
    p->spawning++;
    return w;
}

/* mu not held.  Starts the reserved thread or undoes the reservation. */
static int start_thread(xs_pool *p, worker *w)
{
    pthread_t th;
    int r = pthread_create(&th, NULL, worker_main, w);
    pthread_mutex_lock(&p->mu);
    p->spawning--;
    if (r == 0) {
        w->thread = th;
        w->started = true;
    } else {
        w->dead = true;
        atomic_store_explicit(&p->nthreads, atomic_load_explicit(&p->nthreads, memory_order_relaxed) - 1,
                              memory_order_seq_cst);
        atomic_fetch_sub_explicit(&p->searching, 1, memory_order_seq_cst);
    }
    check_quiet_locked(p);
    pthread_mutex_unlock(&p->mu);
    return r == 0 ? 0 : XS_ENOMEM;
}

/* What a wake-up decided under mu, to carry out after unlocking. */
typedef struct wake_plan {
    worker *wake;  /* futex-wake its `wake` word (address only) */
    worker *spawn; /* reserved: start its thread */
    bool watchdog; /* futex-wake wd_word (address only) */
} wake_plan;

static bool wake_needed(xs_pool *p)
{
    return atomic_load_explicit(&p->searching, memory_order_seq_cst) == 0 &&
           atomic_load_explicit(&p->tokens, memory_order_seq_cst) > 0;
}

/* mu held: picks an idle thread to wake, or reserves a new one. */
static void plan_wakeup_locked(xs_pool *p, wake_plan *plan)
{
    if (p->stop)
        return;
    worker *w = p->idle_head;
    if (w) {
        p->idle_head = w->idle_next;
        w->idle = false;
        atomic_fetch_sub_explicit(&p->nidle, 1, memory_order_seq_cst);
        atomic_fetch_add_explicit(&p->searching, 1, memory_order_seq_cst);
        atomic_store_explicit(&w->wake, 1, memory_order_release);
        plan->wake = w;
    } else {
        plan->spawn = reserve_thread_locked(p);
    }
    if (plan->wake || plan->spawn)
        plan->watchdog = wake_watchdog_locked(p);
}

/*
 * mu not held.  After the unlock the pool may be freed at any moment unless
 * a thread start is reserved (free waits for those): so only address-only
 * futex wakes, and the reserved start.
 */
static void carry_out(xs_pool *p, wake_plan *plan)
{
    _Atomic uint32_t *wd = &p->wd_word;
    if (plan->spawn)
        start_thread(p, plan->spawn);
    if (plan->wake)
        xs__park_wake(&plan->wake->wake, 1);
    if (plan->watchdog)
        xs__park_wake(wd, 1);
}

/*
 * Makes sure some thread will look at the queues: wakes an idle thread or
 * starts one, unless a thread is already searching or no token is free (a
 * thread holding one looks when its task ends).  Callers are pool threads
 * or the watchdog, so the pool outlives the call.
 */
static void wakeup(xs_pool *p)
{
    if (!wake_needed(p))
        return;
    wake_plan plan = {0};
    pthread_mutex_lock(&p->mu);
    plan_wakeup_locked(p, &plan);
    pthread_mutex_unlock(&p->mu);
    carry_out(p, &plan);
}

/* Sleeps until woken.  Returns false when the pool is stopping. */
static bool go_idle(worker *w)
{
    xs_pool *p = w->pool;
    pthread_mutex_lock(&p->mu);
    if (p->stop) {
        pthread_mutex_unlock(&p->mu);
        return false;
    }
    atomic_store_explicit(&w->wake, 0, memory_order_relaxed);
    w->idle = true;
    w->idle_next = p->idle_head;
    p->idle_head = w;
    atomic_fetch_add_explicit(&p->nidle, 1, memory_order_seq_cst);
    check_quiet_locked(p);
    pthread_mutex_unlock(&p->mu);

    /* The final look (see the top of the file). */
    if (has_work(p) && atomic_load_explicit(&p->tokens, memory_order_seq_cst) > 0) {
        bool wd = false;
        pthread_mutex_lock(&p->mu);
        bool listed = w->idle;
        if (listed) {
            worker **pp = &p->idle_head;
            while (*pp != w)
                pp = &(*pp)->idle_next;
            *pp = w->idle_next;
            w->idle = false;
            atomic_fetch_sub_explicit(&p->nidle, 1, memory_order_seq_cst);
            wd = wake_watchdog_locked(p); /* it may sleep: "every thread idle" */
        }
        pthread_mutex_unlock(&p->mu);
        if (wd)
            xs__park_wake(&p->wd_word, 1);
        if (listed)
            return true; /* not counted as searching */
    }
    uint32_t v;
    while ((v = atomic_load_explicit(&w->wake, memory_order_acquire)) == 0)
        xs__park_sleep(&w->wake, 0, XS_FOREVER);
    if (v == 2)
        return false;
    w->searching = true; /* the waker counted us */
    return true;
}

/* ---- the park hook: a worker about to sleep in a library wait ---- */

static void hook_block(xs__park_hook *h)
{
    worker *w = XS_CONTAINER_OF(h, worker, hook);
    if (give_token(w) && has_work(w->pool))
        wakeup(w->pool);
}

static void hook_unblock(xs__park_hook *h)
{
    (void)h; /* the token is taken back at the next task boundary */
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    xs_pool *p = w->pool;
    self = w;
    w->have_cpu = pthread_getcpuclockid(pthread_self(), &w->cpu) == 0;
    w->hook.block = hook_block;
    w->hook.unblock = hook_unblock;
    xs__park_swap_hook(&w->hook);
    for (;;) {
        if (!atomic_load_explicit(&w->holds, memory_order_relaxed)) {
            if (!take_token(p)) {
                if (w->searching) {
                    w->searching = false;
                    atomic_fetch_sub_explicit(&p->searching, 1, memory_order_seq_cst);
                }
                if (!go_idle(w))
                    break;
                continue;
            }
            atomic_store_explicit(&w->holds, 1, memory_order_relaxed);
        }
        task t;
        bool found = look_once(w, &t);
        if (!found) {
            /* Poll for a while only as the one searcher (a woken thread
             * already is one): more pollers would only take CPU from the
             * threads making work. */
            int none = 0;
            if (w->searching || atomic_compare_exchange_strong_explicit(
                                    &p->searching, &none, 1, memory_order_seq_cst,
                                    memory_order_relaxed)) {
                w->searching = true;
                found = find_work(w, &t);
            }
        }
        if (found) {
            if (w->searching) {
                /* Found work while searching: let one more thread search,
                 * so threads ramp up while work keeps coming. */
                w->searching = false;
                atomic_fetch_sub_explicit(&p->searching, 1, memory_order_seq_cst);
                if (has_work(p))
                    wakeup(p);
            }
            run_task(w, t);
            continue;
        }
        if (w->searching) {
            w->searching = false;
            atomic_fetch_sub_explicit(&p->searching, 1, memory_order_seq_cst);
        }
        give_token(w);
        if (!go_idle(w))
            break;
    }
    xs__park_swap_hook(NULL);
    self = NULL;
    return NULL;
}

/* ---- the watchdog ---- */

static int64_t thread_cpu(worker *w)
{
    struct timespec ts;
    if (!w->have_cpu || clock_gettime(w->cpu, &ts) != 0)
        return 0;
    return (int64_t)ts.tv_sec * XS_SEC + ts.tv_nsec;
}

/* Takes the token of every thread that sat in one task for a whole period
 * without using CPU time, while tasks wait and no token is free. */
static void watchdog_tick(xs_pool *p)
{
    bool starving = atomic_load_explicit(&p->tokens, memory_order_seq_cst) <= 0 && has_work(p);
    bool took = false;
    int n = atomic_load_explicit(&p->nslots, memory_order_acquire);
    for (int i = 0; i < n; i++) {
        worker *w = p->all[i];
        uint64_t s = atomic_load_explicit(&w->seq, memory_order_acquire);
        if (!(s & 1)) {
            w->wd_seq = s;
            continue;
        }
        int64_t cpu = thread_cpu(w);
        if (starving && s == w->wd_seq && cpu - w->wd_cpu < p->period / 2 &&
            atomic_load_explicit(&w->holds, memory_order_relaxed)) {
            int one = 1;
            if (atomic_compare_exchange_strong_explicit(&w->holds, &one, 0, memory_order_seq_cst,
                                                        memory_order_relaxed)) {
                atomic_fetch_add_explicit(&p->tokens, 1, memory_order_seq_cst);
                took = true;
            }
        }
        w->wd_seq = s;
        w->wd_cpu = cpu;
    }
    if (took)
        wakeup(p);
}

static void *watchdog_main(void *arg)
{
    xs_pool *p = arg;
    xs__park_swap_hook(NULL);
    while (!atomic_load_explicit(&p->wd_stop, memory_order_acquire)) {
        uint32_t v = atomic_load_explicit(&p->wd_word, memory_order_acquire);
        if (atomic_load_explicit(&p->nidle, memory_order_seq_cst) ==
            atomic_load_explicit(&p->nthreads, memory_order_seq_cst)) {
            /* Every thread idle: nothing can starve.  Sleep until a thread
             * is woken (seq_cst: pairs with wake_watchdog). */
            atomic_store_explicit(&p->wd_sleeping, 1, memory_order_seq_cst);
            if (atomic_load_explicit(&p->nidle, memory_order_seq_cst) ==
                    atomic_load_explicit(&p->nthreads, memory_order_seq_cst) &&
                !atomic_load_explicit(&p->wd_stop, memory_order_seq_cst))
                xs__park_sleep(&p->wd_word, v, XS_FOREVER);
            atomic_store_explicit(&p->wd_sleeping, 0, memory_order_relaxed);
            continue;
        }
        if (xs__park_sleep(&p->wd_word, v, xs__add_sat(xs_now(), p->period)) == XS_EDEADLINE)
            watchdog_tick(p);
    }
    return NULL;
}

/* ---- creation and destruction ---- */

static void pool_destroy(xs_pool *p)
{
    int n = atomic_load_explicit(&p->nslots, memory_order_relaxed);
    for (int i = 0; i < n; i++)
        xs__free(p->alloc, p->all[i], sizeof(worker));
    xs__free(p->alloc, p->all, (size_t)p->max_threads * sizeof(worker *));
    xs__free(p->alloc, p->gq, p->gq_cap * sizeof(task));
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->quiet);
    xs__free(p->alloc, p, sizeof *p);
}

/* Stops every thread of a quiescent pool (or one whose threads never ran a
 * task) and frees it. */
static void pool_stop_and_destroy(xs_pool *p)
{
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    for (worker *w = p->idle_head; w; w = w->idle_next) {
        atomic_store_explicit(&w->wake, 2, memory_order_release);
        xs__park_wake(&w->wake, 1);
    }
    p->idle_head = NULL;
    pthread_mutex_unlock(&p->mu);
    if (p->wd_started) {
        atomic_store_explicit(&p->wd_stop, 1, memory_order_seq_cst);
        atomic_fetch_add_explicit(&p->wd_word, 1, memory_order_release);
        xs__park_wake(&p->wd_word, 1);
        pthread_join(p->wd_thread, NULL);
    }
    int n = atomic_load_explicit(&p->nslots, memory_order_relaxed);
    for (int i = 0; i < n; i++)
        if (p->all[i]->started)
            pthread_join(p->all[i]->thread, NULL);
    pool_destroy(p);
}

static int pool_create(const xs_pool_opts *o, bool is_default, xs_pool **out)
{
    xs_pool_opts d = {0};
    if (!o)
        o = &d;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int workers = o->workers ? o->workers : (ncpu > 0 ? (int)(ncpu < MAX_WORKERS ? ncpu : MAX_WORKERS) : 1);
    int standins = o->max_standins ? o->max_standins : XS_POOL_DEFAULT_STANDINS;
    if (workers < 1 || workers > MAX_WORKERS || standins < 1 || standins > MAX_STANDINS)
        return XS_EINVAL;
    const xs_allocator *a = is_default ? xs_allocator_libc() : xs__allocator_resolve(o->alloc);
    xs_pool *p = xs__calloc(a, sizeof *p);
    if (!p)
        return XS_ENOMEM;
    p->alloc = a;
    p->workers = workers;
    p->max_threads = workers + standins;
    p->period = o->watchdog ? o->watchdog : XS_POOL_DEFAULT_WATCHDOG;
    p->is_default = is_default;
    atomic_init(&p->tokens, workers);
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
#ifdef PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP
    /* Held for a few instructions: spin a little before sleeping. */
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
#endif
    pthread_mutex_init(&p->mu, &ma);
    pthread_mutexattr_destroy(&ma);
    pthread_cond_init(&p->quiet, NULL);
    p->gq_cap = GQ_INITIAL;
    p->gq = xs__alloc(a, p->gq_cap * sizeof(task));
    p->all = xs__calloc(a, (size_t)p->max_threads * sizeof(worker *));
    if (!p->gq || !p->all) {
        pool_destroy(p);
        return XS_ENOMEM;
    }
    /* The first thread, so tasks never wait for a thread that cannot start. */
    pthread_mutex_lock(&p->mu);
    worker *w = reserve_thread_locked(p);
    pthread_mutex_unlock(&p->mu);
    if (!w || start_thread(p, w) != 0) {
        pool_stop_and_destroy(p);
        return XS_ENOMEM;
    }
    if (p->period > 0) {
        if (pthread_create(&p->wd_thread, NULL, watchdog_main, p) != 0) {
            pool_stop_and_destroy(p); /* the thread holds no token and no task yet */
            return XS_ENOMEM;
        }
        p->wd_started = true;
    }
    *out = p;
    return 0;
}

int xs_pool_new(const xs_pool_opts *opts, xs_pool **out)
{
    if (!out || (opts && (opts->workers < 0 || opts->max_standins < 0)))
        return XS_EINVAL;
    return pool_create(opts, false, out);
}

static _Atomic(xs_pool *) default_pool;
static pthread_mutex_t default_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t default_once = PTHREAD_ONCE_INIT;

/* A forked child has none of the parent's threads: it gets a new default
 * pool on first use (the parent's is left as it was, unreachable). */
static void fork_prepare(void)
{
    pthread_mutex_lock(&default_mu);
}

static void fork_parent(void)
{
    pthread_mutex_unlock(&default_mu);
}

static void fork_child(void)
{
    pthread_mutex_init(&default_mu, NULL);
    atomic_store_explicit(&default_pool, NULL, memory_order_relaxed);
}

static void default_init(void)
{
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

xs_pool *xs_pool_default(void)
{
    /* Acquire: pairs with the release below; the pool is initialised. */
    xs_pool *p = atomic_load_explicit(&default_pool, memory_order_acquire);
    if (XS_LIKELY(p != NULL))
        return p;
    pthread_once(&default_once, default_init);
    pthread_mutex_lock(&default_mu);
    p = atomic_load_explicit(&default_pool, memory_order_relaxed);
    if (!p && pool_create(NULL, true, &p) == 0)
        atomic_store_explicit(&default_pool, p, memory_order_release);
    pthread_mutex_unlock(&default_mu);
    return p;
}

int xs_pool_free(xs_pool *p)
{
    if (!p || p->is_default)
        return XS_EINVAL;
    if (self && self->pool == p)
        return XS_EBUSY;
    xs_pool_block_begin(); /* a task of another pool lends its slot meanwhile */
    pthread_mutex_lock(&p->mu);
    p->closing = true;
    for (;;) {
        bool all_idle = p->spawning == 0 && p->helping == 0 &&
                        atomic_load_explicit(&p->nidle, memory_order_relaxed) ==
                                                atomic_load_explicit(&p->nthreads, memory_order_relaxed);
        if (all_idle && !has_work(p))
            break;
        pthread_cond_wait(&p->quiet, &p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    pool_stop_and_destroy(p);
    xs_pool_block_end();
    return 0;
}

/* ---- submitting ---- */

static int submit(xs_pool *p, const task *t)
{
    worker *w = self;
    bool own = w && w->pool == p;
    if (own && dq_push(&w->dq, t)) {
        wakeup(p);
        return 0;
    }
    /* From outside, the wake-up is decided under the same lock as the push:
     * once we unlock, a concurrent xs_pool_free may finish at any time. */
    wake_plan plan = {0};
    pthread_mutex_lock(&p->mu);
    int r = 0;
    if (p->closing && !own && helping_pool != p)
        r = XS_ECLOSED;
    else if (!gq_push_locked(p, t))
        r = XS_ENOMEM;
    else if (wake_needed(p))
        plan_wakeup_locked(p, &plan);
    pthread_mutex_unlock(&p->mu);
    carry_out(p, &plan);
    return r;
}

static void run_plain(xs__fn f, void *a, void *b)
{
    (void)b;
    ((void (*)(void *))f)(a);
}

int xs_pool_submit(xs_pool *p, void (*fn)(void *arg), void *arg)
{
    if (!p || !fn)
        return XS_EINVAL;
    task t = {run_plain, (xs__fn)fn, arg, NULL};
    return submit(p, &t);
}

int xs__pool_submit_task(xs_pool *p, xs__task_run run, xs__fn f, void *a, void *b)
{
    task t = {run, f, a, b};
    return submit(p, &t);
}

bool xs__pool_help(xs_pool *p, xs__task_run run, const void *b)
{
    if (help_depth >= MAX_HELP_DEPTH)
        return false;
    worker *w = self;
    bool own = w && w->pool == p;
    task t;
    if (own && dq_pop(&w->dq, &t)) {
        if (t.run == run && t.b == b) {
            /* Bump seq by two: the watchdog sees progress, and the parity
             * (inside a task or not) is unchanged. */
            uint64_t s = atomic_load_explicit(&w->seq, memory_order_relaxed);
            atomic_store_explicit(&w->seq, s + 2, memory_order_relaxed);
            help_depth++;
            t.run(t.f, t.a, t.b);
            help_depth--;
            return true;
        }
        dq_push(&w->dq, &t); /* room: we just took it out */
        /* It was out of sight for a moment (see gq_grab). */
        wakeup(p);
    }
    if (!atomic_load_explicit(&p->gq_len, memory_order_relaxed))
        return false;
    pthread_mutex_lock(&p->mu);
    size_t len = atomic_load_explicit(&p->gq_len, memory_order_relaxed);
    bool got = false;
    if (len) {
        t = p->gq[(p->gq_head + len - 1) % p->gq_cap];
        got = t.run == run && t.b == b;
        if (got) {
            atomic_store_explicit(&p->gq_len, len - 1, memory_order_relaxed);
            if (!own)
                p->helping++; /* a running task that free must wait for */
        }
    }
    pthread_mutex_unlock(&p->mu);
    if (!got)
        return false;
    xs_pool *outer = helping_pool;
    if (own) {
        uint64_t s = atomic_load_explicit(&w->seq, memory_order_relaxed);
        atomic_store_explicit(&w->seq, s + 2, memory_order_relaxed);
    } else {
        helping_pool = p; /* its submissions count as the pool's own */
    }
    help_depth++;
    t.run(t.f, t.a, t.b);
    help_depth--;
    if (!own) {
        helping_pool = outer;
        pthread_mutex_lock(&p->mu);
        p->helping--;
        check_quiet_locked(p);
        pthread_mutex_unlock(&p->mu);
    }
    return true;
}

bool xs__pool_should_yield(void)
{
    worker *w = self;
    return w && (!atomic_load_explicit(&w->holds, memory_order_relaxed) ||
                 atomic_load_explicit(&w->pool->gq_len, memory_order_relaxed) ||
                 dq_nonempty(&w->dq));
}

/* ---- announced blocking ---- */

void xs_pool_block_begin(void)
{
    worker *w = self;
    if (!w || w->depth++ > 0)
        return;
    w->saved_hook = xs__park_swap_hook(NULL);
    if (w->saved_hook)
        w->saved_hook->block(w->saved_hook);
}

void xs_pool_block_end(void)
{
    worker *w = self;
    if (!w || w->depth == 0 || --w->depth > 0)
        return;
    if (w->saved_hook) {
        w->saved_hook->unblock(w->saved_hook);
        xs__park_swap_hook(w->saved_hook);
    }
}

int xs_pool_threads(const xs_pool *p)
{
    return p ? atomic_load_explicit(&((xs_pool *)p)->nthreads, memory_order_relaxed) : 0;
}

int xs__pool_idle_threads(const xs_pool *p)
{
    return atomic_load_explicit(&((xs_pool *)p)->nidle, memory_order_relaxed);
}

int xs_pool_workers(const xs_pool *p)
{
    return p ? p->workers : 0;
}
