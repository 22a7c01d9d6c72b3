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
 * Built-in sources, all three thread-safe and never blocking the emitter:
 *
 *   in-memory registry   xs_stat_registry_new: counters and latency
 *                        histograms you can read back (and range over);
 *   Prometheus text      xs_stat_prometheus_write / _fwrite render a
 *                        registry in the text exposition format 0.0.4;
 *   statsd               xs_stat_statsd_new: a source that ships counters
 *                        and timers as statsd lines over UDP, batched.
 *
 * The metrics decorator asks for `<action name>.success`, `<action
 * name>.error` (counters) and `<action name>.latency` (timer), and uses
 * `all_actions` as the name of the global set.  Counters and timers live in
 * separate namespaces in every built-in source: a counter and a timer may
 * share a name.  Every built-in source refuses (XS_EINVAL) a NULL or empty
 * name and accepts every other byte string, storing it verbatim (registry) or
 * rewriting it where its output format forbids a byte (Prometheus, statsd;
 * the rules are below).
 */
#ifndef XSYNC_STATS_H
#define XSYNC_STATS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <xsync/alloc.h>
#include <xsync/error.h>
#include <xsync/export.h>
#include <xsync/time.h>

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

/* Frees a source through its vtable.  NULL: nothing.  Not thread-safe: no
 * thread may be using the source or any of its handles. */
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

/* ======================================================================
 * The in-memory registry
 * ======================================================================
 *
 * Names map to metrics through an xs_map (load_or_create: a metric is
 * created exactly once however many threads ask for it at the same time);
 * asking again for a name returns the same handle.  Names are stored
 * verbatim: any bytes, 1 to XS_MAP_KEY_MAX (65536) long (longer: XS_EINVAL).
 *
 * Counters are int64 sums.  Each counter is striped: one cache line per
 * stripe, a thread always adding to the same stripe (threads are dealt
 * stripes round-robin; the stripe count is the CPU count rounded up to a
 * power of two, at most 64), so threads on different CPUs do not fight over
 * one line.  A read sums the stripes: exact once the adders are done (e.g.
 * joined); while adds run, it counts each concurrent add or not.  Sums wrap
 * around on int64 overflow.
 *
 * Timers are log-linear histograms in the HdrHistogram style: values 0..255
 * ns have a bucket each; above, every range [2^k, 2^(k+1)) is split into
 * 128 equal buckets, up to INT64_MAX.  A quantile is reported as the middle
 * of the bucket holding it, clamped to [min, max], so it is within 1/256
 * (0.4%) of the true sample value (exact below 256 ns, and for the lowest
 * and highest rank, which are the min and max).  Count, sum, min and
 * max are exact.  A histogram is 7296 64-bit buckets: about 57 KiB.  A timer
 * gets one when it is created, shared by every thread.  Threads on different
 * stripes recording at the same time would fight over the buckets' cache
 * lines, so a stripe gets a histogram of its own (allocated then, by the
 * record that decides it, through the registry's allocator; if the
 * allocation fails the stripe keeps sharing, for good) the first time one
 * of its records finds its bucket changed under it by another thread, or
 * at its 4096th record on the shared histogram (neighbouring buckets share
 * a line without ever changing under each other), so even a thread
 * recording alone may cause one.  The first stripe owns the shared
 * histogram and never allocates.
 * So a timer holds 1 to `stripes` histograms (57 KiB to 3.6 MiB with 64
 * stripes); reads add them up.  Negative durations are recorded as 0.  The
 * sum wraps after 2^63 ns (292 years of total latency).
 *
 * Emitting (add, record) is a few relaxed atomic operations, lock-free, and
 * allocation-free except for that one allocation per stripe of a timer
 * (made by a record, as above; the allocator's own locking is the only
 * waiting an emitter can ever do).  No ordering with other memory
 * is implied.  Reading while other threads emit sees each counter and
 * bucket at some value it had; a snapshot's fields are not one atomic cut
 * (count may include a record whose sum has not landed yet).  Reads after
 * the emitters are joined are exact.  A timer read walks every histogram
 * of the timer: up to `stripes` times the work of an uncontended one.
 */

/*
 * Creates an empty registry.  alloc NULL: the process default, read once.
 * Returns 0 and the source in *out, XS_EINVAL (out NULL) or XS_ENOMEM.
 * Creating a metric allocates (through alloc).  Emitting does not, except
 * that a timer's record may allocate its stripe's own histogram (57 KiB,
 * through alloc), at most once per stripe of the timer (see above).  Free
 * with xs_stat_source_free.
 */
XS_API int xs_stat_registry_new(const xs_allocator *alloc, xs_stat_source **out);

/* A timer's state; times in nanoseconds.  All zero for an empty timer. */
typedef struct xs_stat_summary {
    uint64_t count;                 /* records */
    int64_t sum;                    /* of the recorded durations */
    int64_t min, max;               /* exact */
    int64_t p50, p90, p99;          /* within 0.4% (see above) */
} xs_stat_summary;

/*
 * Reads a registry handle: a counter's value; a timer's snapshot; a timer's
 * q-quantile for any q in [0, 1] (the value at rank ceil(q * count), at
 * least 1, of the sorted records: q = 0 is the min, q = 1 the max; 0 for an
 * empty timer).  Returns 0, or XS_EINVAL for a NULL argument, a q outside
 * [0, 1] (NaN included), or a handle that did not come from a registry.
 * Thread-safe; lock-free; allocate nothing.
 */
XS_API int xs_stat_counter_value(const xs_stat_counter *c, int64_t *out);
XS_API int xs_stat_timer_snapshot(const xs_stat_timer *t, xs_stat_summary *out);
XS_API int xs_stat_timer_quantile(const xs_stat_timer *t, double q, int64_t *out);

/*
 * The same by name, without creating anything: XS_ENOENT when the registry
 * has no counter (timer) of that name; XS_EINVAL for a NULL argument or a
 * source that is not a registry.
 */
XS_API int xs_stat_registry_counter_value(xs_stat_source *reg, const char *name, int64_t *out);
XS_API int xs_stat_registry_timer_snapshot(xs_stat_source *reg, const char *name,
                                           xs_stat_summary *out);

/*
 * A range callback: exactly one of c and t is non-NULL.  `name` is the
 * metric's name (NUL-terminated, valid until the registry is freed).
 * Return 0 to go on, anything else to stop the range, which returns it.
 */
typedef int (*xs_stat_range_fn)(const char *name, xs_stat_counter *c, xs_stat_timer *t,
                                void *arg);

/*
 * Calls fn for every counter, then every timer, in no particular order, with
 * xs_map_range's guarantees: each metric once; one created meanwhile may or
 * may not be visited; emitters and creators are never blocked; fn may call
 * any function of the registry.  Returns 0, fn's nonzero result, XS_EINVAL
 * (NULL reg or fn, not a registry) or XS_ENOMEM (the map's range buffer).
 */
XS_API int xs_stat_registry_range(xs_stat_source *reg, xs_stat_range_fn fn, void *arg);

/* ======================================================================
 * Prometheus text exposition (format version 0.0.4) of a registry
 * ======================================================================
 *
 * Every metric becomes one family: a HELP line (the original name), a TYPE
 * line and its samples, families in the order of the original names
 * (bytewise; a counter before a timer of the same name):
 *
 *   # HELP all_actions_success_total xsync counter "all_actions.success"
 *   # TYPE all_actions_success_total counter
 *   all_actions_success_total 12
 *   # HELP all_actions_latency_seconds xsync timer "all_actions.latency"
 *   # TYPE all_actions_latency_seconds summary
 *   all_actions_latency_seconds{quantile="0.5"} 0.000123
 *   all_actions_latency_seconds{quantile="0.9"} 0.00025
 *   all_actions_latency_seconds{quantile="0.99"} 0.0011
 *   all_actions_latency_seconds_sum 0.0151
 *   all_actions_latency_seconds_count 100
 *
 * Counters are `counter`s named <base>_total; timers are `summary`s named
 * <base>_seconds with quantiles 0.5, 0.9 and 0.99 (NaN while empty), _sum
 * and _count.  Values in seconds (the Prometheus base unit), printed exactly
 * from the nanosecond integers as decimals without exponent or trailing
 * zeros (no floating point, no locale).  A counter made negative by negative
 * deltas is printed as it is, though Prometheus expects counters to only go
 * up.
 *
 * Names.  <base> is the name rewritten to Prometheus' [a-zA-Z_:][a-zA-Z0-9_:]*
 * and to its snake_case convention:
 *   - an ASCII uppercase letter that follows a lowercase letter or a digit
 *     gets '_' before it ("getUser" -> "get_user"); all ASCII letters are
 *     lowercased ("HTTP" -> "http");
 *   - every byte other than a-z, 0-9 and '_' (':' included: Prometheus
 *     reserves it for recording rules) becomes '_', one '_' per byte
 *     ("db/query 1" -> "db_query_1", "é" (2 bytes) -> "__");
 *   - a leading digit gets '_' in front ("9lives" -> "_9lives");
 *   - the unit suffix is not doubled: a counter base already ending in
 *     "_total" (a timer's in "_seconds") is used as the family name.
 * The HELP line quotes the original name with every byte outside printable
 * ASCII, '%', '"' and '\' written as %XX (hex), so any name gives valid
 * UTF-8 text.
 *
 * Collisions.  When two metrics of the same kind get the same family name,
 * the first in the order above keeps it and the next get "_2", "_3", ...
 * inserted before the unit suffix ("a.b" -> a_b_total, then "a_b" ->
 * a_b_2_total), skipping any number whose name another metric already has.
 * The result depends only on the set of names.  Counter and timer families
 * never collide with each other (their names end differently).  Resolving
 * them takes time linear in the number of metrics however many collide (so
 * names from untrusted input cannot make a rendering quadratic).
 *
 * The output is always valid exposition text, but `promtool check metrics`
 * may lint names: for what you chose (units other than the base one,
 * `_milliseconds`; abbreviations, `_ms`; a type in the name, `_counter`) and
 * also for what the rewriting makes.  Promtool splits a name at '_' and
 * flags any piece that reads as a unit abbreviation (s, ms, m, h, d, b, kb,
 * ...), and a byte turned into '_' or a case split can leave such a piece:
 * "cafés" -> caf__s_total, "getM" -> get_m_total, "req/s" -> req_s_total
 * are flagged.  These are warnings about style, not format errors.
 *
 * Each rendering ranges over the registry (see xs_stat_registry_range: a
 * metric created meanwhile may be missing) and allocates its working arrays
 * through the registry's allocator.
 */

/*
 * Renders the registry into buf, snprintf-style: writes at most size bytes,
 * the last one a NUL (buf may be NULL when size is 0), and stores the
 * length of the whole exposition, NUL excluded, in *len.  The output was
 * truncated iff *len >= size: call again with a buffer of *len + 1 bytes or
 * more (more, if metrics may be created meanwhile).  Returns 0, XS_EINVAL
 * (reg not a registry, len NULL, buf NULL with size > 0) or XS_ENOMEM
 * (*len and buf unspecified).  Thread-safe.
 */
XS_API int xs_stat_prometheus_write(xs_stat_source *reg, char *buf, size_t size, size_t *len);

/*
 * Renders the registry to a stdio stream (a file, a pipe, an fdopen'ed
 * socket), leaving it unflushed.  Returns 0, XS_EINVAL, XS_ENOMEM, or the
 * negative errno of a failed write (-EIO if the stream does not say).
 *
 * SIGPIPE: writing to a socket or pipe whose peer has gone (a scraper that
 * hung up) raises SIGPIPE, whose default action ends the process.  stdio
 * cannot avoid it.  To serve /metrics on a socket, use
 * xs_stat_prometheus_write_fd, or ignore SIGPIPE in the process
 * (signal(SIGPIPE, SIG_IGN)) before calling this.
 */
XS_API int xs_stat_prometheus_fwrite(xs_stat_source *reg, FILE *f);

/*
 * Renders the registry to a file descriptor: what to call to answer a
 * scrape on a connected socket.  Writes through a buffer of 8 KiB, with
 * send(MSG_NOSIGNAL) when fd is a socket (so a peer that hung up gives
 * -EPIPE, never SIGPIPE) and write() otherwise (a file; a pipe whose
 * reader is gone does raise SIGPIPE there: ignore it if you write to
 * pipes).  Blocks until everything is written, retrying after EINTR; a
 * non-blocking fd that would block fails with XS_EAGAIN.  Returns 0,
 * XS_EINVAL (reg not a registry, fd < 0), XS_ENOMEM (nothing written), or
 * the negative errno of the first failed write (-EPIPE, -ECONNRESET,
 * -EBADF, ...), after which nothing more is written: the peer got a prefix
 * of the exposition.  Thread-safe; the descriptor is left open.
 */
XS_API int xs_stat_prometheus_write_fd(xs_stat_source *reg, int fd);

/* ======================================================================
 * statsd over UDP
 * ======================================================================
 *
 * A source whose counters and timers are shipped to a statsd server as
 * lines of the statsd protocol:
 *
 *   <prefix><name>:<delta>|c      a counter's accumulated delta
 *   <prefix><name>:<ms>|ms        one timer record, in milliseconds
 *
 * Emitting never blocks and never makes a system call:
 *   - a counter add is an atomic add to the counter's own striped total;
 *     a flush sends one line per counter that changed since the last flush
 *     with the sum of the deltas (statsd adds them up the same way; the sum
 *     wraps around on int64 overflow, as the registry's counters do);
 *   - a timer record puts (timer, duration) in a bounded lock-free queue
 *     (queue_size records); when the queue is full the record is dropped and
 *     counted.
 * A flush takes the counters' deltas and the timer records queued before it
 * began — at most queue_size records, so a flush ends however fast
 * producers keep recording; what they record meanwhile waits for the next
 * flush — into datagrams of at most max_payload bytes, lines separated by
 * '\n' (none after the last), a line never split, and sends each with one
 * non-blocking send() on a connected UDP socket.  A
 * datagram the kernel refuses (EAGAIN, ENOBUFS, ECONNREFUSED — the ICMP
 * "port unreachable" of an earlier datagram —, any error) is dropped and
 * its lines counted as drops; nothing is retried.  Drops the network makes
 * later (a full receive buffer at the server, loss) are invisible to the
 * sender and not counted.
 *
 * Durations are printed exactly in milliseconds from the nanosecond
 * integer: up to six decimals, trailing zeros and a bare '.' removed
 * (1500000 ns -> "1.5", 2000000 -> "2", 1 -> "0.000001"); negative
 * durations as 0.  No floating point and no locale.
 *
 * A record's producer claims a place in the queue, then writes the record
 * and publishes it.  A producer preempted between the two (descheduled for
 * a while) stalls the queue at its place: flushes take the records before
 * it and leave it and the ones after for a later flush, and if it stays
 * away long enough the queue fills and records are dropped (and counted).
 * That is inherent in a bounded queue whose producers never wait.
 *
 * Flushing: explicitly with xs_stat_statsd_flush, and, when flush_interval
 * is set, periodically: a timer on the clock (the system clock's timer
 * thread, or a manual clock's xs_clock_advance) queues the flush as a task
 * on the default pool (xs_pool_default) and the flush runs there, so it
 * never delays the other timers of the clock (context deadlines, rate
 * limiters).  The cost: the default pool is started on the first period;
 * every period submits one task (none while the previous one has not
 * started: it will take this period's records too) that occupies a run
 * slot of the pool for one flush, at most queue_size records; a task that
 * finds a flush running (an xs_stat_statsd_flush in another thread, or a
 * slow periodic one) ends at once without flushing, and what it would have
 * sent goes with the next period — so a source has at most two tasks, one
 * queued and one flushing, and never holds a pool thread waiting.  A
 * period whose task cannot be queued (no pool: out of memory or threads)
 * is skipped.  On a manual clock the flush therefore runs shortly after
 * xs_clock_advance, not inside it.  Flushes are serialised.
 * xs_stat_source_free does not wait for the pool: it waits only for a
 * periodic flush already running (bounded like any flush), then does a
 * last one itself; a task still queued then finds the source gone and
 * ends (it holds a small block from libc, not from the source's allocator,
 * freed by whichever of free and the task ends last).  So free may be
 * called from anywhere, a clock's timer callback or the thread advancing a
 * manual clock included.
 *
 * fork() without exec: the child's copy of the source never flushes
 * periodically (its inherited timer does nothing in the child, so records
 * pending at the fork are sent once, by the parent, and a lock held by
 * another parent thread at the fork cannot stall the child's clock).  The
 * child must not use or free that copy: it may hold the parent's locks.
 *
 * Names.  The line name is prefix + name, both rewritten byte for byte:
 * ':', '|', '@' (the protocol's separators), ' ', control bytes (below 0x20,
 * '\n' included) and 0x7f become '_'; everything else (UTF-8 included) is
 * kept.  Names that become equal are one metric to the server.  A name
 * whose line could not fit a datagram (prefix + name longer than
 * max_payload - 32 bytes) is XS_EINVAL.  Asking twice for the same name
 * returns the same handle.
 */

typedef struct xs_stat_statsd_options {
    const char *host;        /* server address or host name; NULL: "127.0.0.1".
                              * Resolved once, in xs_stat_statsd_new, with
                              * getaddrinfo (which may block on DNS; a numeric
                              * address never does); its addresses are tried
                              * in its order and the first one a UDP socket
                              * connects to is used.  UDP connect only checks
                              * the address locally, so that is normally the
                              * first address: "localhost" may give ::1 while
                              * the server listens on 127.0.0.1 only. */
    uint16_t port;           /* 0: 8125 */
    const char *prefix;      /* prepended to every name, e.g. "myapp."; NULL: none */
    size_t max_payload;      /* bytes per datagram, 64..65507; 0: 1432 (fits a
                              * 1500-byte MTU with IPv6 and UDP headers) */
    size_t queue_size;       /* timer records buffered between flushes, rounded
                              * up to a power of two, at least 2 (1 becomes 2),
                              * at most 2^24; 0: 4096 */
    int64_t flush_interval;  /* ns between automatic flushes; 0: none (only
                              * xs_stat_statsd_flush); > 0: at least 1 ms */
    xs_clock *clock;         /* for flush_interval; NULL: the system clock.  A
                              * manual clock must outlive the source. */
    const xs_allocator *allocator; /* NULL: the process default, read once */
} xs_stat_statsd_options;

/*
 * Creates a statsd source: resolves the host, opens a non-blocking UDP
 * socket connected to it (close-on-exec), and arms the periodic flush if
 * asked.  opts NULL: all defaults.  Returns 0 and the source in *out;
 * XS_EINVAL (out NULL, an option out of range, an empty host, a host that
 * does not resolve, a prefix longer than max_payload - 33 bytes); XS_EAGAIN
 * (the resolver failed temporarily, EAI_AGAIN: a DNS server did not answer;
 * try again later); XS_ENOMEM; XS_EMFILE or another negative errno from
 * socket()/connect() (the last address's, when none connected).  Nothing is
 * left open or allocated on error.  Free with xs_stat_source_free (before a
 * manual clock it uses).
 */
XS_API int xs_stat_statsd_new(const xs_stat_statsd_options *opts, xs_stat_source **out);

/*
 * Sends what was emitted before the call (counters changed since the last
 * flush, timer records queued — at most queue_size of them, see above) now,
 * in the calling thread, without blocking on the network (it may wait for
 * a flush running in another thread, itself bounded the same way).  Returns 0
 * if every datagram was accepted by the kernel, otherwise the negative
 * errno of the first refused one (its lines and the others' were counted as
 * drops either way), or XS_EINVAL (src not a statsd source).  Thread-safe.
 */
XS_API int xs_stat_statsd_flush(xs_stat_source *src);

/*
 * Lines dropped so far: timer records refused by a full queue plus lines of
 * datagrams the kernel refused.  0 for NULL or a source that is not statsd.
 */
XS_API uint64_t xs_stat_statsd_drops(const xs_stat_source *src);

/* Lines handed to the kernel so far (in accepted datagrams).  0 for NULL or
 * a source that is not statsd. */
XS_API uint64_t xs_stat_statsd_sent(const xs_stat_source *src);

#ifdef __cplusplus
}
#endif
#endif
