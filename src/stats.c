/*
 * stats — stat sources: the vtable's checked entry points, the in-memory
 * registry, its Prometheus text rendering, and the statsd emitter.
 *
 * Stripes.  A value many threads add to (a registry counter, a timer's sum,
 * a statsd counter's pending delta) is an array of 64-byte cells, one per
 * stripe; a thread always adds to the stripe it was dealt on first use
 * (round-robin over all threads of the process), so threads running at the
 * same time mostly write different cache lines.  A read sums the cells; a
 * statsd flush exchanges each that is not 0 with 0.  Emitting uses relaxed atomics
 * throughout: a metric is a tally, not a synchronisation, and readers that
 * need exact values get them from joining the emitters.
 *
 * Timers (registry).  A log-linear histogram: bucket_of(v) is exact below
 * 256; above, [2^k, 2^(k+1)) is cut into 128 buckets of width 2^(k-7).
 * With shift = max(0, k - 7) the index is shift * 128 + (v >> shift): the
 * top 8 bits of v select the bucket within its range.  7296 buckets cover
 * 0..INT64_MAX.  Count is the sum of the buckets (no separate counter to
 * contend on); min and max are CAS-updated only when a record improves
 * them, which after the first few records is rare, so their line stays
 * shared-clean.  The buckets are striped lazily: every stripe starts on the
 * timer's shared histogram (stripe 0 with plain adds, the others with a
 * CAS, which fails only when another thread changed the bucket meanwhile);
 * the first such failure, or the stripe's SHARED_RECORDS-th record there
 * (neighbouring buckets share a line: no CAS fails, yet the line bounces),
 * gives the stripe a histogram of its own.  Reads
 * sum a bucket over all histograms.
 *
 * statsd.  Counter adds go to the counter's stripes; a flush takes the
 * accumulated delta.  Timer records go through a bounded MPMC queue
 * (Vyukov's: each slot has a sequence number; a producer claims a position
 * with one CAS and publishes the slot with a release store of its sequence,
 * the flusher — one at a time, under flush_mu — consumes slots whose
 * sequence says "full" and hands them back with another release store).
 * Producers never wait for each other or for the flusher: a full queue is a
 * counted drop.  A flush consumes only the positions claimed before it
 * began.  The periodic flush is a timer on an xs_clock (timer.h) that
 * re-arms itself and hands the flush to the default pool; see sd_tick for
 * how freeing races with both.
 */
#include <xsync/map.h>
#include <xsync/pool.h>
#include <xsync/stats.h>

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hash.h"
#include "internal.h"
#include "timer.h"

/* ====================================================================== */
/* The vtable's checked entry points                                      */
/* ====================================================================== */

int xs_stat_counter_get(xs_stat_source *src, const char *name, xs_stat_counter **out)
{
    if (!src || !src->ops || !src->ops->counter || !name || !out)
        return XS_EINVAL;
    return src->ops->counter(src, name, out);
}

int xs_stat_timer_get(xs_stat_source *src, const char *name, xs_stat_timer **out)
{
    if (!src || !src->ops || !src->ops->timer || !name || !out)
        return XS_EINVAL;
    return src->ops->timer(src, name, out);
}

void xs_stat_source_free(xs_stat_source *src)
{
    if (src && src->ops && src->ops->free)
        src->ops->free(src);
}

/* ====================================================================== */
/* Shared pieces: stripes, line-aligned blocks, names, numbers            */
/* ====================================================================== */

#define LINE 64
#define MAX_STRIPES 64

typedef struct cell {
    _Atomic int64_t v;
    /* Registry timers only: the histogram this stripe records into; NULL
     * while it records into the shared one (see reg_timer_record). */
    _Atomic(_Atomic uint64_t *) hist;
    /* Registry timers only: records this stripe made on the shared one,
     * and whether one of its threads is switching it to its own. */
    _Atomic uint32_t shared_n;
    _Atomic bool switching;
    char pad_[LINE - sizeof(int64_t) - sizeof(void *) - sizeof(uint32_t) - sizeof(bool)];
} cell;
_Static_assert(sizeof(cell) == LINE, "a cell is one line");

static _Atomic unsigned stripes_dealt;
static _Thread_local unsigned my_stripe __attribute__((tls_model("initial-exec"))); /* 1 + dealt */

static __attribute__((noinline)) unsigned deal_stripe(void)
{
    /* Relaxed: only spreads threads; any value is correct. */
    unsigned s = (atomic_fetch_add_explicit(&stripes_dealt, 1, memory_order_relaxed) & 0xffff) + 1;
    my_stripe = s;
    return s;
}

static inline unsigned this_stripe(void)
{
    unsigned s = my_stripe;
    if (XS_UNLIKELY(s == 0))
        s = deal_stripe();
    return s - 1;
}

/* Stripes per striped value: the CPU count rounded up to a power of two. */
static unsigned stripe_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_CONF);
    unsigned s = 1;
    while ((long)s < n && s < MAX_STRIPES)
        s <<= 1;
    return s;
}

static inline void cells_add(cell *cells, unsigned mask, int64_t d)
{
    atomic_fetch_add_explicit(&cells[this_stripe() & mask].v, d, memory_order_relaxed);
}

/* Sum with wrap-around (unsigned arithmetic: no signed overflow). */
static int64_t cells_sum(cell *cells, unsigned n)
{
    uint64_t s = 0;
    for (unsigned i = 0; i < n; i++)
        s += (uint64_t)atomic_load_explicit(&cells[i].v, memory_order_relaxed);
    return (int64_t)s;
}

/* Sum and reset.  A stripe that is 0 is only read, so the line stays
 * clean in its adder's cache.  An add that lands after the read is left
 * for the next take, as if it came after this one. */
static int64_t cells_take(cell *cells, unsigned n)
{
    uint64_t s = 0;
    for (unsigned i = 0; i < n; i++)
        if (atomic_load_explicit(&cells[i].v, memory_order_relaxed) != 0)
            s += (uint64_t)atomic_exchange_explicit(&cells[i].v, 0, memory_order_relaxed);
    return (int64_t)s;
}

/*
 * A zeroed block of `size` bytes starting on a cache line, from an
 * allocator that only promises max_align_t: over-allocate by a line and
 * align.  *raw and *raw_size are what to free.
 */
static void *alloc_lined(const xs_allocator *a, size_t size, void **raw, size_t *raw_size)
{
    size_t n = size + LINE - 1;
    void *p = xs__alloc(a, n);
    if (!p)
        return NULL;
    *raw = p;
    *raw_size = n;
    void *q = (void *)(((uintptr_t)p + LINE - 1) & ~(uintptr_t)(LINE - 1));
    memset(q, 0, size);
    return q;
}

/* 1..max bytes: the name's length in *len; otherwise false. */
static bool name_ok(const char *name, size_t max, size_t *len)
{
    if (!name)
        return false;
    size_t n = strnlen(name, max + 1);
    if (n == 0 || n > max)
        return false;
    *len = n;
    return true;
}

/* Decimal digits of v, no sign; returns the length (at most 20). */
static size_t fmt_u64(char *out, uint64_t v)
{
    char d[20];
    size_t n = 0;
    do {
        d[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = d[n - 1 - i];
    return n;
}

static size_t fmt_i64(char *out, int64_t v)
{
    if (v >= 0)
        return fmt_u64(out, (uint64_t)v);
    out[0] = '-';
    return 1 + fmt_u64(out + 1, (uint64_t)0 - (uint64_t)v);
}

/* v / 10^digits as an exact decimal: the fraction's trailing zeros (and a
 * bare '.') dropped.  At most 1 + 20 + 1 + digits bytes. */
static size_t fmt_scaled(char *out, int64_t v, unsigned digits, uint64_t scale)
{
    size_t n = 0;
    uint64_t m = (uint64_t)v;
    if (v < 0) {
        out[n++] = '-';
        m = (uint64_t)0 - m;
    }
    n += fmt_u64(out + n, m / scale);
    uint64_t frac = m % scale;
    if (frac) {
        out[n++] = '.';
        for (unsigned i = digits; i-- > 0;) {
            out[n + i] = (char)('0' + frac % 10);
            frac /= 10;
        }
        n += digits;
        while (out[n - 1] == '0')
            n--;
    }
    return n;
}

/* ====================================================================== */
/* The in-memory registry                                                 */
/* ====================================================================== */

#define SUB_BITS 7
/* index = shift * 128 + (v >> shift): shift 0 gives 0..255, shift 1..55
 * (INT64_MAX has shift 55) give 128 more each. */
#define NBUCKETS (57 << SUB_BITS)

static inline size_t bucket_of(uint64_t v)
{
    unsigned shift = (unsigned)(56 - __builtin_clzll(v | (1u << SUB_BITS)));
    return ((size_t)shift << SUB_BITS) + (size_t)(v >> shift);
}

/* The middle of bucket i: [lo, lo + width). */
static int64_t bucket_mid(size_t i)
{
    if (i < (2u << SUB_BITS))
        return (int64_t)i;
    unsigned shift = (unsigned)(i >> SUB_BITS) - 1;
    uint64_t lo = (uint64_t)(i - ((size_t)shift << SUB_BITS)) << shift;
    return (int64_t)(lo + (((uint64_t)1 << shift) - 1) / 2);
}

typedef struct registry {
    xs_stat_source base;
    const xs_allocator *alloc;
    xs_map *counters;
    xs_map *timers;
    unsigned stripes;
} registry;

/* Both metrics start with this header, alone on the first line of their
 * block (it is read by every emitter; the stripes are written). */
typedef struct reg_counter {
    xs_stat_counter base;
    void *raw;
    size_t raw_size;
    const char *name;
    unsigned mask; /* stripes - 1 */
} reg_counter;

typedef struct reg_timer {
    xs_stat_timer base;
    void *raw;
    size_t raw_size;
    const char *name;
    unsigned mask;
    _Atomic int64_t min; /* INT64_MAX while empty */
    _Atomic int64_t max; /* -1 while empty */
    const xs_allocator *alloc; /* for stripe histograms */
} reg_timer;

/* The block after the header line: the stripes, then (timers) the buckets. */
static inline cell *stripes_of(void *metric)
{
    return (cell *)(void *)((char *)metric + LINE);
}

static inline _Atomic uint64_t *buckets_of(reg_timer *t)
{
    return (_Atomic uint64_t *)(void *)((char *)t + LINE + ((size_t)t->mask + 1) * LINE);
}

_Static_assert(sizeof(reg_counter) <= LINE && sizeof(reg_timer) <= LINE,
               "a metric's header fits one line");

static const xs_stat_source_ops registry_ops;

static registry *as_registry(xs_stat_source *s)
{
    return s && s->ops == &registry_ops ? (registry *)s : NULL;
}

static void reg_counter_add(xs_stat_counter *h, int64_t d)
{
    reg_counter *c = (reg_counter *)h;
    cells_add(stripes_of(c), c->mask, d);
}

#define HIST_SIZE (NBUCKETS * sizeof(uint64_t))
#define SHARED_RECORDS 4096 /* records a stripe makes on the shared histogram */

/* Gives stripe cell c a histogram of its own, or, out of memory, makes it
 * record into the shared one for good.  The first caller of the stripe does
 * it (one allocation); the others go on sharing until it is published. */
static __attribute__((noinline)) void stripe_hist_new(reg_timer *t, cell *c)
{
    /* Relaxed: only elects one caller; hist's release publishes the rest. */
    if (atomic_exchange_explicit(&c->switching, true, memory_order_relaxed))
        return;
    _Atomic uint64_t *own = xs__calloc(t->alloc, HIST_SIZE);
    /* Release: whoever loads the pointer finds the histogram zeroed. */
    atomic_store_explicit(&c->hist, own ? own : buckets_of(t), memory_order_release);
}

static void reg_timer_record(xs_stat_timer *h, int64_t ns)
{
    reg_timer *t = (reg_timer *)h;
    if (ns < 0)
        ns = 0;
    /* Relaxed: min, max, buckets and sum are independent tallies. */
    int64_t m = atomic_load_explicit(&t->min, memory_order_relaxed);
    while (ns < m && !atomic_compare_exchange_weak_explicit(&t->min, &m, ns, memory_order_relaxed,
                                                            memory_order_relaxed))
        ;
    m = atomic_load_explicit(&t->max, memory_order_relaxed);
    while (ns > m && !atomic_compare_exchange_weak_explicit(&t->max, &m, ns, memory_order_relaxed,
                                                            memory_order_relaxed))
        ;
    cell *c = &stripes_of(t)[this_stripe() & t->mask];
    atomic_fetch_add_explicit(&c->v, ns, memory_order_relaxed);
    size_t i = bucket_of((uint64_t)ns);
    /* Acquire: pairs with stripe_hist_new's release (a zeroed histogram). */
    _Atomic uint64_t *hist = atomic_load_explicit(&c->hist, memory_order_acquire);
    if (XS_LIKELY(hist != NULL)) {
        atomic_fetch_add_explicit(&hist[i], 1, memory_order_relaxed);
        return;
    }
    /* Still on the shared histogram: a CAS instead of an add, to notice a
     * thread of another stripe changing the bucket under us. */
    _Atomic uint64_t *b = &buckets_of(t)[i];
    uint64_t n = atomic_load_explicit(b, memory_order_relaxed);
    if (XS_LIKELY(atomic_compare_exchange_strong_explicit(b, &n, n + 1, memory_order_relaxed,
                                                          memory_order_relaxed))) {
        /* A CAS on a line another stripe writes (a neighbouring bucket)
         * never fails yet still ping-pongs the line: after SHARED_RECORDS
         * records on the shared histogram the stripe gets its own anyway.
         * Relaxed load and store, not an RMW: a lost count only delays the
         * switch, and the stripe's line is its own. */
        uint32_t k = atomic_load_explicit(&c->shared_n, memory_order_relaxed) + 1;
        atomic_store_explicit(&c->shared_n, k, memory_order_relaxed);
        if (XS_UNLIKELY(k >= SHARED_RECORDS))
            stripe_hist_new(t, c);
        return;
    }
    atomic_fetch_add_explicit(b, 1, memory_order_relaxed);
    stripe_hist_new(t, c);
}

static int create_counter(const void *key, size_t len, void *arg, void **value)
{
    registry *r = arg;
    size_t cells = (size_t)r->stripes * LINE;
    void *raw;
    size_t raw_size;
    char *p = alloc_lined(r->alloc, LINE + cells + len + 1, &raw, &raw_size);
    if (!p)
        return XS_ENOMEM;
    reg_counter *c = (reg_counter *)(void *)p;
    c->base.add = reg_counter_add;
    c->raw = raw;
    c->raw_size = raw_size;
    c->mask = r->stripes - 1;
    char *name = p + LINE + cells;
    memcpy(name, key, len);
    name[len] = 0;
    c->name = name;
    *value = c;
    return 0;
}

static int create_timer(const void *key, size_t len, void *arg, void **value)
{
    registry *r = arg;
    size_t sums = (size_t)r->stripes * LINE, buckets = NBUCKETS * sizeof(uint64_t);
    void *raw;
    size_t raw_size;
    char *p = alloc_lined(r->alloc, LINE + sums + buckets + len + 1, &raw, &raw_size);
    if (!p)
        return XS_ENOMEM;
    reg_timer *t = (reg_timer *)(void *)p;
    t->base.record = reg_timer_record;
    t->raw = raw;
    t->raw_size = raw_size;
    t->mask = r->stripes - 1;
    atomic_init(&t->min, INT64_MAX);
    atomic_init(&t->max, -1);
    t->alloc = r->alloc;
    atomic_init(&stripes_of(t)[0].hist, buckets_of(t)); /* stripe 0 owns the shared one */
    char *name = p + LINE + sums + buckets;
    memcpy(name, key, len);
    name[len] = 0;
    t->name = name;
    *value = t;
    return 0;
}

/* Map destructors: the metric's raw/raw_size fields say what to free. */
static void destroy_reg_counter(void *value, void *arg)
{
    reg_counter *c = value;
    xs__free(((registry *)arg)->alloc, c->raw, c->raw_size);
}

static void destroy_reg_timer(void *value, void *arg)
{
    (void)arg;
    reg_timer *t = value;
    cell *c = stripes_of(t);
    for (unsigned s = 1; s <= t->mask; s++) {
        _Atomic uint64_t *h = atomic_load_explicit(&c[s].hist, memory_order_relaxed);
        if (h && h != buckets_of(t))
            xs__free(t->alloc, h, HIST_SIZE);
    }
    xs__free(t->alloc, t->raw, t->raw_size);
}

static int registry_counter(xs_stat_source *src, const char *name, xs_stat_counter **out)
{
    registry *r = as_registry(src);
    size_t len;
    if (!r || !out || !name_ok(name, XS_MAP_KEY_MAX, &len))
        return XS_EINVAL;
    void *v;
    int rc = xs_map_load_or_create(r->counters, name, len, create_counter, r, &v, NULL);
    if (rc == 0)
        *out = v;
    return rc;
}

static int registry_timer(xs_stat_source *src, const char *name, xs_stat_timer **out)
{
    registry *r = as_registry(src);
    size_t len;
    if (!r || !out || !name_ok(name, XS_MAP_KEY_MAX, &len))
        return XS_EINVAL;
    void *v;
    int rc = xs_map_load_or_create(r->timers, name, len, create_timer, r, &v, NULL);
    if (rc == 0)
        *out = v;
    return rc;
}

static void registry_free(xs_stat_source *src)
{
    registry *r = (registry *)src;
    xs_map_free(r->counters);
    xs_map_free(r->timers);
    xs__free(r->alloc, r, sizeof *r);
}

static const xs_stat_source_ops registry_ops = {registry_counter, registry_timer, registry_free};

int xs_stat_registry_new(const xs_allocator *alloc, xs_stat_source **out)
{
    if (!out)
        return XS_EINVAL;
    alloc = xs__allocator_resolve(alloc);
    registry *r = xs__calloc(alloc, sizeof *r);
    if (!r)
        return XS_ENOMEM;
    r->base.ops = &registry_ops;
    r->alloc = alloc;
    r->stripes = stripe_count();
    int rc = xs_map_new(&(xs_map_options){.allocator = alloc, .destroy = destroy_reg_counter,
                                          .destroy_arg = r},
                        &r->counters);
    if (rc == 0)
        rc = xs_map_new(&(xs_map_options){.allocator = alloc, .destroy = destroy_reg_timer,
                                          .destroy_arg = r},
                        &r->timers);
    if (rc != 0) {
        xs_map_free(r->counters);
        xs__free(alloc, r, sizeof *r);
        return rc;
    }
    *out = &r->base;
    return 0;
}

/* ---- reading ---- */

static uint64_t rank_of(double q, uint64_t count)
{
    double x = q * (double)count;
    uint64_t r = x >= 18446744073709551615.0 ? UINT64_MAX : (uint64_t)x;
    if ((double)r < x)
        r++;
    if (r < 1)
        r = 1;
    if (r > count)
        r = count;
    return r;
}

/* The timer's histograms: the shared one, then the stripes' own.  A
 * bucket's count is its sum over them. */
static int timer_hists(reg_timer *t, _Atomic uint64_t **out)
{
    _Atomic uint64_t *shared = buckets_of(t);
    cell *c = stripes_of(t);
    int n = 0;
    out[n++] = shared;
    for (unsigned s = 1; s <= t->mask; s++) {
        /* Acquire: pairs with stripe_hist_new's release. */
        _Atomic uint64_t *h = atomic_load_explicit(&c[s].hist, memory_order_acquire);
        if (h && h != shared)
            out[n++] = h;
    }
    return n;
}

static uint64_t bucket_count(_Atomic uint64_t *const *hists, int n, size_t i)
{
    uint64_t v = 0;
    for (int k = 0; k < n; k++)
        v += atomic_load_explicit(&hists[k][i], memory_order_relaxed);
    return v;
}

static uint64_t timer_count(reg_timer *t)
{
    _Atomic uint64_t *hists[MAX_STRIPES + 1];
    int nh = timer_hists(t, hists);
    uint64_t n = 0;
    for (int k = 0; k < nh; k++)
        for (size_t i = 0; i < NBUCKETS; i++)
            n += atomic_load_explicit(&hists[k][i], memory_order_relaxed);
    return n;
}

/*
 * The values at ranks[0..n) (ascending) given the count read before:
 * buckets only grow (and histograms only appear), so a second walk reaches
 * every rank.  Rank 1 is the min and rank `count` the max, exactly; others
 * are bucket middles clamped to [min, max].
 */
static void timer_ranks(reg_timer *t, uint64_t count, const uint64_t *ranks, int64_t *vals, int n)
{
    _Atomic uint64_t *hists[MAX_STRIPES + 1];
    int nh = timer_hists(t, hists);
    int64_t min = atomic_load_explicit(&t->min, memory_order_relaxed);
    int64_t max = atomic_load_explicit(&t->max, memory_order_relaxed);
    bool known = min <= max; /* false only while the first records land */
    uint64_t cum = 0;
    size_t i = 0;
    for (int k = 0; k < n; k++) {
        uint64_t r = ranks[k];
        if (known && r == 1) {
            vals[k] = min;
            continue;
        }
        if (known && r == count) {
            vals[k] = max;
            continue;
        }
        while (i < NBUCKETS) {
            uint64_t b = bucket_count(hists, nh, i);
            if (cum + b >= r)
                break;
            cum += b;
            i++;
        }
        int64_t v = i < NBUCKETS ? bucket_mid(i) : max;
        if (known && v < min)
            v = min;
        if (known && v > max)
            v = max;
        vals[k] = v;
    }
}

static reg_timer *as_reg_timer(const xs_stat_timer *t)
{
    return t && t->record == reg_timer_record ? (reg_timer *)(uintptr_t)t : NULL;
}

static void timer_snapshot(reg_timer *t, xs_stat_summary *s)
{
    memset(s, 0, sizeof *s);
    uint64_t count = timer_count(t);
    if (count == 0)
        return;
    uint64_t ranks[3] = {rank_of(0.5, count), rank_of(0.9, count), rank_of(0.99, count)};
    int64_t vals[3];
    timer_ranks(t, count, ranks, vals, 3);
    s->count = count;
    s->sum = cells_sum(stripes_of(t), t->mask + 1);
    s->min = atomic_load_explicit(&t->min, memory_order_relaxed);
    s->max = atomic_load_explicit(&t->max, memory_order_relaxed);
    if (s->min > s->max) /* records still landing: no extreme yet */
        s->min = s->max = vals[0];
    s->p50 = vals[0];
    s->p90 = vals[1];
    s->p99 = vals[2];
}

int xs_stat_counter_value(const xs_stat_counter *c, int64_t *out)
{
    if (!c || c->add != reg_counter_add || !out)
        return XS_EINVAL;
    reg_counter *rc = (reg_counter *)(uintptr_t)c; /* reading writes nothing */
    *out = cells_sum(stripes_of(rc), rc->mask + 1);
    return 0;
}

int xs_stat_timer_snapshot(const xs_stat_timer *t, xs_stat_summary *out)
{
    reg_timer *rt = as_reg_timer(t);
    if (!rt || !out)
        return XS_EINVAL;
    timer_snapshot(rt, out);
    return 0;
}

int xs_stat_timer_quantile(const xs_stat_timer *t, double q, int64_t *out)
{
    reg_timer *rt = as_reg_timer(t);
    if (!rt || !out || !(q >= 0.0 && q <= 1.0))
        return XS_EINVAL;
    uint64_t count = timer_count(rt);
    if (count == 0) {
        *out = 0;
        return 0;
    }
    uint64_t r = rank_of(q, count);
    timer_ranks(rt, count, &r, out, 1);
    return 0;
}

int xs_stat_registry_counter_value(xs_stat_source *reg, const char *name, int64_t *out)
{
    registry *r = as_registry(reg);
    if (!r || !name || !out)
        return XS_EINVAL;
    void *v;
    int rc = xs_map_load(r->counters, name, strlen(name), &v);
    if (rc != 0)
        return rc == XS_EINVAL ? XS_ENOENT : rc; /* too long: no such name */
    return xs_stat_counter_value(v, out);
}

int xs_stat_registry_timer_snapshot(xs_stat_source *reg, const char *name,
                                    xs_stat_summary *out)
{
    registry *r = as_registry(reg);
    if (!r || !name || !out)
        return XS_EINVAL;
    void *v;
    int rc = xs_map_load(r->timers, name, strlen(name), &v);
    if (rc != 0)
        return rc == XS_EINVAL ? XS_ENOENT : rc;
    return xs_stat_timer_snapshot(v, out);
}

typedef struct range_call {
    xs_stat_range_fn fn;
    void *arg;
} range_call;

static int range_counter(const void *key, size_t len, void *value, void *arg)
{
    (void)key, (void)len;
    range_call *c = arg;
    reg_counter *m = value;
    return c->fn(m->name, &m->base, NULL, c->arg);
}

static int range_timer(const void *key, size_t len, void *value, void *arg)
{
    (void)key, (void)len;
    range_call *c = arg;
    reg_timer *m = value;
    return c->fn(m->name, NULL, &m->base, c->arg);
}

int xs_stat_registry_range(xs_stat_source *reg, xs_stat_range_fn fn, void *arg)
{
    registry *r = as_registry(reg);
    if (!r || !fn)
        return XS_EINVAL;
    range_call c = {fn, arg};
    int rc = xs_map_range(r->counters, range_counter, &c);
    if (rc == 0)
        rc = xs_map_range(r->timers, range_timer, &c);
    return rc;
}

/* ====================================================================== */
/* Prometheus text exposition                                             */
/* ====================================================================== */

typedef struct pm_entry {
    const char *name;
    size_t len;
    void *metric; /* reg_counter or reg_timer */
    bool timer;
    char *natural; /* stem + unit */
    size_t natural_len;
    size_t stem_len;   /* natural begins with the stem */
    char *family;      /* what it is published as */
    size_t family_len;
} pm_entry;

typedef struct pm_list {
    const xs_allocator *alloc;
    pm_entry *v;
    size_t n, cap;
} pm_list;

static int pm_push(pm_list *l, const char *name, void *metric, bool timer)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        pm_entry *v = xs__alloc(l->alloc, cap * sizeof *v);
        if (!v)
            return XS_ENOMEM;
        if (l->n)
            memcpy(v, l->v, l->n * sizeof *v);
        xs__free(l->alloc, l->v, l->cap * sizeof *l->v);
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = (pm_entry){.name = name, .len = strlen(name), .metric = metric, .timer = timer};
    return 0;
}

static int pm_collect(const char *name, xs_stat_counter *c, xs_stat_timer *t, void *arg)
{
    return c ? pm_push(arg, name, c, false) : pm_push(arg, name, t, true);
}

static int pm_cmp(const void *a, const void *b)
{
    const pm_entry *x = a, *y = b;
    int c = memcmp(x->name, y->name, x->len < y->len ? x->len : y->len);
    if (c)
        return c;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return (int)x->timer - (int)y->timer;
}

static bool is_lower(unsigned char c) { return c >= 'a' && c <= 'z'; }
static bool is_upper(unsigned char c) { return c >= 'A' && c <= 'Z'; }
static bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* The documented rewriting; out needs 2 * n + 1 bytes. */
static size_t pm_sanitize(char *out, const unsigned char *p, size_t n)
{
    size_t o = 0;
    if (n && is_digit(p[0]))
        out[o++] = '_';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (is_upper(c)) {
            if (i > 0 && (is_lower(p[i - 1]) || is_digit(p[i - 1])))
                out[o++] = '_';
            out[o++] = (char)(c - 'A' + 'a');
        } else if (is_lower(c) || is_digit(c) || c == '_') {
            out[o++] = (char)c;
        } else {
            out[o++] = '_';
        }
    }
    return o;
}

/* A set of family names (open addressing), each marked NATURAL (some
 * metric's natural name) and/or TAKEN (published). */
#define PM_NATURAL 1u
#define PM_TAKEN 2u

typedef struct pm_slot {
    const char *s;
    size_t len;
    unsigned flags;
    uint64_t next; /* a natural name's: the suffix its next collision tries first */
} pm_slot;

typedef struct pm_set {
    pm_slot *slots;
    size_t mask;
    xs__hash_key key;
} pm_set;

static pm_slot *pm_find(pm_set *set, const char *s, size_t len)
{
    size_t i = (size_t)xs__hash(&set->key, s, len) & set->mask;
    for (;; i = (i + 1) & set->mask) {
        pm_slot *sl = &set->slots[i];
        if (!sl->s || (sl->len == len && memcmp(sl->s, s, len) == 0))
            return sl;
    }
}

static void pm_mark(pm_set *set, const char *s, size_t len, unsigned flag)
{
    pm_slot *sl = pm_find(set, s, len);
    if (!sl->s) {
        sl->s = s;
        sl->len = len;
    }
    sl->flags |= flag;
}

/* Suffixed names tried by collision resolution, process-wide: the tests
 * check that rendering stays linear in the number of colliding names. */
_Atomic uint64_t xs__stat_pm_probes;

/* stem + ["_" n] + unit into out; returns the length. */
static size_t pm_compose(char *out, const char *stem, size_t stem_len, uint64_t n,
                         const char *unit, size_t unit_len)
{
    size_t o = 0;
    memmove(out, stem, stem_len);
    o += stem_len;
    if (n > 1) {
        out[o++] = '_';
        o += fmt_u64(out + o, n);
    }
    memcpy(out + o, unit, unit_len);
    return o + unit_len;
}

/*
 * Names every entry (sorted): natural names first marked, then each entry
 * in order takes its natural name if no earlier entry took it, else the
 * first stem_<n>unit, n = 2, 3, ..., that is nobody's natural name and not
 * taken.  A natural name remembers where its last collision stopped, and
 * the set only grows, so no number is tried twice: linear in the entries,
 * where starting from 2 every time would be quadratic in the colliding
 * ones.  Strings live in one arena block.
 */
static int pm_name(pm_list *l, char **arena_out, size_t *arena_size, pm_slot **slots_out,
                   size_t *slots_size)
{
    size_t arena = 0;
    for (size_t i = 0; i < l->n; i++)
        arena += 2 * (2 * l->v[i].len + 1 + 8) + 21; /* natural, family */
    size_t cap = 16;
    while (cap < 4 * l->n)
        cap <<= 1;
    char *a = xs__alloc(l->alloc, arena ? arena : 1);
    pm_slot *slots = xs__calloc(l->alloc, cap * sizeof *slots);
    if (!a || !slots) {
        xs__free(l->alloc, a, arena ? arena : 1);
        xs__free(l->alloc, slots, cap * sizeof *slots);
        return XS_ENOMEM;
    }
    pm_set set = {slots, cap - 1, {{0}}};
    xs__hash_key_init(&set.key, 0x9e3779b97f4a7c15u);
    char *p = a;
    for (size_t i = 0; i < l->n; i++) {
        pm_entry *e = &l->v[i];
        const char *unit = e->timer ? "_seconds" : "_total";
        size_t ulen = strlen(unit);
        e->natural = p;
        size_t n = pm_sanitize(p, (const unsigned char *)e->name, e->len);
        if (n >= ulen && memcmp(p + n - ulen, unit, ulen) == 0)
            n -= ulen;
        e->stem_len = n;
        memcpy(p + n, unit, ulen);
        e->natural_len = n + ulen;
        p += e->natural_len;
        e->family = p;
        p += e->natural_len + 21;
        pm_mark(&set, e->natural, e->natural_len, PM_NATURAL);
    }
    uint64_t probes = 0;
    for (size_t i = 0; i < l->n; i++) {
        pm_entry *e = &l->v[i];
        const char *unit = e->timer ? "_seconds" : "_total";
        size_t ulen = strlen(unit);
        pm_slot *nat = pm_find(&set, e->natural, e->natural_len);
        if (!(nat->flags & PM_TAKEN)) {
            nat->flags |= PM_TAKEN;
            e->family_len = pm_compose(e->family, e->natural, e->stem_len, 1, unit, ulen);
            continue;
        }
        /* The set is never resized (it has room for every name): nat stays valid. */
        for (uint64_t k = nat->next > 2 ? nat->next : 2;; k++) {
            size_t n = pm_compose(e->family, e->natural, e->stem_len, k, unit, ulen);
            probes++;
            if (!pm_find(&set, e->family, n)->s) {
                pm_mark(&set, e->family, n, PM_TAKEN);
                e->family_len = n;
                nat->next = k + 1;
                break;
            }
        }
    }
    /* Relaxed: a statistic. */
    atomic_fetch_add_explicit(&xs__stat_pm_probes, probes, memory_order_relaxed);
    *arena_out = a;
    *arena_size = arena ? arena : 1;
    *slots_out = slots;
    *slots_size = cap * sizeof *slots;
    return 0;
}

/* Output: a caller's buffer (snprintf-style, counting past the end), a
 * stream, or a descriptor through a chunk buffer (for the last two, the
 * first error sticks and ends the writing). */
#define PM_CHUNK 8192

typedef struct pm_sink {
    char *buf;
    size_t size;
    size_t len;
    FILE *f;
    int fd;          /* >= 0: a descriptor; buf is then the chunk */
    bool not_socket; /* send() said ENOTSOCK: write() from now on */
    int err;
} pm_sink;

/* All of p to s->fd: send() without SIGPIPE where fd is a socket, write()
 * elsewhere. */
static void fd_write(pm_sink *s, const char *p, size_t n)
{
    while (n && !s->err) {
        ssize_t r = s->not_socket ? write(s->fd, p, n) : send(s->fd, p, n, MSG_NOSIGNAL);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
        } else if (r < 0 && errno == ENOTSOCK && !s->not_socket) {
            s->not_socket = true;
        } else if (r == 0 || errno != EINTR) {
            s->err = r == 0 ? -EIO : -errno;
        }
    }
}

static void put(pm_sink *s, const char *p, size_t n)
{
    if (s->f) {
        if (!s->err && n) {
            errno = 0;
            if (fwrite(p, 1, n, s->f) != n)
                s->err = errno > 0 ? -errno : -EIO;
        }
    } else if (s->fd >= 0) {
        while (n && !s->err) {
            if (s->len == PM_CHUNK) {
                fd_write(s, s->buf, s->len);
                s->len = 0;
            }
            size_t k = PM_CHUNK - s->len < n ? PM_CHUNK - s->len : n;
            memcpy(s->buf + s->len, p, k);
            s->len += k;
            p += k;
            n -= k;
        }
        return;
    } else if (s->len < s->size) {
        size_t room = s->size - s->len;
        memcpy(s->buf + s->len, p, n < room ? n : room);
    }
    s->len += n;
}

static void puts_(pm_sink *s, const char *str) { put(s, str, strlen(str)); }

/* The original name for a HELP line: bytes outside printable ASCII and
 * % " \ as %XX. */
static void put_quoted_name(pm_sink *s, const char *name, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t run = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c >= 0x20 && c < 0x7f && c != '%' && c != '"' && c != '\\')
            continue;
        put(s, name + run, i - run);
        char esc[3] = {'%', hex[c >> 4], hex[c & 15]};
        put(s, esc, 3);
        run = i + 1;
    }
    put(s, name + run, len - run);
}

static void put_seconds(pm_sink *s, int64_t ns)
{
    char b[48];
    put(s, b, fmt_scaled(b, ns, 9, 1000000000u));
}

static void pm_render(pm_sink *s, const pm_list *l)
{
    static const char *qlabel[3] = {"{quantile=\"0.5\"} ", "{quantile=\"0.9\"} ",
                                    "{quantile=\"0.99\"} "};
    for (size_t i = 0; i < l->n; i++) {
        const pm_entry *e = &l->v[i];
        puts_(s, "# HELP ");
        put(s, e->family, e->family_len);
        puts_(s, e->timer ? " xsync timer \"" : " xsync counter \"");
        put_quoted_name(s, e->name, e->len);
        puts_(s, "\"\n# TYPE ");
        put(s, e->family, e->family_len);
        puts_(s, e->timer ? " summary\n" : " counter\n");
        char b[32];
        if (!e->timer) {
            int64_t v = 0;
            xs_stat_counter_value(e->metric, &v);
            put(s, e->family, e->family_len);
            put(s, " ", 1);
            put(s, b, fmt_i64(b, v));
            put(s, "\n", 1);
            continue;
        }
        xs_stat_summary snap;
        timer_snapshot(e->metric, &snap);
        int64_t q[3] = {snap.p50, snap.p90, snap.p99};
        for (int k = 0; k < 3; k++) {
            put(s, e->family, e->family_len);
            puts_(s, qlabel[k]);
            if (snap.count)
                put_seconds(s, q[k]);
            else
                puts_(s, "NaN");
            put(s, "\n", 1);
        }
        put(s, e->family, e->family_len);
        puts_(s, "_sum ");
        put_seconds(s, snap.sum);
        put(s, "\n", 1);
        put(s, e->family, e->family_len);
        puts_(s, "_count ");
        put(s, b, fmt_u64(b, snap.count));
        put(s, "\n", 1);
    }
}

static int pm_write(registry *r, pm_sink *s)
{
    pm_list l = {.alloc = r->alloc};
    int rc = xs_stat_registry_range(&r->base, pm_collect, &l);
    char *arena = NULL;
    pm_slot *slots = NULL;
    size_t arena_size = 0, slots_size = 0;
    if (rc == 0) {
        if (l.n)
            qsort(l.v, l.n, sizeof *l.v, pm_cmp);
        rc = pm_name(&l, &arena, &arena_size, &slots, &slots_size);
    }
    if (rc == 0) {
        pm_render(s, &l);
        rc = s->err;
    }
    xs__free(r->alloc, arena, arena_size);
    xs__free(r->alloc, slots, slots_size);
    xs__free(r->alloc, l.v, l.cap * sizeof *l.v);
    return rc;
}

int xs_stat_prometheus_write(xs_stat_source *reg, char *buf, size_t size, size_t *len)
{
    registry *r = as_registry(reg);
    if (!r || !len || (!buf && size))
        return XS_EINVAL;
    pm_sink s = {.buf = buf, .size = size, .fd = -1};
    int rc = pm_write(r, &s);
    if (rc != 0)
        return rc;
    if (size)
        buf[s.len < size ? s.len : size - 1] = 0;
    *len = s.len;
    return 0;
}

int xs_stat_prometheus_fwrite(xs_stat_source *reg, FILE *f)
{
    registry *r = as_registry(reg);
    if (!r || !f)
        return XS_EINVAL;
    pm_sink s = {.f = f, .fd = -1};
    return pm_write(r, &s);
}

int xs_stat_prometheus_write_fd(xs_stat_source *reg, int fd)
{
    registry *r = as_registry(reg);
    if (!r || fd < 0)
        return XS_EINVAL;
    char chunk[PM_CHUNK];
    pm_sink s = {.buf = chunk, .fd = fd};
    int rc = pm_write(r, &s);
    if (rc == 0 && s.len)
        fd_write(&s, chunk, s.len);
    return rc ? rc : s.err;
}

/* ====================================================================== */
/* statsd                                                                 */
/* ====================================================================== */

#define SD_DEFAULT_PAYLOAD 1432
#define SD_MIN_PAYLOAD 64
#define SD_MAX_PAYLOAD 65507
#define SD_DEFAULT_QUEUE 4096
#define SD_MAX_QUEUE (1u << 24)
#define SD_LINE_RESERVE 32 /* ':' + a value (at most 21 bytes) + "|ms" */

typedef struct statsd statsd;

/* What a periodic flush task holds: it may start after the source is freed,
 * so this outlives the source until its last reference ends.  It comes from
 * libc, not the source's allocator, which need only outlive the source. */
typedef struct sd_ref {
    pthread_mutex_t mu;
    pthread_cond_t idle; /* signalled when the last task inside the source leaves */
    statsd *sd;          /* NULL once the source is being freed */
    int refs;            /* the source's one + one per task submitted and not ended */
    int inside;          /* tasks using sd right now (each in a bounded flush) */
    bool queued;         /* a task submitted and not started: ticks submit no other */
} sd_ref;

typedef struct sd_counter {
    xs_stat_counter base;
    struct sd_counter *next; /* the flush list; set before publication */
    void *raw;
    size_t raw_size;
    const char *name; /* prefix + rewritten name */
    size_t name_len;
    unsigned mask;
} sd_counter;

typedef struct sd_timer {
    xs_stat_timer base;
    statsd *sd;
    size_t size;
    size_t name_len;
    char name[];
} sd_timer;

_Static_assert(sizeof(sd_counter) <= LINE, "a counter's header fits one line");

typedef struct sd_slot {
    _Atomic size_t seq;
    sd_timer *timer;
    int64_t ns;
} sd_slot;

struct statsd {
    xs_stat_source base;
    const xs_allocator *alloc;
    int fd;
    size_t max_payload;
    char *prefix;
    size_t prefix_len;
    xs_map *counters;
    xs_map *timers;
    unsigned stripes;
    _Atomic(sd_counter *) counter_list;
    sd_slot *queue;
    size_t qmask;
    /* flushing: one at a time */
    pthread_mutex_t flush_mu;
    char *dgram;            /* max_payload bytes */
    size_t deq;             /* next queue position to consume */
    /* the periodic flush */
    xs_clock *clock;
    int64_t interval;
    xs__timer tick;
    pid_t pid;                 /* the creating process: a forked child's ticks do nothing */
    sd_ref *ref;               /* interval > 0 only */
    bool closing, armed;       /* under ref->mu */
    /* written by emitters and flushers: each on lines of its own */
    char pad0_[LINE];
    _Atomic size_t enq;     /* next queue position to claim */
    char pad1_[LINE];
    _Atomic uint64_t drops;
    char pad2_[LINE];
    _Atomic uint64_t sent;
    char pad3_[LINE];
};

static const xs_stat_source_ops statsd_ops;

static statsd *as_statsd(const xs_stat_source *s)
{
    return s && s->ops == &statsd_ops ? (statsd *)(uintptr_t)s : NULL;
}

/* ':' '|' '@' ' ', control bytes and DEL become '_'. */
static void sd_sanitize(char *out, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        out[i] = (c < 0x20 || c == 0x7f || c == ':' || c == '|' || c == '@' || c == ' ')
                     ? '_'
                     : (char)c;
    }
}

static void sd_counter_add(xs_stat_counter *h, int64_t d)
{
    sd_counter *c = (sd_counter *)h;
    cells_add(stripes_of(c), c->mask, d);
}

static void sd_timer_record(xs_stat_timer *h, int64_t ns)
{
    sd_timer *t = (sd_timer *)h;
    statsd *sd = t->sd;
    size_t pos = atomic_load_explicit(&sd->enq, memory_order_relaxed);
    for (;;) {
        sd_slot *s = &sd->queue[pos & sd->qmask];
        /* Acquire: pairs with the flusher's release that freed the slot, so
         * our writes below come after its reads. */
        size_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
        intptr_t dif = (intptr_t)(seq - pos); /* wraps: no signed overflow */
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&sd->enq, &pos, pos + 1,
                                                      memory_order_relaxed,
                                                      memory_order_relaxed)) {
                s->timer = t;
                s->ns = ns;
                /* Release: the flusher that sees seq sees the record. */
                atomic_store_explicit(&s->seq, pos + 1, memory_order_release);
                return;
            }
        } else if (dif < 0) {
            atomic_fetch_add_explicit(&sd->drops, 1, memory_order_relaxed); /* full */
            return;
        } else {
            pos = atomic_load_explicit(&sd->enq, memory_order_relaxed);
        }
    }
}

static int sd_create_counter(const void *key, size_t len, void *arg, void **value)
{
    statsd *sd = arg;
    size_t cells = (size_t)sd->stripes * LINE, nlen = sd->prefix_len + len;
    void *raw;
    size_t raw_size;
    char *p = alloc_lined(sd->alloc, LINE + cells + nlen, &raw, &raw_size);
    if (!p)
        return XS_ENOMEM;
    sd_counter *c = (sd_counter *)(void *)p;
    c->base.add = sd_counter_add;
    c->raw = raw;
    c->raw_size = raw_size;
    c->mask = sd->stripes - 1;
    char *name = p + LINE + cells;
    memcpy(name, sd->prefix, sd->prefix_len);
    sd_sanitize(name + sd->prefix_len, key, len);
    c->name = name;
    c->name_len = nlen;
    /* Release: a flusher that finds c on the list sees it initialised. */
    c->next = atomic_load_explicit(&sd->counter_list, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&sd->counter_list, &c->next, c,
                                                  memory_order_release, memory_order_relaxed))
        ;
    *value = c;
    return 0;
}

static int sd_create_timer(const void *key, size_t len, void *arg, void **value)
{
    statsd *sd = arg;
    size_t nlen = sd->prefix_len + len, size = sizeof(sd_timer) + nlen;
    sd_timer *t = xs__alloc(sd->alloc, size);
    if (!t)
        return XS_ENOMEM;
    t->base.record = sd_timer_record;
    t->sd = sd;
    t->size = size;
    t->name_len = nlen;
    memcpy(t->name, sd->prefix, sd->prefix_len);
    sd_sanitize(t->name + sd->prefix_len, key, len);
    *value = t;
    return 0;
}

static void destroy_sd_counter(void *value, void *arg)
{
    sd_counter *c = value;
    xs__free(((statsd *)arg)->alloc, c->raw, c->raw_size);
}

static void destroy_sd_timer(void *value, void *arg)
{
    sd_timer *t = value;
    xs__free(((statsd *)arg)->alloc, t, t->size);
}

static int sd_get(statsd *sd, const char *name, bool timer, void **out)
{
    size_t len;
    if (!sd || !out || !name_ok(name, sd->max_payload - SD_LINE_RESERVE - sd->prefix_len, &len))
        return XS_EINVAL;
    void *v;
    int rc = timer ? xs_map_load_or_create(sd->timers, name, len, sd_create_timer, sd, &v, NULL)
                   : xs_map_load_or_create(sd->counters, name, len, sd_create_counter, sd, &v,
                                           NULL);
    if (rc == 0)
        *out = v;
    return rc;
}

static int statsd_counter(xs_stat_source *src, const char *name, xs_stat_counter **out)
{
    return sd_get(as_statsd(src), name, false, (void **)out);
}

static int statsd_timer(xs_stat_source *src, const char *name, xs_stat_timer **out)
{
    return sd_get(as_statsd(src), name, true, (void **)out);
}

/* ---- flushing ---- */

typedef struct sd_batch {
    size_t len;   /* bytes in sd->dgram */
    size_t lines; /* lines in it */
    int err;      /* the first refused send */
} sd_batch;

static void sd_send(statsd *sd, sd_batch *b)
{
    if (b->len == 0)
        return;
    ssize_t r;
    do
        r = send(sd->fd, sd->dgram, b->len, MSG_DONTWAIT | MSG_NOSIGNAL);
    while (r < 0 && errno == EINTR);
    /* Relaxed: statistics. */
    if (r < 0) {
        atomic_fetch_add_explicit(&sd->drops, b->lines, memory_order_relaxed);
        if (!b->err)
            b->err = -errno;
    } else {
        atomic_fetch_add_explicit(&sd->sent, b->lines, memory_order_relaxed);
    }
    b->len = 0;
    b->lines = 0;
}

/* Appends "name:value|kind" to the datagram, sending it first if the line
 * does not fit.  A line always fits an empty datagram (names are checked
 * against max_payload - SD_LINE_RESERVE). */
static void sd_line(statsd *sd, sd_batch *b, const char *name, size_t name_len,
                    const char *value, size_t value_len, const char *kind)
{
    size_t klen = strlen(kind);
    size_t need = name_len + 1 + value_len + klen + (b->len ? 1 : 0);
    if (b->len + need > sd->max_payload) {
        sd_send(sd, b);
        need -= 1;
    }
    char *p = sd->dgram + b->len;
    if (b->len)
        *p++ = '\n';
    memcpy(p, name, name_len);
    p += name_len;
    *p++ = ':';
    memcpy(p, value, value_len);
    p += value_len;
    memcpy(p, kind, klen);
    b->len += need;
    b->lines++;
}

/* flush_mu held. */
static int sd_flush_locked(statsd *sd)
{
    sd_batch b = {0, 0, 0};
    char v[32];
    /* Acquire: pairs with the release that pushed each counter. */
    for (sd_counter *c = atomic_load_explicit(&sd->counter_list, memory_order_acquire); c;
         c = c->next) {
        int64_t d = cells_take(stripes_of(c), c->mask + 1);
        if (d)
            sd_line(sd, &b, c->name, c->name_len, v, fmt_i64(v, d), "|c");
    }
    /* Only the positions claimed before we began (at most the queue's size:
     * a producer claims a position only once the slot's previous record was
     * taken).  "Until empty" would last as long as producers keep up. */
    size_t end = atomic_load_explicit(&sd->enq, memory_order_relaxed);
    while (sd->deq != end) {
        sd_slot *s = &sd->queue[sd->deq & sd->qmask];
        /* Acquire: pairs with the producer's release; the record is ours. */
        if (atomic_load_explicit(&s->seq, memory_order_acquire) != sd->deq + 1)
            break; /* its producer has claimed it but not finished writing */
        sd_timer *t = s->timer;
        int64_t ns = s->ns;
        /* Release: the producer that reuses the slot writes after our reads. */
        atomic_store_explicit(&s->seq, sd->deq + sd->qmask + 1, memory_order_release);
        sd->deq++;
        sd_line(sd, &b, t->name, t->name_len, v, fmt_scaled(v, ns < 0 ? 0 : ns, 6, 1000000u),
                "|ms");
    }
    sd_send(sd, &b);
    return b.err;
}

static int sd_flush(statsd *sd)
{
    pthread_mutex_lock(&sd->flush_mu);
    int rc = sd_flush_locked(sd);
    pthread_mutex_unlock(&sd->flush_mu);
    return rc;
}

int xs_stat_statsd_flush(xs_stat_source *src)
{
    statsd *sd = as_statsd(src);
    return sd ? sd_flush(sd) : XS_EINVAL;
}

uint64_t xs_stat_statsd_drops(const xs_stat_source *src)
{
    statsd *sd = as_statsd(src);
    return sd ? atomic_load_explicit(&sd->drops, memory_order_relaxed) : 0;
}

uint64_t xs_stat_statsd_sent(const xs_stat_source *src)
{
    statsd *sd = as_statsd(src);
    return sd ? atomic_load_explicit(&sd->sent, memory_order_relaxed) : 0;
}

/*
 * The periodic flush.  The clock's timer (sd_tick) only queues a flush task
 * on the default pool and re-arms: the system clock's one timer thread
 * fires every timer of the process (context deadlines, rate limiters), so
 * it must not spend a flush's time, nor wait for flush_mu.  A tick that
 * finds a task queued and not yet started submits none: that task will
 * take everything the tick would have.  A task that finds a flush in
 * progress (a user's, or a slow periodic one) ends without flushing: it
 * never holds a pool thread waiting, and what it would have sent goes with
 * the next period.  So at most two tasks exist, one queued and one in a
 * bounded flush (or ending).
 *
 * Tasks hold the source through its sd_ref.  Each firing ends the add that
 * queued it (timer.h: one final del per successful add) and, unless the
 * source is closing, adds the timer again.  Freeing sets `closing`, deletes
 * the timer as final if it is still armed (removing the queued one, or
 * waiting for a firing in progress to return), then clears ref->sd and
 * waits only for tasks inside a flush — bounded, and needing no pool
 * thread: a task that starts later finds ref->sd NULL and just drops its
 * reference (the last one frees the ref).
 *
 * fork(): the child inherits the armed timer (timer.c restarts the system
 * clock's thread in the child) but none of the parent's threads.  Its ticks
 * return at once, before taking any lock (one may have been held at the
 * fork): the records pending at the fork are the parent's to send.
 */
static void sd_ref_free(sd_ref *r)
{
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->idle);
    free(r);
}

/* Drops one reference; r->mu held, and released here. */
static void sd_ref_put_unlock(sd_ref *r)
{
    bool last = --r->refs == 0;
    pthread_mutex_unlock(&r->mu);
    if (last)
        sd_ref_free(r);
}

static void sd_flush_task(void *arg)
{
    sd_ref *r = arg;
    pthread_mutex_lock(&r->mu);
    statsd *sd = r->sd;
    r->queued = false; /* from here a tick may queue the next task */
    if (sd)
        r->inside++;
    pthread_mutex_unlock(&r->mu);
    if (sd && pthread_mutex_trylock(&sd->flush_mu) == 0) {
        sd_flush_locked(sd);
        pthread_mutex_unlock(&sd->flush_mu);
    }
    pthread_mutex_lock(&r->mu);
    if (sd && --r->inside == 0)
        pthread_cond_broadcast(&r->idle);
    sd_ref_put_unlock(r);
}

static void sd_tick(xs__timer *tm)
{
    statsd *sd = XS_CONTAINER_OF(tm, statsd, tick);
    if (getpid() != sd->pid)
        return; /* a forked child's copy: see above */
    sd_ref *r = sd->ref;
    pthread_mutex_lock(&r->mu);
    if (sd->closing) {
        pthread_mutex_unlock(&r->mu);
        return;
    }
    xs__timer_del(sd->clock, tm, true);
    int64_t now = xs_clock_now(sd->clock);
    int64_t next = xs__add_sat(tm->when, sd->interval);
    if (next <= now) /* fell behind: skip the missed periods */
        next = xs__add_sat(now, sd->interval);
    tm->when = next;
    sd->armed = xs__timer_add(sd->clock, tm) == 0;
    if (!r->queued) {
        /* No pool (out of memory or threads): this period is skipped. */
        xs_pool *pool = xs_pool_default();
        if (pool && xs_pool_submit(pool, sd_flush_task, r) == 0) {
            r->queued = true;
            r->refs++;
        }
    }
    pthread_mutex_unlock(&r->mu);
}

/* Frees whatever a (possibly partial) construction made. */
static void sd_destroy(statsd *sd)
{
    if (sd->fd >= 0)
        close(sd->fd);
    xs_map_free(sd->counters);
    xs_map_free(sd->timers);
    xs__free(sd->alloc, sd->queue, (sd->qmask + 1) * sizeof *sd->queue);
    xs__free(sd->alloc, sd->dgram, sd->max_payload);
    xs__free(sd->alloc, sd->prefix, sd->prefix_len + 1);
    pthread_mutex_destroy(&sd->flush_mu);
    xs__free(sd->alloc, sd, sizeof *sd);
}

static void statsd_free(xs_stat_source *src)
{
    statsd *sd = (statsd *)src;
    sd_ref *r = sd->ref;
    if (r) {
        pthread_mutex_lock(&r->mu);
        sd->closing = true;
        bool armed = sd->armed;
        pthread_mutex_unlock(&r->mu);
        if (armed)
            xs__timer_del(sd->clock, &sd->tick, true);
        /* No tick runs now.  Tasks not started yet will find no source;
         * one inside a flush ends soon (a flush never blocks). */
        pthread_mutex_lock(&r->mu);
        r->sd = NULL;
        while (r->inside)
            pthread_cond_wait(&r->idle, &r->mu);
        sd_ref_put_unlock(r);
    }
    sd_flush(sd);
    sd_destroy(sd);
}

/* For tests: periodic flush tasks submitted and not yet ended. */
int xs__stat_statsd_tasks(const xs_stat_source *src);
int xs__stat_statsd_tasks(const xs_stat_source *src)
{
    statsd *sd = as_statsd(src);
    if (!sd || !sd->ref)
        return 0;
    pthread_mutex_lock(&sd->ref->mu);
    int n = sd->ref->refs - 1;
    pthread_mutex_unlock(&sd->ref->mu);
    return n;
}

/* For tests: takes (hold) or releases the flush lock, as a flush in
 * progress in another thread would hold it. */
void xs__stat_statsd_hold_flush(xs_stat_source *src, bool hold);
void xs__stat_statsd_hold_flush(xs_stat_source *src, bool hold)
{
    statsd *sd = as_statsd(src);
    if (sd && hold)
        pthread_mutex_lock(&sd->flush_mu);
    else if (sd)
        pthread_mutex_unlock(&sd->flush_mu);
}

static const xs_stat_source_ops statsd_ops = {statsd_counter, statsd_timer, statsd_free};


/* A non-blocking, close-on-exec UDP socket connected to host:port. */
static int sd_connect(const char *host, uint16_t port, int *fd_out)
{
    char service[8];
    service[fmt_u64(service, port)] = 0;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_DGRAM,
                             .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int g = getaddrinfo(host, service, &hints, &res);
    if (g != 0) {
        if (g == EAI_MEMORY)
            return XS_ENOMEM;
        if (g == EAI_AGAIN) /* a temporary resolver failure: worth retrying */
            return XS_EAGAIN;
        if (g == EAI_SYSTEM && errno > 0)
            return -errno;
        return XS_EINVAL;
    }
    int rc = XS_EINVAL;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
#if defined(SOCK_CLOEXEC) && defined(SOCK_NONBLOCK)
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                        ai->ai_protocol);
#else
        int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd >= 0 && (fcntl(fd, F_SETFD, FD_CLOEXEC) != 0 ||
                        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0)) {
            close(fd);
            fd = -1;
        }
#endif
        if (fd < 0) {
            rc = errno == ENOMEM || errno == ENOBUFS ? XS_ENOMEM : -errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
            *fd_out = fd;
            rc = 0;
            break;
        }
        rc = -errno;
        close(fd);
    }
    freeaddrinfo(res);
    return rc;
}

int xs_stat_statsd_new(const xs_stat_statsd_options *opts, xs_stat_source **out)
{
    xs_stat_statsd_options o = opts ? *opts : (xs_stat_statsd_options){0};
    const char *host = o.host ? o.host : "127.0.0.1";
    size_t payload = o.max_payload ? o.max_payload : SD_DEFAULT_PAYLOAD;
    size_t qsize = o.queue_size ? o.queue_size : SD_DEFAULT_QUEUE;
    size_t prefix_len = o.prefix ? strnlen(o.prefix, SD_MAX_PAYLOAD) : 0;
    if (!out || !*host || payload < SD_MIN_PAYLOAD || payload > SD_MAX_PAYLOAD ||
        qsize > SD_MAX_QUEUE || o.flush_interval < 0 ||
        (o.flush_interval > 0 && o.flush_interval < XS_MSEC) ||
        prefix_len > payload - SD_LINE_RESERVE - 1)
        return XS_EINVAL;
    size_t q = 2; /* a Vyukov queue needs two slots: with one, a slot's "taken" and
                   * "free for the next lap" sequence numbers are the same */
    while (q < qsize)
        q <<= 1;
    const xs_allocator *alloc = xs__allocator_resolve(o.allocator);
    statsd *sd = xs__calloc(alloc, sizeof *sd);
    if (!sd)
        return XS_ENOMEM;
    sd->base.ops = &statsd_ops;
    sd->alloc = alloc;
    sd->fd = -1;
    sd->max_payload = payload;
    sd->prefix_len = prefix_len;
    sd->stripes = stripe_count();
    sd->qmask = q - 1;
    sd->clock = o.clock ? o.clock : xs_clock_system();
    sd->interval = o.flush_interval;
    sd->pid = getpid();
    pthread_mutex_init(&sd->flush_mu, NULL);
    int rc = XS_ENOMEM;
    sd->prefix = xs__alloc(alloc, prefix_len + 1);
    sd->queue = xs__alloc(alloc, q * sizeof *sd->queue);
    sd->dgram = xs__alloc(alloc, payload);
    if (!sd->prefix || !sd->queue || !sd->dgram)
        goto fail;
    sd_sanitize(sd->prefix, o.prefix ? o.prefix : "", prefix_len);
    sd->prefix[prefix_len] = 0;
    for (size_t i = 0; i < q; i++)
        atomic_init(&sd->queue[i].seq, i);
    rc = xs_map_new(&(xs_map_options){.allocator = alloc, .destroy = destroy_sd_counter,
                                      .destroy_arg = sd},
                    &sd->counters);
    if (rc == 0)
        rc = xs_map_new(&(xs_map_options){.allocator = alloc, .destroy = destroy_sd_timer,
                                          .destroy_arg = sd},
                        &sd->timers);
    if (rc == 0)
        rc = sd_connect(host, o.port ? o.port : 8125, &sd->fd);
    if (rc == 0 && sd->interval) {
        sd_ref *r = malloc(sizeof *r);
        if (!r) {
            rc = XS_ENOMEM;
            goto fail;
        }
        pthread_mutex_init(&r->mu, NULL);
        pthread_cond_init(&r->idle, NULL);
        r->sd = sd;
        r->refs = 1;
        r->inside = 0;
        r->queued = false;
        sd->ref = r;
        sd->tick.fn = sd_tick;
        sd->tick.when = xs__add_sat(xs_clock_now(sd->clock), sd->interval);
        /* The first tick may fire (on another thread) as soon as it is
         * added: armed is written under ref->mu, as the tick writes it. */
        pthread_mutex_lock(&r->mu);
        rc = xs__timer_add(sd->clock, &sd->tick);
        sd->armed = rc == 0;
        pthread_mutex_unlock(&r->mu);
    }
    if (rc != 0)
        goto fail;
    *out = &sd->base;
    return 0;
fail:
    if (sd->ref) /* never armed: no task holds it */
        sd_ref_free(sd->ref);
    sd_destroy(sd);
    return rc;
}
