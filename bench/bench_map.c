/*
 * bench_map.c — the concurrent map's benchmarks.
 *
 * The seed's table (DESIGN.md, "Performance"): a stat cache looked up by
 * name from every thread.  Each op picks a name "name-<i>", i uniform in
 * [0, N), from a precomputed corpus with a per-thread xorshift64*
 * generator, gets or creates its stat set, and atomically adds 1 to the
 * set's success counter.  Three implementations of the cache:
 *
 *   BenchmarkMutexCache/N    a pthread_rwlock over a hash table, doing the
 *                            seed's double-checked "mutex dance"
 *   BenchmarkSyncMapCache/N  xs_map_load_or_create (typed wrapper)
 *   BenchmarkUnsyncLimit/N   the same loop on an unsynchronized table private
 *                            to each thread: no sharing at all, the limit
 *
 * All three use the same corpus, generator, hash function (the library's
 * keyed hash), stat set and creation cost.  The caches start empty in every
 * run, as in the seed, so large N measure creation as much as lookup.
 * N = 10 .. 10^7; 10^8 only with -full (it needs several GB).
 *
 * Then Go's sync.Map benchmark set (src/sync/map_bench_test.go) under Go's
 * names, with int keys encoded as 8 bytes and each thread starting at
 * thread * b.N as Go's benchMap does.
 */
#include "bench.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xsync/alloc.h>
#include <xsync/map.h>

#include "../src/hash.h"

/* ---- the corpus and the generator ---- */

typedef struct corpus {
    size_t n;
    char *text;     /* the names, back to back */
    uint64_t *pos;  /* offset << 8 | length */
} corpus;

static pthread_mutex_t corpus_mu = PTHREAD_MUTEX_INITIALIZER;
static corpus *corpora[10];

static size_t put_name(char *p, size_t i)
{
    char digits[24];
    size_t d = 0;
    do {
        digits[d++] = (char)('0' + i % 10);
        i /= 10;
    } while (i);
    memcpy(p, "name-", 5);
    for (size_t k = 0; k < d; k++)
        p[5 + k] = digits[d - 1 - k];
    return 5 + d;
}

/* Built once per N and kept for the process (not counted in any run). */
static corpus *corpus_get(size_t n, int slot)
{
    pthread_mutex_lock(&corpus_mu);
    corpus *c = corpora[slot];
    if (!c) {
        c = calloc(1, sizeof *c);
        if (c) {
            c->n = n;
            c->text = malloc(n * 14);
            c->pos = malloc(n * sizeof *c->pos);
            if (!c->text || !c->pos) {
                free(c->text);
                free(c->pos);
                free(c);
                c = NULL;
            } else {
                size_t off = 0;
                for (size_t i = 0; i < n; i++) {
                    size_t len = put_name(c->text + off, i);
                    c->pos[i] = (uint64_t)off << 8 | len;
                    off += len;
                }
            }
        }
        corpora[slot] = c;
    }
    pthread_mutex_unlock(&corpus_mu);
    return c;
}

static inline uint64_t xorshift64s(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * UINT64_C(2685821657736338717);
}

/* uniform in [0, n) without a division */
static inline size_t pick(uint64_t *s, size_t n)
{
    return (size_t)(((unsigned __int128)xorshift64s(s) * n) >> 64);
}

static _Atomic uint64_t run_serial;

static uint64_t thread_seed(const xs_bench_pb *pb, uint64_t run)
{
    uint64_t s = (uint64_t)(xs_bench_pb_thread(pb) + 1) * UINT64_C(0x9E3779B97F4A7C15) ^ run;
    return s ? s : 1;
}

/* ---- the stat set (the cached value) ----
 *
 * As in the seed: success and error counters and a latency sum per name.
 * The counters are built the way metrics libraries (and this library's
 * stats registry) build counters that every thread adds to: striped, 128
 * bytes per stripe (see STRIPE_BYTES), as many stripes as CPUs (rounded up to a power of
 * two), each thread adding to its own stripe and a read summing them — an
 * add is still one atomic instruction, and never has to pull a line out of
 * another core's cache.  All three caches use this same stat set.
 * BenchmarkSyncMapCacheOneWord/N (full set) makes every thread add to the
 * first stripe, a plain shared word, to show what the sharing alone costs.
 */

/* 128 bytes apart, and apart from the header that every thread reads: a
 * core that reads one line of an aligned 128-byte pair tends to prefetch
 * the other, so a line written by another core beside it bounces as if
 * shared. */
#define STRIPE_BYTES 128

typedef struct stripe {
    _Atomic int64_t v;
    char pad_[STRIPE_BYTES - sizeof(int64_t)];
} stripe;

typedef struct stat_set {
    stripe *success;     /* nstripes lines, then as many for errors */
    stripe *error;
    _Atomic int64_t latency_ns;
    void *block;         /* what was allocated (stripes are 128-byte aligned in it) */
    size_t size;
    const xs_allocator *alloc;
} stat_set;

static unsigned nstripes = 1; /* set once per run: CPUs rounded up to a power of two */
static bool one_word_counters; /* set by the *OneWord variant */

static void stripes_init(int cpus)
{
    unsigned n = 1;
    while (n < (unsigned)cpus && n < 64)
        n *= 2;
    nstripes = n;
}

static stat_set *stat_set_new(void)
{
    /* the counting allocator while a run is timed, as Go counts mallocs */
    const xs_allocator *a = xs_allocator_default();
    size_t size = sizeof(stat_set) + STRIPE_BYTES + 2 * (size_t)nstripes * sizeof(stripe);
    char *blk = a->alloc(a->state, size);
    if (!blk)
        return NULL;
    memset(blk, 0, size);
    stat_set *s = (stat_set *)(void *)blk;
    uintptr_t lines = ((uintptr_t)(blk + sizeof *s) + STRIPE_BYTES - 1) & ~(uintptr_t)(STRIPE_BYTES - 1);
    s->success = (stripe *)lines;
    s->error = s->success + nstripes;
    s->block = blk;
    s->size = size;
    s->alloc = a;
    return s;
}

static void stat_set_free(void *p, void *arg)
{
    (void)arg;
    stat_set *s = p;
    s->alloc->free(s->alloc->state, s->block, s->size);
}

static inline void stat_set_success(stat_set *s, const xs_bench_pb *pb)
{
    unsigned k = one_word_counters ? 0 : (unsigned)xs_bench_pb_thread(pb) & (nstripes - 1);
    /* Relaxed: a count, read after the threads are joined. */
    atomic_fetch_add_explicit(&s->success[k].v, 1, memory_order_relaxed);
}

/* ---- an unsynchronized open-addressing table (the limit, and the rwlock
 * cache's table) ---- */

typedef struct utab_entry {
    stat_set *value;
    uint32_t len;
    char key[];
} utab_entry;

typedef struct utab_slot {
    uint64_t hash;
    utab_entry *e;
} utab_slot;

typedef struct utab {
    utab_slot *slots;
    size_t mask, count;
    const xs_allocator *a;
} utab;

static xs__hash_key bench_hash_key;

__attribute__((constructor)) static void bench_hash_init(void)
{
    xs__hash_key_init(&bench_hash_key, 0x5EED);
}

static bool utab_init(utab *t, size_t cap)
{
    t->a = xs_allocator_default();
    t->mask = cap - 1;
    t->count = 0;
    t->slots = t->a->alloc(t->a->state, cap * sizeof *t->slots);
    if (t->slots)
        memset(t->slots, 0, cap * sizeof *t->slots);
    return t->slots != NULL;
}

static inline utab_entry *utab_find(const utab *t, uint64_t h, const char *k, size_t n)
{
    for (size_t i = h & t->mask;; i = (i + 1) & t->mask) {
        const utab_slot *s = &t->slots[i];
        if (!s->e)
            return NULL;
        if (s->hash == h && s->e->len == n && memcmp(s->e->key, k, n) == 0)
            return s->e;
    }
}

static void utab_place(utab_slot *slots, size_t mask, uint64_t h, utab_entry *e)
{
    size_t i = h & mask;
    while (slots[i].e)
        i = (i + 1) & mask;
    slots[i] = (utab_slot){h, e};
}

/* Inserts a new key (absent), growing at 3/4 load.  NULL if out of memory. */
static utab_entry *utab_insert(utab *t, uint64_t h, const char *k, size_t n, stat_set *v)
{
    if ((t->count + 1) * 4 > (t->mask + 1) * 3) {
        size_t cap = (t->mask + 1) * 2;
        utab_slot *s = t->a->alloc(t->a->state, cap * sizeof *s);
        if (!s)
            return NULL;
        memset(s, 0, cap * sizeof *s);
        for (size_t i = 0; i <= t->mask; i++)
            if (t->slots[i].e)
                utab_place(s, cap - 1, t->slots[i].hash, t->slots[i].e);
        t->a->free(t->a->state, t->slots, (t->mask + 1) * sizeof *s);
        t->slots = s;
        t->mask = cap - 1;
    }
    utab_entry *e = t->a->alloc(t->a->state, sizeof *e + n);
    if (!e)
        return NULL;
    e->value = v;
    e->len = (uint32_t)n;
    memcpy(e->key, k, n);
    utab_place(t->slots, t->mask, h, e);
    t->count++;
    return e;
}

/* The limit's per-thread tables, one cache line apart. */
typedef struct utab_line {
    _Alignas(64) utab t;
} utab_line;

static void utab_destroy(utab *t)
{
    for (size_t i = 0; i <= t->mask; i++) {
        utab_entry *e = t->slots[i].e;
        if (e) {
            stat_set_free(e->value, NULL);
            t->a->free(t->a->state, e, sizeof *e + e->len);
        }
    }
    t->a->free(t->a->state, t->slots, (t->mask + 1) * sizeof *t->slots);
}

/* ---- the three caches ---- */

typedef struct cache_run {
    xs_bench *b;
    corpus *c;
    uint64_t run;
    void *impl;
} cache_run;

/* xs_map, typed: the type safety sync.Map lost */
XS_MAP_DECLARE(stat_cache, stat_set);

static int create_stat_set(const void *key, size_t len, void *arg, stat_set **out)
{
    (void)key;
    (void)len;
    (void)arg;
    *out = stat_set_new();
    return *out ? 0 : XS_ENOMEM;
}

static void syncmap_body(xs_bench_pb *pb, void *arg)
{
    cache_run *r = arg;
    stat_cache *cache = r->impl;
    const corpus *c = r->c;
    uint64_t s = thread_seed(pb, r->run);
    while (xs_bench_pb_next(pb)) {
        uint64_t p = c->pos[pick(&s, c->n)];
        stat_set *set;
        if (stat_cache_load_or_create(cache, c->text + (p >> 8), p & 0xff, create_stat_set, NULL,
                                      &set, NULL) != 0) {
            xs_bench_fail(r->b, "load_or_create failed");
            return;
        }
        stat_set_success(set, pb);
    }
}

typedef struct rw_cache {
    pthread_rwlock_t mu;
    utab t;
} rw_cache;

/* The seed's mutexCache.get: the double-checked mutex dance. */
static stat_set *rw_get(rw_cache *mc, const char *k, size_t n)
{
    uint64_t h = xs__hash(&bench_hash_key, k, n);
    pthread_rwlock_rdlock(&mc->mu);
    utab_entry *e = utab_find(&mc->t, h, k, n);
    pthread_rwlock_unlock(&mc->mu);
    if (e)
        return e->value;
    pthread_rwlock_wrlock(&mc->mu);
    e = utab_find(&mc->t, h, k, n);
    if (!e) {
        stat_set *s = stat_set_new();
        e = s ? utab_insert(&mc->t, h, k, n, s) : NULL;
        if (s && !e)
            stat_set_free(s, NULL);
    }
    pthread_rwlock_unlock(&mc->mu);
    return e ? e->value : NULL;
}

static void mutex_body(xs_bench_pb *pb, void *arg)
{
    cache_run *r = arg;
    rw_cache *mc = r->impl;
    const corpus *c = r->c;
    uint64_t s = thread_seed(pb, r->run);
    while (xs_bench_pb_next(pb)) {
        uint64_t p = c->pos[pick(&s, c->n)];
        stat_set *set = rw_get(mc, c->text + (p >> 8), p & 0xff);
        if (!set) {
            xs_bench_fail(r->b, "out of memory");
            return;
        }
        stat_set_success(set, pb);
    }
}

static void unsync_body(xs_bench_pb *pb, void *arg)
{
    cache_run *r = arg;
    const corpus *c = r->c;
    utab *t = &((utab_line *)r->impl)[xs_bench_pb_thread(pb)].t;
    uint64_t s = thread_seed(pb, r->run);
    while (xs_bench_pb_next(pb)) {
        uint64_t p = c->pos[pick(&s, c->n)];
        const char *k = c->text + (p >> 8);
        size_t n = p & 0xff;
        uint64_t h = xs__hash(&bench_hash_key, k, n);
        utab_entry *e = utab_find(t, h, k, n);
        if (!e) {
            stat_set *set = stat_set_new();
            e = set ? utab_insert(t, h, k, n, set) : NULL;
            if (!e) {
                xs_bench_fail(r->b, "out of memory");
                return;
            }
        }
        stat_set_success(e->value, pb);
    }
}

enum cache_kind { CACHE_MUTEX, CACHE_SYNCMAP, CACHE_UNSYNC };

typedef struct cache_case {
    enum cache_kind kind;
    size_t n;
    int slot;
    bool one_word;
} cache_case;

static void bench_cache(xs_bench *b, void *arg)
{
    const cache_case *cc = arg;
    xs_bench_stop_timer(b);
    corpus *c = corpus_get(cc->n, cc->slot);
    if (!c) {
        xs_bench_fail(b, "no memory for a corpus of %zu names", cc->n);
        return;
    }
    xs_bench_start_timer(b);
    cache_run r = {b, c, atomic_fetch_add(&run_serial, 1) * UINT64_C(0x2545F4914F6CDD1D), NULL};
    one_word_counters = cc->one_word;
    int threads = xs_bench_procs(b);
    stripes_init(threads);
    switch (cc->kind) {
    case CACHE_SYNCMAP: {
        stat_cache *cache = NULL;
        if (stat_cache_new(&(xs_map_options){.destroy = stat_set_free}, &cache) != 0) {
            xs_bench_fail(b, "xs_map_new failed");
            return;
        }
        r.impl = cache;
        xs_bench_reset_timer(b);
        xs_bench_run_parallel(b, syncmap_body, &r);
        xs_bench_stop_timer(b);
        stat_cache_free(cache);
        break;
    }
    case CACHE_MUTEX: {
        rw_cache *mc = calloc(1, sizeof *mc);
        if (!mc || pthread_rwlock_init(&mc->mu, NULL) != 0 || !utab_init(&mc->t, 16)) {
            xs_bench_fail(b, "setup failed");
            free(mc);
            return;
        }
        r.impl = mc;
        xs_bench_reset_timer(b);
        xs_bench_run_parallel(b, mutex_body, &r);
        xs_bench_stop_timer(b);
        utab_destroy(&mc->t);
        pthread_rwlock_destroy(&mc->mu);
        free(mc);
        break;
    }
    case CACHE_UNSYNC: {
        utab_line *tabs = aligned_alloc(64, (size_t)threads * sizeof *tabs);
        int ready = 0;
        while (tabs && ready < threads && utab_init(&tabs[ready].t, 16))
            ready++;
        if (ready < threads) {
            xs_bench_fail(b, "setup failed");
            for (int i = 0; i < ready; i++)
                utab_destroy(&tabs[i].t);
            free(tabs);
            return;
        }
        r.impl = tabs;
        xs_bench_reset_timer(b);
        xs_bench_run_parallel(b, unsync_body, &r);
        xs_bench_stop_timer(b);
        for (int i = 0; i < threads; i++)
            utab_destroy(&tabs[i].t);
        free(tabs);
        break;
    }
    }
}

XS_BENCH_REGISTRATIONS(register_seed_table)
{
    static cache_case cases[3][8], one_word[7];
    static const char *names[3] = {"BenchmarkMutexCache", "BenchmarkSyncMapCache",
                                   "BenchmarkUnsyncLimit"};
    for (int k = 0; k < 3; k++) {
        size_t n = 10;
        for (int i = 0; i < 8; i++, n *= 10) {
            cases[k][i] = (cache_case){(enum cache_kind)k, n, i, false};
            xs_bench_registerf(bench_cache, &cases[k][i], i == 7 ? XS_BENCH_FULL : 0, "%s/%zu",
                               names[k], n);
        }
    }
    size_t n = 10;
    for (int i = 0; i < 7; i++, n *= 10) {
        one_word[i] = (cache_case){CACHE_SYNCMAP, n, i, true};
        xs_bench_registerf(bench_cache, &one_word[i], XS_BENCH_FULL,
                           "BenchmarkSyncMapCacheOneWord/%zu", n);
    }
}

/* ---- Go's sync.Map benchmarks ---- */

typedef struct go_run {
    xs_bench *b;
    xs_map *m;
    int64_t n;
    void (*per_thread)(struct go_run *r, xs_bench_pb *pb, int64_t i);
} go_run;

#define IKEY(i) (const void *)&(int64_t){(int64_t)(i)}, sizeof(int64_t)
#define IVAL(i) ((void *)(intptr_t)(i))

static void go_body(xs_bench_pb *pb, void *arg)
{
    go_run *r = arg;
    r->per_thread(r, pb, (int64_t)xs_bench_pb_thread(pb) * r->n);
}

static void go_bench(xs_bench *b, void (*setup)(xs_map *m),
                     void (*per_thread)(go_run *r, xs_bench_pb *pb, int64_t i))
{
    xs_map *m = NULL;
    if (xs_map_new(NULL, &m) != 0) {
        xs_bench_fail(b, "xs_map_new failed");
        return;
    }
    if (setup)
        setup(m);
    go_run r = {b, m, xs_bench_n(b), per_thread};
    xs_bench_reset_timer(b);
    xs_bench_run_parallel(b, go_body, &r);
    xs_bench_stop_timer(b);
    xs_map_free(m);
}

/* LoadMostlyHits / LoadMostlyMisses */
static void setup_hits(xs_map *m, int64_t hits)
{
    for (int64_t i = 0; i < hits; i++)
        xs_map_load_or_store(m, IKEY(i), IVAL(i), NULL, NULL);
    for (int64_t i = 0; i < hits * 2; i++) /* prime, as Go does */
        xs_map_load(m, IKEY(i % hits), NULL);
}
static void setup_1023(xs_map *m) { setup_hits(m, 1023); }
static void setup_1(xs_map *m) { setup_hits(m, 1); }
static void setup_128(xs_map *m) { setup_hits(m, 128); }
static void setup_zero(xs_map *m) { xs_map_load_or_store(m, IKEY(0), IVAL(0), NULL, NULL); }

static void per_load_mostly_hits(go_run *r, xs_bench_pb *pb, int64_t i)
{
    for (; xs_bench_pb_next(pb); i++)
        xs_map_load(r->m, IKEY(i % (1023 + 1)), NULL);
}
XS_BENCHMARK(BenchmarkLoadMostlyHits) { go_bench(b, setup_1023, per_load_mostly_hits); }

static void per_load_mostly_misses(go_run *r, xs_bench_pb *pb, int64_t i)
{
    for (; xs_bench_pb_next(pb); i++)
        xs_map_load(r->m, IKEY(i % (1 + 1023)), NULL);
}
XS_BENCHMARK(BenchmarkLoadMostlyMisses) { go_bench(b, setup_1, per_load_mostly_misses); }

static void per_load_or_store_balanced(go_run *r, xs_bench_pb *pb, int64_t i)
{
    for (; xs_bench_pb_next(pb); i++) {
        int64_t j = i % (128 + 128);
        bool loaded = false;
        if (j < 128) {
            if (xs_map_load_or_store(r->m, IKEY(j), IVAL(i), NULL, &loaded) != 0 || !loaded) {
                xs_bench_fail(r->b, "unexpected miss for %lld", (long long)j);
                return;
            }
        } else if (xs_map_load_or_store(r->m, IKEY(i), IVAL(i), NULL, &loaded) != 0 || loaded) {
            xs_bench_fail(r->b, "failed to store %lld: existing value", (long long)i);
            return;
        }
    }
}
XS_BENCHMARK(BenchmarkLoadOrStoreBalanced) { go_bench(b, setup_128, per_load_or_store_balanced); }

static void per_load_or_store_unique(go_run *r, xs_bench_pb *pb, int64_t i)
{
    for (; xs_bench_pb_next(pb); i++)
        xs_map_load_or_store(r->m, IKEY(i), IVAL(i), NULL, NULL);
}
XS_BENCHMARK(BenchmarkLoadOrStoreUnique) { go_bench(b, NULL, per_load_or_store_unique); }

static void per_load_or_store_collision(go_run *r, xs_bench_pb *pb, int64_t i)
{
    (void)i;
    while (xs_bench_pb_next(pb))
        xs_map_load_or_store(r->m, IKEY(0), IVAL(0), NULL, NULL);
}
XS_BENCHMARK(BenchmarkLoadOrStoreCollision) { go_bench(b, setup_zero, per_load_or_store_collision); }

static void per_load_and_delete_balanced(go_run *r, xs_bench_pb *pb, int64_t i)
{
    for (; xs_bench_pb_next(pb); i++) {
        int64_t j = i % (128 + 128);
        if (j < 128)
            xs_map_load_and_delete(r->m, IKEY(j), NULL);
        else
            xs_map_load_and_delete(r->m, IKEY(i), NULL);
    }
}
XS_BENCHMARK(BenchmarkLoadAndDeleteBalanced) { go_bench(b, setup_128, per_load_and_delete_balanced); }

static void per_load_and_delete_unique(go_run *r, xs_bench_pb *pb, int64_t i)
{
    for (; xs_bench_pb_next(pb); i++)
        xs_map_load_and_delete(r->m, IKEY(i), NULL);
}
XS_BENCHMARK(BenchmarkLoadAndDeleteUnique) { go_bench(b, NULL, per_load_and_delete_unique); }

static void per_load_and_delete_collision(go_run *r, xs_bench_pb *pb, int64_t i)
{
    (void)i;
    while (xs_bench_pb_next(pb))
        if (xs_map_load_and_delete(r->m, IKEY(0), NULL) == 0)
            xs_map_store(r->m, IKEY(0), IVAL(0));
}
XS_BENCHMARK(BenchmarkLoadAndDeleteCollision) { go_bench(b, setup_zero, per_load_and_delete_collision); }

static int range_true(const void *key, size_t len, void *value, void *arg)
{
    (void)key;
    (void)len;
    (void)value;
    (void)arg;
    return 0;
}
static void setup_range(xs_map *m)
{
    for (int64_t i = 0; i < 1024; i++)
        xs_map_store(m, IKEY(i), IVAL(i));
}
static void per_range(go_run *r, xs_bench_pb *pb, int64_t i)
{
    (void)i;
    while (xs_bench_pb_next(pb))
        xs_map_range(r->m, range_true, NULL);
}
XS_BENCHMARK(BenchmarkRange) { go_bench(b, setup_range, per_range); }

/* Stresses the write path as the map grows, the way Go's probes dirty-map
 * promotion: ever rarer stores among loads. */
static void per_adversarial_alloc(go_run *r, xs_bench_pb *pb, int64_t i)
{
    int64_t stores = 0, loads_since_store = 0;
    for (; xs_bench_pb_next(pb); i++) {
        xs_map_load(r->m, IKEY(i), NULL);
        if (++loads_since_store > stores) {
            xs_map_load_or_store(r->m, IKEY(i), IVAL(stores), NULL, NULL);
            loads_since_store = 0;
            stores++;
        }
    }
}
XS_BENCHMARK(BenchmarkAdversarialAlloc) { go_bench(b, NULL, per_adversarial_alloc); }

static int delete_first(const void *key, size_t len, void *value, void *arg)
{
    (void)value;
    xs_map_delete(arg, key, len);
    return 1; /* stop after one, as Go's returns false */
}
static void per_adversarial_delete(go_run *r, xs_bench_pb *pb, int64_t i)
{
    for (; xs_bench_pb_next(pb); i++) {
        xs_map_load(r->m, IKEY(i), NULL);
        if (i % 1024 == 0) {
            xs_map_range(r->m, delete_first, r->m);
            xs_map_store(r->m, IKEY(i), IVAL(i));
        }
    }
}
XS_BENCHMARK(BenchmarkAdversarialDelete) { go_bench(b, setup_range, per_adversarial_delete); }

static void per_delete_collision(go_run *r, xs_bench_pb *pb, int64_t i)
{
    (void)i;
    while (xs_bench_pb_next(pb))
        xs_map_delete(r->m, IKEY(0));
}
XS_BENCHMARK(BenchmarkDeleteCollision) { go_bench(b, setup_zero, per_delete_collision); }

static void per_swap_collision(go_run *r, xs_bench_pb *pb, int64_t i)
{
    (void)i;
    while (xs_bench_pb_next(pb))
        xs_map_swap(r->m, IKEY(0), IVAL(0), NULL, NULL);
}
XS_BENCHMARK(BenchmarkSwapCollision) { go_bench(b, setup_zero, per_swap_collision); }

static void per_swap_mostly_hits(go_run *r, xs_bench_pb *pb, int64_t i)
{
    for (; xs_bench_pb_next(pb); i++) {
        if (i % (1023 + 1) < 1023) {
            int64_t v = i % (1023 + 1);
            xs_map_swap(r->m, IKEY(v), IVAL(v), NULL, NULL);
        } else {
            xs_map_swap(r->m, IKEY(i), IVAL(i), NULL, NULL);
            xs_map_delete(r->m, IKEY(i));
        }
    }
}
XS_BENCHMARK(BenchmarkSwapMostlyHits) { go_bench(b, setup_1023, per_swap_mostly_hits); }

static void per_cas_collision(go_run *r, xs_bench_pb *pb, int64_t i)
{
    (void)i;
    while (xs_bench_pb_next(pb))
        if (xs_map_compare_and_swap(r->m, IKEY(0), IVAL(0), IVAL(42)) == 0)
            xs_map_compare_and_swap(r->m, IKEY(0), IVAL(42), IVAL(0));
}
XS_BENCHMARK(BenchmarkCompareAndSwapCollision) { go_bench(b, setup_zero, per_cas_collision); }

static void per_cad_collision(go_run *r, xs_bench_pb *pb, int64_t i)
{
    (void)i;
    while (xs_bench_pb_next(pb))
        if (xs_map_compare_and_delete(r->m, IKEY(0), IVAL(0)) == 0)
            xs_map_store(r->m, IKEY(0), IVAL(0));
}
XS_BENCHMARK(BenchmarkCompareAndDeleteCollision) { go_bench(b, setup_zero, per_cad_collision); }
