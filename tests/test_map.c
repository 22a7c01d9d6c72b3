/*
 * Tests for the concurrent map: the scenarios of Go's sync.Map tests
 * (map_reference_test.go, map_test.go) plus what the C contract adds
 * (destructors and guards, allocation failure, bad input, seeds).
 *
 * The scenario tests run three times: with the built-in hash, with a hash
 * that returns a constant (every key collides, one chain), and with one
 * truncated to 8 bits (Go's NewBadHashTrieMap idea).  Results must not depend
 * on the hash.
 */
#include <pthread.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include <xsync/alloc.h>
#include <xsync/error.h>
#include <xsync/map.h>

#include "harness.h"
#include "hash.h"

/* ---- hashes and map construction ---- */

enum hash_mode { HASH_DEFAULT, HASH_CONST, HASH_8BIT };
static enum hash_mode hash_mode;

static uint64_t fnv1a(const void *key, size_t len, uint64_t seed)
{
    const unsigned char *p = key;
    uint64_t h = UINT64_C(14695981039346656037) ^ seed;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= UINT64_C(1099511628211);
    }
    return h;
}

static uint64_t const_hash(const void *key, size_t len, uint64_t seed)
{
    (void)key;
    (void)len;
    (void)seed;
    return 0x5eed;
}

static uint64_t hash8(const void *key, size_t len, uint64_t seed)
{
    return fnv1a(key, len, seed) & 0xff;
}

static xs_map *new_map_with(xs_map_options o)
{
    if (hash_mode == HASH_CONST)
        o.hash = const_hash;
    else if (hash_mode == HASH_8BIT)
        o.hash = hash8;
    xs_map *m = NULL;
    int rc = xs_map_new(&o, &m);
    if (rc != 0) {
        printf("    xs_map_new failed: %s\n", xs_strerror(rc));
        return NULL;
    }
    return m;
}

static xs_map *new_map(void)
{
    return new_map_with((xs_map_options){0});
}

/* Runs a scenario under each hash. */
#define TEST_HASHES(name, seconds)                                             \
    static void name##_body(void);                                             \
    TEST_T(name, seconds)                                                      \
    {                                                                          \
        hash_mode = HASH_DEFAULT;                                              \
        name##_body();                                                         \
    }                                                                          \
    TEST_T(name##_const_hash, seconds)                                         \
    {                                                                          \
        hash_mode = HASH_CONST;                                                \
        name##_body();                                                         \
        hash_mode = HASH_DEFAULT;                                              \
    }                                                                          \
    TEST_T(name##_hash8, seconds)                                              \
    {                                                                          \
        hash_mode = HASH_8BIT;                                                 \
        name##_body();                                                         \
        hash_mode = HASH_DEFAULT;                                              \
    }                                                                          \
    static void name##_body(void)

#define S(str) (str), strlen(str)
#define V(n) ((void *)(uintptr_t)(n))
#define N(p) ((uintptr_t)(p))

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * UINT64_C(2685821657736338717);
}

typedef struct threads {
    pthread_t t[256];
    int n;
} threads;

static void spawn(threads *ts, void *(*fn)(void *), void *arg)
{
    if (ts->n < 256 && pthread_create(&ts->t[ts->n], NULL, fn, arg) == 0)
        ts->n++;
    else
        EXPECT(!"pthread_create failed");
}

static void join_all(threads *ts)
{
    for (int i = 0; i < ts->n; i++)
        pthread_join(ts->t[i], NULL);
    ts->n = 0;
}

static int ncpu(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (int)n;
}

/* Key <-> small integer, as text (variable length) */
static size_t key_of(char *buf, size_t cap, const char *prefix, long i)
{
    return (size_t)snprintf(buf, cap, "%s%ld", prefix, i);
}

/* ---- basic semantics ---- */

static int create_value(const void *key, size_t len, void *arg, void **out)
{
    (void)key;
    (void)len;
    atomic_fetch_add((_Atomic int *)arg, 1);
    *out = V(1234);
    return 0;
}

TEST_HASHES(basic_operations, 30)
{
    xs_map *m = new_map();
    ASSERT(m);
    void *v = V(99);
    bool loaded = true;
    EXPECT_EQ(xs_map_load(m, S("a"), &v), XS_ENOENT);
    EXPECT_EQ(N(v), 99); /* untouched on a miss */
    EXPECT_EQ(xs_map_store(m, S("a"), V(1)), 0);
    EXPECT_EQ(xs_map_load(m, S("a"), &v), 0);
    EXPECT_EQ(N(v), 1);
    EXPECT_EQ(xs_map_load(m, S("a"), NULL), 0);
    EXPECT_EQ(xs_map_len(m), 1);

    /* NULL is a value, and the empty key is a key */
    EXPECT_EQ(xs_map_store(m, NULL, 0, NULL), 0);
    v = V(5);
    EXPECT_EQ(xs_map_load(m, "", 0, &v), 0);
    EXPECT(v == NULL);
    EXPECT_EQ(xs_map_len(m), 2);

    EXPECT_EQ(xs_map_load_or_store(m, S("a"), V(2), &v, &loaded), 0);
    EXPECT(loaded);
    EXPECT_EQ(N(v), 1);
    EXPECT_EQ(xs_map_load_or_store(m, S("b"), V(3), &v, &loaded), 0);
    EXPECT(!loaded);
    EXPECT_EQ(N(v), 3);

    EXPECT_EQ(xs_map_swap(m, S("a"), V(4), &v, &loaded), 0);
    EXPECT(loaded);
    EXPECT_EQ(N(v), 1);
    v = V(77);
    EXPECT_EQ(xs_map_swap(m, S("c"), V(5), &v, &loaded), 0);
    EXPECT(!loaded);
    EXPECT_EQ(N(v), 77);

    EXPECT_EQ(xs_map_compare_and_swap(m, S("a"), V(1), V(6)), XS_ENOENT);
    EXPECT_EQ(xs_map_compare_and_swap(m, S("a"), V(4), V(6)), 0);
    EXPECT_EQ(xs_map_load(m, S("a"), &v), 0);
    EXPECT_EQ(N(v), 6);
    EXPECT_EQ(xs_map_compare_and_delete(m, S("a"), V(4)), XS_ENOENT);
    EXPECT_EQ(xs_map_compare_and_delete(m, S("a"), V(6)), 0);
    EXPECT_EQ(xs_map_load(m, S("a"), NULL), XS_ENOENT);

    EXPECT_EQ(xs_map_load_and_delete(m, S("b"), &v), 0);
    EXPECT_EQ(N(v), 3);
    EXPECT_EQ(xs_map_load_and_delete(m, S("b"), &v), XS_ENOENT);
    EXPECT_EQ(xs_map_delete(m, S("c")), 0);
    EXPECT_EQ(xs_map_delete(m, S("c")), XS_ENOENT);

    _Atomic int calls = 0;
    EXPECT_EQ(xs_map_load_or_create(m, S("d"), create_value, (void *)&calls, &v, &loaded), 0);
    EXPECT(!loaded);
    EXPECT_EQ(N(v), 1234);
    EXPECT_EQ(xs_map_load_or_create(m, S("d"), create_value, (void *)&calls, &v, &loaded), 0);
    EXPECT(loaded);
    EXPECT_EQ(atomic_load(&calls), 1);

    EXPECT_EQ(xs_map_len(m), 2); /* "" and "d" */
    EXPECT_EQ(xs_map_clear(m), 0);
    EXPECT_EQ(xs_map_len(m), 0);
    EXPECT_EQ(xs_map_load(m, S("d"), NULL), XS_ENOENT);
    xs_map_free(m);
}

/* ---- the port of map_reference_test.go ---- */

/* The reference: a mutex-guarded association list over keys of 0-3 letters. */
#define REF_MAX 64
typedef struct ref_map {
    pthread_mutex_t mu;
    int n;
    char key[REF_MAX][4];
    size_t len[REF_MAX];
    void *val[REF_MAX];
} ref_map;

static int ref_find(ref_map *r, const char *k, size_t n)
{
    for (int i = 0; i < r->n; i++)
        if (r->len[i] == n && memcmp(r->key[i], k, n) == 0)
            return i;
    return -1;
}

static void ref_put(ref_map *r, const char *k, size_t n, void *v)
{
    int i = ref_find(r, k, n);
    if (i < 0) {
        i = r->n++;
        memcpy(r->key[i], k, n);
        r->len[i] = n;
    }
    r->val[i] = v;
}

static void ref_del(ref_map *r, int i)
{
    r->n--;
    memmove(r->key[i], r->key[r->n], 4);
    r->len[i] = r->len[r->n];
    r->val[i] = r->val[r->n];
}

enum op {
    OP_LOAD, OP_STORE, OP_LOAD_OR_STORE, OP_LOAD_OR_CREATE, OP_LOAD_AND_DELETE, OP_DELETE,
    OP_SWAP, OP_CAS, OP_CAD, OP_CLEAR, OP_LEN, OP_RANGE, OP_COUNT
};

typedef struct result {
    int rc;
    void *v;
    bool loaded;
    int creates;
} result;

typedef struct create_arg {
    bool fail;
    void *value;
    int calls;
} create_arg;

static int create_maybe(const void *key, size_t len, void *arg, void **out)
{
    (void)key;
    (void)len;
    create_arg *a = arg;
    a->calls++;
    if (a->fail)
        return 77;
    *out = a->value;
    return 0;
}

static result ref_apply(ref_map *r, enum op op, const char *k, size_t n, void *a, void *b,
                        bool fail)
{
    result res = {0, NULL, false, 0};
    pthread_mutex_lock(&r->mu);
    int i = ref_find(r, k, n);
    switch (op) {
    case OP_LOAD:
        res.rc = i < 0 ? XS_ENOENT : 0;
        res.v = i < 0 ? NULL : r->val[i];
        break;
    case OP_STORE:
        ref_put(r, k, n, a);
        break;
    case OP_LOAD_OR_STORE:
        res.loaded = i >= 0;
        res.v = i >= 0 ? r->val[i] : a;
        if (i < 0)
            ref_put(r, k, n, a);
        break;
    case OP_LOAD_OR_CREATE:
        if (i >= 0) {
            res.loaded = true;
            res.v = r->val[i];
        } else {
            res.creates = 1;
            if (fail) {
                res.rc = 77;
            } else {
                res.v = a;
                ref_put(r, k, n, a);
            }
        }
        break;
    case OP_LOAD_AND_DELETE:
    case OP_DELETE:
        res.rc = i < 0 ? XS_ENOENT : 0;
        if (i >= 0) {
            res.v = op == OP_LOAD_AND_DELETE ? r->val[i] : NULL;
            ref_del(r, i);
        }
        break;
    case OP_SWAP:
        res.loaded = i >= 0;
        res.v = i >= 0 ? r->val[i] : NULL;
        ref_put(r, k, n, a);
        break;
    case OP_CAS:
        res.rc = (i >= 0 && r->val[i] == a) ? 0 : XS_ENOENT;
        if (res.rc == 0)
            r->val[i] = b;
        break;
    case OP_CAD:
        res.rc = (i >= 0 && r->val[i] == a) ? 0 : XS_ENOENT;
        if (res.rc == 0)
            ref_del(r, i);
        break;
    case OP_CLEAR:
        r->n = 0;
        break;
    case OP_LEN:
        res.v = V(r->n);
        break;
    default:
        break;
    }
    pthread_mutex_unlock(&r->mu);
    return res;
}

static result map_apply(xs_map *m, enum op op, const char *k, size_t n, void *a, void *b,
                        bool fail)
{
    result res = {0, NULL, false, 0};
    create_arg ca = {fail, a, 0};
    switch (op) {
    case OP_LOAD:
        res.rc = xs_map_load(m, k, n, &res.v);
        break;
    case OP_STORE:
        res.rc = xs_map_store(m, k, n, a);
        break;
    case OP_LOAD_OR_STORE:
        res.rc = xs_map_load_or_store(m, k, n, a, &res.v, &res.loaded);
        break;
    case OP_LOAD_OR_CREATE:
        res.rc = xs_map_load_or_create(m, k, n, create_maybe, &ca, &res.v, &res.loaded);
        res.creates = ca.calls;
        break;
    case OP_LOAD_AND_DELETE:
        res.rc = xs_map_load_and_delete(m, k, n, &res.v);
        break;
    case OP_DELETE:
        res.rc = xs_map_delete(m, k, n);
        break;
    case OP_SWAP:
        res.rc = xs_map_swap(m, k, n, a, &res.v, &res.loaded);
        break;
    case OP_CAS:
        res.rc = xs_map_compare_and_swap(m, k, n, a, b);
        break;
    case OP_CAD:
        res.rc = xs_map_compare_and_delete(m, k, n, a);
        break;
    case OP_CLEAR:
        res.rc = xs_map_clear(m);
        break;
    case OP_LEN:
        res.v = V(xs_map_len(m));
        break;
    default:
        break;
    }
    return res;
}

typedef struct seen_set {
    int n, dup;
    char key[REF_MAX][4];
    size_t len[REF_MAX];
    void *val[REF_MAX];
} seen_set;

static int collect_fn(const void *key, size_t len, void *value, void *arg)
{
    seen_set *s = arg;
    for (int i = 0; i < s->n; i++)
        if (s->len[i] == len && memcmp(s->key[i], key, len) == 0)
            s->dup++;
    if (s->n < REF_MAX && len <= 3) {
        memcpy(s->key[s->n], key, len);
        s->len[s->n] = len;
        s->val[s->n] = value;
        s->n++;
    }
    return 0;
}

/* Same contents as the reference?  A range that fails for lack of memory
 * (an injected failure) disarms the counter ac, if given, and runs again. */
static bool contents_match_ac(xs_map *m, ref_map *r, xs_alloc_counter *ac)
{
    seen_set s;
    s.n = s.dup = 0;
    int rc = xs_map_range(m, collect_fn, &s);
    if (rc == XS_ENOMEM && ac) {
        xs_alloc_counter_fail_at(ac, 0, 0);
        s.n = s.dup = 0;
        rc = xs_map_range(m, collect_fn, &s);
    }
    if (rc != 0 || s.dup || s.n != r->n ||
        (size_t)r->n != xs_map_len(m))
        return false;
    for (int i = 0; i < s.n; i++) {
        int j = ref_find(r, s.key[i], s.len[i]);
        if (j < 0 || r->val[j] != s.val[i])
            return false;
    }
    return true;
}

static bool contents_match(xs_map *m, ref_map *r)
{
    return contents_match_ac(m, r, NULL);
}

static uint64_t digest_mix(uint64_t d, uint64_t x)
{
    return (d ^ x) * UINT64_C(0x100000001B3);
}

static uint64_t property_digest[3];

TEST_HASHES(reference_property_100k_sequences, 300)
{
    static const char letters[] = "abc";
    uint64_t seed = 0x9E3779B97F4A7C15u, digest = 1;
    int failures = 0;
    for (int seq = 0; seq < 100000 && failures < 5; seq++) {
        xs_map *m = new_map();
        ASSERT(m);
        ref_map r = {.n = 0};
        pthread_mutex_init(&r.mu, NULL);
        int nops = 1 + (int)(rng_next(&seed) % 24);
        for (int o = 0; o < nops; o++) {
            uint64_t x = rng_next(&seed);
            enum op op = (enum op)(x % OP_COUNT);
            if (op == OP_CLEAR && (x >> 8) % 4 != 0)
                op = OP_STORE; /* clears are rarer, or maps stay empty */
            char k[4];
            size_t n = (x >> 16) % 4;
            for (size_t i = 0; i < n; i++)
                k[i] = letters[(x >> (20 + 2 * i)) % 3];
            void *a = V((x >> 32) % 4), *b = V((x >> 40) % 4);
            bool fail = (x >> 48) % 3 == 0;
            if (op == OP_RANGE) {
                if (!contents_match(m, &r)) {
                    EXPECT(!"range disagrees with the reference");
                    failures++;
                }
                continue;
            }
            result want = ref_apply(&r, op, k, n, a, b, fail);
            result got = map_apply(m, op, k, n, a, b, fail);
            if (want.rc != got.rc || want.v != got.v || want.loaded != got.loaded ||
                want.creates != got.creates) {
                printf("    seq %d op %d (%d) key \"%.*s\": want rc %d v %lu loaded %d creates %d,"
                       " got rc %d v %lu loaded %d creates %d\n",
                       seq, o, (int)op, (int)n, k, want.rc, (unsigned long)N(want.v),
                       want.loaded, want.creates, got.rc, (unsigned long)N(got.v), got.loaded,
                       got.creates);
                EXPECT(!"map disagrees with the reference");
                failures++;
                break;
            }
            digest = digest_mix(digest, (uint64_t)(got.rc + 1000) ^ (N(got.v) << 16) ^
                                            ((uint64_t)got.loaded << 24) ^
                                            ((uint64_t)got.creates << 28));
        }
        if (!contents_match(m, &r)) {
            EXPECT(!"final contents differ from the reference");
            failures++;
        }
        pthread_mutex_destroy(&r.mu);
        xs_map_free(m);
    }
    property_digest[hash_mode] = digest;
    /* identical results under every hash (when the default ran first) */
    if (hash_mode != HASH_DEFAULT && property_digest[HASH_DEFAULT])
        EXPECT_EQ(digest, property_digest[HASH_DEFAULT]);
}

/* ---- concurrent range (Go's TestConcurrentRange) ---- */

#define RANGE_KEYS 1024

typedef struct range_ctx {
    xs_map *m;
    _Atomic int stop;
    _Atomic long bad;
    uint64_t seed;
} range_ctx;

static size_t int_key(char *buf, long i)
{
    return key_of(buf, 24, "", i);
}

static void *range_writer(void *arg)
{
    range_ctx *c = arg;
    uint64_t s = c->seed ^ (uintptr_t)&s;
    for (long n = 1; !atomic_load(&c->stop); n++) {
        long r = (long)(rng_next(&s) % 1000) + 1;
        for (long i = 1; i <= RANGE_KEYS; i++) {
            char k[24];
            xs_map_store(c->m, k, int_key(k, i), V((uintptr_t)(r * n * i)));
        }
    }
    return NULL;
}

typedef struct range_check {
    unsigned char seen[RANGE_KEYS + 1];
    long bad;
} range_check;

static int range_check_fn(const void *key, size_t len, void *value, void *arg)
{
    range_check *rc = arg;
    char buf[24];
    if (len >= sizeof buf) {
        rc->bad++;
        return 0;
    }
    memcpy(buf, key, len);
    buf[len] = 0;
    long k = atol(buf);
    if (k < 1 || k > RANGE_KEYS || rc->seen[k]++ || N(value) % (uintptr_t)k != 0)
        rc->bad++;
    return 0;
}

TEST_HASHES(concurrent_range_each_key_once, 300)
{
    range_ctx c = {.m = new_map(), .seed = 7};
    ASSERT(c.m);
    char k[24];
    for (long i = 1; i <= RANGE_KEYS; i++)
        ASSERT_EQ(xs_map_store(c.m, k, int_key(k, i), V(i)), 0);
    threads ts = {.n = 0};
    int writers = ncpu() < 2 ? 2 : ncpu();
    for (int i = 0; i < writers; i++)
        spawn(&ts, range_writer, &c);
    int rounds = hash_mode == HASH_CONST ? 50 : 400;
    for (int r = 0; r < rounds; r++) {
        range_check chk;
        memset(&chk, 0, sizeof chk);
        EXPECT_EQ(xs_map_range(c.m, range_check_fn, &chk), 0);
        EXPECT_EQ(chk.bad, 0);
        for (int i = 1; i <= RANGE_KEYS; i++)
            if (chk.seen[i] != 1) {
                EXPECT_EQ(chk.seen[i], 1);
                break;
            }
        if (chk.bad)
            break;
    }
    atomic_store(&c.stop, 1);
    join_all(&ts);
    xs_map_free(c.m);
}

/* ---- a range callback that calls range, store and delete ---- */

typedef struct nested_ctx {
    xs_map *m;
    unsigned char seen[64];
    int visits, dup, inner_total, errors;
} nested_ctx;

static int count_fn(const void *key, size_t len, void *value, void *arg)
{
    (void)key;
    (void)len;
    (void)value;
    (*(int *)arg)++;
    return 0;
}

static int nested_fn(const void *key, size_t len, void *value, void *arg)
{
    nested_ctx *c = arg;
    (void)value;
    char buf[32];
    if (len >= sizeof buf)
        return c->errors++, 0;
    memcpy(buf, key, len);
    buf[len] = 0;
    int idx = -1;
    if (sscanf(buf, "k%d", &idx) == 1 && idx >= 0 && idx < 64) {
        if (c->seen[idx]++)
            c->dup++;
    } else if (strncmp(buf, "new", 3) != 0) {
        c->errors++;
    }
    c->visits++;
    int inner = 0;
    if (xs_map_range(c->m, count_fn, &inner) != 0)
        c->errors++;
    c->inner_total += inner;
    /* store a new key and overwrite this one, delete another */
    char k[32];
    if (xs_map_store(c->m, k, key_of(k, sizeof k, "new", c->visits), V(1)) != 0)
        c->errors++;
    if (xs_map_store(c->m, key, len, V(2)) != 0)
        c->errors++;
    if (idx >= 0)
        xs_map_delete(c->m, k, key_of(k, sizeof k, "k", (idx + 7) % 64));
    return 0;
}

TEST_HASHES(range_nested_range_store_delete, 60)
{
    nested_ctx c;
    memset(&c, 0, sizeof c);
    c.m = new_map();
    ASSERT(c.m);
    char k[32];
    for (int i = 0; i < 64; i++)
        ASSERT_EQ(xs_map_store(c.m, k, key_of(k, sizeof k, "k", i), V(i)), 0);
    EXPECT_EQ(xs_map_range(c.m, nested_fn, &c), 0);
    EXPECT_EQ(c.dup, 0);
    EXPECT_EQ(c.errors, 0);
    EXPECT_GT(c.visits, 0);
    EXPECT_GT(c.inner_total, 0);
    /* A survivor was either never deleted (present throughout, so visited)
     * or deleted and stored again, which only its own visit does. */
    for (int i = 0; i < 64; i++)
        if (xs_map_load(c.m, k, key_of(k, sizeof k, "k", i), NULL) == 0 && !c.seen[i]) {
            EXPECT(!"a key present throughout was not visited");
            break;
        }
    /* range can stop early and passes the callback's result through */
    int calls = 0;
    EXPECT_EQ(xs_map_range(c.m, count_fn, &calls), 0);
    EXPECT_EQ((size_t)calls, xs_map_len(c.m));
    xs_map_free(c.m);
}

static int stop_fn(const void *key, size_t len, void *value, void *arg)
{
    (void)key;
    (void)len;
    (void)value;
    return ++*(int *)arg == 3 ? 42 : 0;
}

TEST(range_stops_and_returns_callback_result)
{
    xs_map *m = new_map();
    ASSERT(m);
    char k[16];
    for (int i = 0; i < 10; i++)
        xs_map_store(m, k, key_of(k, sizeof k, "", i), V(i));
    int calls = 0;
    EXPECT_EQ(xs_map_range(m, stop_fn, &calls), 42);
    EXPECT_EQ(calls, 3);
    xs_map_free(m);
}

/* ---- compare_and_swap / compare_and_delete ---- */

typedef struct cas_ctx {
    xs_map *m;
    pthread_barrier_t start, end;
    int rounds;
    _Atomic int swaps, deletes;
    int id_base;
} cas_ctx;

static _Atomic int cas_thread_ids;

static void *cas_racer(void *arg)
{
    cas_ctx *c = arg;
    int id = atomic_fetch_add(&cas_thread_ids, 1);
    for (int r = 0; r < c->rounds; r++) {
        pthread_barrier_wait(&c->start);
        if (id % 2 == 0) {
            if (xs_map_compare_and_swap(c->m, S("pair"), V(1), V(100 + id)) == 0)
                atomic_fetch_add(&c->swaps, 1);
        } else {
            if (xs_map_compare_and_delete(c->m, S("pair"), V(1)) == 0)
                atomic_fetch_add(&c->deletes, 1);
        }
        pthread_barrier_wait(&c->end);
    }
    return NULL;
}

TEST_HASHES(cas_cad_missing_key_and_race, 120)
{
    xs_map *m = new_map();
    ASSERT(m);
    EXPECT_EQ(xs_map_compare_and_swap(m, S("missing"), V(1), V(2)), XS_ENOENT);
    EXPECT_EQ(xs_map_compare_and_swap(m, S("missing"), NULL, V(2)), XS_ENOENT);
    EXPECT_EQ(xs_map_compare_and_delete(m, S("missing"), V(1)), XS_ENOENT);
    EXPECT_EQ(xs_map_compare_and_delete(m, S("missing"), NULL), XS_ENOENT);
    EXPECT_EQ(xs_map_load(m, S("missing"), NULL), XS_ENOENT);
    EXPECT_EQ(xs_map_len(m), 0);

    cas_ctx c = {.m = m, .rounds = 300};
    int nthreads = 8;
    pthread_barrier_init(&c.start, NULL, (unsigned)nthreads + 1);
    pthread_barrier_init(&c.end, NULL, (unsigned)nthreads + 1);
    atomic_store(&cas_thread_ids, 0);
    threads ts = {.n = 0};
    for (int i = 0; i < nthreads; i++)
        spawn(&ts, cas_racer, &c);
    /* some filler keys so the pair shares buckets under bad hashes */
    char k[16];
    for (int i = 0; i < 40; i++)
        xs_map_store(m, k, key_of(k, sizeof k, "f", i), V(i));
    int both = 0, none = 0;
    for (int r = 0; r < c.rounds; r++) {
        xs_map_store(m, S("pair"), V(1));
        int s0 = atomic_load(&c.swaps), d0 = atomic_load(&c.deletes);
        pthread_barrier_wait(&c.start);
        pthread_barrier_wait(&c.end);
        int s = atomic_load(&c.swaps) - s0, d = atomic_load(&c.deletes) - d0;
        if (s + d > 1)
            both++;
        if (s + d == 0)
            none++;
        void *v = NULL;
        int rc = xs_map_load(m, S("pair"), &v);
        if (d == 1)
            EXPECT_EQ(rc, XS_ENOENT);
        else if (s == 1)
            EXPECT(rc == 0 && N(v) >= 100);
    }
    EXPECT_EQ(both, 0);
    EXPECT_EQ(none, 0);
    join_all(&ts);
    pthread_barrier_destroy(&c.start);
    pthread_barrier_destroy(&c.end);
    xs_map_free(m);
}

/* ---- clear racing stores and loads (Go's TestConcurrentClear) ---- */

typedef struct clear_ctx {
    xs_map *m;
    int iters;
    _Atomic int id;
} clear_ctx;

static void *clear_storer(void *arg)
{
    clear_ctx *c = arg;
    int id = atomic_fetch_add(&c->id, 1);
    char k[24];
    for (int i = 0; i < c->iters; i++)
        xs_map_store(c->m, k, key_of(k, sizeof k, "", (id * 131 + i) % 200), V(i));
    return NULL;
}

static void *clear_loader(void *arg)
{
    clear_ctx *c = arg;
    char k[24];
    for (int i = 0; i < c->iters; i++) {
        void *v;
        int rc = xs_map_load(c->m, k, key_of(k, sizeof k, "", i % 200), &v);
        if (rc != 0 && rc != XS_ENOENT)
            EXPECT_EQ(rc, 0);
    }
    return NULL;
}

static void *clear_clearer(void *arg)
{
    clear_ctx *c = arg;
    for (int i = 0; i < c->iters / 20; i++)
        EXPECT_EQ(xs_map_clear(c->m), 0);
    return NULL;
}

TEST_HASHES(clear_races_stores_and_loads, 300)
{
    clear_ctx c = {.m = new_map(), .iters = hash_mode == HASH_CONST ? 400 : 2000};
    ASSERT(c.m);
    threads ts = {.n = 0};
    for (int i = 0; i < 10; i++) {
        spawn(&ts, clear_storer, &c);
        spawn(&ts, clear_loader, &c);
        spawn(&ts, clear_clearer, &c);
    }
    join_all(&ts);
    EXPECT_EQ(xs_map_clear(c.m), 0);
    EXPECT_EQ(xs_map_len(c.m), 0);
    int calls = 0;
    EXPECT_EQ(xs_map_range(c.m, count_fn, &calls), 0);
    EXPECT_EQ(calls, 0);
    char k[24];
    for (int i = 0; i < 200; i++)
        EXPECT_EQ(xs_map_load(c.m, k, key_of(k, sizeof k, "", i), NULL), XS_ENOENT);
    xs_map_free(c.m);
}

/* ---- load_or_create ---- */

#define LOC_KEYS 1000
#define LOC_THREADS 64

typedef struct loc_ctx {
    xs_map *m;
    _Atomic int creates[LOC_KEYS];
    void *got[LOC_THREADS][LOC_KEYS];
    _Atomic int id;
    _Atomic long errors;
} loc_ctx;

typedef struct loc_obj {
    int key;
    int serial;
} loc_obj;

static int loc_create(const void *key, size_t len, void *arg, void **out)
{
    loc_ctx *c = arg;
    char buf[16];
    memcpy(buf, key, len);
    buf[len] = 0;
    int k = atoi(buf);
    loc_obj *o = malloc(sizeof *o);
    if (!o)
        return 1;
    o->key = k;
    o->serial = atomic_fetch_add(&c->creates[k], 1);
    *out = o;
    return 0;
}

static void *loc_racer(void *arg)
{
    loc_ctx *c = arg;
    int id = atomic_fetch_add(&c->id, 1);
    char k[16];
    for (int j = 0; j < LOC_KEYS; j++) {
        int i = (j * 7 + id * 13) % LOC_KEYS; /* different orders per thread */
        void *v = NULL;
        bool loaded;
        if (xs_map_load_or_create(c->m, k, key_of(k, sizeof k, "", i), loc_create, c, &v,
                                  &loaded) != 0)
            atomic_fetch_add(&c->errors, 1);
        c->got[id][i] = v;
    }
    return NULL;
}

static void free_value(void *v, void *arg)
{
    (void)arg;
    free(v);
}

static int fail_create(const void *key, size_t len, void *arg, void **out)
{
    (void)key;
    (void)len;
    (void)out;
    atomic_fetch_add((_Atomic int *)arg, 1);
    return 55;
}

TEST_HASHES(load_or_create_64_threads_once_per_key, 300)
{
    loc_ctx *c = calloc(1, sizeof *c);
    ASSERT(c);
    c->m = new_map_with((xs_map_options){.destroy = free_value});
    ASSERT(c->m);
    threads ts = {.n = 0};
    for (int i = 0; i < LOC_THREADS; i++)
        spawn(&ts, loc_racer, c);
    join_all(&ts);
    EXPECT_EQ(atomic_load(&c->errors), 0);
    int bad_once = 0, bad_same = 0;
    for (int k = 0; k < LOC_KEYS; k++) {
        if (atomic_load(&c->creates[k]) != 1)
            bad_once++;
        for (int t = 1; t < LOC_THREADS; t++)
            if (c->got[t][k] != c->got[0][k] || !c->got[0][k] ||
                ((loc_obj *)c->got[0][k])->key != k)
                bad_same++;
    }
    EXPECT_EQ(bad_once, 0);
    EXPECT_EQ(bad_same, 0);
    EXPECT_EQ(xs_map_len(c->m), LOC_KEYS);

    xs_map_free(c->m);
    free(c);
}

TEST_HASHES(load_or_create_failed_creator_stores_nothing, 30)
{
    xs_map *m = new_map();
    ASSERT(m);
    ASSERT_EQ(xs_map_store(m, S("other"), V(1)), 0);
    /* a failing creator stores nothing; a later call retries */
    _Atomic int fails = 0;
    void *v = V(3);
    bool loaded = true;
    EXPECT_EQ(xs_map_load_or_create(m, S("fresh"), fail_create, (void *)&fails, &v, &loaded),
              55);
    EXPECT_EQ(atomic_load(&fails), 1);
    EXPECT_EQ(N(v), 3);
    EXPECT(loaded); /* outputs untouched on failure */
    EXPECT_EQ(xs_map_load(m, S("fresh"), NULL), XS_ENOENT);
    EXPECT_EQ(xs_map_len(m), 1);
    EXPECT_EQ(xs_map_load_or_create(m, S("fresh"), fail_create, (void *)&fails, &v, &loaded),
              55);
    EXPECT_EQ(atomic_load(&fails), 2);
    _Atomic int calls = 0;
    EXPECT_EQ(xs_map_load_or_create(m, S("fresh"), create_value, (void *)&calls, &v, &loaded),
              0);
    EXPECT(!loaded);
    EXPECT_EQ(atomic_load(&calls), 1);
    EXPECT_EQ(xs_map_load(m, S("fresh"), &v), 0);
    EXPECT_EQ(N(v), 1234);
    EXPECT_EQ(xs_map_len(m), 2);
    xs_map_free(m);
}

/* A creator that fails while others wait: the waiters retry and one creates. */
typedef struct failing_ctx {
    xs_map *m;
    th_event started, waiters_in;
    _Atomic int creates_ok;
    _Atomic int results_ok;
} failing_ctx;

static int slow_fail_create(const void *key, size_t len, void *arg, void **out)
{
    (void)key;
    (void)len;
    (void)out;
    failing_ctx *c = arg;
    th_event_signal(&c->started);
    th_event_wait(&c->waiters_in, 4, 10000); /* let the others arrive */
    return 66;
}

static int ok_create(const void *key, size_t len, void *arg, void **out)
{
    (void)key;
    (void)len;
    failing_ctx *c = arg;
    atomic_fetch_add(&c->creates_ok, 1);
    *out = V(500);
    return 0;
}

static void *failing_waiter(void *arg)
{
    failing_ctx *c = arg;
    th_event_wait(&c->started, 1, 10000);
    th_event_signal(&c->waiters_in);
    void *v = NULL;
    if (xs_map_load_or_create(c->m, S("slow"), ok_create, c, &v, NULL) == 0 && N(v) == 500)
        atomic_fetch_add(&c->results_ok, 1);
    return NULL;
}

TEST_HASHES(load_or_create_failure_lets_waiters_retry, 60)
{
    failing_ctx c;
    memset(&c, 0, sizeof c);
    c.m = new_map();
    ASSERT(c.m);
    th_event_init(&c.started);
    th_event_init(&c.waiters_in);
    threads ts = {.n = 0};
    for (int i = 0; i < 4; i++)
        spawn(&ts, failing_waiter, &c);
    EXPECT_EQ(xs_map_load_or_create(c.m, S("slow"), slow_fail_create, &c, NULL, NULL), 66);
    join_all(&ts);
    EXPECT_EQ(atomic_load(&c.creates_ok), 1);
    EXPECT_EQ(atomic_load(&c.results_ok), 4);
    EXPECT_EQ(xs_map_len(c.m), 1);
    th_event_destroy(&c.started);
    th_event_destroy(&c.waiters_in);
    xs_map_free(c.m);
}

/* The creator may use the map, except to write its own key. */
static int reentrant_create(const void *key, size_t len, void *arg, void **out)
{
    xs_map *m = arg;
    int bad = 0;
    if (xs_map_load(m, key, len, NULL) != XS_ENOENT)
        bad++; /* absent while being created */
    if (xs_map_store(m, key, len, V(9)) != XS_EBUSY)
        bad++;
    if (xs_map_load_or_create(m, key, len, reentrant_create, m, NULL, NULL) != XS_EBUSY)
        bad++;
    if (xs_map_delete(m, key, len) != XS_ENOENT)
        bad++;
    _Atomic int calls = 0;
    void *v = NULL;
    if (xs_map_load_or_create(m, S("other"), create_value, (void *)&calls, &v, NULL) != 0 ||
        N(v) != 1234)
        bad++;
    if (xs_map_store(m, S("third"), V(3)) != 0)
        bad++;
    *out = V(bad ? 1000 + bad : 8);
    return 0;
}

TEST(load_or_create_creator_may_call_the_map)
{
    xs_map *m = new_map();
    ASSERT(m);
    void *v = NULL;
    EXPECT_EQ(xs_map_load_or_create(m, S("self"), reentrant_create, m, &v, NULL), 0);
    EXPECT_EQ(N(v), 8);
    EXPECT_EQ(xs_map_len(m), 3);
    xs_map_free(m);
}

/* clear while a creator runs: its value counts as stored then cleared. */
static int clearing_create(const void *key, size_t len, void *arg, void **out)
{
    (void)key;
    (void)len;
    xs_map *m = arg;
    EXPECT_EQ(xs_map_clear(m), 0);
    *out = malloc(16);
    return *out ? 0 : 1;
}

static _Atomic int destroyed_count;

static void count_free(void *v, void *arg)
{
    (void)arg;
    atomic_fetch_add(&destroyed_count, 1);
    free(v);
}

TEST(load_or_create_racing_clear)
{
    atomic_store(&destroyed_count, 0);
    xs_map *m = new_map_with((xs_map_options){.destroy = count_free});
    ASSERT(m);
    void *v = NULL;
    bool loaded = true;
    EXPECT_EQ(xs_map_load_or_create(m, S("k"), clearing_create, m, &v, &loaded), 0);
    EXPECT(!loaded);
    EXPECT(v != NULL);
    EXPECT_EQ(xs_map_load(m, S("k"), NULL), XS_ENOENT);
    EXPECT_EQ(xs_map_len(m), 0);
    for (int i = 0; i < 20 && atomic_load(&destroyed_count) == 0; i++)
        xs_map_reclaim(m);
    EXPECT_EQ(atomic_load(&destroyed_count), 1);
    xs_map_free(m);
    EXPECT_EQ(atomic_load(&destroyed_count), 1);
}

/* ---- growth: readers never miss a present key ---- */

typedef struct grow_ctx {
    xs_map *m;
    int per_writer;
    _Atomic int writers_left;
    _Atomic int id;
    _Atomic long misses, bad_values, reads;
    _Atomic long progress[64];
    int nwriters;
} grow_ctx;

#define STABLE_KEYS 2000

static void *grow_writer(void *arg)
{
    grow_ctx *c = arg;
    int id = atomic_fetch_add(&c->id, 1);
    char k[32];
    for (int i = 0; i < c->per_writer; i++) {
        size_t n = (size_t)snprintf(k, sizeof k, "w%d-%d", id, i);
        EXPECT_EQ(xs_map_store(c->m, k, n, V(i + 1)), 0);
        /* Release: readers that see the progress see the key stored. */
        atomic_store_explicit(&c->progress[id], i + 1, memory_order_release);
    }
    /* shrink again: delete them all */
    for (int i = 0; i < c->per_writer; i++) {
        size_t n = (size_t)snprintf(k, sizeof k, "w%d-%d", id, i);
        atomic_store_explicit(&c->progress[id], -(i + 1), memory_order_release);
        EXPECT_EQ(xs_map_delete(c->m, k, n), 0);
    }
    atomic_fetch_sub(&c->writers_left, 1);
    return NULL;
}

static void *grow_reader(void *arg)
{
    grow_ctx *c = arg;
    uint64_t s = (uintptr_t)&s | 1;
    char k[32];
    while (atomic_load(&c->writers_left) > 0) {
        for (int j = 0; j < 64; j++) {
            long i = (long)(rng_next(&s) % STABLE_KEYS);
            void *v = NULL;
            if (xs_map_load(c->m, k, key_of(k, sizeof k, "stable", i), &v) != 0)
                atomic_fetch_add(&c->misses, 1);
            else if (N(v) != (uintptr_t)i + 7)
                atomic_fetch_add(&c->bad_values, 1);
        }
        /* a key a writer has finished storing (and not started deleting) */
        int w = (int)(rng_next(&s) % (uint64_t)c->nwriters);
        long p = atomic_load_explicit(&c->progress[w], memory_order_acquire);
        if (p > 0) {
            long i = (long)(rng_next(&s) % (uint64_t)p);
            size_t n = (size_t)snprintf(k, sizeof k, "w%d-%ld", w, i);
            void *v = NULL;
            int rc = xs_map_load(c->m, k, n, &v);
            long p2 = atomic_load_explicit(&c->progress[w], memory_order_acquire);
            /* absent only if the writer had begun deleting by then */
            if ((rc != 0 && p2 > 0) || (rc == 0 && N(v) != (uintptr_t)i + 1))
                atomic_fetch_add(&c->misses, 1);
        }
        atomic_fetch_add(&c->reads, 65);
    }
    return NULL;
}

TEST_T(growth_readers_never_miss_present_keys, 300)
{
    grow_ctx *c = calloc(1, sizeof *c);
    ASSERT(c);
    c->m = new_map();
    ASSERT(c->m);
    char k[32];
    for (long i = 0; i < STABLE_KEYS; i++)
        ASSERT_EQ(xs_map_store(c->m, k, key_of(k, sizeof k, "stable", i), V(i + 7)), 0);
    c->nwriters = 2 * ncpu();
    if (c->nwriters > 64)
        c->nwriters = 64;
    c->per_writer = 200000 / c->nwriters;
    atomic_store(&c->writers_left, c->nwriters);
    threads ts = {.n = 0};
    for (int i = 0; i < c->nwriters; i++)
        spawn(&ts, grow_writer, c);
    for (int i = 0; i < ncpu(); i++)
        spawn(&ts, grow_reader, c);
    join_all(&ts);
    EXPECT_EQ(atomic_load(&c->misses), 0);
    EXPECT_EQ(atomic_load(&c->bad_values), 0);
    EXPECT_GT(atomic_load(&c->reads), 0);
    EXPECT_EQ(xs_map_len(c->m), STABLE_KEYS);
    for (long i = 0; i < STABLE_KEYS; i++)
        EXPECT_EQ(xs_map_load(c->m, k, key_of(k, sizeof k, "stable", i), NULL), 0);
    xs_map_free(c->m);
    free(c);
}

/* ---- destructors and guards ---- */

typedef struct obj {
    _Atomic uint64_t magic;
    _Atomic int destroyed;
} obj;

#define OBJ_MAGIC UINT64_C(0x0B1EC7A11FE)

static _Atomic long objs_destroyed, objs_double, objs_created;

static obj *obj_new(void)
{
    obj *o = malloc(sizeof *o);
    if (!o)
        abort();
    atomic_init(&o->magic, OBJ_MAGIC);
    atomic_init(&o->destroyed, 0);
    atomic_fetch_add(&objs_created, 1);
    return o;
}

static void obj_destroy(void *v, void *arg)
{
    (void)arg;
    obj *o = v;
    if (atomic_exchange(&o->destroyed, 1))
        atomic_fetch_add(&objs_double, 1);
    atomic_store(&o->magic, 0xDEAD);
    atomic_fetch_add(&objs_destroyed, 1);
    free(o);
}

typedef struct guard_ctx {
    xs_map *m;
    th_event loaded, release;
    obj *seen;
    bool intact;
} guard_ctx;

static void *guarded_reader(void *arg)
{
    guard_ctx *c = arg;
    EXPECT_EQ(xs_map_guard_enter(), 0);
    void *v = NULL;
    EXPECT_EQ(xs_map_load(c->m, S("obj"), &v), 0);
    c->seen = v;
    th_event_signal(&c->loaded);
    th_event_wait(&c->release, 1, 30000);
    /* still ours, though deleted long ago */
    c->intact = atomic_load(&c->seen->magic) == OBJ_MAGIC && !atomic_load(&c->seen->destroyed);
    EXPECT_EQ(xs_map_guard_leave(), 0);
    return NULL;
}

TEST(destructor_runs_once_after_guarded_readers)
{
    atomic_store(&objs_destroyed, 0);
    atomic_store(&objs_double, 0);
    guard_ctx c;
    memset(&c, 0, sizeof c);
    c.m = new_map_with((xs_map_options){.destroy = obj_destroy});
    ASSERT(c.m);
    th_event_init(&c.loaded);
    th_event_init(&c.release);
    obj *o = obj_new();
    ASSERT_EQ(xs_map_store(c.m, S("obj"), o), 0);
    threads ts = {.n = 0};
    spawn(&ts, guarded_reader, &c);
    ASSERT(th_event_wait(&c.loaded, 1, 30000));
    EXPECT_EQ(xs_map_delete(c.m, S("obj")), 0);
    /* churn enough to force many reclaim attempts: the value must survive */
    char k[16];
    for (int i = 0; i < 2000; i++) {
        xs_map_store(c.m, k, key_of(k, sizeof k, "x", i), obj_new());
        xs_map_delete(c.m, k, key_of(k, sizeof k, "x", i));
        xs_map_reclaim(c.m);
    }
    EXPECT_EQ(atomic_load(&o->destroyed), 0);
    th_event_signal(&c.release);
    join_all(&ts);
    EXPECT(c.intact);
    for (int i = 0; i < 50 && atomic_load(&objs_destroyed) < 2001; i++)
        xs_map_reclaim(c.m);
    EXPECT_EQ(atomic_load(&objs_destroyed), 2001);
    xs_map_free(c.m);
    EXPECT_EQ(atomic_load(&objs_destroyed), 2001);
    EXPECT_EQ(atomic_load(&objs_double), 0);
    th_event_destroy(&c.loaded);
    th_event_destroy(&c.release);
}

/* Many threads replace, delete and clear values while guarded readers use
 * them: every value is destroyed exactly once, never while a reader sees it. */
typedef struct dstress {
    xs_map *m;
    _Atomic int id;
    _Atomic long not_stored; /* values the map refused (load_or_store hits) */
    _Atomic long bad;
    int iters;
} dstress;

static void *dstress_worker(void *arg)
{
    dstress *c = arg;
    int id = atomic_fetch_add(&c->id, 1);
    uint64_t s = (uint64_t)id * 77 + 1;
    char k[16];
    for (int i = 0; i < c->iters; i++) {
        uint64_t x = rng_next(&s);
        size_t n = key_of(k, sizeof k, "", (long)(x % 64));
        switch ((x >> 8) % 10) {
        case 0:
        case 1: {
            if (xs_map_guard_enter() != 0)
                break;
            void *v = NULL;
            if (xs_map_load(c->m, k, n, &v) == 0) {
                obj *o = v;
                if (atomic_load(&o->magic) != OBJ_MAGIC || atomic_load(&o->destroyed))
                    atomic_fetch_add(&c->bad, 1);
            }
            xs_map_guard_leave();
            break;
        }
        case 2:
            xs_map_store(c->m, k, n, obj_new());
            break;
        case 3: {
            obj *o = obj_new();
            bool loaded = false;
            if (xs_map_load_or_store(c->m, k, n, o, NULL, &loaded) == 0 && loaded) {
                obj_destroy(o, NULL); /* still ours */
                atomic_fetch_add(&c->not_stored, 1);
            }
            break;
        }
        case 4:
            xs_map_swap(c->m, k, n, obj_new(), NULL, NULL);
            break;
        case 5:
            xs_map_delete(c->m, k, n);
            break;
        case 6:
            xs_map_load_and_delete(c->m, k, n, NULL);
            break;
        case 7: {
            if (xs_map_guard_enter() != 0)
                break;
            void *v = NULL;
            if (xs_map_load(c->m, k, n, &v) == 0) {
                obj *o = obj_new();
                if (xs_map_compare_and_swap(c->m, k, n, v, o) != 0) {
                    obj_destroy(o, NULL);
                    atomic_fetch_add(&c->not_stored, 1);
                }
            }
            xs_map_guard_leave();
            break;
        }
        case 8: {
            if (xs_map_guard_enter() != 0)
                break;
            void *v = NULL;
            if (xs_map_load(c->m, k, n, &v) == 0)
                xs_map_compare_and_delete(c->m, k, n, v);
            xs_map_guard_leave();
            break;
        }
        case 9:
            if ((x >> 16) % 50 == 0)
                xs_map_clear(c->m);
            break;
        }
    }
    return NULL;
}

TEST_T(destructor_exactly_once_under_stress, 300)
{
    atomic_store(&objs_destroyed, 0);
    atomic_store(&objs_double, 0);
    atomic_store(&objs_created, 0);
    dstress c = {.m = new_map_with((xs_map_options){.destroy = obj_destroy}), .iters = 40000};
    ASSERT(c.m);
    threads ts = {.n = 0};
    for (int i = 0; i < 8; i++)
        spawn(&ts, dstress_worker, &c);
    join_all(&ts);
    EXPECT_EQ(atomic_load(&c.bad), 0);
    xs_map_free(c.m);
    EXPECT_EQ(atomic_load(&objs_double), 0);
    EXPECT_EQ(atomic_load(&objs_destroyed), atomic_load(&objs_created));
}

/* Resizes in both directions, clears and creators all at once, with a
 * destructor: every value destroyed exactly once, never under a reader. */
typedef struct rstress {
    xs_map *m;
    _Atomic int id;
    _Atomic long bad, created_here;
    _Atomic long ops; /* all threads' operations, in hundreds: the phase clock */
    int iters;
} rstress;

static int obj_create(const void *key, size_t len, void *arg, void **out)
{
    (void)key;
    (void)len;
    rstress *c = arg;
    uint64_t x = (uintptr_t)out ^ (uint64_t)atomic_fetch_add(&c->created_here, 1);
    if (x % 7 == 0)
        return 99; /* some creators fail */
    *out = obj_new();
    return 0;
}

static void *rstress_worker(void *arg)
{
    rstress *c = arg;
    int id = atomic_fetch_add(&c->id, 1);
    uint64_t s = (uint64_t)id * 7919 + 3;
    char k[24];
    long phase = 0;
    for (int i = 0; i < c->iters; i++) {
        uint64_t x = rng_next(&s);
        if (i % 100 == 0)
            phase = (atomic_fetch_add(&c->ops, 1) / 600) % 2;
        /* phases for all threads: inserting over a wide key space grows the
         * table; inserting over a narrow one while deleting everywhere
         * shrinks it */
        unsigned op = (unsigned)((x >> 20) % 8);
        long space = phase && (op <= 2 || op == 6) ? 50 : 6000;
        size_t n = key_of(k, sizeof k, "r", (long)(x % (uint64_t)space));
        switch (op) {
        case 0:
        case 1: {
            void *v = NULL;
            int rc = xs_map_load_or_create(c->m, k, n, obj_create, c, &v, NULL);
            if (rc != 0 && rc != 99)
                atomic_fetch_add(&c->bad, 1);
            break;
        }
        case 2:
            xs_map_store(c->m, k, n, obj_new());
            break;
        case 3:
        case 4:
            xs_map_delete(c->m, k, n);
            break;
        case 5: {
            if (xs_map_guard_enter() != 0)
                break;
            void *v = NULL;
            if (xs_map_load(c->m, k, n, &v) == 0) {
                obj *o = v;
                if (atomic_load(&o->magic) != OBJ_MAGIC || atomic_load(&o->destroyed))
                    atomic_fetch_add(&c->bad, 1);
            }
            xs_map_guard_leave();
            break;
        }
        case 6:
            xs_map_swap(c->m, k, n, obj_new(), NULL, NULL);
            break;
        case 7:
            if ((x >> 32) % 5000 == 0)
                EXPECT_EQ(xs_map_clear(c->m), 0);
            else
                xs_map_load_and_delete(c->m, k, n, NULL);
            break;
        }
    }
    return NULL;
}

TEST_HASHES(stress_resize_clear_and_creators, 300)
{
    atomic_store(&objs_destroyed, 0);
    atomic_store(&objs_double, 0);
    atomic_store(&objs_created, 0);
    rstress c = {.m = new_map_with((xs_map_options){.destroy = obj_destroy}),
                 .iters = hash_mode == HASH_CONST ? 3000 : 48000};
    ASSERT(c.m);
    threads ts = {.n = 0};
    for (int i = 0; i < 6; i++)
        spawn(&ts, rstress_worker, &c);
    join_all(&ts);
    EXPECT_EQ(atomic_load(&c.bad), 0);
    int calls = 0;
    EXPECT_EQ(xs_map_range(c.m, count_fn, &calls), 0);
    EXPECT_EQ((size_t)calls, xs_map_len(c.m));
    xs_map_free(c.m);
    EXPECT_EQ(atomic_load(&objs_double), 0);
    EXPECT_EQ(atomic_load(&objs_destroyed), atomic_load(&objs_created));
}

TEST(guard_enter_leave_nest_and_reject_overrelease)
{
    EXPECT_EQ(xs_map_guard_leave(), XS_EINVAL);
    EXPECT_EQ(xs_map_guard_enter(), 0);
    EXPECT_EQ(xs_map_guard_enter(), 0);
    EXPECT_EQ(xs_map_guard_leave(), 0);
    EXPECT_EQ(xs_map_guard_leave(), 0);
    EXPECT_EQ(xs_map_guard_leave(), XS_EINVAL);
}

/* A callback runs inside the library's guard: the caller cannot close it,
 * and trying leaves the thread's guard depth intact. */
static int leave_in_callback(const void *key, size_t len, void *value, void *arg)
{
    (void)key;
    (void)len;
    (void)value;
    int *r = arg;
    *r = xs_map_guard_leave();
    return 0;
}

TEST(guard_leave_inside_a_callback_is_einval)
{
    xs_map *m = new_map_with((xs_map_options){0});
    ASSERT(m);
    ASSERT_EQ(xs_map_store(m, S("k"), (void *)1), 0);
    int r = 0;
    EXPECT_EQ(xs_map_range(m, leave_in_callback, &r), 0);
    EXPECT_EQ(r, XS_EINVAL);
    /* The thread is out of every guard, and its next guard works. */
    EXPECT_EQ(xs_map_guard_leave(), XS_EINVAL);
    EXPECT_EQ(xs_map_guard_enter(), 0);
    EXPECT_EQ(xs_map_range(m, leave_in_callback, &r), 0);
    EXPECT_EQ(r, 0); /* the caller's own guard: closing it is allowed */
    EXPECT_EQ(xs_map_guard_leave(), XS_EINVAL);
    xs_map_free(m);
}

/* A parent thread inside a guard at fork must not stop reclamation in the
 * child (its thread does not exist there). */
static _Atomic int fork_destroyed;

static void fork_count_destroy(void *value, void *arg)
{
    (void)arg;
    free(value);
    atomic_fetch_add(&fork_destroyed, 1);
}

typedef struct fork_guard {
    th_event in, out;
} fork_guard;

static void *hold_guard(void *arg)
{
    fork_guard *f = arg;
    if (xs_map_guard_enter() == 0) {
        th_event_signal(&f->in);
        th_event_wait(&f->out, 1, 60000);
        xs_map_guard_leave();
    }
    return NULL;
}

TEST(reclamation_works_in_a_forked_child)
{
    fork_guard f;
    th_event_init(&f.in);
    th_event_init(&f.out);
    pthread_t th;
    ASSERT_EQ(pthread_create(&th, NULL, hold_guard, &f), 0);
    ASSERT(th_event_wait(&f.in, 1, 30000));
    fflush(NULL);
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        xs_map *m = new_map_with((xs_map_options){.destroy = fork_count_destroy});
        if (!m)
            _exit(2);
        char k[16];
        for (int i = 0; i < 2000; i++) {
            size_t n = key_of(k, sizeof k, "f", i);
            if (xs_map_store(m, k, n, malloc(8)) != 0 || xs_map_delete(m, k, n) != 0)
                _exit(3);
        }
        for (int i = 0; i < 10; i++)
            xs_map_reclaim(m);
        int destroyed = atomic_load(&fork_destroyed);
        xs_map_free(m);
        _exit(destroyed == 2000 ? 0 : 1);
    }
    int status = 0;
    EXPECT_EQ(waitpid(pid, &status, 0), pid);
    EXPECT(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
    th_event_signal(&f.out);
    pthread_join(th, NULL);
}

/* ---- memory ---- */

TEST_T(million_insert_delete_cycles_return_memory, 600)
{
    xs_alloc_counter ac;
    xs_alloc_counter_init(&ac, NULL);
    xs_map *m = new_map_with((xs_map_options){.allocator = &ac.allocator});
    ASSERT(m);
    int64_t baseline = atomic_load(&ac.live_bytes);
    char k[32];
    /* a sliding window of 64 live keys over a million distinct keys */
    for (long i = 0; i < 1000000; i++) {
        ASSERT_EQ(xs_map_store(m, k, key_of(k, sizeof k, "cycle-", i), V(i)), 0);
        if (i >= 64)
            ASSERT_EQ(xs_map_delete(m, k, key_of(k, sizeof k, "cycle-", i - 64)), 0);
    }
    for (long i = 1000000 - 64; i < 1000000; i++)
        ASSERT_EQ(xs_map_delete(m, k, key_of(k, sizeof k, "cycle-", i)), 0);
    EXPECT_EQ(xs_map_len(m), 0);
    /* then a burst: 100k keys at once, all deleted (the table must shrink) */
    for (long i = 0; i < 100000; i++)
        ASSERT_EQ(xs_map_store(m, k, key_of(k, sizeof k, "burst-", i), V(i)), 0);
    int64_t peak = atomic_load(&ac.live_bytes);
    for (long i = 0; i < 100000; i++)
        ASSERT_EQ(xs_map_delete(m, k, key_of(k, sizeof k, "burst-", i)), 0);
    /* deletes after the burst let the incremental shrink finish */
    for (long i = 0; i < 5000; i++) {
        xs_map_store(m, k, key_of(k, sizeof k, "tail-", i), V(i));
        xs_map_delete(m, k, key_of(k, sizeof k, "tail-", i));
    }
    for (int i = 0; i < 100 && atomic_load(&ac.live_bytes) > baseline + 16384; i++)
        xs_map_reclaim(m);
    int64_t after = atomic_load(&ac.live_bytes);
    printf("    baseline %lld B, peak %lld B, after %lld B\n", (long long)baseline,
           (long long)peak, (long long)after);
    EXPECT_LE(after, baseline + 16384);
    xs_map_free(m);
    EXPECT_EQ(atomic_load(&ac.live_bytes), 0);
}

/* ---- seeds ---- */

TEST(seeds_differ_and_collisions_do_not_carry_over)
{
    xs_map *a = new_map(), *b = new_map();
    ASSERT(a && b);
    EXPECT_NE(xs_map_seed(a), xs_map_seed(b));
    xs_map *c = new_map_with((xs_map_options){.seed = 12345});
    ASSERT(c);
    EXPECT_EQ(xs_map_seed(c), 12345);
    xs__hash_key ka, kb;
    xs__hash_key_init(&ka, xs_map_seed(a));
    xs__hash_key_init(&kb, xs_map_seed(b));
    /* 64 keys whose hashes agree on the low 10 bits under a's seed ... */
    char keys[64][24];
    size_t lens[64];
    int found = 0;
    for (long i = 0; found < 64 && i < 10000000; i++) {
        char k[24];
        size_t n = key_of(k, sizeof k, "key-", i);
        if ((xs__hash(&ka, k, n) & 1023) == 0) {
            memcpy(keys[found], k, n);
            lens[found++] = n;
        }
    }
    ASSERT_EQ(found, 64);
    /* ... spread out under b's: nearly as many buckets as keys */
    unsigned char used[1024] = {0};
    int distinct = 0;
    for (int i = 0; i < 64; i++) {
        size_t bkt = xs__hash(&kb, keys[i], lens[i]) & 1023;
        if (!used[bkt]++)
            distinct++;
    }
    EXPECT_GE(distinct, 56);
    /* the map really hashes with its seed: same contents whatever the seed */
    for (int i = 0; i < 64; i++) {
        EXPECT_EQ(xs_map_store(a, keys[i], lens[i], V(i)), 0);
        EXPECT_EQ(xs_map_store(b, keys[i], lens[i], V(i)), 0);
    }
    for (int i = 0; i < 64; i++) {
        void *va = NULL, *vb = NULL;
        EXPECT_EQ(xs_map_load(a, keys[i], lens[i], &va), 0);
        EXPECT_EQ(xs_map_load(b, keys[i], lens[i], &vb), 0);
        EXPECT(N(va) == (uintptr_t)i && N(vb) == (uintptr_t)i);
    }
    xs_map_free(a);
    xs_map_free(b);
    xs_map_free(c);
}

TEST(hash_depends_on_every_byte_and_length)
{
    xs__hash_key k;
    xs__hash_key_init(&k, 1);
    unsigned char buf[200];
    for (int i = 0; i < 200; i++)
        buf[i] = (unsigned char)(i * 37);
    int same = 0;
    for (size_t len = 0; len < 150; len++) {
        uint64_t h = xs__hash(&k, buf, len);
        if (len && h == xs__hash(&k, buf, len - 1))
            same++;
        for (size_t i = 0; i < len; i++) {
            buf[i] ^= 1;
            if (xs__hash(&k, buf, len) == h)
                same++;
            buf[i] ^= 1;
        }
    }
    EXPECT_EQ(same, 0);
}

/* ---- keys are copied; bad input; allocation failure ---- */

static int key_check_fn(const void *key, size_t len, void *value, void *arg)
{
    (void)value;
    int *ok = arg;
    if (len == 5 && memcmp(key, "hello", 5) == 0 && ((const char *)key)[5] == '\0')
        (*ok)++;
    return 0;
}

TEST(keys_are_copied)
{
    xs_map *m = new_map();
    ASSERT(m);
    char buf[16];
    memcpy(buf, "hello", 6);
    EXPECT_EQ(xs_map_store(m, buf, 5, V(1)), 0);
    memcpy(buf, "world", 6); /* reuse the buffer at once */
    EXPECT_EQ(xs_map_load(m, S("hello"), NULL), 0);
    EXPECT_EQ(xs_map_load(m, S("world"), NULL), XS_ENOENT);
    int ok = 0;
    EXPECT_EQ(xs_map_range(m, key_check_fn, &ok), 0);
    EXPECT_EQ(ok, 1);
    /* binary keys with NULs, and the longest key */
    char bin[4] = {0, 1, 0, 2};
    EXPECT_EQ(xs_map_store(m, bin, 4, V(2)), 0);
    EXPECT_EQ(xs_map_load(m, bin, 3, NULL), XS_ENOENT);
    char *big = malloc(XS_MAP_KEY_MAX);
    ASSERT(big);
    memset(big, 'x', XS_MAP_KEY_MAX);
    EXPECT_EQ(xs_map_store(m, big, XS_MAP_KEY_MAX, V(3)), 0);
    big[0] = 'y';
    EXPECT_EQ(xs_map_load(m, big, XS_MAP_KEY_MAX, NULL), XS_ENOENT);
    big[0] = 'x';
    EXPECT_EQ(xs_map_load(m, big, XS_MAP_KEY_MAX, NULL), 0);
    free(big);
    xs_map_free(m);
}

TEST(bad_input_is_einval_and_changes_nothing)
{
    xs_map *m = new_map();
    ASSERT(m);
    ASSERT_EQ(xs_map_store(m, S("k"), V(1)), 0);
    void *v = V(5);
    bool loaded = false;
    size_t too_long = (size_t)XS_MAP_KEY_MAX + 1;
    char *big = calloc(1, too_long);
    ASSERT(big);
    _Atomic int calls = 0;

    EXPECT_EQ(xs_map_new(NULL, NULL), XS_EINVAL);
    EXPECT_EQ(xs_map_new(&(xs_map_options){.capacity = SIZE_MAX}, &m), XS_EINVAL);
    /* NULL map */
    EXPECT_EQ(xs_map_load(NULL, S("k"), &v), XS_EINVAL);
    EXPECT_EQ(xs_map_store(NULL, S("k"), V(1)), XS_EINVAL);
    EXPECT_EQ(xs_map_load_or_store(NULL, S("k"), V(1), &v, &loaded), XS_EINVAL);
    EXPECT_EQ(xs_map_load_or_create(NULL, S("k"), create_value, (void *)&calls, &v, &loaded),
              XS_EINVAL);
    EXPECT_EQ(xs_map_load_and_delete(NULL, S("k"), &v), XS_EINVAL);
    EXPECT_EQ(xs_map_delete(NULL, S("k")), XS_EINVAL);
    EXPECT_EQ(xs_map_swap(NULL, S("k"), V(1), &v, &loaded), XS_EINVAL);
    EXPECT_EQ(xs_map_compare_and_swap(NULL, S("k"), V(1), V(2)), XS_EINVAL);
    EXPECT_EQ(xs_map_compare_and_delete(NULL, S("k"), V(1)), XS_EINVAL);
    EXPECT_EQ(xs_map_range(NULL, count_fn, &calls), XS_EINVAL);
    EXPECT_EQ(xs_map_clear(NULL), XS_EINVAL);
    EXPECT_EQ(xs_map_len(NULL), 0);
    xs_map_free(NULL);
    xs_map_reclaim(NULL);
    /* NULL key with a length; a key over the maximum */
    const void *nk = NULL;
    EXPECT_EQ(xs_map_load(m, nk, 1, &v), XS_EINVAL);
    EXPECT_EQ(xs_map_store(m, nk, 3, V(1)), XS_EINVAL);
    EXPECT_EQ(xs_map_store(m, big, too_long, V(1)), XS_EINVAL);
    EXPECT_EQ(xs_map_load(m, big, too_long, &v), XS_EINVAL);
    EXPECT_EQ(xs_map_load_or_store(m, big, too_long, V(1), &v, &loaded), XS_EINVAL);
    EXPECT_EQ(xs_map_load_or_create(m, big, too_long, create_value, (void *)&calls, &v, &loaded),
              XS_EINVAL);
    EXPECT_EQ(xs_map_load_and_delete(m, nk, 2, &v), XS_EINVAL);
    EXPECT_EQ(xs_map_delete(m, big, too_long), XS_EINVAL);
    EXPECT_EQ(xs_map_swap(m, nk, 2, V(1), &v, &loaded), XS_EINVAL);
    EXPECT_EQ(xs_map_compare_and_swap(m, big, too_long, V(1), V(2)), XS_EINVAL);
    EXPECT_EQ(xs_map_compare_and_delete(m, nk, 1, V(1)), XS_EINVAL);
    /* missing callbacks */
    EXPECT_EQ(xs_map_load_or_create(m, S("k2"), NULL, NULL, &v, &loaded), XS_EINVAL);
    EXPECT_EQ(xs_map_range(m, NULL, NULL), XS_EINVAL);
    /* nothing changed, outputs untouched */
    EXPECT_EQ(N(v), 5);
    EXPECT_EQ(atomic_load(&calls), 0);
    EXPECT_EQ(xs_map_len(m), 1);
    EXPECT_EQ(xs_map_load(m, S("k"), &v), 0);
    EXPECT_EQ(N(v), 1);
    EXPECT_EQ(xs_map_load(m, S("k2"), NULL), XS_ENOENT);
    free(big);
    xs_map_free(m);
}

/* An operation script run once per k, failing the k-th allocation. */
typedef struct script_state {
    xs_map *m;
    ref_map r;
} script_state;

static int dummy_free_calls;

static void note_free(void *v, void *arg)
{
    (void)v;
    (void)arg;
    dummy_free_calls++;
}

/* Applies op to both; on XS_ENOMEM checks the map equals the reference
 * from before and applies it again (now it must succeed). */
static bool script_step(script_state *s, xs_alloc_counter *ac, enum op op, const char *k,
                        void *a, void *b, int *enomems)
{
    size_t n = strlen(k);
    result got = map_apply(s->m, op, k, n, a, b, false);
    if (got.rc == XS_ENOMEM) {
        (*enomems)++;
        xs_alloc_counter_fail_at(ac, 0, 0);
        if (!contents_match(s->m, &s->r))
            return false;
        got = map_apply(s->m, op, k, n, a, b, false);
    }
    result want = ref_apply(&s->r, op, k, n, a, b, false);
    return want.rc == got.rc && want.v == got.v && want.loaded == got.loaded;
}

TEST_HASHES(enomem_at_every_allocation_leaves_map_unchanged, 300)
{
    int enomems = 0, runs = 0;
    for (int64_t k = 1; k < 400; k++) {
        for (int all = 0; all < 2; all++) {
            xs_alloc_counter ac;
            xs_alloc_counter_init(&ac, NULL);
            script_state s;
            memset(&s, 0, sizeof s);
            pthread_mutex_init(&s.r.mu, NULL);
            s.m = new_map_with((xs_map_options){.allocator = &ac.allocator,
                                                .destroy = note_free});
            ASSERT(s.m);
            xs_alloc_counter_fail_at(&ac, k, all);
            int64_t failures_before = atomic_load(&ac.failures);
            bool ok = true;
            char key[4] = "a";
            /* enough keys to grow the table and overflow buckets (const hash) */
            for (int i = 0; i < 60 && ok; i++) {
                key[0] = (char)('A' + i % 26);
                key[1] = (char)('a' + i / 26);
                key[2] = 0;
                ok = script_step(&s, &ac, OP_STORE, key, V(i), NULL, &enomems);
            }
            ok = ok && script_step(&s, &ac, OP_STORE, "Aa", V(100), NULL, &enomems);
            ok = ok && script_step(&s, &ac, OP_SWAP, "Ba", V(101), NULL, &enomems);
            ok = ok && script_step(&s, &ac, OP_CAS, "Ca", V(2), V(102), &enomems);
            ok = ok && script_step(&s, &ac, OP_LOAD_OR_STORE, "zz", V(103), NULL, &enomems);
            ok = ok && script_step(&s, &ac, OP_LOAD_OR_CREATE, "zy", V(104), NULL, &enomems);
            ok = ok && script_step(&s, &ac, OP_DELETE, "Da", NULL, NULL, &enomems);
            ok = ok && script_step(&s, &ac, OP_LOAD_AND_DELETE, "Ea", NULL, NULL, &enomems);
            ok = ok && script_step(&s, &ac, OP_CAD, "Fa", V(5), NULL, &enomems);
            ok = ok && contents_match_ac(s.m, &s.r, &ac);
            ok = ok && script_step(&s, &ac, OP_CLEAR, "", NULL, NULL, &enomems);
            ok = ok && script_step(&s, &ac, OP_STORE, "q", V(1), NULL, &enomems);
            ok = ok && contents_match_ac(s.m, &s.r, &ac);
            EXPECT(ok);
            bool triggered = atomic_load(&ac.failures) > failures_before;
            xs_map_free(s.m);
            EXPECT_EQ(atomic_load(&ac.live_bytes), 0);
            pthread_mutex_destroy(&s.r.mu);
            runs++;
            if (!ok)
                return;
            if (!triggered && all) {
                /* k is past the script's last allocation: done */
                printf("    %d runs, %d operations failed with XS_ENOMEM\n", runs, enomems);
                EXPECT_GT(enomems, 0);
                return;
            }
        }
    }
    EXPECT(!"the script allocates more than expected");
}

TEST(new_fails_cleanly_without_memory)
{
    for (int64_t k = 1; k <= 3; k++) {
        xs_alloc_counter ac;
        xs_alloc_counter_init(&ac, NULL);
        xs_alloc_counter_fail_at(&ac, k, 0);
        xs_map *m = NULL;
        int rc = xs_map_new(&(xs_map_options){.allocator = &ac.allocator}, &m);
        if (rc == 0)
            xs_map_free(m);
        else
            EXPECT_EQ(rc, XS_ENOMEM);
        EXPECT_EQ(atomic_load(&ac.live_bytes), 0);
    }
}

TEST(range_allocates_nothing_on_a_good_hash)
{
    xs_alloc_counter ac;
    xs_alloc_counter_init(&ac, NULL);
    xs_map *m = new_map_with((xs_map_options){.allocator = &ac.allocator});
    ASSERT(m);
    char k[16];
    for (int i = 0; i < 1000; i++)
        xs_map_store(m, k, key_of(k, sizeof k, "", i), V(i));
    int64_t before = atomic_load(&ac.allocs);
    int calls = 0;
    EXPECT_EQ(xs_map_range(m, count_fn, &calls), 0);
    EXPECT_EQ(calls, 1000);
    EXPECT_EQ(atomic_load(&ac.allocs), before);
    /* neither do hits, loads and replacing stores without a destructor */
    for (int i = 0; i < 1000; i++) {
        xs_map_load(m, k, key_of(k, sizeof k, "", i), NULL);
        xs_map_store(m, k, key_of(k, sizeof k, "", i), V(i + 1));
        xs_map_compare_and_swap(m, k, key_of(k, sizeof k, "", i), V(i + 1), V(i));
    }
    EXPECT_EQ(atomic_load(&ac.allocs), before);
    xs_map_free(m);
}

/* ---- many threads, disjoint keys, each checked against its own reference ---- */

typedef struct part_ctx {
    xs_map *m;
    _Atomic int id;
    _Atomic long mismatches;
    int iters;
} part_ctx;

static void *partition_worker(void *arg)
{
    part_ctx *c = arg;
    int id = atomic_fetch_add(&c->id, 1);
    ref_map *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    pthread_mutex_init(&r->mu, NULL);
    uint64_t s = (uint64_t)id * 1000003 + 17;
    for (int i = 0; i < c->iters; i++) {
        uint64_t x = rng_next(&s);
        enum op op = (enum op)(x % OP_CLEAR); /* everything but clear/len/range */
        char k[4] = {(char)('A' + id), (char)('a' + (x >> 8) % 8), 0, 0};
        size_t n = 1 + (x >> 12) % 2;
        void *a = V((x >> 32) % 4), *b = V((x >> 40) % 4);
        bool fail = (x >> 48) % 3 == 0;
        result want = ref_apply(r, op, k, n, a, b, fail);
        result got = map_apply(c->m, op, k, n, a, b, fail);
        if (want.rc != got.rc || want.v != got.v || want.loaded != got.loaded ||
            want.creates != got.creates) {
            if (atomic_fetch_add(&c->mismatches, 1) < 5)
                printf("    thread %d op %d (%d) key \"%.*s\": want rc %d v %lu loaded %d"
                       " creates %d, got rc %d v %lu loaded %d creates %d\n",
                       id, i, (int)op, (int)n, k, want.rc, (unsigned long)N(want.v),
                       want.loaded, want.creates, got.rc, (unsigned long)N(got.v), got.loaded,
                       got.creates);
        }
    }
    /* final contents of this thread's keys */
    for (int j = 0; j < 8; j++)
        for (size_t n = 1; n <= 2; n++) {
            char k[4] = {(char)('A' + id), (char)('a' + j), 0, 0};
            void *v = NULL;
            int rc = xs_map_load(c->m, k, n, &v);
            int i = ref_find(r, k, n);
            if ((i < 0) != (rc == XS_ENOENT) || (i >= 0 && r->val[i] != v))
                atomic_fetch_add(&c->mismatches, 1);
        }
    pthread_mutex_destroy(&r->mu);
    free(r);
    return NULL;
}

TEST_HASHES(stress_threads_match_their_references, 300)
{
    part_ctx c = {.m = new_map(), .iters = 100000};
    ASSERT(c.m);
    threads ts = {.n = 0};
    for (int i = 0; i < 16; i++)
        spawn(&ts, partition_worker, &c);
    join_all(&ts);
    EXPECT_EQ(atomic_load(&c.mismatches), 0);
    xs_map_free(c.m);
}

/* ---- typed wrappers and the seed's stat cache ---- */

typedef struct stat_set {
    _Atomic long success;
    char name[32];
} stat_set;

XS_MAP_DECLARE(stat_cache, stat_set);

static int new_stat_set(const void *key, size_t len, void *arg, stat_set **out)
{
    (void)arg;
    stat_set *s = calloc(1, sizeof *s);
    if (!s)
        return XS_ENOMEM;
    memcpy(s->name, key, len < 31 ? len : 31);
    *out = s;
    return 0;
}

static int sum_fn(const void *key, size_t len, stat_set *value, void *arg)
{
    (void)key;
    (void)len;
    *(long *)arg += atomic_load(&value->success);
    return 0;
}

typedef struct cache_ctx {
    stat_cache *c;
    int iters;
} cache_ctx;

static void *cache_worker(void *arg)
{
    cache_ctx *cc = arg;
    uint64_t s = (uintptr_t)&s | 1;
    char k[24];
    for (int i = 0; i < cc->iters; i++) {
        size_t n = key_of(k, sizeof k, "name-", (long)(rng_next(&s) % 100));
        stat_set *set = NULL;
        if (stat_cache_load_or_create(cc->c, k, n, new_stat_set, NULL, &set, NULL) == 0)
            atomic_fetch_add(&set->success, 1);
    }
    return NULL;
}

TEST(typed_wrappers_and_the_seed_stat_cache)
{
    stat_cache *c = NULL;
    ASSERT_EQ(stat_cache_new(&(xs_map_options){.destroy = free_value}, &c), 0);
    cache_ctx cc = {c, 20000};
    threads ts = {.n = 0};
    for (int i = 0; i < 8; i++)
        spawn(&ts, cache_worker, &cc);
    join_all(&ts);
    long total = 0;
    EXPECT_EQ(stat_cache_range(c, sum_fn, &total), 0);
    EXPECT_EQ(total, 8L * 20000);
    EXPECT_EQ(stat_cache_len(c), 100);
    stat_set *s = NULL;
    EXPECT_EQ(stat_cache_load_str(c, "name-7", &s), 0);
    EXPECT_STREQ(s->name, "name-7");
    stat_set *fresh = calloc(1, sizeof *fresh), *prev = NULL;
    ASSERT(fresh);
    bool loaded = false;
    EXPECT_EQ(stat_cache_swap(c, S("name-7"), fresh, &prev, &loaded), 0);
    EXPECT(loaded && prev == s);
    EXPECT_EQ(stat_cache_compare_and_delete(c, S("name-7"), fresh), 0);
    EXPECT_EQ(stat_cache_delete_str(c, "name-8"), 0);
    EXPECT_EQ(stat_cache_load_str(c, NULL, &s), XS_EINVAL);
    EXPECT_EQ(stat_cache_len(c), 98);
    EXPECT(stat_cache_map(c) != NULL);
    stat_cache_free(c);
}
