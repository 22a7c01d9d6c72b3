/*
 * executor_stack.c — the seed article's system, composed: a request
 * handler fans out to named actions through
 *
 *     Debounce(Metrics(ControlFlow(Parallel)))
 *
 * Parallel runs a request's actions at once and cancels the rest on the
 * first error; ControlFlow bounds how much runs at once; Metrics records
 * latency, successes and errors for every action and per name; Debounce
 * makes concurrent actions with the same name — within a request or across
 * requests — run once.  Four "requests" run concurrently; then the
 * in-memory metrics are printed, and the same registry as Prometheus text.
 */
#include <pthread.h>
#include <stdio.h>

#include <xsync/xsync.h>

enum { NOT_FOUND = 404 }; /* our own error: a positive code */

static _Atomic int lookups; /* how often a "backend" was really called */

/* A backend call: takes a little while, honours its context. */
static int backend(xs_ctx *ctx, void *arg)
{
    (void)arg;
    atomic_fetch_add(&lookups, 1);
    int r = xs_ctx_wait(ctx, 2 * XS_MSEC); /* the call's latency, or the context's end */
    return r == XS_EDEADLINE ? 0 : r;       /* our 2 ms passed: success */
}

static int missing(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    atomic_fetch_add(&lookups, 1);
    return NOT_FOUND;
}

static int log_request(xs_ctx *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    return 0;
}

typedef struct request {
    xs_executor *ex;
    int id, result;
} request;

static void *handle(void *arg)
{
    request *rq = arg;
    /* Every request wants the same user and config; one also asks for a
     * document that does not exist. */
    xs_action actions[] = {
        {backend, NULL, "user"},
        {backend, NULL, "config"},
        {backend, NULL, "user"}, /* the same name twice in one request */
        {log_request, NULL, NULL},
        {rq->id == 3 ? missing : backend, NULL, rq->id == 3 ? "document" : "quota"},
    };
    size_t n = sizeof actions / sizeof actions[0];
    xs_ctx *ctx;
    rq->result = xs_ctx_with_timeout(xs_ctx_background(), XS_SEC, 0, &ctx);
    if (rq->result == 0) {
        rq->result = xs_exec_run(rq->ex, ctx, actions, n, NULL);
        xs_ctx_release(ctx);
    }
    return NULL;
}

static int print_metric(const char *name, xs_stat_counter *c, xs_stat_timer *t, void *arg)
{
    (void)arg;
    if (c) {
        int64_t v = 0;
        xs_stat_counter_value(c, &v);
        printf("  %-22s %lld\n", name, (long long)v);
    } else {
        xs_stat_summary s;
        xs_stat_timer_snapshot(t, &s);
        printf("  %-22s count %llu  p50 %.2f ms  p99 %.2f ms  max %.2f ms\n", name,
               (unsigned long long)s.count, s.p50 / 1e6, s.p99 / 1e6, s.max / 1e6);
    }
    return 0;
}

int main(void)
{
    xs_stat_source *registry = NULL;
    xs_executor *parallel = NULL, *flow = NULL, *metrics = NULL, *stack = NULL;
    int r = xs_stat_registry_new(NULL, &registry);
    /* Each decorator owns what it wraps once created: freeing `stack` frees
     * all four.  (On failure the inner one is still ours to free.) */
    if (r == 0)
        r = xs_exec_parallel(NULL, &parallel);
    if (r == 0 && (r = xs_exec_control_flow(parallel, 4, 16, NULL, &flow)) != 0)
        xs_exec_free(parallel);
    if (r == 0 && (r = xs_exec_metrics(flow, registry, NULL, &metrics)) != 0)
        xs_exec_free(flow);
    if (r == 0 && (r = xs_exec_debounce(metrics, NULL, &stack)) != 0)
        xs_exec_free(metrics);
    if (r != 0) {
        fprintf(stderr, "building the stack: %s\n", xs_strerror(r));
        xs_stat_source_free(registry);
        return 1;
    }

    request rq[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        rq[i] = (request){.ex = stack, .id = i};
        pthread_create(&th[i], NULL, handle, &rq[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        printf("request %d: %s\n", i, rq[i].result == NOT_FOUND ? "not found"
                                      : rq[i].result == 0       ? "ok"
                                                                : xs_strerror(rq[i].result));
    }
    printf("backend calls: %d for 16 named actions (concurrent ones shared)\n\n",
           atomic_load(&lookups));

    printf("metrics:\n");
    xs_stat_registry_range(registry, print_metric, NULL);
    printf("\nthe same, as Prometheus text:\n");
    xs_stat_prometheus_fwrite(registry, stdout);

    int bad = 0;
    for (int i = 0; i < 4; i++)
        bad += rq[i].result != (i == 3 ? NOT_FOUND : 0);
    xs_exec_free(stack);
    xs_stat_source_free(registry);
    return bad ? 1 : 0;
}
