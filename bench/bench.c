/*
 * bench.c — the xsync-bench driver: registry, flag parsing, the b.N growth
 * loop, timers, allocation counting, parallel runs and go-test style output.
 *
 * Semantics follow Go's testing.B (see bench.h); the output format follows
 * `go test -bench` so benchstat reads it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "bench.h"

#include <xsync/alloc.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <regex.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_PREDICTED_N 1000000000LL /* growth never asks for more (Go's cap) */
#define PROGRESS_AFTER_NS 2000000000LL
#define MAX_PROCS 65536
#define MAX_THREADS 65536

/* ------------------------------------------------------------------------ */
/* registry                                                                  */

typedef struct entry {
    char *name;
    xs_bench_fn fn;
    void *arg;
    unsigned flags;
} entry;

static entry *g_entries;
static size_t g_nentries, g_capentries;
static bool g_register_error;

static bool valid_name(const char *name)
{
    if (strncmp(name, "Benchmark", 9) != 0)
        return false;
    for (const char *p = name; *p; p++)
        if (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '\v' || *p == '\f')
            return false;
    return true;
}

void xs_bench_register(const char *name, xs_bench_fn fn, void *arg, unsigned flags)
{
    if (!name || !fn || !valid_name(name)) {
        fprintf(stderr, "xsync-bench: invalid benchmark registration %s%s%s "
                "(names start with \"Benchmark\" and contain no whitespace)\n",
                name ? "\"" : "", name ? name : "(null name)", name ? "\"" : "");
        g_register_error = true;
        return;
    }
    if (g_nentries == g_capentries) {
        size_t cap = g_capentries ? 2 * g_capentries : 64;
        entry *v = realloc(g_entries, cap * sizeof *v);
        if (!v) {
            fprintf(stderr, "xsync-bench: out of memory registering %s\n", name);
            g_register_error = true;
            return;
        }
        g_entries = v;
        g_capentries = cap;
    }
    char *copy = strdup(name);
    if (!copy) {
        fprintf(stderr, "xsync-bench: out of memory registering %s\n", name);
        g_register_error = true;
        return;
    }
    g_entries[g_nentries++] = (entry){copy, fn, arg, flags};
}

void xs_bench_registerf(xs_bench_fn fn, void *arg, unsigned flags, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (len < 0 || (size_t)len >= sizeof buf) {
        fprintf(stderr, "xsync-bench: benchmark name too long: %.60s...\n", buf);
        g_register_error = true;
        return;
    }
    xs_bench_register(buf, fn, arg, flags);
}

/* "Natural" order: digit runs compare as numbers, so /20 sorts before /100. */
static int natural_cmp(const char *a, const char *b)
{
    while (*a && *b) {
        if (*a >= '0' && *a <= '9' && *b >= '0' && *b <= '9') {
            const char *a0 = a, *b0 = b;
            while (*a0 == '0')
                a0++;
            while (*b0 == '0')
                b0++;
            const char *a1 = a0, *b1 = b0;
            while (*a1 >= '0' && *a1 <= '9')
                a1++;
            while (*b1 >= '0' && *b1 <= '9')
                b1++;
            if (a1 - a0 != b1 - b0)
                return a1 - a0 < b1 - b0 ? -1 : 1;
            int c = strncmp(a0, b0, (size_t)(a1 - a0));
            if (c)
                return c;
            /* equal values: fewer leading zeros first, for a total order */
            if (a0 - a != b0 - b)
                return a0 - a < b0 - b ? -1 : 1;
            a = a1;
            b = b1;
            continue;
        }
        if (*a != *b)
            return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
        a++;
        b++;
    }
    return (unsigned char)*a - (unsigned char)*b;
}

static int entry_cmp(const void *x, const void *y)
{
    const entry *a = x, *b = y;
    int c = natural_cmp(a->name, b->name);
    return c ? c : strcmp(a->name, b->name);
}

/* ------------------------------------------------------------------------ */
/* time and allocation counting                                              */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/*
 * Allocation counting.  Each thread counts in a slot of its own (a relaxed
 * load and store on its own cache line, no read-modify-write), so counting
 * does not serialise parallel benchmarks the way one shared counter would;
 * totals are sums over every thread's slot.  Slots and counting allocators
 * live for the whole process: objects created during a run keep the
 * allocator they were created with, possibly past the run, so a counter is
 * never freed.  Normally there is exactly one counting allocator, wrapping
 * the default seen at the first run.  Results use deltas of the totals.
 */
typedef struct slot {
    _Atomic int64_t allocs, bytes;
    struct slot *next;
} __attribute__((aligned(64))) slot;

static _Atomic(slot *) g_slots;
static _Thread_local slot *tl_slot;

static slot *my_slot(void)
{
    if (!tl_slot) {
        slot *s = aligned_alloc(64, sizeof *s);
        if (!s)
            return NULL;
        memset(s, 0, sizeof *s);
        s->next = atomic_load_explicit(&g_slots, memory_order_relaxed);
        /* Release: a reader walking the list sees the slot initialised. */
        while (!atomic_compare_exchange_weak_explicit(&g_slots, &s->next, s, memory_order_release,
                                                      memory_order_relaxed))
            ;
        tl_slot = s;
    }
    return tl_slot;
}

static void bump(_Atomic int64_t *v, int64_t d)
{
    /* Only this thread writes its slot: no RMW needed. */
    atomic_store_explicit(v, atomic_load_explicit(v, memory_order_relaxed) + d,
                          memory_order_relaxed);
}

typedef struct counter {
    xs_allocator allocator;
    const xs_allocator *inner;
    struct counter *next;
} counter;

static void *count_alloc(void *state, size_t size)
{
    counter *c = state;
    void *p = c->inner->alloc(c->inner->state, size);
    slot *s = p ? my_slot() : NULL;
    if (s) {
        bump(&s->allocs, 1);
        bump(&s->bytes, (int64_t)size);
    }
    return p;
}

static void count_free(void *state, void *ptr, size_t size)
{
    counter *c = state;
    c->inner->free(c->inner->state, ptr, size);
}

static counter *g_counters;

static counter *counter_wrapping(const xs_allocator *inner)
{
    for (counter *n = g_counters; n; n = n->next)
        if (n->inner == inner || &n->allocator == inner)
            return n;
    counter *n = calloc(1, sizeof *n);
    if (!n)
        return NULL;
    n->allocator = (xs_allocator){count_alloc, count_free, n};
    n->inner = inner;
    n->next = g_counters;
    g_counters = n;
    return n;
}

static int64_t total_allocs(void)
{
    int64_t t = 0;
    for (slot *s = atomic_load_explicit(&g_slots, memory_order_acquire); s; s = s->next)
        t += atomic_load_explicit(&s->allocs, memory_order_relaxed);
    return t;
}

static int64_t total_bytes(void)
{
    int64_t t = 0;
    for (slot *s = atomic_load_explicit(&g_slots, memory_order_acquire); s; s = s->next)
        t += atomic_load_explicit(&s->bytes, memory_order_relaxed);
    return t;
}

/* ------------------------------------------------------------------------ */
/* per-run state                                                             */

struct xs_bench {
    const entry *e;
    int procs;
    int parallelism;
    int64_t n;
    pthread_t owner;           /* the thread running the benchmark function */

    bool timer_on;
    int64_t start_ns;
    int64_t duration_ns;       /* accumulated while the timer was on */
    counter *ctr;              /* installed as the default during a run */
    int64_t start_allocs, start_bytes;
    int64_t net_allocs, net_bytes;
    int64_t bytes_per_op;

    int64_t prev_n, prev_duration_ns; /* the previous run, for the grain */

    pthread_mutex_t mu;        /* guards msgs */
    atomic_bool failed;
    char *msgs;
    size_t msgs_len;
};

int64_t xs_bench_n(const xs_bench *b)
{
    return b->n;
}

int xs_bench_procs(const xs_bench *b)
{
    return b->procs;
}

const char *xs_bench_name(const xs_bench *b)
{
    return b->e->name;
}

void xs_bench_set_bytes(xs_bench *b, int64_t n)
{
    b->bytes_per_op = n;
}

void xs_bench_set_parallelism(xs_bench *b, int p)
{
    if (p >= 1)
        b->parallelism = p;
}

static void vfail(xs_bench *b, const char *fmt, va_list ap)
{
    char line[1024];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t len = strlen(line);
    while (len && line[len - 1] == '\n')
        line[--len] = '\0';
    pthread_mutex_lock(&b->mu);
    /* "    message\n", continuation lines indented the same way */
    size_t extra = 4 + len + 1;
    for (size_t i = 0; i < len; i++)
        if (line[i] == '\n')
            extra += 4;
    char *m = realloc(b->msgs, b->msgs_len + extra + 1);
    if (m) {
        b->msgs = m;
        char *w = m + b->msgs_len;
        memcpy(w, "    ", 4);
        w += 4;
        for (size_t i = 0; i < len; i++) {
            *w++ = line[i];
            if (line[i] == '\n') {
                memcpy(w, "    ", 4);
                w += 4;
            }
        }
        *w++ = '\n';
        *w = '\0';
        b->msgs_len = (size_t)(w - m);
    }
    atomic_store(&b->failed, true);
    pthread_mutex_unlock(&b->mu);
}

void xs_bench_fail(xs_bench *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(b, fmt, ap);
    va_end(ap);
}

bool xs_bench_failed(const xs_bench *b)
{
    return atomic_load(&b->failed);
}

static bool on_owner_thread(xs_bench *b, const char *what)
{
    if (pthread_equal(pthread_self(), b->owner))
        return true;
    xs_bench_fail(b, "%s called from a thread other than the benchmark's (a parallel body?)", what);
    return false;
}

/* Timer internals (Go's semantics); the public versions check the thread. */
static void timer_start(xs_bench *b)
{
    if (b->timer_on)
        return;
    if (b->ctr) {
        b->start_allocs = total_allocs();
        b->start_bytes = total_bytes();
    }
    b->start_ns = now_ns();
    b->timer_on = true;
}

static void timer_stop(xs_bench *b)
{
    if (!b->timer_on)
        return;
    b->duration_ns += now_ns() - b->start_ns;
    if (b->ctr) {
        b->net_allocs += total_allocs() - b->start_allocs;
        b->net_bytes += total_bytes() - b->start_bytes;
    }
    b->timer_on = false;
}

static void timer_reset(xs_bench *b)
{
    if (b->timer_on) {
        if (b->ctr) {
            b->start_allocs = total_allocs();
            b->start_bytes = total_bytes();
        }
        b->start_ns = now_ns();
    }
    b->duration_ns = 0;
    b->net_allocs = 0;
    b->net_bytes = 0;
}

void xs_bench_start_timer(xs_bench *b)
{
    if (on_owner_thread(b, "xs_bench_start_timer"))
        timer_start(b);
}

void xs_bench_stop_timer(xs_bench *b)
{
    if (on_owner_thread(b, "xs_bench_stop_timer"))
        timer_stop(b);
}

void xs_bench_reset_timer(xs_bench *b)
{
    if (on_owner_thread(b, "xs_bench_reset_timer"))
        timer_reset(b);
}

/* ------------------------------------------------------------------------ */
/* parallel runs                                                             */

bool xs_bench_pb_next_slow(xs_bench_pb *pb)
{
    uint64_t end = atomic_fetch_add_explicit(pb->next_, pb->grain_, memory_order_relaxed) + pb->grain_;
    if (end <= pb->n_)
        pb->cache_ = pb->grain_;
    else if (end < pb->n_ + pb->grain_)
        pb->cache_ = pb->n_ + pb->grain_ - end; /* the last, partial batch */
    else
        return false;
    pb->cache_--;
    return true;
}

int xs_bench_pb_thread(const xs_bench_pb *pb)
{
    return pb->thread_;
}

typedef struct par_shared {
    /* the hot counter alone on its cache line */
    _Alignas(64) _Atomic uint64_t next;
    char pad_[64 - sizeof(uint64_t)];
    uint64_t grain, n;
    void (*body)(xs_bench_pb *pb, void *arg);
    void *arg;
    pthread_mutex_t mu;
    pthread_cond_t ready_cv, go_cv;
    int ready;
    bool go;
    /* the measured span: the first body starting .. the last one returning */
    _Atomic int64_t first_start_ns, last_end_ns;
} par_shared;

typedef struct par_worker {
    par_shared *s;
    int index;
    pthread_t tid;
} par_worker;

static void par_shared_destroy(par_shared *s)
{
    pthread_cond_destroy(&s->go_cv);
    pthread_cond_destroy(&s->ready_cv);
    pthread_mutex_destroy(&s->mu);
}

static void *par_thread(void *p)
{
    par_worker *w = p;
    par_shared *s = w->s;
    pthread_mutex_lock(&s->mu);
    s->ready++;
    pthread_cond_signal(&s->ready_cv);
    while (!s->go)
        pthread_cond_wait(&s->go_cv, &s->mu);
    pthread_mutex_unlock(&s->mu);

    xs_bench_pb pb = {
        .cache_ = 0, .grain_ = s->grain, .n_ = s->n, .next_ = &s->next, .thread_ = w->index};
    int64_t t = now_ns();
    int64_t seen = atomic_load_explicit(&s->first_start_ns, memory_order_relaxed);
    while (t < seen && !atomic_compare_exchange_weak_explicit(&s->first_start_ns, &seen, t,
                                                              memory_order_relaxed,
                                                              memory_order_relaxed)) {
    }
    s->body(&pb, s->arg);
    t = now_ns();
    seen = atomic_load_explicit(&s->last_end_ns, memory_order_relaxed);
    while (t > seen && !atomic_compare_exchange_weak_explicit(&s->last_end_ns, &seen, t,
                                                              memory_order_relaxed,
                                                              memory_order_relaxed)) {
    }
    return NULL;
}

void xs_bench_run_parallel(xs_bench *b, void (*body)(xs_bench_pb *pb, void *arg), void *arg)
{
    /* also rejects a nested call from a body */
    if (!on_owner_thread(b, "xs_bench_run_parallel"))
        return;
    /* A batch is ~100 us of work at the previous run's speed, within [1, 1e4]. */
    uint64_t grain = 1;
    if (b->prev_n > 0 && b->prev_duration_ns > 0) {
        double g = 1e5 * (double)b->prev_n / (double)b->prev_duration_ns;
        grain = g < 1 ? 1 : g > 1e4 ? 10000 : (uint64_t)g;
    }
    int64_t nthreads64 = (int64_t)b->procs * b->parallelism;
    if (nthreads64 > MAX_THREADS) {
        xs_bench_fail(b, "xs_bench_run_parallel: %lld threads is too many",
                      (long long)nthreads64);
        return;
    }
    int nthreads = (int)nthreads64;

    par_shared s;
    memset(&s, 0, sizeof s);
    atomic_init(&s.next, 0);
    atomic_init(&s.first_start_ns, INT64_MAX);
    atomic_init(&s.last_end_ns, INT64_MIN);
    s.grain = grain;
    s.n = (uint64_t)b->n;
    s.body = body;
    s.arg = arg;
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.ready_cv, NULL);
    pthread_cond_init(&s.go_cv, NULL);

    par_worker *w = calloc((size_t)nthreads, sizeof *w);
    if (!w) {
        xs_bench_fail(b, "xs_bench_run_parallel: out of memory");
        par_shared_destroy(&s);
        return;
    }

    /*
     * Only the span from the first body starting to the last one returning
     * is timed: thread creation, wake-up and exit are not.  Allocations are
     * counted from the release to the join.
     */
    bool timed = b->timer_on;
    timer_stop(b);

    int started = 0;
    bool abort_run = false;
    for (; started < nthreads; started++) {
        w[started].s = &s;
        w[started].index = started;
        int err = pthread_create(&w[started].tid, NULL, par_thread, &w[started]);
        if (err) {
            xs_bench_fail(b, "xs_bench_run_parallel: pthread_create (thread %d of %d): %s",
                          started + 1, nthreads, strerror(err));
            abort_run = true;
            break;
        }
    }
    pthread_mutex_lock(&s.mu);
    while (s.ready < started)
        pthread_cond_wait(&s.ready_cv, &s.mu);
    pthread_mutex_unlock(&s.mu);
    if (abort_run) /* the started threads see no iterations at all */
        atomic_store_explicit(&s.next, UINT64_MAX / 2, memory_order_relaxed);

    int64_t allocs0 = 0, bytes0 = 0;
    if (b->ctr) {
        allocs0 = total_allocs();
        bytes0 = total_bytes();
    }
    pthread_mutex_lock(&s.mu);
    s.go = true;
    pthread_cond_broadcast(&s.go_cv);
    pthread_mutex_unlock(&s.mu);
    for (int i = 0; i < started; i++)
        pthread_join(w[i].tid, NULL);
    if (timed) {
        int64_t t0 = atomic_load(&s.first_start_ns), t1 = atomic_load(&s.last_end_ns);
        if (started > 0 && t1 >= t0)
            b->duration_ns += t1 - t0;
        if (b->ctr) {
            b->net_allocs += total_allocs() - allocs0;
            b->net_bytes += total_bytes() - bytes0;
        }
        timer_start(b);
    }

    if (!abort_run && atomic_load(&s.next) <= s.n && !xs_bench_failed(b))
        xs_bench_fail(b, "xs_bench_run_parallel: body returned before xs_bench_pb_next() was false");
    free(w);
    par_shared_destroy(&s);
}

/* ------------------------------------------------------------------------ */
/* the b.N growth loop                                                       */

typedef struct options {
    const char *bench_re;
    int64_t benchtime_ns;  /* > 0: run for this long */
    int64_t benchtime_n;   /* > 0: run exactly this many iterations */
    int count;
    int *cpus;
    int ncpus;
    bool full;
    const char *list_re;
    const char *skip_re;
    bool has_skip;
    regex_t skip; /* compiled skip_re, when has_skip */
} options;

typedef struct result {
    int64_t n, duration_ns, bytes_per_op, allocs, bytes;
} result;

static void run_n(xs_bench *b, int64_t n)
{
    b->n = n;
    b->parallelism = 1;
    b->ctr = counter_wrapping(xs_allocator_default());
    if (!b->ctr) {
        xs_bench_fail(b, "out of memory for the counting allocator");
        return;
    }
    const xs_allocator *prev = xs_allocator_set_default(&b->ctr->allocator);

    timer_reset(b);
    timer_start(b);
    b->e->fn(b, b->e->arg);
    timer_stop(b);

    xs_allocator_set_default(prev);
    b->prev_n = n;
    b->prev_duration_ns = b->duration_ns;
}

/* The smallest of 1, 2, 3, 5 times a power of ten that is >= n. */
static int64_t round_up_nice(int64_t n)
{
    int64_t base = 1;
    while (base <= n / 10)
        base *= 10;
    /* base is the largest power of ten <= n */
    if (n <= base)
        return base;
    if (n <= 2 * base)
        return 2 * base;
    if (n <= 3 * base)
        return 3 * base;
    if (n <= 5 * base)
        return 5 * base;
    return 10 * base;
}

static int64_t predict_n(int64_t goal_ns, int64_t prev_n, int64_t prev_ns)
{
    if (prev_ns <= 0)
        prev_ns = 1;
    /* in floating point: goal * prev_n can overflow int64 for long -benchtime */
    double want = (double)goal_ns * (double)prev_n / (double)prev_ns;
    want += want / 5; /* 20% headroom */
    int64_t n;
    if (want >= 100.0 * (double)prev_n)
        n = 100 * prev_n;
    else
        n = (int64_t)want;
    if (n < prev_n + 1)
        n = prev_n + 1;
    if (n > MAX_PREDICTED_N)
        n = MAX_PREDICTED_N;
    return round_up_nice(n);
}

static void display_name(char *buf, size_t size, const char *name, int procs)
{
    if (procs == 1)
        snprintf(buf, size, "%s", name);
    else
        snprintf(buf, size, "%s-%d", name, procs);
}

static void format_duration(char *buf, size_t size, int64_t ns)
{
    if (ns >= 1000000000)
        snprintf(buf, size, "%.2fs", (double)ns / 1e9);
    else
        snprintf(buf, size, "%.1fms", (double)ns / 1e6);
}

/* Returns false if the benchmark failed; b->msgs then holds the reasons. */
static bool measure(xs_bench *b, const options *o, const char *shown, result *r)
{
    int64_t t0 = now_ns();
    run_n(b, 1);
    if (o->benchtime_n > 0) {
        if (!xs_bench_failed(b) && o->benchtime_n > 1)
            run_n(b, o->benchtime_n);
    } else {
        while (!xs_bench_failed(b) && b->duration_ns < o->benchtime_ns &&
               b->n < MAX_PREDICTED_N) {
            run_n(b, predict_n(o->benchtime_ns, b->n, b->duration_ns));
            int64_t wall = now_ns() - t0;
            if (wall > PROGRESS_AFTER_NS) {
                char el[32];
                format_duration(el, sizeof el, wall);
                fprintf(stderr, "  %s: n=%lld, elapsed %s\n", shown, (long long)b->n, el);
            }
        }
    }
    r->n = b->n;
    r->duration_ns = b->duration_ns;
    r->bytes_per_op = b->bytes_per_op;
    r->allocs = b->net_allocs;
    r->bytes = b->net_bytes;
    return !xs_bench_failed(b);
}

/* ------------------------------------------------------------------------ */
/* output                                                                    */

/* Go's prettyPrint: ten places before the point, four significant digits. */
static int pretty(char *buf, size_t size, double x, const char *unit)
{
    static const double limit[] = {999.95, 99.995, 9.9995, 0.99995, 0.099995, 0.0099995, 0.00099995};
    double y = x < 0 ? -x : x;
    int decimals = 0;
    if (y != 0)
        while (decimals < 7 && y < limit[decimals])
            decimals++;
    int width = decimals ? 11 + decimals : 10;
    return snprintf(buf, size, "%*.*f %s", width, decimals, x, unit);
}

static void print_result(const char *shown, int width, const result *r)
{
    char line[512];
    size_t len = 0;
    len += (size_t)snprintf(line + len, sizeof line - len, "%-*s\t%8lld", width, shown,
                            (long long)r->n);
    double ns = (double)r->duration_ns / (double)r->n;
    if (ns != 0) {
        line[len++] = '\t';
        len += (size_t)pretty(line + len, sizeof line - len, ns, "ns/op");
    }
    if (r->bytes_per_op > 0 && r->duration_ns > 0) {
        double mbs = ((double)r->bytes_per_op * (double)r->n / 1e6) / ((double)r->duration_ns / 1e9);
        if (mbs != 0)
            len += (size_t)snprintf(line + len, sizeof line - len, "\t%7.2f MB/s", mbs);
    }
    snprintf(line + len, sizeof line - len, "\t%8lld B/op\t%8lld allocs/op\n",
             (long long)(r->bytes / r->n), (long long)(r->allocs / r->n));
    fputs(line, stdout);
    fflush(stdout);
}

static const char *goos(void)
{
#if defined(__linux__)
    return "linux";
#elif defined(__APPLE__)
    return "darwin";
#elif defined(__FreeBSD__)
    return "freebsd";
#elif defined(__NetBSD__)
    return "netbsd";
#elif defined(__OpenBSD__)
    return "openbsd";
#else
    return "unknown";
#endif
}

static const char *goarch(void)
{
#if defined(__x86_64__)
    return "amd64";
#elif defined(__i386__)
    return "386";
#elif defined(__aarch64__)
    return "arm64";
#elif defined(__arm__)
    return "arm";
#elif defined(__riscv) && __riscv_xlen == 64
    return "riscv64";
#elif defined(__powerpc64__) && defined(__LITTLE_ENDIAN__)
    return "ppc64le";
#elif defined(__powerpc64__)
    return "ppc64";
#elif defined(__s390x__)
    return "s390x";
#elif defined(__loongarch64)
    return "loong64";
#elif defined(__mips64) && defined(__MIPSEL__)
    return "mips64le";
#elif defined(__mips64)
    return "mips64";
#else
    return "unknown";
#endif
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t len = strlen(s);
    while (len && (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\n' || s[len - 1] == '\r'))
        s[--len] = '\0';
    return s;
}

/* The CPU model from /proc/cpuinfo ("model name", else ARM's "Model"); "" if none. */
static void cpu_name(char *out, size_t size)
{
    out[0] = '\0';
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char *line = NULL;
    size_t cap = 0;
    bool exact = false;
    while (!exact && getline(&line, &cap, f) > 0) {
        char *colon = strchr(line, ':');
        if (!colon)
            continue;
        *colon = '\0';
        char *key = trim(line), *value = trim(colon + 1);
        if (!*value)
            continue;
        if (strcmp(key, "model name") == 0) {
            snprintf(out, size, "%s", value);
            exact = true;
        } else if (strcmp(key, "Model") == 0 && !out[0]) {
            snprintf(out, size, "%s", value);
        }
    }
    free(line);
    fclose(f);
}

static void print_header(void)
{
    char cpu[256];
    cpu_name(cpu, sizeof cpu);
    printf("goos: %s\ngoarch: %s\npkg: xsync\n", goos(), goarch());
    if (cpu[0])
        printf("cpu: %s\n", cpu);
    fflush(stdout);
}

/* ------------------------------------------------------------------------ */
/* flags                                                                     */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: xsync-bench [flags]\n"
            "  -bench REGEX     run benchmarks whose name matches REGEX (POSIX extended;\n"
            "                   default \".\", all)\n"
            "  -benchtime D     run each benchmark for duration D (1s, 200ms, 500us, 2m,\n"
            "                   1m30s) or exactly N iterations if D is Nx (default 1s)\n"
            "  -count N         run each benchmark N times (default 1)\n"
            "  -cpu LIST        comma-separated P values; a parallel benchmark runs P\n"
            "                   threads and names get a -P suffix when P > 1\n"
            "                   (default: the number of usable CPUs)\n"
            "  -skip REGEX      leave out benchmarks matching REGEX (after -bench)\n"
            "  -full            include the slow benchmarks of the full set\n"
            "  -list REGEX      print the names of matching benchmarks and exit\n"
            "                   (honours -full)\n"
            "  -benchmem        accepted for go test compatibility (always on)\n"
            "  -h               show this help\n"
            "Flags may be written -flag value, -flag=value, --flag or -test.flag.\n"
            "Output is in go test format: pipe it into benchstat.\n");
}

static int usage_error(const char *fmt, const char *arg)
{
    fputs("xsync-bench: ", stderr);
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    usage(stderr);
    return 2;
}

/* Go's time.ParseDuration, without signs: [digits][.digits]unit, repeated. */
static bool parse_duration(const char *s, int64_t *out)
{
    static const struct {
        const char *unit;
        double ns;
    } units[] = {{"ns", 1}, {"us", 1e3}, {"\xc2\xb5s", 1e3}, {"\xce\xbcs", 1e3}, {"ms", 1e6},
                 {"s", 1e9}, {"m", 60e9}, {"h", 3600e9}};
    if (strcmp(s, "0") == 0) {
        *out = 0;
        return true;
    }
    if (!*s)
        return false;
    double total = 0;
    while (*s) {
        const char *start = s;
        double v = 0;
        while (*s >= '0' && *s <= '9')
            v = v * 10 + (*s++ - '0');
        bool digits = s > start;
        if (*s == '.') {
            s++;
            double scale = 0.1;
            const char *frac = s;
            while (*s >= '0' && *s <= '9') {
                v += (*s++ - '0') * scale;
                scale /= 10;
            }
            digits = digits || s > frac;
        }
        if (!digits)
            return false;
        /* longest matching unit ("ms" before "m") */
        size_t best = 0;
        double mult = 0;
        for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
            size_t len = strlen(units[i].unit);
            if (len > best && strncmp(s, units[i].unit, len) == 0) {
                best = len;
                mult = units[i].ns;
            }
        }
        if (!best)
            return false;
        s += best;
        total += v * mult;
    }
    if (total >= 9.2e18)
        return false;
    *out = (int64_t)(total + 0.5);
    return true;
}

static bool parse_int(const char *s, long long min, long long max, long long *out)
{
    if (!*s)
        return false;
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9')
            return false;
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return false;
    *out = v;
    return true;
}

static bool parse_benchtime(const char *s, options *o)
{
    size_t len = strlen(s);
    if (len > 1 && s[len - 1] == 'x') {
        char num[32];
        long long n;
        if (len - 1 >= sizeof num)
            return false;
        memcpy(num, s, len - 1);
        num[len - 1] = '\0';
        if (!parse_int(num, 1, LLONG_MAX, &n))
            return false;
        o->benchtime_n = n;
        o->benchtime_ns = 0;
        return true;
    }
    int64_t d;
    if (!parse_duration(s, &d) || d <= 0)
        return false;
    o->benchtime_ns = d;
    o->benchtime_n = 0;
    return true;
}

static bool parse_cpus(const char *s, options *o)
{
    size_t cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    int *cpus = calloc(cap, sizeof *cpus);
    if (!cpus)
        return false;
    int n = 0;
    char *copy = strdup(s);
    if (!copy) {
        free(cpus);
        return false;
    }
    char *save = NULL;
    bool ok = true;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        tok = trim(tok);
        if (!*tok)
            continue;
        long long v;
        if (!parse_int(tok, 1, MAX_PROCS, &v)) {
            ok = false;
            break;
        }
        cpus[n++] = (int)v;
    }
    free(copy);
    if (!ok || n == 0) {
        free(cpus);
        return false;
    }
    free(o->cpus);
    o->cpus = cpus;
    o->ncpus = n;
    return true;
}

static int usable_cpus(void)
{
#ifdef CPU_COUNT
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return n;
    }
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)(n < MAX_PROCS ? n : MAX_PROCS) : 1;
}

/* Returns -1 to go on, else the exit status. */
static int parse_flags(int argc, char **argv, options *o)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' || a[1] == '\0')
            return usage_error("unexpected argument %s", a);
        a += a[1] == '-' ? 2 : 1;
        if (strncmp(a, "test.", 5) == 0)
            a += 5;
        char name[32];
        const char *eq = strchr(a, '=');
        size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
        if (nlen == 0 || nlen >= sizeof name)
            return usage_error("flag provided but not defined: %s", argv[i]);
        memcpy(name, a, nlen);
        name[nlen] = '\0';
        const char *value = eq ? eq + 1 : NULL;

        if (strcmp(name, "h") == 0 || strcmp(name, "help") == 0) {
            usage(stderr);
            return 0;
        }
        if (strcmp(name, "full") == 0 || strcmp(name, "benchmem") == 0) {
            bool v = true;
            if (value) {
                if (!strcmp(value, "true") || !strcmp(value, "1"))
                    v = true;
                else if (!strcmp(value, "false") || !strcmp(value, "0"))
                    v = false;
                else
                    return usage_error("invalid boolean value for -%s", name);
            }
            if (name[0] == 'f')
                o->full = v;
            else if (!v)
                return usage_error("%s: allocation counting is always on", "-benchmem=false");
            continue;
        }
        bool known = !strcmp(name, "bench") || !strcmp(name, "benchtime") ||
                     !strcmp(name, "count") || !strcmp(name, "cpu") || !strcmp(name, "list") ||
                     !strcmp(name, "skip");
        if (!known)
            return usage_error("flag provided but not defined: %s", argv[i]);
        if (!value) {
            if (i + 1 >= argc)
                return usage_error("flag needs an argument: -%s", name);
            value = argv[++i];
        }
        if (!strcmp(name, "bench")) {
            o->bench_re = value;
        } else if (!strcmp(name, "list")) {
            o->list_re = value;
        } else if (!strcmp(name, "skip")) {
            o->skip_re = value;
        } else if (!strcmp(name, "benchtime")) {
            if (!parse_benchtime(value, o))
                return usage_error("invalid value \"%s\" for -benchtime", value);
        } else if (!strcmp(name, "count")) {
            long long v;
            if (!parse_int(value, 1, INT_MAX, &v))
                return usage_error("invalid value \"%s\" for -count", value);
            o->count = (int)v;
        } else { /* cpu */
            if (!parse_cpus(value, o))
                return usage_error("invalid value \"%s\" for -cpu", value);
        }
    }
    return -1;
}

static bool compile_re(regex_t *re, const char *pattern, const char *flag)
{
    int err = regcomp(re, pattern, REG_EXTENDED | REG_NOSUB);
    if (err) {
        char msg[256];
        regerror(err, re, msg, sizeof msg);
        fprintf(stderr, "xsync-bench: invalid regexp for -%s \"%s\": %s\n", flag, pattern, msg);
        return false;
    }
    return true;
}

static bool selected(const entry *e, const regex_t *re, const options *o)
{
    if ((e->flags & XS_BENCH_FULL) && !o->full)
        return false;
    if (o->has_skip && regexec(&o->skip, e->name, 0, NULL, 0) == 0)
        return false;
    return regexec(re, e->name, 0, NULL, 0) == 0;
}

/* ------------------------------------------------------------------------ */
/* main                                                                      */

static void free_registry(void)
{
    for (size_t i = 0; i < g_nentries; i++)
        free(g_entries[i].name);
    free(g_entries);
    g_entries = NULL;
    g_nentries = g_capentries = 0;
}

static int run_all(const options *o)
{
    regex_t re;
    if (o->list_re) {
        if (!compile_re(&re, o->list_re, "list"))
            return 2;
        for (size_t i = 0; i < g_nentries; i++)
            if (selected(&g_entries[i], &re, o))
                printf("%s\n", g_entries[i].name);
        regfree(&re);
        return 0;
    }
    if (!compile_re(&re, o->bench_re, "bench"))
        return 2;

    int maxprocs = 1;
    for (int i = 0; i < o->ncpus; i++)
        if (o->cpus[i] > maxprocs)
            maxprocs = o->cpus[i];
    /* Go's name column: longest name with the widest -P suffix, plus that
     * suffix's length again, plus one. */
    char suffix[16] = "";
    if (maxprocs != 1)
        snprintf(suffix, sizeof suffix, "-%d", maxprocs);
    size_t ext = strlen(suffix);
    size_t width = 0;
    size_t nselected = 0;
    for (size_t i = 0; i < g_nentries; i++) {
        if (!selected(&g_entries[i], &re, o))
            continue;
        nselected++;
        size_t w = strlen(g_entries[i].name) + 2 * ext + 1;
        if (w > width)
            width = w;
    }

    bool all_ok = true;
    if (nselected == 0)
        fprintf(stderr, "xsync-bench: warning: no benchmarks match -bench \"%s\"%s\n", o->bench_re,
                o->full ? "" : " (full-set benchmarks need -full)");
    else
        print_header();

    for (size_t i = 0; i < g_nentries; i++) {
        const entry *e = &g_entries[i];
        if (!selected(e, &re, o))
            continue;
        for (int c = 0; c < o->ncpus; c++) {
            for (int rep = 0; rep < o->count; rep++) {
                char shown[600];
                display_name(shown, sizeof shown, e->name, o->cpus[c]);
                xs_bench b;
                memset(&b, 0, sizeof b);
                b.e = e;
                b.procs = o->cpus[c];
                b.parallelism = 1;
                b.owner = pthread_self();
                pthread_mutex_init(&b.mu, NULL);
                atomic_init(&b.failed, false);
                result r;
                if (measure(&b, o, shown, &r)) {
                    print_result(shown, (int)width, &r);
                } else {
                    all_ok = false;
                    printf("--- FAIL: %s\n%s", shown, b.msgs ? b.msgs : "");
                    fflush(stdout);
                }
                free(b.msgs);
                pthread_mutex_destroy(&b.mu);
            }
        }
    }
    regfree(&re);
    puts(all_ok ? "PASS" : "FAIL");
    fflush(stdout);
    return all_ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    options o = {.bench_re = ".", .benchtime_ns = 1000000000, .count = 1};
    int status = parse_flags(argc, argv, &o);
    if (status < 0 && !o.cpus) {
        o.cpus = malloc(sizeof *o.cpus);
        if (!o.cpus) {
            fprintf(stderr, "xsync-bench: out of memory\n");
            status = 1;
        } else {
            o.cpus[0] = usable_cpus();
            o.ncpus = 1;
        }
    }
    if (status < 0 && g_register_error)
        status = 2;
    if (status < 0) {
        qsort(g_entries, g_nentries, sizeof *g_entries, entry_cmp);
        for (size_t i = 1; i < g_nentries; i++) {
            if (strcmp(g_entries[i - 1].name, g_entries[i].name) == 0) {
                fprintf(stderr, "xsync-bench: benchmark %s registered twice\n", g_entries[i].name);
                status = 2;
            }
        }
    }
    if (status < 0 && o.skip_re) {
        if (compile_re(&o.skip, o.skip_re, "skip"))
            o.has_skip = true;
        else
            status = 2;
    }
    if (status < 0)
        status = run_all(&o);
    if (o.has_skip)
        regfree(&o.skip);
    free(o.cpus);
    free_registry();
    return status;
}
