/*
 * stampede.c — a read-through cache in front of SQLite, with and without
 * singleflight.
 *
 * 1000 requests arrive at once for 10 hot products that are not cached yet.
 * A miss costs a slow query (the sku column has no index: a full scan), run
 * on one of a few pooled connections.  Without singleflight every request
 * that misses runs its own query: a cache stampede.  With it, concurrent
 * misses of one product share one query, and the flight fills the cache
 * before it lands, so later requests hit the cache.
 *
 * Each request has its own deadline.  The query runs under the flight's
 * context, which ends only when every request waiting for it has gone; a
 * progress handler stops SQLite then.  Products are immutable and reference
 * counted: the cache holds one reference, the flight's result another (its
 * destructor is product_put), each request its own.
 */
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xsync/singleflight.h>
#include <xsync/xsync.h>

enum { ROWS = 50000, HOT = 10, REQUESTS = 1000, CONNS = 4 };
enum { NOT_FOUND = 1, DB_ERROR = 2 }; /* our errors: positive codes */

/* ---- products: immutable, reference counted ---- */

struct product {
    _Atomic int refs;
    char sku[16];
    char name[48];
    int price_cents;
};

static struct product *product_get(struct product *p)
{
    atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    return p;
}

static void product_put(void *v)
{
    struct product *p = v;
    if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) == 1)
        free(p);
}

/* ---- the cache: a few slots under a mutex ---- */

struct cache {
    pthread_mutex_t mu;
    struct product *slot[HOT * 2];
};

static struct product *cache_get(struct cache *c, const char *sku)
{
    struct product *p = NULL;
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < HOT * 2 && c->slot[i] && !p; i++)
        if (strcmp(c->slot[i]->sku, sku) == 0)
            p = product_get(c->slot[i]);
    pthread_mutex_unlock(&c->mu);
    return p;
}

static void cache_put(struct cache *c, struct product *p)
{
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < HOT * 2; i++) {
        if (!c->slot[i]) {
            c->slot[i] = product_get(p);
            break;
        }
        if (strcmp(c->slot[i]->sku, p->sku) == 0)
            break; /* somebody filled it first */
    }
    pthread_mutex_unlock(&c->mu);
}

static void cache_clear(struct cache *c)
{
    for (int i = 0; i < HOT * 2; i++)
        if (c->slot[i])
            product_put(c->slot[i]);
    memset(c->slot, 0, sizeof c->slot);
}

/* ---- a small connection pool ---- */

struct pool {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    sqlite3 *free[CONNS];
    int nfree;
};

static sqlite3 *pool_take(struct pool *p)
{
    pthread_mutex_lock(&p->mu);
    while (p->nfree == 0)
        pthread_cond_wait(&p->cond, &p->mu);
    sqlite3 *db = p->free[--p->nfree];
    pthread_mutex_unlock(&p->mu);
    return db;
}

static void pool_give(struct pool *p, sqlite3 *db)
{
    pthread_mutex_lock(&p->mu);
    p->free[p->nfree++] = db;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->mu);
}

/* ---- the application ---- */

struct app {
    struct cache cache;
    struct pool pool;
    xs_sf *sf; /* NULL: no singleflight */
    _Atomic int queries, shared, hits, errors;
};

/* SQLite asks this every 1000 VM steps: non-zero interrupts the query. */
static int still_wanted(void *ctx)
{
    return xs_ctx_done(ctx);
}

/* The slow query: a full scan for one sku. */
static int query_product(struct app *a, xs_ctx *ctx, const char *sku, struct product **out)
{
    sqlite3 *db = pool_take(&a->pool);
    atomic_fetch_add(&a->queries, 1);
    sqlite3_progress_handler(db, 1000, still_wanted, ctx);
    sqlite3_stmt *st;
    int err = DB_ERROR;
    if (sqlite3_prepare_v2(db, "SELECT name, price_cents FROM products WHERE sku = ?1", -1, &st,
                           NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, sku, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            struct product *p = calloc(1, sizeof *p);
            if (p) {
                atomic_init(&p->refs, 1);
                snprintf(p->sku, sizeof p->sku, "%s", sku);
                snprintf(p->name, sizeof p->name, "%s", (const char *)sqlite3_column_text(st, 0));
                p->price_cents = sqlite3_column_int(st, 1);
                *out = p;
                err = 0;
            }
        } else if (rc == SQLITE_DONE) {
            err = NOT_FOUND;
        } else if (rc == SQLITE_INTERRUPT) {
            err = xs_ctx_err(ctx); /* nobody wants it any more */
        }
        sqlite3_finalize(st);
    }
    sqlite3_progress_handler(db, 0, NULL, NULL);
    pool_give(&a->pool, db);
    return err;
}

/* Loads a product into the cache: re-checks it first (a flight that just
 * landed may have filled it), fills it before returning. */
static int load_product(struct app *a, xs_ctx *ctx, const char *sku, struct product **out)
{
    if ((*out = cache_get(&a->cache, sku)))
        return 0;
    int err = query_product(a, ctx, sku, out);
    if (err == 0)
        cache_put(&a->cache, *out);
    return err;
}

struct flight_arg {
    struct app *app;
    const char *sku;
};

/* The singleflight function: the flight's context, its value and destructor. */
static int load_flight(xs_ctx *ctx, void *arg, void **value, xs_sf_value_free *value_free)
{
    struct flight_arg *f = arg;
    struct product *p;
    int err = load_product(f->app, ctx, f->sku, &p);
    if (err == 0) {
        *value = p;
        *value_free = product_put;
    }
    return err;
}

/* A request: the cache, then SQLite, alone or through the group. */
static int get_product(struct app *a, xs_ctx *ctx, const char *sku, struct product **out)
{
    if ((*out = cache_get(&a->cache, sku))) {
        atomic_fetch_add(&a->hits, 1);
        return 0;
    }
    if (!a->sf)
        return load_product(a, ctx, sku, out);
    struct flight_arg f = {a, sku};
    xs_sf_result r;
    int err = xs_sf_do(a->sf, ctx, sku, strlen(sku), load_flight, &f, &r);
    if (err == 0) {
        *out = product_get(r.value);
        if (r.shared)
            atomic_fetch_add(&a->shared, 1);
    }
    xs_sf_result_release(&r);
    return err;
}

struct request {
    struct app *app;
    pthread_barrier_t *start;
    int n;
};

static void *serve(void *arg)
{
    struct request *rq = arg;
    char sku[16];
    snprintf(sku, sizeof sku, "SKU-%06d", 1 + (rq->n % HOT) * (ROWS / HOT));
    pthread_barrier_wait(rq->start); /* everybody at once */
    xs_ctx *ctx;
    if (xs_ctx_with_timeout(xs_ctx_background(), 60 * XS_SEC, 0, &ctx) != 0) {
        atomic_fetch_add(&rq->app->errors, 1);
        return NULL;
    }
    struct product *p;
    int err = get_product(rq->app, ctx, sku, &p);
    if (err != 0 || strcmp(p->sku, sku) != 0)
        atomic_fetch_add(&rq->app->errors, 1);
    if (err == 0)
        product_put(p);
    xs_ctx_release(ctx);
    return NULL;
}

static int run(struct app *a, const char *path)
{
    for (int i = 0; i < CONNS; i++)
        if (sqlite3_open_v2(path, &a->pool.free[a->pool.nfree++], SQLITE_OPEN_READONLY, NULL) !=
            SQLITE_OK)
            return -1;
    static struct request rq[REQUESTS];
    static pthread_t th[REQUESTS];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, REQUESTS);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    int started = 0;
    for (; started < REQUESTS; started++) {
        rq[started] = (struct request){a, &start, started};
        if (pthread_create(&th[started], &attr, serve, &rq[started]) != 0)
            break;
    }
    pthread_attr_destroy(&attr);
    if (started < REQUESTS) { /* cannot start them all: let the others go */
        fprintf(stderr, "only %d threads could be started\n", started);
        return -1; /* (the started ones stay blocked at the barrier: exit) */
    }
    for (int i = 0; i < REQUESTS; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&start);
    for (int i = 0; i < CONNS; i++)
        sqlite3_close(a->pool.free[i]);
    a->pool.nfree = 0;
    cache_clear(&a->cache);
    return 0;
}

static int make_db(const char *path)
{
    sqlite3 *db;
    if (sqlite3_open(path, &db) != SQLITE_OK)
        return -1;
    int rc = sqlite3_exec(db,
                          "CREATE TABLE products(id INTEGER PRIMARY KEY, sku TEXT, name TEXT,"
                          " price_cents INTEGER);"
                          "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n"
                          " WHERE x < 50000)"
                          " INSERT INTO products(sku, name, price_cents)"
                          " SELECT printf('SKU-%06d', x), printf('product number %d', x),"
                          " x * 7 % 10000 FROM n;",
                          NULL, NULL, NULL);
    sqlite3_close(db);
    return rc == SQLITE_OK ? 0 : -1;
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s/xsync-stampede-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/shop.db", dir);
    int status = 1;
    if (make_db(path) != 0) {
        fprintf(stderr, "cannot create %s\n", path);
        goto out;
    }

    static struct app plain, flights;
    struct app *apps[2] = {&plain, &flights};
    for (int i = 0; i < 2; i++) {
        pthread_mutex_init(&apps[i]->cache.mu, NULL);
        pthread_mutex_init(&apps[i]->pool.mu, NULL);
        pthread_cond_init(&apps[i]->pool.cond, NULL);
    }
    if (xs_sf_new(NULL, &flights.sf) != 0)
        goto out;

    printf("%d concurrent requests for %d hot products (%d rows, sku not indexed, %d connections)\n",
           REQUESTS, HOT, ROWS, CONNS);
    if (run(&plain, path) != 0 || run(&flights, path) != 0)
        goto out;
    printf("without singleflight: %4d queries reached SQLite, %3d cache hits\n",
           atomic_load(&plain.queries), atomic_load(&plain.hits));
    printf("with singleflight:    %4d queries reached SQLite, %3d cache hits, %d requests shared"
           " a query\n",
           atomic_load(&flights.queries), atomic_load(&flights.hits), atomic_load(&flights.shared));
    int errors = atomic_load(&plain.errors) + atomic_load(&flights.errors);
    if (errors)
        printf("%d requests failed\n", errors);
    /* One query per hot product, whatever the timing: the flight re-checks
     * the cache and fills it before it lands. */
    status = errors == 0 && atomic_load(&flights.queries) == HOT ? 0 : 1;
    if (xs_sf_free(flights.sf) != 0)
        status = 1;
out:
    unlink(path);
    rmdir(dir);
    return status;
}
