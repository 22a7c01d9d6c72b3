/*
 * xsync/stats.h — the seed's StatSource: a source makes named counters and
 * timers; the executor's metrics decorator (executor.h) emits through one.
 *
 * A source is a small vtable that anyone can implement: embed
 * xs_stat_source as the first member of your own struct and point ops at
 * your functions.  Counters and timers are likewise structs with one
 * function pointer that your own types embed first.
 *
 * Contract for every source (built-in or yours):
 *   - counter/timer may be called concurrently from any thread; asking
 *     twice for the same name may return the same handle or a new one, and
 *     either way both count into the same metric.
 *   - A handle belongs to its source and stays valid until the source is
 *     freed; the caller never frees it.
 *   - add/record are thread-safe, never block and never fail (a source that
 *     cannot deliver drops and counts the drop).
 *   - Names are NUL-terminated; what characters a source accepts, and
 *     whether it rewrites the others, is documented with each source.
 *
 * THIS HEADER IS BEING FILLED IN: the interface below is settled; the
 * built-in sources (in-memory registry, Prometheus text, statsd) follow.
 */
#ifndef XSYNC_STATS_H
#define XSYNC_STATS_H

#include <stdint.h>

#include <xsync/error.h>
#include <xsync/export.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct xs_stat_counter xs_stat_counter;
typedef struct xs_stat_timer xs_stat_timer;
typedef struct xs_stat_source xs_stat_source;

/* Counts events: add(delta), delta may be negative. */
struct xs_stat_counter {
    void (*add)(xs_stat_counter *c, int64_t delta);
};

/* Records durations in nanoseconds (a latency, typically). */
struct xs_stat_timer {
    void (*record)(xs_stat_timer *t, int64_t ns);
};

typedef struct xs_stat_source_ops {
    /* Stores the counter named `name` in *out.  Returns 0, XS_EINVAL (a name
     * the source refuses) or XS_ENOMEM; on error *out is untouched. */
    int (*counter)(xs_stat_source *src, const char *name, xs_stat_counter **out);
    /* As counter, for a timer. */
    int (*timer)(xs_stat_source *src, const char *name, xs_stat_timer **out);
    /* Frees the source and every handle it gave out.  May be NULL (a source
     * whose owner frees it some other way). */
    void (*free)(xs_stat_source *src);
} xs_stat_source_ops;

struct xs_stat_source {
    const xs_stat_source_ops *ops;
};

/* Checked calls through the vtable: XS_EINVAL for a NULL source, name or
 * out; otherwise whatever the source returns. */
XS_API int xs_stat_counter_get(xs_stat_source *src, const char *name, xs_stat_counter **out);
XS_API int xs_stat_timer_get(xs_stat_source *src, const char *name, xs_stat_timer **out);

/* Frees a source through its vtable.  NULL: nothing. */
XS_API void xs_stat_source_free(xs_stat_source *src);

/* Emitting: a NULL handle does nothing, so "no metric" needs no branch. */
static inline void xs_stat_add(xs_stat_counter *c, int64_t delta)
{
    if (c)
        c->add(c, delta);
}

static inline void xs_stat_record(xs_stat_timer *t, int64_t ns)
{
    if (t)
        t->record(t, ns);
}

#ifdef __cplusplus
}
#endif
#endif
