/*
 * xsync/executor.h — the Action/Executor pattern: an action is a function to
 * run, an executor decides how a set of actions runs (in order, in
 * parallel, on a fixed pool), and decorators add behaviour to any executor
 * (flow control, debouncing, metrics, rate limiting).
 *
 * Actions.  An xs_action is a function, its argument and an optional name
 * (the seed's NamedAction).  The function receives a context that ends when
 * the run no longer wants its result (the caller's context ended, or, under
 * a fail-closed executor, another action failed): it should return early
 * when it can.  It returns 0 or an error of yours (use positive codes; the
 * library's codes are negative and pass through every layer unchanged).
 * An action may run its own executor, this one included.
 *
 * Running.  xs_exec_run(ex, ctx, actions, n, errs) runs the n actions and
 * blocks until every action it started has returned.  errs (optional)
 * receives one entry per action, always all n of them: the action's own
 * result if it ran, otherwise the error that kept it from running — the
 * context's error if the run's context was done (XS_ECANCELED,
 * XS_EDEADLINE), XS_ECANCELED when an earlier failure stopped a fail-closed
 * run, or the run's own error (XS_ELIMIT, XS_ENOMEM, XS_ECLOSED, ...) when
 * the run failed before starting anything.  The return value is documented
 * per executor; it is 0 only if every action ran and returned 0.  A run of
 * zero actions returns 0 at once.  The actions array, the names and errs
 * must stay valid until the run returns; the library copies nothing.
 *
 * Executors and decorators.  An executor is an opaque handle over a small
 * vtable (xs_executor_ops below), so you can write your own: embed
 * xs_executor as the first member of your struct, point ops at your
 * functions, and every decorator works over it.  Built-ins:
 *   xs_exec_sequential     one after the other, stops at the first error
 *   xs_exec_parallel       all at once on an errgroup, fail closed
 *   xs_exec_parallel_all   all at once, fail open: every error reported
 *   xs_exec_pool           on n threads of its own, fail closed; closeable
 *   xs_exec_control_flow   at most max_calls runs and max_actions actions
 *   xs_exec_debounce       concurrent actions with the same name run once
 *   xs_exec_metrics        latency, success and error stats per action
 *   xs_exec_rate_limit     each action waits for a token of a limiter
 *
 * Ownership.  A decorator takes ownership of its inner executor when it is
 * created successfully (on failure the inner executor stays the caller's):
 * freeing the outermost executor frees the whole stack, and the caller
 * frees nothing else.  XS_EXEC_BORROW in the options makes a decorator
 * borrow its inner executor instead (to share one pool between stacks):
 * the caller then frees the inner one after the decorator.  Stat sources,
 * rate limiters and a shared singleflight group are always borrowed: they
 * must outlive the executor.
 *
 * Thread-safety: every function may be called from any thread, and runs on
 * one executor may overlap freely, except xs_exec_free, which must not race
 * with a run on the executor or on anything it owns.  Memory ordering:
 * everything the caller did before xs_exec_run happens-before every action
 * runs; everything an action did happens-before xs_exec_run returns.
 */
#ifndef XSYNC_EXECUTOR_H
#define XSYNC_EXECUTOR_H

#include <stddef.h>
#include <stdint.h>

#include <xsync/alloc.h>
#include <xsync/context.h>
#include <xsync/error.h>
#include <xsync/export.h>
#include <xsync/pool.h>
#include <xsync/rate.h>
#include <xsync/singleflight.h>
#include <xsync/stats.h>
#include <xsync/time.h>

#ifdef __cplusplus
extern "C" {
#endif

/* An action: fn(ctx, arg); name NULL for an unnamed action. */
typedef struct xs_action {
    int (*fn)(xs_ctx *ctx, void *arg);
    void *arg;
    const char *name;
} xs_action;

typedef struct xs_executor xs_executor;

/*
 * The vtable.  xs_exec_run validates its input and calls run only with a
 * non-NULL ctx, 1 <= n <= XS_EXEC_MAX_ACTIONS actions whose fn are all
 * non-NULL, and errs NULL or n entries long.  run must write every entry of
 * errs (see the file comment), must be thread-safe, and returns 0 or an
 * error.  close (may be NULL: XS_EINVAL, "cannot be closed") makes later
 * runs fail with XS_ECLOSED.  free (may be NULL: the owner frees the
 * executor some other way) releases it and whatever it owns, returning 0 or
 * XS_EBUSY with nothing freed.
 */
typedef struct xs_executor_ops {
    int (*run)(xs_executor *ex, xs_ctx *ctx, const xs_action *actions, size_t n, int *errs);
    int (*close)(xs_executor *ex);
    int (*free)(xs_executor *ex);
} xs_executor_ops;

struct xs_executor {
    const xs_executor_ops *ops;
};

/* The most actions one run accepts (16 Mi). */
#define XS_EXEC_MAX_ACTIONS ((size_t)1 << 24)

/* Flags for xs_exec_opts.flags. */
enum {
    /* A decorator borrows its inner executor instead of owning it. */
    XS_EXEC_BORROW = 1u << 0,
};

/*
 * Options for every constructor; a NULL pointer or zero fields take the
 * defaults, and a field a constructor does not use is ignored.
 *   alloc  the executor's allocator (NULL: the process default, read once)
 *          for what it allocates itself, at creation and per run; contexts
 *          (a run's own, a group's, a singleflight call's) come from the
 *          process default, as everywhere (context.h)
 *   flags  XS_EXEC_* above (decorators); unknown flags are XS_EINVAL
 *   pool   parallel, parallel_all: the pool actions run on, borrowed (NULL:
 *          the default pool)
 *   group  debounce: a singleflight group shared with other debounce
 *          executors (or your own code), borrowed (NULL: a group of its own)
 *   scope  debounce: a scope for its keys, copied (NULL: none); see
 *          xs_exec_debounce_key
 *   clock  metrics: the clock latencies are read on, borrowed (a manual
 *          clock in tests); NULL: the fastest monotonic source at hand
 *          (see xs_exec_metrics)
 */
typedef struct xs_exec_opts {
    const xs_allocator *alloc;
    unsigned flags;
    xs_pool *pool;
    xs_sf *group;
    const char *scope;
    xs_clock *clock;
} xs_exec_opts;

/*
 * Runs actions[0..n) on ex under ctx (NULL: the background context) and
 * returns when every action it started has returned; see the file comment
 * for errs, and each constructor for the return value and what runs after
 * a failure.  XS_EINVAL, running nothing and writing nothing: ex NULL or
 * without a run function, actions NULL with n > 0, an action with a NULL
 * fn, n > XS_EXEC_MAX_ACTIONS.  The caller must hold its reference to ctx
 * for the duration of the call.
 */
XS_API int xs_exec_run(xs_executor *ex, xs_ctx *ctx, const xs_action *actions, size_t n,
                       int *errs);

/*
 * Closes ex: runs that start afterwards fail with XS_ECLOSED and run
 * nothing; runs in progress finish normally.  Never blocks.  A decorator
 * closes itself and, if it owns it, its inner executor.  Closing twice is
 * fine.  Returns 0; XS_EINVAL for NULL or an executor without close.
 */
XS_API int xs_exec_close(xs_executor *ex);

/*
 * Frees ex and everything it owns (a decorator: its inner executor, unless
 * borrowed).  No run may be in progress on ex or on anything it owns: join
 * the threads that run it first.  As a safety net the pool and control
 * flow check: while a run is in progress on them (including a call from
 * one of the pool's own actions) they return XS_EBUSY, and nothing of the
 * stack above them is freed either.  NULL: 0.
 */
XS_API int xs_exec_free(xs_executor *ex);

/*
 * Sequential: runs the actions in order on the calling thread, each under
 * ctx.  Before each action it checks ctx: if ctx is done it stops and
 * returns ctx's error.  It stops at the first action that fails and
 * returns that action's result; actions after it do not run (errs:
 * XS_ECANCELED).  Returns 0, XS_EINVAL (out NULL), XS_ENOMEM.
 */
XS_API int xs_exec_sequential(const xs_exec_opts *opts, xs_executor **out);

/*
 * Parallel, fail closed (the seed's Parallel on an errgroup): a run starts
 * every action as a task of a fresh xs_group on opts->pool.  Actions run
 * under the group's context, which ends when the first action fails (or
 * ctx ends): that first error is returned and the other actions see their
 * context end.  Actions not yet started by then are not started (errs: the
 * context's error, XS_ECANCELED).  A ctx already done on entry runs nothing
 * and returns its error.  Each run allocates the group and its context;
 * with errs and more than 16 actions, also one block of per-action records
 * (16 fit on the stack).  A run that cannot start every action (XS_ENOMEM,
 * or XS_ECLOSED from a private pool being freed) cancels those started,
 * waits for them and returns that error.  Returns 0, XS_EINVAL (out NULL),
 * XS_ENOMEM.
 */
XS_API int xs_exec_parallel(const xs_exec_opts *opts, xs_executor **out);

/*
 * Parallel, fail open: a run starts every action as a task of a fresh
 * xs_group in collect mode; a failure cancels nothing, every action runs to
 * its end, errs[i] receives action i's result, and the return value is the
 * lowest-index error (0 when all succeeded).  A ctx already done on entry
 * runs nothing and returns its error; a ctx that ends during the run is
 * seen by the actions, which are all still started.  Each run allocates
 * the group, its context and a result record per 64 actions.  Returns 0,
 * XS_EINVAL (out NULL), XS_ENOMEM.  A run that cannot start every action
 * (XS_ENOMEM, or XS_ECLOSED from a private pool being freed) lets those
 * started run to their end and returns that error, also in the errs of
 * the others.
 */
XS_API int xs_exec_parallel_all(const xs_exec_opts *opts, xs_executor **out);

/*
 * A pool of n threads of its own (n <= 0: one per online CPU; at most
 * 4096), fail closed like xs_exec_parallel.  A run queues its actions for
 * the pool's threads and the caller runs its own queued actions too while
 * it waits, so a run always progresses: an action may run an executor on
 * this same pool (or a run may wait for one that does) without deadlock,
 * even with every pool thread busy; at most n actions of all runs run on
 * the pool's threads at once, plus one per waiting caller.  The pool's
 * threads take actions in order, oldest run first (a waiting caller takes
 * its own run's next).  Once an action fails or ctx ends, actions not yet
 * taken are not run (errs: the context's error); the first
 * error (a failure, or the context's error when it stopped actions) is
 * returned.  Each run allocates one context (a child of ctx) and nothing
 * else.  Closing refuses later runs with XS_ECLOSED; free stops the
 * threads.  Returns 0, XS_EINVAL (out NULL, n > 4096), XS_ENOMEM (memory or
 * threads).
 */
XS_API int xs_exec_pool(int n, const xs_exec_opts *opts, xs_executor **out);

/*
 * Flow control (the seed's ControlFlow): at most max_calls runs and
 * max_actions actions in flight at once across every run of this decorator.
 * A run of n actions takes one unit of a calls semaphore, then n units of
 * an actions semaphore (as one block: FIFO, no piecemeal starvation), both
 * waiting under ctx, runs on inner and gives both back.  n > max_actions is
 * XS_ELIMIT at once; a context that ends while waiting gives back what was
 * taken and returns its error (XS_ECANCELED, XS_EDEADLINE); otherwise the
 * run returns what inner returns.  Nothing allocated per run.  An action
 * that runs this same decorator needs units of its own: with the limits
 * taken by its caller it waits for its context (as in the seed).  Returns 0;
 * XS_EINVAL (inner or out NULL, inner without run, a limit < 1 or over
 * XS_SEM_MAX); XS_ENOMEM.
 */
XS_API int xs_exec_control_flow(xs_executor *inner, int64_t max_calls, int64_t max_actions,
                                const xs_exec_opts *opts, xs_executor **out);

/*
 * Debounce (the seed's Debounce): every named action runs through a
 * singleflight group keyed by its name (and the executor's scope), so
 * concurrent actions with the same key — in one run or in concurrent runs,
 * of this executor or of any executor sharing the group — run once and all
 * receive that execution's result.  Unnamed actions pass through untouched.
 * A named action's context is the singleflight call's own (it ends only
 * when every action waiting for the execution has gone); an action whose
 * context ends while it waits for another's execution returns its context's
 * error at once.  Only concurrent actions share: a later action with the
 * same name runs again — and so does one that comes after every action
 * waiting for a running execution has gone (their contexts ended): the
 * abandoned execution may still be running when the new one starts
 * (singleflight.h: an abandoned call leaves the table).  An action must not run, through the same group, an
 * action with its own key: it would wait for itself until its context ends
 * (as in Go).  The run returns what inner returns.
 * Per named action the group allocates its call record (see
 * singleflight.h); keys over 256 bytes also take a buffer.  A run with a
 * name whose key would exceed XS_SF_KEY_MAX is XS_EINVAL, running nothing.
 * Returns 0; XS_EINVAL (inner or out NULL, inner without run, a scope whose
 * encoded prefix leaves no room for a key within XS_SF_KEY_MAX); XS_ENOMEM.
 */
XS_API int xs_exec_debounce(xs_executor *inner, const xs_exec_opts *opts, xs_executor **out);

/*
 * The singleflight key a debounce executor with `scope` (NULL or "": none)
 * uses for actions named `name`: the scope's length as a LEB128 varint,
 * the scope's bytes, then the name's bytes.  The length prefix makes the
 * encoding unambiguous, so scope "ab" with name "c" and scope "a" with
 * name "bc" never share an execution.  Use it with xs_sf_interested or
 * xs_sf_forget on a shared group.  Stores the key's length in *len and
 * writes the key to buf if it fits in cap bytes: returns 0; XS_EOVERFLOW
 * (nothing written) when it does not; XS_EINVAL for NULL name or len, or
 * buf NULL with cap > 0.
 */
XS_API int xs_exec_debounce_key(const char *scope, const char *name, void *buf, size_t cap,
                                size_t *len);

/*
 * Metrics (the seed's Metrics decorator): for every action that runs (one
 * the inner executor skips — after a fail-closed failure, on a done
 * context, when closed — is not counted), its latency
 * (ns) goes to the timer "all_actions.latency" and a count of 1
 * to "all_actions.success" (result 0) or "all_actions.error" (any other
 * result); a named action also emits to "<name>.latency", "<name>.success"
 * and "<name>.error".  The stat set of each name is created on first use
 * (two counters and a timer from src) exactly once, even when many runs ask
 * for a new name at once, and cached in an xs_map for the executor's life:
 * once a name is cached a run allocates nothing (up to 16 actions; larger
 * runs take one block for their wrappers).  An action named "all_actions"
 * counts twice in those stats.  A run whose stat set cannot be created
 * (XS_ENOMEM; XS_EINVAL for a name longer than XS_MAP_KEY_MAX; or an error
 * from src, such as a name it refuses) fails with that error before running
 * anything.  The run returns what inner returns.
 * The all_actions set is created here.  Latencies are read on opts->clock
 * when given; otherwise on the CPU's tick counter where the kernel keeps
 * it as its monotonic clocksource (x86-64 Linux with the TSC: rdtsc,
 * scaled to ns by a factor the first metrics executor of the process
 * calibrates over 2 ms), else on xs_now() — two reads of which cost more
 * than everything else the decorator does per action.  Returns 0; XS_EINVAL
 * (inner, src or out NULL, inner without run); XS_ENOMEM; or src's error.
 */
XS_API int xs_exec_metrics(xs_executor *inner, xs_stat_source *src, const xs_exec_opts *opts,
                           xs_executor **out);

/*
 * Rate limiting: every action first waits for one token of `limiter`
 * (xs_rate_wait under the action's context), then runs.  A wait that fails
 * — the context ended, or would end before the token comes (XS_EDEADLINE
 * at once), or the limiter can never give one (XS_ELIMIT) — becomes that
 * action's result, without running it.  The run returns what inner returns.
 * Nothing allocated per run up to 16 actions (one block beyond).  Returns
 * 0; XS_EINVAL (inner, limiter or out NULL, inner without run); XS_ENOMEM.
 */
XS_API int xs_exec_rate_limit(xs_executor *inner, xs_rate *limiter, const xs_exec_opts *opts,
                              xs_executor **out);

#ifdef __cplusplus
}
#endif
#endif
