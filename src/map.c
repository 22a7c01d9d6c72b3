/*
 * map — the concurrent map: a bucketed hash table with lock-free reads,
 * per-bucket writer locks, incremental resizing and EBR reclamation.
 *
 * Invariants (the rest of the file relies on them):
 *  - An entry's length and key never change; its value word moves from
 *    PENDING (a creator is running) or a real value, through real values, to
 *    DELETED, and never leaves DELETED.  At most one entry per key is not
 *    DELETED at any time: inserting happens under the key's bucket lock
 *    after checking that none is.
 *  - The thread whose atomic operation turns a value word into DELETED (the
 *    killer) owns the old value: it records it in e->dead, so it is destroyed
 *    with the entry.  The thread that takes an entry out of a bucket chain
 *    (the killer unlinking it, or a migration or clear dropping it) retires
 *    it, exactly once, because both happen under that bucket's lock.
 *  - A bucket's tag word and slots change only under its head's lock; a slot
 *    is written before the tag that makes it visible (release/acquire).  A
 *    slot keeps its stale pointer after its tag is cleared; readers follow
 *    only tagged slots.  Entries never move between slots of a chain.
 *  - A head bucket marked MOVED is frozen and its table's `next` is set:
 *    every key it held, and every later write for those keys, is in `next`.
 *    Only one resize (or clear) per table; a new resize starts only once
 *    m->table is the fully migrated table.
 */
#include <xsync/map.h>
#include <xsync/time.h>

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>

#include "ebr.h"
#include "hash.h"
#include "internal.h"
#include "park.h"

#define SLOTS 6
#define TAG_BYTES UINT64_C(0x0000FFFFFFFFFFFF)
#define MOVED (UINT64_C(1) << 63)
#define LOW_BITS UINT64_C(0x0000010101010101)
#define HIGH_BITS UINT64_C(0x0000808080808080)
#define LOW7 UINT64_C(0x00007F7F7F7F7F7F)
#define MIN_BUCKETS 8
#define MAX_BUCKETS (SIZE_MAX / 4 / sizeof(bucket))
/* Grow when the average bucket holds more than this many keys. */
#define GROW_LOAD 3
/* Buckets a helper moves per write while a resize is in progress. */
#define MIGRATE_CHUNK 16
#define STRIPES 16

/* Markers in an entry's value word; their addresses are private. */
static const char pending_marker, deleted_marker, none_marker;
#define PENDING ((void *)&pending_marker)
#define DELETED ((void *)&deleted_marker)
#define NONE ((void *)&none_marker)

/*
 * An entry is one block: the fields only writers use, then what a lookup
 * reads (value, length, key) contiguous, so that a hit touches as few cache
 * lines as possible.  Entry pointers point at the second part.  The hash is
 * not kept (writers that need it recompute it): a short key's entry is one
 * 64-byte allocation.
 */
typedef struct entry_cold {
    void *dead;              /* the value the killer removed (NONE: none) */
    xs__ebr_node node;
} entry_cold;

typedef struct entry {
    _Atomic(void *) value;   /* PENDING, a user value, or DELETED */
    uint32_t len;
    _Atomic uint32_t sync;   /* while PENDING: 0, 1 (waiters parked), 2 resolved */
    char key[];              /* len bytes, then a NUL */
} entry;

#define COLD(e) ((entry_cold *)(void *)((char *)(e) - sizeof(entry_cold)))
#define ENTRY_OF_NODE(n) \
    ((entry *)(void *)((char *)XS_CONTAINER_OF(n, entry_cold, node) + sizeof(entry_cold)))
#define ENTRY_SIZE(len) (sizeof(entry_cold) + sizeof(entry) + (len) + 1)

typedef struct bucket {
    _Atomic uint64_t meta;            /* tag byte per slot (0: free); MOVED */
    _Atomic(entry *) slot[SLOTS];
    _Atomic(struct bucket *) overflow;
} bucket;

/* Read-mostly fields first; the migration counters, which movers write,
 * 64 bytes away so they never share a line with what lookups read.  (No
 * _Alignas: allocators only promise 16-byte alignment.) */
typedef struct table {
    size_t mask;                 /* buckets - 1 */
    bucket *b;                   /* 64-byte aligned inside the block */
    _Atomic(struct table *) next; /* resize or clear target, once started */
    _Atomic size_t prefix;       /* buckets [0, prefix) are all moved */
    xs__lock *locks;             /* one per bucket */
    bool clearing;               /* next is a clear's table: nothing to help */
    size_t size;                 /* bytes of the block */
    xs__ebr_node node;
    char pad_[64];
    _Atomic size_t claim;        /* next bucket index to migrate */
    _Atomic size_t done;         /* buckets migrated */
    _Atomic int retry;           /* a bucket could not move (no memory) */
} table;

/* A replaced value waiting for its destructor. */
typedef struct dead_value {
    xs__ebr_node node;
    void *value;
} dead_value;

struct xs_map {
    _Atomic(table *) table;
    xs__hash_key hkey;
    uint64_t seed;
    xs_map_hash_fn hash;
    void (*destroy)(void *value, void *arg);
    void *destroy_arg;
    const xs_allocator *alloc;
    size_t min_buckets;
    pthread_mutex_t resize_mu;   /* starting a resize (trylock) and clear */
    xs__ebr_list limbo;
    struct {
        _Atomic int64_t n;
        char pad_[56]; /* one stripe per 64 bytes: writers never share a line */
    } count[STRIPES];
};

/* ---- small helpers ---- */

static inline uint64_t hash_of(const xs_map *m, const void *key, size_t len)
{
    if (m->hash)
        return m->hash(key, len, m->seed);
    return xs__hash(&m->hkey, key, len);
}

static inline uint64_t tag_of(uint64_t h)
{
    uint64_t t = h >> 56;
    return t ? t : 1;
}

/* Bit 7 of each slot byte that equals `tag` (never 0), exactly: a free
 * slot keeps a stale pointer that may be freed, so it must never match. */
static inline uint64_t match_tag(uint64_t meta, uint64_t tag)
{
    uint64_t x = (meta & TAG_BYTES) ^ (tag * LOW_BITS);
    /* per byte: bit 7 of (low 7 bits + 0x7f) is set iff those bits are not
     * all zero; or-ing x's own bit 7 in, a byte ends with bit 7 clear iff
     * it was zero; no carry crosses bytes */
    uint64_t y = ((x & LOW7) + LOW7) | x;
    return ~y & HIGH_BITS;
}

static inline uint64_t slot_tag(uint64_t meta, int i)
{
    return (meta >> (8 * i)) & 0xff;
}

static inline bool valid_key(const void *key, size_t len)
{
    return (key || len == 0) && len <= XS_MAP_KEY_MAX;
}

/* Key equality without a library call for the usual short keys: two
 * overlapping word loads cover 4 to 16 bytes, within both buffers. */
static inline bool key_eq(const char *a, const char *b, size_t len)
{
    if (len >= 8 && len <= 16)
        return xs__hash_r64((const unsigned char *)a) == xs__hash_r64((const unsigned char *)b) &&
               xs__hash_r64((const unsigned char *)a + len - 8) ==
                   xs__hash_r64((const unsigned char *)b + len - 8);
    if (len >= 4 && len < 8)
        return xs__hash_r32((const unsigned char *)a) == xs__hash_r32((const unsigned char *)b) &&
               xs__hash_r32((const unsigned char *)a + len - 4) ==
                   xs__hash_r32((const unsigned char *)b + len - 4);
    return len == 0 || memcmp(a, b, len) == 0;
}

static inline bool same_key(const entry *e, const void *key, size_t len)
{
    return e->len == len && key_eq(e->key, key, len);
}

static inline uint64_t entry_hash(const xs_map *m, const entry *e)
{
    return hash_of(m, e->key, e->len);
}

/* The calling thread's stripe (it is inside a guard, so it has a record). */
static void count_add(xs_map *m, int64_t d)
{
    size_t stripe = ((uintptr_t)xs__ebr_self >> 6) % STRIPES;
    /* Relaxed: a statistic; len() documents that it is a snapshot. */
    atomic_fetch_add_explicit(&m->count[stripe].n, d, memory_order_relaxed);
}

static int64_t count_total(const xs_map *m)
{
    int64_t n = 0;
    for (int i = 0; i < STRIPES; i++)
        n += atomic_load_explicit(&m->count[i].n, memory_order_relaxed);
    return n < 0 ? 0 : n;
}

/* The pending entries whose creators run in this thread (innermost
 * first): a creator that calls back for its own key must not wait for
 * itself.  Nodes live in run_creator's frames. */
typedef struct creating {
    const struct entry *e;
    struct creating *prev;
} creating;

static _Thread_local creating *creating_top;

/* ---- reclamation callbacks ---- */

static void free_entry_now(xs_map *m, entry *e)
{
    xs__free(m->alloc, COLD(e), ENTRY_SIZE(e->len));
}

static void reclaim_entry(xs__ebr_node *n, void *ctx)
{
    xs_map *m = ctx;
    entry *e = ENTRY_OF_NODE(n);
    void *dead = COLD(e)->dead;
    if (dead != NONE && m->destroy)
        m->destroy(dead, m->destroy_arg);
    free_entry_now(m, e);
}

static void reclaim_value(xs__ebr_node *n, void *ctx)
{
    xs_map *m = ctx;
    dead_value *d = XS_CONTAINER_OF(n, dead_value, node);
    m->destroy(d->value, m->destroy_arg);
    xs__free(m->alloc, d, sizeof *d);
}

static void table_free(xs_map *m, table *t)
{
    for (size_t i = 0; i <= t->mask; i++) {
        bucket *o = atomic_load_explicit(&t->b[i].overflow, memory_order_relaxed);
        while (o) {
            bucket *next = atomic_load_explicit(&o->overflow, memory_order_relaxed);
            xs__free(m->alloc, o, sizeof *o);
            o = next;
        }
    }
    xs__free(m->alloc, t, t->size);
}

static void reclaim_table(xs__ebr_node *n, void *ctx)
{
    table_free(ctx, XS_CONTAINER_OF(n, table, node));
}

/* Retiring never frees anything by itself (so it is safe under locks);
 * writers reclaim at the end of their operation, in after_write. */
static void retire_entry(xs_map *m, entry *e)
{
    (void)xs__ebr_retire(&m->limbo, &COLD(e)->node, reclaim_entry);
}

/* Entries unlinked under a lock wait on this list (through their
 * still-unused node link) until the lock is released. */
static void retire_later(entry **list, entry *e)
{
    COLD(e)->node.next = (xs__ebr_node *)(void *)*list;
    *list = e;
}

static void retire_all(xs_map *m, entry *list)
{
    while (list) {
        entry *next = (entry *)(void *)COLD(list)->node.next;
        retire_entry(m, list);
        list = next;
    }
}

/* ---- tables ---- */

static table *table_new(xs_map *m, size_t nbuckets)
{
    size_t head = (sizeof(table) + 63) & ~(size_t)63;
    size_t size = head + 64 + nbuckets * sizeof(bucket) + nbuckets * sizeof(xs__lock);
    char *block = xs__calloc(m->alloc, size);
    if (!block)
        return NULL;
    table *t = (table *)(void *)block;
    uintptr_t at = ((uintptr_t)block + head + 63) & ~(uintptr_t)63;
    t->b = (bucket *)at;
    t->locks = (xs__lock *)(void *)(t->b + nbuckets);
    t->mask = nbuckets - 1;
    t->size = size;
    return t;
}

static entry *entry_new(xs_map *m, const void *key, size_t len)
{
    char *block = xs__alloc(m->alloc, ENTRY_SIZE(len));
    if (!block)
        return NULL;
    entry *e = (entry *)(void *)(block + sizeof(entry_cold));
    e->len = (uint32_t)len;
    atomic_init(&e->value, NULL);
    atomic_init(&e->sync, 0);
    COLD(e)->dead = NONE;
    if (len)
        memcpy(e->key, key, len);
    e->key[len] = '\0';
    return e;
}

/* ---- lookups ---- */

/*
 * The entry for the key in the chain starting at b (a live or PENDING one;
 * DELETED ones are skipped, a live twin may follow), with the value read in
 * *vout.  Lock-free; the caller holds a guard.  With `follow`, a moved head
 * bucket redirects to the next table (readers); without, the caller holds
 * the head's lock and it is not moved.
 */
static inline __attribute__((always_inline)) entry *
chain_find(table *t, uint64_t h, const void *key, size_t len, void **vout, bool follow)
{
    uint64_t tag = tag_of(h);
    for (;;) {
        size_t idx = h & t->mask;
        if (follow) {
            /* During a resize, skip buckets known moved without reading them:
             * a resize that writers stopped driving costs readers nothing.
             * Acquire (both): next is initialised, and the buckets below the
             * prefix are moved with their entries linked into next. */
            table *n = atomic_load_explicit(&t->next, memory_order_acquire);
            if (XS_UNLIKELY(n != NULL) &&
                idx < atomic_load_explicit(&t->prefix, memory_order_acquire)) {
                t = n;
                continue;
            }
        }
        bucket *b = &t->b[idx];
        /* Acquire: slots, entries and overflow buckets published before the
         * tag word are visible. */
        uint64_t meta = atomic_load_explicit(&b->meta, memory_order_acquire);
        if (follow && (meta & MOVED)) {
            /* Acquire: the next table is initialised (set before MOVED). */
            t = atomic_load_explicit(&t->next, memory_order_acquire);
            continue;
        }
        for (;;) {
            for (uint64_t bits = match_tag(meta, tag); bits; bits &= bits - 1) {
                int i = __builtin_ctzll(bits) >> 3;
                /* Acquire: a slot may be newer than the tag word we read
                 * (reused since); its entry must still be seen initialised. */
                entry *e = atomic_load_explicit(&b->slot[i], memory_order_acquire);
                if (e && same_key(e, key, len)) {
                    /* Acquire: pairs with the release that stored the value. */
                    void *v = atomic_load_explicit(&e->value, memory_order_acquire);
                    if (v != DELETED) {
                        *vout = v;
                        return e;
                    }
                }
            }
            b = atomic_load_explicit(&b->overflow, memory_order_acquire);
            if (!b)
                return NULL;
            meta = atomic_load_explicit(&b->meta, memory_order_acquire);
        }
    }
}

/*
 * The common case (no resize in progress, the key in its head bucket under
 * its tag), without calls; NULL means "not found here", not "absent".  Slots
 * of a moved bucket must never be read (an entry unlinked from the next
 * table may be freed while the moved bucket still points at it), hence the
 * MOVED test even when no resize was seen an instant before.
 */
static inline entry *find_fast(xs_map *m, uint64_t h, const void *key, size_t len, void **vout)
{
    /* Acquire: the table's buckets are initialised. */
    table *t = atomic_load_explicit(&m->table, memory_order_acquire);
    /* Acquire: as in chain_find (a resize in progress takes the slow path,
     * which can skip moved buckets without reading them). */
    if (XS_LIKELY(atomic_load_explicit(&t->next, memory_order_acquire) == NULL)) {
        bucket *b = &t->b[h & t->mask];
        /* Acquire: as in chain_find. */
        uint64_t meta = atomic_load_explicit(&b->meta, memory_order_acquire);
        uint64_t bits = (meta & MOVED) ? 0 : match_tag(meta, tag_of(h));
        if (XS_LIKELY(bits != 0)) {
            int i = __builtin_ctzll(bits) >> 3;
            entry *e = atomic_load_explicit(&b->slot[i], memory_order_acquire);
            if (XS_LIKELY(e && same_key(e, key, len))) {
                void *v = atomic_load_explicit(&e->value, memory_order_acquire);
                if (XS_LIKELY(v != DELETED)) {
                    *vout = v;
                    return e;
                }
            }
        }
    }
    return NULL;
}

static __attribute__((noinline)) entry *find_slow(table *t, uint64_t h, const void *key,
                                                  size_t len, void **vout)
{
    return chain_find(t, h, key, len, vout, true);
}

/* The entry for the key (live or PENDING) or NULL.  The caller holds a guard. */
static inline entry *find(xs_map *m, uint64_t h, const void *key, size_t len, void **vout)
{
    entry *e = find_fast(m, h, key, len, vout);
    if (XS_LIKELY(e != NULL))
        return e;
    return find_slow(atomic_load_explicit(&m->table, memory_order_acquire), h, key, len, vout);
}

/* ---- locked chain edits ---- */

/* Locks the head bucket that owns hash h now; returns it with its table. */
static bucket *lock_home(xs_map *m, uint64_t h, table **tout)
{
    table *t = atomic_load_explicit(&m->table, memory_order_acquire);
    for (;;) {
        size_t i = h & t->mask;
        xs__lock_acquire(&t->locks[i]);
        /* Relaxed: MOVED is set under this lock, which we now hold. */
        if (!(atomic_load_explicit(&t->b[i].meta, memory_order_relaxed) & MOVED)) {
            *tout = t;
            return &t->b[i];
        }
        xs__lock_release(&t->locks[i]);
        t = atomic_load_explicit(&t->next, memory_order_acquire);
    }
}

static inline void unlock_home(table *t, bucket *b)
{
    xs__lock_release(&t->locks[b - t->b]);
}

/*
 * Under the head's lock: links e into a free slot of the chain, adding an
 * overflow bucket if all are taken.  Returns 0, or XS_ENOMEM with nothing
 * changed.  *deep is set when the chain is getting full (a resize hint).
 */
static int chain_put(xs_map *m, bucket *b, entry *e, uint64_t tag, bool *deep)
{
    int depth = 0;
    for (;;) {
        uint64_t meta = atomic_load_explicit(&b->meta, memory_order_relaxed);
        for (int i = 0; i < SLOTS; i++) {
            if (slot_tag(meta, i) == 0) {
                /* Release (twice): a reader that sees the tag sees the slot,
                 * and one that sees the slot sees the entry's contents. */
                atomic_store_explicit(&b->slot[i], e, memory_order_release);
                atomic_store_explicit(&b->meta, meta | (tag << (8 * i)), memory_order_release);
                if (deep)
                    *deep = depth > 0 || i == SLOTS - 1;
                return 0;
            }
        }
        bucket *next = atomic_load_explicit(&b->overflow, memory_order_relaxed);
        if (!next) {
            next = xs__calloc(m->alloc, sizeof *next);
            if (!next)
                return XS_ENOMEM;
            /* Release: readers that load the link see a zeroed bucket. */
            atomic_store_explicit(&b->overflow, next, memory_order_release);
        }
        b = next;
        depth++;
    }
}

/* Under the head's lock: clears e's tag.  False if e is not in the chain. */
static bool chain_remove(bucket *b, const entry *e)
{
    for (; b; b = atomic_load_explicit(&b->overflow, memory_order_relaxed)) {
        uint64_t meta = atomic_load_explicit(&b->meta, memory_order_relaxed);
        for (int i = 0; i < SLOTS; i++) {
            if (slot_tag(meta, i) && atomic_load_explicit(&b->slot[i], memory_order_relaxed) == e) {
                /* Release: keeps the tag word a release sequence for readers. */
                atomic_store_explicit(&b->meta, meta & ~(UINT64_C(0xff) << (8 * i)),
                                      memory_order_release);
                return true;
            }
        }
    }
    return false;
}

/*
 * e's value word was turned into DELETED by this thread, which removed `v`
 * (NONE for a failed creation): unlink e and retire it with v.  If a
 * migration or clear dropped e first, that thread retired it; v still rides
 * along because we are inside a guard and the entry cannot be freed before
 * the guard ends.
 */
static void unlink_dead(xs_map *m, entry *e, void *v)
{
    COLD(e)->dead = v;
    table *t;
    bucket *b = lock_home(m, entry_hash(m, e), &t);
    bool found = chain_remove(b, e);
    unlock_home(t, b);
    if (found)
        retire_entry(m, e);
}

/* ---- pending entries ---- */

static void resolve(entry *e)
{
    /* Release: a waiter that sees 2 sees the final value word. */
    if (atomic_exchange_explicit(&e->sync, 2, memory_order_acq_rel) == 1)
        xs__park_wake(&e->sync, INT32_MAX);
}

/* Waits until e's creator finishes.  XS_EBUSY if we are that creator. */
static int wait_pending(entry *e)
{
    for (const creating *c = creating_top; c; c = c->prev)
        if (c->e == e)
            return XS_EBUSY;
    uint32_t s = atomic_load_explicit(&e->sync, memory_order_acquire);
    while (s != 2) {
        if (s == 0 &&
            !atomic_compare_exchange_weak_explicit(&e->sync, &s, 1, memory_order_acquire,
                                                   memory_order_acquire))
            continue;
        xs__park_wait(&e->sync, 1, XS_FOREVER);
        s = atomic_load_explicit(&e->sync, memory_order_acquire);
    }
    return 0;
}

/* ---- resizing ---- */

static void help_resize(xs_map *m, table *t);

/* Allocations that fail only postpone a resize: nothing else changes. */
static void start_resize(xs_map *m, table *t, size_t nbuckets)
{
    if (pthread_mutex_trylock(&m->resize_mu) != 0)
        return;
    if (atomic_load_explicit(&m->table, memory_order_acquire) == t &&
        !atomic_load_explicit(&t->next, memory_order_acquire)) {
        table *n = table_new(m, nbuckets);
        if (n)
            /* Release: helpers and readers that load next see it zeroed. */
            atomic_store_explicit(&t->next, n, memory_order_release);
    }
    pthread_mutex_unlock(&m->resize_mu);
    help_resize(m, t);
}

static size_t pow2_at_least(size_t n)
{
    size_t p = MIN_BUCKETS;
    while (p < n && p < MAX_BUCKETS)
        p <<= 1;
    return p;
}

/* After an insert into a chain that is getting deep (now and then: summing
 * the stripes reads lines other threads write). */
static void maybe_grow(xs_map *m)
{
    static _Thread_local unsigned calls;
    if ((++calls & 3) != 0)
        return;
    table *t = atomic_load_explicit(&m->table, memory_order_acquire);
    size_t nb = t->mask + 1;
    if (atomic_load_explicit(&t->next, memory_order_acquire) || nb >= MAX_BUCKETS)
        return;
    if (count_total(m) > (int64_t)(GROW_LOAD * nb))
        start_resize(m, t, nb * 2);
}

/* After a removal, now and then: halve while the map is mostly empty. */
static void maybe_shrink(xs_map *m)
{
    static _Thread_local unsigned calls;
    if ((++calls & 63) != 0)
        return;
    table *t = atomic_load_explicit(&m->table, memory_order_acquire);
    size_t nb = t->mask + 1;
    if (nb <= m->min_buckets || atomic_load_explicit(&t->next, memory_order_acquire))
        return;
    int64_t n = count_total(m);
    if ((size_t)n * 2 < nb) {
        size_t target = pow2_at_least((size_t)n);
        if (target < m->min_buckets)
            target = m->min_buckets;
        if (target < nb)
            start_resize(m, t, target);
    }
}

/*
 * Moves old bucket i of t into n.  Returns 1 if this call moved it, 0 if it
 * had moved already, XS_ENOMEM if an overflow bucket of n could not be
 * allocated (then n holds nothing of bucket i and i is not moved).
 */
static int migrate_bucket(xs_map *m, table *t, table *n, size_t i)
{
    bucket *head = &t->b[i];
    entry *dropped = NULL;
    xs__lock_acquire(&t->locks[i]);
    if (atomic_load_explicit(&head->meta, memory_order_relaxed) & MOVED) {
        xs__lock_release(&t->locks[i]);
        return 0;
    }
    int rc = 0;
    for (bucket *b = head; b && rc == 0;
         b = atomic_load_explicit(&b->overflow, memory_order_relaxed)) {
        for (int s = 0; s < SLOTS && rc == 0; s++) {
            uint64_t meta = atomic_load_explicit(&b->meta, memory_order_relaxed);
            if (!slot_tag(meta, s))
                continue;
            entry *e = atomic_load_explicit(&b->slot[s], memory_order_relaxed);
            if (atomic_load_explicit(&e->value, memory_order_acquire) == DELETED) {
                /* Killed but not yet unlinked: unlink it here, as its killer
                 * would (it will not find it any more), and retire it. */
                atomic_store_explicit(&b->meta, meta & ~(UINT64_C(0xff) << (8 * s)),
                                      memory_order_release);
                retire_later(&dropped, e);
                continue;
            }
            /* Entries killed from here on are unlinked by their killers,
             * from n once we are done (they wait for our lock). */
            uint64_t h = entry_hash(m, e);
            size_t j = h & n->mask;
            xs__lock_acquire(&n->locks[j]);
            rc = chain_put(m, &n->b[j], e, tag_of(h), NULL);
            xs__lock_release(&n->locks[j]);
        }
    }
    if (rc != 0) {
        /* Undo: take back every entry already linked into n. */
        for (bucket *b = head; b; b = atomic_load_explicit(&b->overflow, memory_order_relaxed)) {
            uint64_t meta = atomic_load_explicit(&b->meta, memory_order_relaxed);
            for (int s = 0; s < SLOTS; s++) {
                if (!slot_tag(meta, s))
                    continue;
                entry *e = atomic_load_explicit(&b->slot[s], memory_order_relaxed);
                size_t j = entry_hash(m, e) & n->mask;
                xs__lock_acquire(&n->locks[j]);
                chain_remove(&n->b[j], e);
                xs__lock_release(&n->locks[j]);
            }
        }
        xs__lock_release(&t->locks[i]);
        retire_all(m, dropped);
        return rc;
    }
    /* Release: whoever sees MOVED sees every entry linked into n above. */
    atomic_store_explicit(&head->meta,
                          atomic_load_explicit(&head->meta, memory_order_relaxed) | MOVED,
                          memory_order_release);
    xs__lock_release(&t->locks[i]);
    retire_all(m, dropped);
    return 1;
}

/* The last bucket moved: n becomes the map's table and t is retired. */
static void finish_resize(xs_map *m, table *t, table *n)
{
    table *expect = t;
    /* Release: new readers of m->table see n's contents. */
    atomic_compare_exchange_strong_explicit(&m->table, &expect, n, memory_order_acq_rel,
                                            memory_order_relaxed);
    (void)xs__ebr_retire(&m->limbo, &t->node, reclaim_table);
}

/* Raises t->prefix over the run of moved buckets that starts at it. */
static void advance_prefix(table *t)
{
    size_t nb = t->mask + 1;
    size_t p = atomic_load_explicit(&t->prefix, memory_order_relaxed);
    size_t q = p;
    /* Acquire: we publish these buckets' moves through the prefix. */
    while (q < nb && (atomic_load_explicit(&t->b[q].meta, memory_order_acquire) & MOVED))
        q++;
    /* Release: readers that see the prefix see the moves.  A racing mover
     * may have raised it further: keep the larger value. */
    while (q > p && !atomic_compare_exchange_weak_explicit(&t->prefix, &p, q,
                                                           memory_order_release,
                                                           memory_order_relaxed))
        ;
}

static void moved(xs_map *m, table *t, table *n, size_t k)
{
    size_t nb = t->mask + 1;
    if (k)
        advance_prefix(t);
    /* Acq_rel: the finisher sees every other mover's work. */
    if (k && atomic_fetch_add_explicit(&t->done, k, memory_order_acq_rel) + k == nb)
        finish_resize(m, t, n);
}

/*
 * A writer's share of a resize in progress on t: the next chunk of buckets,
 * or, once all are claimed, a sweep for buckets a helper could not move.
 * The caller holds a guard.
 */
static void help_resize(xs_map *m, table *t)
{
    table *n = atomic_load_explicit(&t->next, memory_order_acquire);
    if (!n || t->clearing)
        return;
    size_t nb = t->mask + 1;
    size_t k = 0;
    size_t i = atomic_load_explicit(&t->claim, memory_order_relaxed);
    if (i < nb)
        i = atomic_fetch_add_explicit(&t->claim, MIGRATE_CHUNK, memory_order_relaxed);
    if (i < nb) {
        size_t end = i + MIGRATE_CHUNK < nb ? i + MIGRATE_CHUNK : nb;
        /* Moving needs each entry's key (to rehash it): start all those
         * cache misses at once rather than one per entry. */
        for (size_t j = i; j < end; j++) {
            uint64_t meta = atomic_load_explicit(&t->b[j].meta, memory_order_acquire);
            for (int s = 0; s < SLOTS; s++)
                if (slot_tag(meta, s))
                    __builtin_prefetch(atomic_load_explicit(&t->b[j].slot[s],
                                                            memory_order_relaxed));
        }
        for (; i < end; i++) {
            int rc = migrate_bucket(m, t, n, i);
            if (rc < 0) {
                atomic_store_explicit(&t->retry, 1, memory_order_relaxed);
                continue;
            }
            k += (size_t)rc;
        }
        moved(m, t, n, k);
        return;
    }
    int expect = 1;
    if (atomic_compare_exchange_strong_explicit(&t->retry, &expect, 0, memory_order_relaxed,
                                                memory_order_relaxed)) {
        for (i = 0; i < nb; i++) {
            if (atomic_load_explicit(&t->b[i].meta, memory_order_acquire) & MOVED)
                continue;
            int rc = migrate_bucket(m, t, n, i);
            if (rc < 0) {
                atomic_store_explicit(&t->retry, 1, memory_order_relaxed);
                break;
            }
            k += (size_t)rc;
        }
        moved(m, t, n, k);
    }
}

/* After any write, holding a guard and no lock: help a resize in progress,
 * and free what is due (destructors may call back into the map). */
static inline void after_write(xs_map *m)
{
    table *t = atomic_load_explicit(&m->table, memory_order_acquire);
    if (XS_UNLIKELY(atomic_load_explicit(&t->next, memory_order_relaxed) != NULL))
        help_resize(m, t);
    if (XS_UNLIKELY(xs__ebr_due(&m->limbo)))
        (void)xs__ebr_reclaim(&m->limbo);
}

/* ---- the operations ---- */

int xs_map_new(const xs_map_options *opts, xs_map **out)
{
    static const xs_map_options defaults;
    if (!out)
        return XS_EINVAL;
    if (!opts)
        opts = &defaults;
    if (opts->capacity > ((size_t)1 << 40))
        return XS_EINVAL;
    const xs_allocator *a = xs__allocator_resolve(opts->allocator);
    xs_map *m = xs__alloc(a, sizeof *m);
    if (!m)
        return XS_ENOMEM;
    memset(m, 0, sizeof *m);
    m->alloc = a;
    m->seed = opts->seed ? opts->seed : xs__hash_random_seed();
    xs__hash_key_init(&m->hkey, m->seed);
    m->hash = opts->hash;
    m->destroy = opts->destroy;
    m->destroy_arg = opts->destroy_arg;
    m->min_buckets = pow2_at_least(opts->capacity / 2);
    m->limbo.ctx = m;
    for (int i = 0; i < STRIPES; i++)
        atomic_init(&m->count[i].n, 0);
    if (pthread_mutex_init(&m->resize_mu, NULL) != 0) {
        xs__free(a, m, sizeof *m);
        return XS_ENOMEM;
    }
    table *t = table_new(m, m->min_buckets);
    if (!t) {
        pthread_mutex_destroy(&m->resize_mu);
        xs__free(a, m, sizeof *m);
        return XS_ENOMEM;
    }
    atomic_init(&m->table, t);
    *out = m;
    return 0;
}

/* Frees the entries linked in t's buckets that are not moved (those live on
 * in the next table), destroying their values. */
static void free_linked(xs_map *m, table *t)
{
    for (size_t i = 0; i <= t->mask; i++) {
        bucket *b = &t->b[i];
        if (atomic_load_explicit(&b->meta, memory_order_relaxed) & MOVED)
            continue;
        for (; b; b = atomic_load_explicit(&b->overflow, memory_order_relaxed)) {
            uint64_t meta = atomic_load_explicit(&b->meta, memory_order_relaxed);
            for (int s = 0; s < SLOTS; s++) {
                if (!slot_tag(meta, s))
                    continue;
                entry *e = atomic_load_explicit(&b->slot[s], memory_order_relaxed);
                void *v = atomic_load_explicit(&e->value, memory_order_relaxed);
                if (v != DELETED && v != PENDING && m->destroy)
                    m->destroy(v, m->destroy_arg);
                free_entry_now(m, e);
            }
        }
    }
}

void xs_map_free(xs_map *m)
{
    if (!m)
        return;
    table *t = atomic_load_explicit(&m->table, memory_order_acquire);
    table *n = atomic_load_explicit(&t->next, memory_order_acquire);
    free_linked(m, t);
    if (n)
        free_linked(m, n);
    xs__ebr_drain(&m->limbo);
    table_free(m, t);
    if (n)
        table_free(m, n);
    pthread_mutex_destroy(&m->resize_mu);
    xs__free(m->alloc, m, sizeof *m);
}

int xs_map_load(xs_map *m, const void *key, size_t len, void **value)
{
    if (!m || !valid_key(key, len))
        return XS_EINVAL;
    uint64_t h = hash_of(m, key, len);
    int rc = xs__ebr_enter();
    if (rc)
        return rc;
    void *v;
    entry *e = find(m, h, key, len, &v);
    rc = XS_ENOENT;
    if (e && v != PENDING) {
        if (value)
            *value = v;
        rc = 0;
    }
    xs__ebr_leave();
    return rc;
}

/*
 * Inserts a new entry for an absent key with value word `v` (a value, or
 * PENDING).  Returns 0 with *out the entry linked, 1 if the key turned out
 * to be present (nothing done; look again), or XS_ENOMEM.  *fresh is an
 * entry allocated earlier (reused across retries) or NULL.
 */
static int insert_new(xs_map *m, uint64_t h, const void *key, size_t len, void *v,
                      entry **fresh, entry **out)
{
    if (!*fresh) {
        /* The lock's line is not one a lookup touched: fetch it while the
         * allocator runs. */
        table *t0 = atomic_load_explicit(&m->table, memory_order_acquire);
        __builtin_prefetch(&t0->locks[h & t0->mask], 1);
        *fresh = entry_new(m, key, len);
        if (!*fresh)
            return XS_ENOMEM;
    }
    entry *e = *fresh;
    /* Relaxed: published by chain_put's release. */
    atomic_store_explicit(&e->value, v, memory_order_relaxed);
    table *t;
    bucket *b = lock_home(m, h, &t);
    void *cur;
    if (chain_find(t, h, key, len, &cur, false)) {
        unlock_home(t, b);
        return 1;
    }
    bool deep = false;
    int rc = chain_put(m, b, e, tag_of(h), &deep);
    unlock_home(t, b);
    if (rc)
        return rc;
    *fresh = NULL;
    *out = e;
    if (v != PENDING)
        count_add(m, 1);
    if (deep)
        maybe_grow(m);
    return 0;
}

enum upsert_mode { UPSERT_STORE, UPSERT_LOAD_OR_STORE };

/* store, swap and load_or_store.  The caller holds a guard. */
static int upsert(xs_map *m, uint64_t h, const void *key, size_t len, void *value,
                  enum upsert_mode mode, void **prev, bool *loaded)
{
    entry *fresh = NULL;
    dead_value *dv = NULL;
    int rc;
    for (;;) {
        void *cur;
        entry *e = find(m, h, key, len, &cur);
        if (e && cur == PENDING) {
            rc = wait_pending(e);
            if (rc)
                break;
            continue;
        }
        if (e) {
            if (mode == UPSERT_LOAD_OR_STORE) {
                *prev = cur;
                *loaded = true;
                rc = 0;
                break;
            }
            rc = 0;
            while (cur != DELETED) {
                if (m->destroy && !dv && cur != value) {
                    dv = xs__alloc(m->alloc, sizeof *dv);
                    if (!dv) {
                        rc = XS_ENOMEM;
                        break;
                    }
                }
                /* Acq_rel: release publishes the new value; acquire hands us
                 * the old one with what its storer did. */
                if (atomic_compare_exchange_weak_explicit(&e->value, &cur, value,
                                                          memory_order_acq_rel,
                                                          memory_order_acquire))
                    break;
            }
            if (rc)
                break;
            if (cur == DELETED)
                continue; /* killed under us: the key is absent now */
            *prev = cur;
            *loaded = true;
            if (m->destroy && cur != value) {
                dv->value = cur;
                (void)xs__ebr_retire(&m->limbo, &dv->node, reclaim_value);
                dv = NULL;
            }
            rc = 0;
            break;
        }
        entry *linked;
        rc = insert_new(m, h, key, len, value, &fresh, &linked);
        if (rc == 1)
            continue;
        if (rc == 0) {
            *prev = value;
            *loaded = false;
        }
        break;
    }
    if (fresh)
        free_entry_now(m, fresh);
    if (dv)
        xs__free(m->alloc, dv, sizeof *dv);
    if (rc == 0)
        after_write(m);
    return rc;
}

/* Validates, hashes and runs upsert inside a guard: the common body of the
 * store, swap and load_or_store entry points. */
static int guarded_upsert(xs_map *m, const void *key, size_t len, void *value,
                          enum upsert_mode mode,
                          void **out, bool *loaded)
{
    if (!m || !valid_key(key, len))
        return XS_EINVAL;
    uint64_t h = hash_of(m, key, len);
    int rc = xs__ebr_enter();
    if (rc)
        return rc;
    rc = upsert(m, h, key, len, value, mode, out, loaded);
    xs__ebr_leave();
    return rc;
}

int xs_map_store(xs_map *m, const void *key, size_t len, void *value)
{
    void *prev;
    bool loaded;
    return guarded_upsert(m, key, len, value, UPSERT_STORE, &prev, &loaded);
}

int xs_map_swap(xs_map *m, const void *key, size_t len, void *value, void **previous,
                bool *loaded)
{
    void *prev;
    bool l;
    int rc = guarded_upsert(m, key, len, value, UPSERT_STORE, &prev, &l);
    if (rc == 0) {
        if (l && previous)
            *previous = prev;
        if (loaded)
            *loaded = l;
    }
    return rc;
}

int xs_map_load_or_store(xs_map *m, const void *key, size_t len, void *value, void **actual,
                         bool *loaded)
{
    void *a;
    bool l;
    int rc = guarded_upsert(m, key, len, value, UPSERT_LOAD_OR_STORE, &a, &l);
    if (rc == 0) {
        if (actual)
            *actual = a;
        if (loaded)
            *loaded = l;
    }
    return rc;
}

/*
 * Runs the creator for the PENDING entry e this thread linked, then
 * publishes its value (or removes e).  The caller holds a guard, which keeps
 * e alive whatever clear does meanwhile.
 */
static int run_creator(xs_map *m, entry *e, const void *key, size_t len,
                       xs_map_create_fn create, void *arg, void **actual)
{
    void *v = NULL;
    creating me = {e, creating_top};
    creating_top = &me;
    int rc = create(key, len, arg, &v);
    creating_top = me.prev;
    void *expect = PENDING;
    if (rc != 0) {
        /* Nothing stored.  If clear killed e meanwhile it also retired it. */
        if (atomic_compare_exchange_strong_explicit(&e->value, &expect, DELETED,
                                                    memory_order_acq_rel, memory_order_acquire)) {
            resolve(e);
            unlink_dead(m, e, NONE);
        } else {
            resolve(e);
        }
        return rc;
    }
    /* Release: whoever loads v sees what the creator did. */
    if (atomic_compare_exchange_strong_explicit(&e->value, &expect, v, memory_order_acq_rel,
                                                memory_order_acquire)) {
        count_add(m, 1);
    } else {
        /* clear killed e while we created: v was stored, then cleared.  It
         * is destroyed with e, which clear retired (our guard keeps e). */
        COLD(e)->dead = v;
    }
    resolve(e);
    *actual = v;
    return 0;
}

/* The miss path of load_or_create, out of line so that the hit path stays a
 * small leaf.  Called inside the caller's guard, which it closes. */
static __attribute__((noinline)) int create_slow(xs_map *m, uint64_t h, const void *key,
                                                 size_t len, xs_map_create_fn create,
                                                 void *arg, void **actual, bool *loaded,
                                                 entry *e, void *v)
{
    entry *fresh = NULL;
    int rc;
    for (;;) {
        if (e && v == PENDING) {
            rc = wait_pending(e);
            if (rc)
                break;
        } else if (e) {
            if (actual)
                *actual = v;
            if (loaded)
                *loaded = true;
            rc = 0;
            break;
        } else {
            entry *linked;
            rc = insert_new(m, h, key, len, PENDING, &fresh, &linked);
            if (rc == 0) {
                void *a;
                rc = run_creator(m, linked, key, len, create, arg, &a);
                if (rc == 0) {
                    if (actual)
                        *actual = a;
                    if (loaded)
                        *loaded = false;
                    after_write(m);
                }
                break;
            }
            if (rc < 0)
                break;
        }
        e = find(m, h, key, len, &v);
    }
    if (fresh)
        free_entry_now(m, fresh);
    xs__ebr_leave();
    return rc;
}

/* load_or_create from the start: any hash, any state of the map. */
static __attribute__((noinline)) int load_or_create_full(xs_map *m, const void *key, size_t len,
                                                         xs_map_create_fn create, void *arg,
                                                         void **actual, bool *loaded)
{
    uint64_t h = hash_of(m, key, len);
    int rc = xs__ebr_enter();
    if (rc)
        return rc;
    void *v = NULL;
    entry *e = find(m, h, key, len, &v);
    if (!e || v == PENDING)
        return create_slow(m, h, key, len, create, arg, actual, loaded, e, v);
    xs__ebr_leave();
    if (actual)
        *actual = v;
    if (loaded)
        *loaded = true;
    return 0;
}

/*
 * The hit, as a leaf: the built-in hash, the guard and a head-bucket probe,
 * all inline, with no call that would make the compiler save registers.
 * Anything else starts over out of line.
 */
int xs_map_load_or_create(xs_map *m, const void *key, size_t len, xs_map_create_fn create,
                          void *arg, void **actual, bool *loaded)
{
    if (!m || !valid_key(key, len) || !create)
        return XS_EINVAL;
    xs__ebr_rec *r = xs__ebr_self;
    if (XS_UNLIKELY(m->hash != NULL || r == NULL))
        return load_or_create_full(m, key, len, create, arg, actual, loaded);
    uint64_t h = xs__hash(&m->hkey, key, len);
    if (r->nest++ == 0)
        xs__ebr_publish(r);
    void *v;
    entry *e = find_fast(m, h, key, len, &v);
    xs__ebr_leave();
    if (XS_UNLIKELY(e == NULL || v == PENDING))
        return load_or_create_full(m, key, len, create, arg, actual, loaded);
    if (actual)
        *actual = v;
    if (loaded)
        *loaded = true;
    return 0;
}

/* Turns the key's value word into DELETED if `match` accepts it. */
static int remove_key(xs_map *m, const void *key, size_t len, bool match, void *old,
                      void **value)
{
    if (!m || !valid_key(key, len))
        return XS_EINVAL;
    uint64_t h = hash_of(m, key, len);
    int rc = xs__ebr_enter();
    if (rc)
        return rc;
    void *cur;
    entry *e = find(m, h, key, len, &cur);
    rc = XS_ENOENT;
    if (e && cur != PENDING) {
        for (;;) {
            if (cur == DELETED || (match && cur != old))
                break;
            /* Acq_rel: we take the old value (acquire) and our removal is
             * ordered before later stores of the key (release). */
            if (atomic_compare_exchange_weak_explicit(&e->value, &cur, DELETED,
                                                      memory_order_acq_rel,
                                                      memory_order_acquire)) {
                rc = 0;
                break;
            }
        }
    }
    if (rc == 0) {
        count_add(m, -1);
        unlink_dead(m, e, cur);
        if (value)
            *value = cur;
        after_write(m);
        maybe_shrink(m);
    }
    xs__ebr_leave();
    return rc;
}

int xs_map_load_and_delete(xs_map *m, const void *key, size_t len, void **value)
{
    return remove_key(m, key, len, false, NULL, value);
}

int xs_map_delete(xs_map *m, const void *key, size_t len)
{
    return remove_key(m, key, len, false, NULL, NULL);
}

int xs_map_compare_and_delete(xs_map *m, const void *key, size_t len, void *old)
{
    return remove_key(m, key, len, true, old, NULL);
}

int xs_map_compare_and_swap(xs_map *m, const void *key, size_t len, void *old, void *new_value)
{
    if (!m || !valid_key(key, len))
        return XS_EINVAL;
    uint64_t h = hash_of(m, key, len);
    int rc = xs__ebr_enter();
    if (rc)
        return rc;
    void *cur;
    entry *e = find(m, h, key, len, &cur);
    dead_value *dv = NULL;
    rc = XS_ENOENT;
    if (e && cur == old && cur != PENDING) {
        if (old == new_value) {
            rc = 0;
        } else if (m->destroy && !(dv = xs__alloc(m->alloc, sizeof *dv))) {
            rc = XS_ENOMEM;
        } else {
            /* Acq_rel as for store; a strong CAS: failure means another value. */
            if (atomic_compare_exchange_strong_explicit(&e->value, &cur, new_value,
                                                        memory_order_acq_rel,
                                                        memory_order_acquire)) {
                rc = 0;
                if (dv) {
                    dv->value = old;
                    (void)xs__ebr_retire(&m->limbo, &dv->node, reclaim_value);
                    dv = NULL;
                }
            }
        }
    }
    if (dv)
        xs__free(m->alloc, dv, sizeof *dv);
    if (rc == 0)
        after_write(m);
    xs__ebr_leave();
    return rc;
}

/* ---- range ---- */

typedef struct snap {
    entry *e;
    void *v;
} snap;

typedef struct snapbuf {
    snap *s;
    size_t n, cap;
    snap *stack;
    const xs_allocator *alloc;
} snapbuf;

static int snap_push(snapbuf *sb, entry *e, void *v)
{
    if (sb->n == sb->cap) {
        size_t cap = sb->cap * 2;
        snap *s = xs__alloc(sb->alloc, cap * sizeof *s);
        if (!s)
            return XS_ENOMEM;
        memcpy(s, sb->s, sb->n * sizeof *s);
        if (sb->s != sb->stack)
            xs__free(sb->alloc, sb->s, sb->cap * sizeof *s);
        sb->s = s;
        sb->cap = cap;
    }
    sb->s[sb->n++] = (snap){e, v};
    return 0;
}

/*
 * Snapshots the live keys of class `cls` (hashes with h & cmask == cls) as
 * found from table u on: the buckets of u that can hold them, and for moved
 * ones, the next table's, recursively.
 */
static int collect(const xs_map *m, table *u, size_t cls, size_t cmask, snapbuf *sb)
{
    size_t first, step, count;
    /* In a finer (or equal) table a bucket holds only keys of its class; a
     * coarser one mixes classes and its keys must be sorted out by hash. */
    bool filter = u->mask < cmask;
    if (u->mask >= cmask) { /* u is finer: the buckets cls + k * (cmask + 1) */
        first = cls;
        step = cmask + 1;
        count = (u->mask + 1) / step;
    } else { /* u is coarser: one bucket holds cls among others */
        first = cls & u->mask;
        step = 1;
        count = 1;
    }
    for (size_t k = 0; k < count; k++) {
        size_t j = first + k * step;
        bucket *b = &u->b[j];
        uint64_t meta = atomic_load_explicit(&b->meta, memory_order_acquire);
        if (meta & MOVED) {
            table *n = atomic_load_explicit(&u->next, memory_order_acquire);
            /* the narrower of the two classes, so nothing is seen twice */
            int rc = u->mask >= cmask ? collect(m, n, j, u->mask, sb)
                                      : collect(m, n, cls, cmask, sb);
            if (rc)
                return rc;
            continue;
        }
        for (; b; b = atomic_load_explicit(&b->overflow, memory_order_acquire)) {
            meta = atomic_load_explicit(&b->meta, memory_order_acquire);
            for (int s = 0; s < SLOTS; s++) {
                if (!slot_tag(meta, s))
                    continue;
                entry *e = atomic_load_explicit(&b->slot[s], memory_order_acquire);
                if (!e || (filter && (entry_hash(m, e) & cmask) != cls))
                    continue;
                void *v = atomic_load_explicit(&e->value, memory_order_acquire);
                if (v == DELETED || v == PENDING)
                    continue;
                int rc = snap_push(sb, e, v);
                if (rc)
                    return rc;
            }
        }
    }
    return 0;
}

static int snap_cmp(const void *pa, const void *pb)
{
    const entry *a = ((const snap *)pa)->e, *b = ((const snap *)pb)->e;
    if (a->len != b->len)
        return a->len < b->len ? -1 : 1;
    return memcmp(a->key, b->key, a->len);
}

int xs_map_range(xs_map *m, xs_map_range_fn fn, void *arg)
{
    if (!m || !fn)
        return XS_EINVAL;
    int rc = xs__ebr_enter();
    if (rc)
        return rc;
    snap stack[32];
    snapbuf sb = {stack, 0, 32, stack, m->alloc};
    table *t = atomic_load_explicit(&m->table, memory_order_acquire);
    for (size_t i = 0; i <= t->mask && rc == 0; i++) {
        sb.n = 0;
        rc = collect(m, t, i, t->mask, &sb);
        if (rc)
            break;
        /* A key deleted and stored again while we read its chain can show
         * up twice (two entries): keep one. */
        if (sb.n > 1)
            qsort(sb.s, sb.n, sizeof *sb.s, snap_cmp);
        for (size_t k = 0; k < sb.n && rc == 0; k++) {
            if (k > 0 && snap_cmp(&sb.s[k - 1], &sb.s[k]) == 0)
                continue;
            rc = fn(sb.s[k].e->key, sb.s[k].e->len, sb.s[k].v, arg);
        }
    }
    if (sb.s != stack)
        xs__free(m->alloc, sb.s, sb.cap * sizeof *sb.s);
    xs__ebr_leave();
    return rc;
}

/* ---- clear, len, and the rest ---- */

int xs_map_clear(xs_map *m)
{
    if (!m)
        return XS_EINVAL;
    int rc = xs__ebr_enter();
    if (rc)
        return rc;
    pthread_mutex_lock(&m->resize_mu);
    table *t;
    /* Finish a resize in progress: a clear needs the map in one table.  No
     * new one can start while we hold resize_mu. */
    for (;;) {
        t = atomic_load_explicit(&m->table, memory_order_acquire);
        table *n = atomic_load_explicit(&t->next, memory_order_acquire);
        if (!n)
            break;
        size_t k = 0;
        for (size_t i = 0; i <= t->mask; i++) {
            if (atomic_load_explicit(&t->b[i].meta, memory_order_acquire) & MOVED)
                continue;
            int r = migrate_bucket(m, t, n, i);
            if (r < 0) {
                moved(m, t, n, k);
                pthread_mutex_unlock(&m->resize_mu);
                xs__ebr_leave();
                return r;
            }
            k += (size_t)r;
        }
        moved(m, t, n, k);
        /* Every bucket is moved; other movers are about to count theirs. */
        while (atomic_load_explicit(&m->table, memory_order_acquire) == t)
            sched_yield();
    }
    table *fresh = table_new(m, m->min_buckets);
    if (!fresh) {
        pthread_mutex_unlock(&m->resize_mu);
        xs__ebr_leave();
        return XS_ENOMEM;
    }
    t->clearing = true;
    /* Release (both): writers that meet a moved bucket, and new readers,
     * find the fresh table initialised.  From the second store on, no new
     * operation sees an old key: that is the clear's instant. */
    atomic_store_explicit(&t->next, fresh, memory_order_release);
    atomic_store_explicit(&m->table, fresh, memory_order_release);
    /* Drain: writes that still land in t (they locked a bucket before we got
     * to it) are removed with the rest; then the bucket forwards. */
    entry *unlinked = NULL;
    for (size_t i = 0; i <= t->mask; i++) {
        xs__lock_acquire(&t->locks[i]);
        for (bucket *b = &t->b[i]; b;
             b = atomic_load_explicit(&b->overflow, memory_order_relaxed)) {
            uint64_t meta = atomic_load_explicit(&b->meta, memory_order_relaxed);
            for (int s = 0; s < SLOTS; s++) {
                if (!slot_tag(meta, s))
                    continue;
                entry *e = atomic_load_explicit(&b->slot[s], memory_order_relaxed);
                /* Acq_rel: as any removal. */
                void *v = atomic_exchange_explicit(&e->value, DELETED, memory_order_acq_rel);
                if (v != DELETED && v != PENDING) {
                    COLD(e)->dead = v;
                    count_add(m, -1);
                }
                /* DELETED: its killer will not find it linked any more.
                 * PENDING: its creator finds DELETED and leaves its value in
                 * e->dead.  Either way, we unlink it, so we retire it. */
                retire_later(&unlinked, e);
            }
        }
        /* Release: a writer that sees MOVED goes to the fresh table. */
        atomic_store_explicit(&t->b[i].meta,
                              atomic_load_explicit(&t->b[i].meta, memory_order_relaxed) | MOVED,
                              memory_order_release);
        xs__lock_release(&t->locks[i]);
    }
    pthread_mutex_unlock(&m->resize_mu);
    retire_all(m, unlinked);
    (void)xs__ebr_retire(&m->limbo, &t->node, reclaim_table);
    (void)xs__ebr_reclaim(&m->limbo);
    xs__ebr_leave();
    return 0;
}

size_t xs_map_len(const xs_map *m)
{
    return m ? (size_t)count_total(m) : 0;
}

uint64_t xs_map_seed(const xs_map *m)
{
    return m ? m->seed : 0;
}

void xs_map_reclaim(xs_map *m)
{
    if (m)
        (void)xs__ebr_reclaim(&m->limbo);
}

/* The caller's own guards, apart from those the library opens around
 * callbacks, which a caller's leave must not close. */
static _Thread_local uint32_t user_guards;

int xs_map_guard_enter(void)
{
    int r = xs__ebr_enter();
    if (r == 0)
        user_guards++;
    return r;
}

int xs_map_guard_leave(void)
{
    if (user_guards == 0)
        return XS_EINVAL;
    user_guards--;
    xs__ebr_leave();
    return 0;
}
