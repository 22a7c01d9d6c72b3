/*
 * xsync/map.h — a concurrent map from byte-string keys to pointers (Go's
 * sync.Map), with an atomic create-if-absent and typed wrappers.
 *
 * Keys are byte strings of 0 to XS_MAP_KEY_MAX bytes, copied into the map:
 * the caller's buffer may be reused as soon as a call returns.  Values are
 * `void *` (NULL is a value like any other) and compare by identity.
 *
 * Design.  A hash table of 64-byte buckets (six slots, a word of one-byte hash
 * tags, an overflow link) holding pointers to entries (an immutable key
 * and one atomic value word).  Why a table and not a hash trie like Go 1.24's
 * HashTrieMap: a lookup costs one bucket line and one entry line at any size,
 * where a trie costs one line per level, which is what decides the seed's
 * table at a million keys and more.
 *   - Reads are lock-free and write no shared memory: a lookup reads the
 *     table pointer, the bucket's tag word, the matching slots and the entry.
 *     Memory safety comes from epoch-based reclamation whose read side is a
 *     store to the calling thread's own record.
 *   - Writers lock only the bucket they change (one lock per bucket), and only
 *     to link or unlink an entry: changing the value of an existing key
 *     (store, swap, compare-and-swap, delete) is a single atomic operation on
 *     the entry's value word.
 *   - Growth (and shrinking, when a map empties) is incremental: a new table
 *     is published beside the old one and writers move the old buckets over a
 *     few at a time, each under its own lock, marking them moved; readers and
 *     writers that meet a moved bucket continue in the new table.  There is no
 *     stop-the-world pause and no operation waits for the whole move.
 *   - Removed entries, replaced values and old tables are reclaimed after
 *     every reader that might hold them has finished (internal EBR).
 *   - Each map hashes with its own random seed (or the one given), so a set of
 *     keys prepared to collide under one seed does not collide under another.
 *
 * Values and their lifetime.  Without a destructor the map never frees or
 * touches a value: the caller owns them, as with sync.Map.  With a destructor
 * (xs_map_options.destroy) the map owns every value stored in it: each value
 * that leaves the map — by delete, load_and_delete, swap, store over it, a
 * successful compare_and_swap or compare_and_delete, clear, or xs_map_free —
 * is passed to the destructor exactly once, and only after no guarded reader
 * (xs_map_guard_enter) can still see it.  A pointer returned by any call
 * stays valid while the calling thread is inside a guard, even if another
 * thread removes it meanwhile; outside a guard it stays valid only until it
 * is removed.  With a destructor, never store a pointer the map already
 * owns (under any key, the same one included): a concurrent remover may
 * already have handed it to the destructor.
 *
 * Memory ordering (the contract Go documents for sync.Map).  Every operation
 * that stores a value (store, the storing half of load_or_store,
 * load_or_create, swap and compare_and_swap) is a release, and every
 * operation that returns a value is an acquire: a thread that obtains value v
 * from the map also sees everything the thread that stored v did before
 * storing it (for load_or_create, everything the creator did).  Operations on
 * one key are linearizable.  A concurrent reader sees a key either before or
 * after a concurrent write, never a torn state; a key being inserted is
 * either absent or present with its value; a key whose creator is still
 * running is absent to load and to the delete family, while store, swap,
 * load_or_store and load_or_create on that key wait for the creator (inside
 * a guard, so a slow creator also delays reclamation).
 *
 * Errors.  Bad input — a NULL map, a NULL key with a nonzero length, a key
 * longer than XS_MAP_KEY_MAX, a missing required argument — is XS_EINVAL and
 * changes nothing.  XS_ENOMEM leaves the map exactly as it was.  Every
 * function is thread-safe except xs_map_free.  Callbacks (create, range,
 * destroy) may call any function of any map, this one included (but see
 * xs_map_load_or_create for the creator's own key) — except that the
 * destructors xs_map_free runs must not touch the map being freed.
 */
#ifndef XSYNC_MAP_H
#define XSYNC_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <xsync/alloc.h>
#include <xsync/error.h>
#include <xsync/export.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The longest key, in bytes. */
#define XS_MAP_KEY_MAX 65536

typedef struct xs_map xs_map;

/* A hash function: any 64-bit value of the key and the map's seed.  Only for
 * tests (constant or truncated hashes, as Go's NewBadHashTrieMap): the map is
 * correct with any function, fast only with a good one. */
typedef uint64_t (*xs_map_hash_fn)(const void *key, size_t len, uint64_t seed);

/* A creator for xs_map_load_or_create: sets *value and returns 0, or returns
 * an error (any nonzero int; positive codes are yours) and stores nothing. */
typedef int (*xs_map_create_fn)(const void *key, size_t len, void *arg, void **value);

/* A range callback: return 0 to go on, anything else to stop the range,
 * which then returns that value.  `key` is NUL-terminated after `len` bytes. */
typedef int (*xs_map_range_fn)(const void *key, size_t len, void *value, void *arg);

typedef struct xs_map_options {
    uint64_t seed;                 /* hash seed; 0: a random seed for this map */
    void (*destroy)(void *value, void *arg); /* NULL: the map never frees values */
    void *destroy_arg;             /* passed to destroy */
    const xs_allocator *allocator; /* NULL: the process default, read once */
    xs_map_hash_fn hash;           /* NULL: the built-in keyed hash */
    size_t capacity;               /* keys to size the first table for; 0: small */
} xs_map_options;

/*
 * Creates an empty map.  opts may be NULL (all defaults).  Returns 0 and the
 * map in *out; XS_EINVAL (out NULL, capacity over 2^40); XS_ENOMEM.
 */
XS_API int xs_map_new(const xs_map_options *opts, xs_map **out);

/*
 * Frees the map, its entries and its tables, passing every value still
 * stored (and every removed value not yet destroyed) to the destructor.
 * Not thread-safe: no other thread may be using the map or holding, even in
 * a guard, a value obtained from it.  NULL is a no-op.
 */
XS_API void xs_map_free(xs_map *m);

/*
 * The value stored for the key.  Returns 0 and the value in *value (value
 * may be NULL: a presence test), or XS_ENOENT.  Lock-free; writes no shared
 * memory.  Acquire: see the file comment.
 */
XS_API int xs_map_load(xs_map *m, const void *key, size_t len, void **value);

/*
 * Sets the value for the key.  Returns 0; XS_ENOMEM when the key is new and
 * its entry cannot be allocated (or, with a destructor, when the replaced
 * value's reclamation record cannot be).  XS_EBUSY if called by the creator
 * of the same key.  Replacing an existing key's value is one atomic exchange;
 * a new key locks one bucket.  Release.
 */
XS_API int xs_map_store(xs_map *m, const void *key, size_t len, void *value);

/*
 * Go's LoadOrStore: if the key is present, returns its value in *actual and
 * sets *loaded; otherwise stores `value`, returns it in *actual and clears
 * *loaded.  actual and loaded may be NULL.  A value that was not stored stays
 * the caller's.  Returns 0, XS_ENOMEM or XS_EBUSY as xs_map_store.
 */
XS_API int xs_map_load_or_store(xs_map *m, const void *key, size_t len, void *value,
                                void **actual, bool *loaded);

/*
 * The atomic create-if-absent.  If the key is present, returns its value in
 * *actual with *loaded set and never calls `create`.  Otherwise calls
 * create(key, len, arg, &v) exactly once for this key, outside any lock:
 * concurrent callers for the same key wait for it (blocking) and then get
 * its value with *loaded set; loads of the key see it absent until it
 * finishes.  On success v is stored and returned with *loaded cleared.  If
 * the creator fails, nothing is stored, its error is returned unchanged, and
 * the waiters retry (one of them creating).  A creator that calls back into
 * the map for its own key gets XS_EBUSY there; one that cycles with another
 * creator's key deadlocks, as any lock cycle does.  The creator runs inside
 * the caller's reclamation guard: keep it short, a long creator delays memory
 * reclamation (never other operations).  If xs_map_clear runs while the
 * creator runs, v counts as stored and then cleared.  actual and loaded may
 * be NULL.  Errors: XS_EINVAL (create NULL), XS_ENOMEM, XS_EBUSY, or the
 * creator's.  A hit is lock-free and writes no shared memory, as a load.
 */
XS_API int xs_map_load_or_create(xs_map *m, const void *key, size_t len,
                                 xs_map_create_fn create, void *arg, void **actual,
                                 bool *loaded);

/*
 * Deletes the key, returning the value it had in *value (may be NULL).
 * Returns 0, or XS_ENOENT if the key was absent.  With a destructor the
 * returned value is destroyed after the caller's guard (if any) ends.
 * Acquire and release.
 */
XS_API int xs_map_load_and_delete(xs_map *m, const void *key, size_t len, void **value);

/* Deletes the key.  Returns 0, or XS_ENOENT if it was absent. */
XS_API int xs_map_delete(xs_map *m, const void *key, size_t len);

/*
 * Stores `value` and returns the previous value in *previous with *loaded
 * set, or, if the key was absent, stores it and clears *loaded (previous
 * untouched).  previous and loaded may be NULL.  Errors as xs_map_store.
 * Acquire and release.
 */
XS_API int xs_map_swap(xs_map *m, const void *key, size_t len, void *value, void **previous,
                       bool *loaded);

/*
 * Replaces the key's value with new_value if it is `old` (compared as
 * pointers).  Returns 0 if it did, XS_ENOENT if the key is absent or holds
 * another value (no such pair), XS_ENOMEM (destructor record).  Lock-free.
 * Acquire and release on success, acquire on failure.
 */
XS_API int xs_map_compare_and_swap(xs_map *m, const void *key, size_t len, void *old,
                                   void *new_value);

/*
 * Deletes the key if its value is `old`.  Returns 0 if it did, XS_ENOENT
 * otherwise.  Acquire and release on success.
 */
XS_API int xs_map_compare_and_delete(xs_map *m, const void *key, size_t len, void *old);

/*
 * Calls fn(key, len, value, arg) for the keys of the map, in no order, until
 * fn returns nonzero (which range then returns).  Go's guarantees: no key is
 * visited twice, even if it is deleted and stored again meanwhile; a key
 * present for the whole range is visited; one stored or deleted meanwhile may
 * or may not be; writers are never blocked by a range; fn may call any
 * function of this map, range included.  The value passed to fn was the
 * key's value at some moment during the range.  The whole range is one
 * guard (see xs_map_guard_enter).  Returns 0, fn's nonzero result, XS_EINVAL,
 * or XS_ENOMEM (a bucket's snapshot buffer, with some keys already visited).
 */
XS_API int xs_map_range(xs_map *m, xs_map_range_fn fn, void *arg);

/*
 * Removes every key, atomically for readers: at one instant inside the call
 * (after any resize in progress has finished) every old key goes at once; a
 * load that starts after clear returns sees none of them.  Writes that race with clear land before
 * or after it.  Creators still running when it starts complete afterwards
 * with their value counted as cleared.  Waits for a resize in progress to
 * finish.  Returns 0, XS_EINVAL or XS_ENOMEM (a fresh table; map unchanged).
 */
XS_API int xs_map_clear(xs_map *m);

/*
 * The number of keys: exact when no write is in progress, otherwise a value
 * the count had or was about to have.  0 for NULL.  Reads one counter per
 * stripe (16), never locks.
 */
XS_API size_t xs_map_len(const xs_map *m);

/* The map's hash seed (the one given, or the random one drawn). */
XS_API uint64_t xs_map_seed(const xs_map *m);

/*
 * Frees the removed entries, values and tables that no guarded reader can
 * still see, without waiting.  The map does this by itself every few
 * hundred removals; call it to return memory sooner (a few calls in a row,
 * outside any guard, free everything when nothing else runs).
 */
XS_API void xs_map_reclaim(xs_map *m);

/*
 * A read guard for every map in the process.  Between enter and the
 * matching leave, no value or key the thread obtained from a map is
 * destroyed or freed, even when another thread removes it.  Guards nest, are
 * per thread, and never block anybody; holding one for long delays memory
 * reclamation of all maps.  Do not block indefinitely or exit the thread
 * inside one.  enter: 0, or XS_ENOMEM (the thread's record, first use only).
 * leave: 0, or XS_EINVAL when the thread has no guard of its own open
 * (nothing changes) — the guards the library opens around callbacks are not
 * the caller's to close.
 *
 * Fork: in the child, maps that other threads of the parent were using at
 * the fork must not be used (a lock or a resize may have been left half
 * done); new maps, and maps no other thread touched, work, and guards that
 * parent threads held do not stop reclamation in the child.
 */
XS_API int xs_map_guard_enter(void);
XS_API int xs_map_guard_leave(void);

/* The wrappers are static inline and may go unused (clang warns about those
 * in a .c file). */
#if defined(__GNUC__) || defined(__clang__)
#define XS_MAP_INLINE_ static inline __attribute__((unused))
#else
#define XS_MAP_INLINE_ static inline
#endif

/*
 * XS_MAP_DECLARE(prefix, value_type) declares `prefix`, a map whose values
 * are `value_type *`, and static inline wrappers with the same contracts:
 *
 *   int  prefix_new(const xs_map_options *opts, prefix **out);
 *   void prefix_free(prefix *m);
 *   int  prefix_load(prefix *m, const void *key, size_t len, value_type **value);
 *   int  prefix_store(prefix *m, const void *key, size_t len, value_type *value);
 *   int  prefix_load_or_store(prefix *m, key, len, value_type *value,
 *                             value_type **actual, bool *loaded);
 *   int  prefix_load_or_create(prefix *m, key, len,
 *            int (*create)(const void *key, size_t len, void *arg, value_type **out),
 *            void *arg, value_type **actual, bool *loaded);
 *   int  prefix_load_and_delete(prefix *m, key, len, value_type **value);
 *   int  prefix_delete(prefix *m, key, len);
 *   int  prefix_swap(prefix *m, key, len, value_type *value, value_type **previous,
 *                    bool *loaded);
 *   int  prefix_compare_and_swap(prefix *m, key, len, value_type *old, value_type *new_value);
 *   int  prefix_compare_and_delete(prefix *m, key, len, value_type *old);
 *   int  prefix_range(prefix *m,
 *            int (*fn)(const void *key, size_t len, value_type *value, void *arg), void *arg);
 *   int  prefix_clear(prefix *m);
 *   size_t prefix_len(const prefix *m);
 *   xs_map *prefix_map(prefix *m);          the untyped map underneath
 *
 * and _str variants of load, store, load_or_create and delete taking a
 * NUL-terminated key (NULL: XS_EINVAL).  Passing a value of the wrong type is
 * an incompatible-pointer-types diagnostic: a warning in older compilers (an
 * error with -Werror, and by default from gcc 14).
 */
#define XS_MAP_DECLARE(prefix, value_type)                                                          \
    typedef struct prefix prefix;                                                                   \
    typedef int (*prefix##_create_fn)(const void *key, size_t len, void *arg,                       \
                                      value_type **out);                                            \
    typedef int (*prefix##_range_fn)(const void *key, size_t len, value_type *value,                \
                                     void *arg);                                                    \
    XS_MAP_INLINE_ xs_map *prefix##_map(prefix *m) { return (xs_map *)(void *)m; }                  \
    XS_MAP_INLINE_ int prefix##_new(const xs_map_options *opts, prefix **out)                       \
    {                                                                                               \
        xs_map *m = NULL;                                                                           \
        int rc = xs_map_new(opts, out ? &m : NULL);                                                 \
        if (rc == 0)                                                                                \
            *out = (prefix *)(void *)m;                                                             \
        return rc;                                                                                  \
    }                                                                                               \
    XS_MAP_INLINE_ void prefix##_free(prefix *m) { xs_map_free(prefix##_map(m)); }                  \
    XS_MAP_INLINE_ int prefix##_load(prefix *m, const void *key, size_t len,                        \
                                    value_type **value)                                             \
    {                                                                                               \
        void *v = NULL;                                                                             \
        int rc = xs_map_load(prefix##_map(m), key, len, &v);                                        \
        if (rc == 0 && value)                                                                       \
            *value = (value_type *)v;                                                               \
        return rc;                                                                                  \
    }                                                                                               \
    XS_MAP_INLINE_ int prefix##_store(prefix *m, const void *key, size_t len,                       \
                                     value_type *value)                                             \
    {                                                                                               \
        return xs_map_store(prefix##_map(m), key, len, (void *)value);                              \
    }                                                                                               \
    XS_MAP_INLINE_ int prefix##_load_or_store(prefix *m, const void *key, size_t len,               \
                                             value_type *value, value_type **actual,                \
                                             bool *loaded)                                          \
    {                                                                                               \
        void *a = NULL;                                                                             \
        int rc = xs_map_load_or_store(prefix##_map(m), key, len, (void *)value, &a, loaded);        \
        if (rc == 0 && actual)                                                                      \
            *actual = (value_type *)a;                                                              \
        return rc;                                                                                  \
    }                                                                                               \
    struct prefix##_create_call_ {                                                                  \
        prefix##_create_fn fn;                                                                      \
        void *arg;                                                                                  \
    };                                                                                              \
    XS_MAP_INLINE_ int prefix##_create_tramp_(const void *key, size_t len, void *arg,               \
                                             void **out)                                            \
    {                                                                                               \
        struct prefix##_create_call_ *c = (struct prefix##_create_call_ *)arg;                      \
        value_type *v = NULL;                                                                       \
        int rc = c->fn(key, len, c->arg, &v);                                                       \
        *out = (void *)v;                                                                           \
        return rc;                                                                                  \
    }                                                                                               \
    XS_MAP_INLINE_ int prefix##_load_or_create(prefix *m, const void *key, size_t len,              \
                                              prefix##_create_fn create, void *arg,                 \
                                              value_type **actual, bool *loaded)                    \
    {                                                                                               \
        struct prefix##_create_call_ c = {create, arg};                                             \
        void *a = NULL;                                                                             \
        int rc = xs_map_load_or_create(prefix##_map(m), key, len,                                   \
                                       create ? prefix##_create_tramp_ : NULL, &c, &a,              \
                                       loaded);                                                     \
        if (rc == 0 && actual)                                                                      \
            *actual = (value_type *)a;                                                              \
        return rc;                                                                                  \
    }                                                                                               \
    XS_MAP_INLINE_ int prefix##_load_and_delete(prefix *m, const void *key, size_t len,             \
                                               value_type **value)                                  \
    {                                                                                               \
        void *v = NULL;                                                                             \
        int rc = xs_map_load_and_delete(prefix##_map(m), key, len, &v);                             \
        if (rc == 0 && value)                                                                       \
            *value = (value_type *)v;                                                               \
        return rc;                                                                                  \
    }                                                                                               \
    XS_MAP_INLINE_ int prefix##_delete(prefix *m, const void *key, size_t len)                      \
    {                                                                                               \
        return xs_map_delete(prefix##_map(m), key, len);                                            \
    }                                                                                               \
    XS_MAP_INLINE_ int prefix##_swap(prefix *m, const void *key, size_t len,                        \
                                    value_type *value, value_type **previous, bool *loaded)         \
    {                                                                                               \
        void *p = NULL;                                                                             \
        bool l = false;                                                                             \
        int rc = xs_map_swap(prefix##_map(m), key, len, (void *)value, &p, &l);                     \
        if (rc == 0 && l && previous)                                                               \
            *previous = (value_type *)p;                                                            \
        if (rc == 0 && loaded)                                                                      \
            *loaded = l;                                                                            \
        return rc;                                                                                  \
    }                                                                                               \
    XS_MAP_INLINE_ int prefix##_compare_and_swap(prefix *m, const void *key, size_t len,            \
                                                value_type *old, value_type *new_value)             \
    {                                                                                               \
        return xs_map_compare_and_swap(prefix##_map(m), key, len, (void *)old,                      \
                                       (void *)new_value);                                          \
    }                                                                                               \
    XS_MAP_INLINE_ int prefix##_compare_and_delete(prefix *m, const void *key, size_t len,          \
                                                  value_type *old)                                  \
    {                                                                                               \
        return xs_map_compare_and_delete(prefix##_map(m), key, len, (void *)old);                   \
    }                                                                                               \
    struct prefix##_range_call_ {                                                                   \
        prefix##_range_fn fn;                                                                       \
        void *arg;                                                                                  \
    };                                                                                              \
    XS_MAP_INLINE_ int prefix##_range_tramp_(const void *key, size_t len, void *value,              \
                                            void *arg)                                              \
    {                                                                                               \
        struct prefix##_range_call_ *c = (struct prefix##_range_call_ *)arg;                        \
        return c->fn(key, len, (value_type *)value, c->arg);                                        \
    }                                                                                               \
    XS_MAP_INLINE_ int prefix##_range(prefix *m, prefix##_range_fn fn, void *arg)                   \
    {                                                                                               \
        struct prefix##_range_call_ c = {fn, arg};                                                  \
        return xs_map_range(prefix##_map(m), fn ? prefix##_range_tramp_ : NULL, &c);                \
    }                                                                                               \
    XS_MAP_INLINE_ int prefix##_clear(prefix *m) { return xs_map_clear(prefix##_map(m)); }          \
    XS_MAP_INLINE_ size_t prefix##_len(const prefix *m)                                             \
    {                                                                                               \
        return xs_map_len((const xs_map *)(const void *)m);                                         \
    }                                                                                               \
    XS_MAP_INLINE_ int prefix##_load_str(prefix *m, const char *key, value_type **value)            \
    {                                                                                               \
        return key ? prefix##_load(m, key, __builtin_strlen(key), value) : XS_EINVAL;               \
    }                                                                                               \
    XS_MAP_INLINE_ int prefix##_store_str(prefix *m, const char *key, value_type *value)            \
    {                                                                                               \
        return key ? prefix##_store(m, key, __builtin_strlen(key), value) : XS_EINVAL;              \
    }                                                                                               \
    XS_MAP_INLINE_ int prefix##_load_or_create_str(prefix *m, const char *key,                      \
                                                  prefix##_create_fn create, void *arg,             \
                                                  value_type **actual, bool *loaded)                \
    {                                                                                               \
        if (!key)                                                                                   \
            return XS_EINVAL;                                                                       \
        return prefix##_load_or_create(m, key, __builtin_strlen(key), create, arg, actual,          \
                                       loaded);                                                     \
    }                                                                                               \
    XS_MAP_INLINE_ int prefix##_delete_str(prefix *m, const char *key)                              \
    {                                                                                               \
        return key ? prefix##_delete(m, key, __builtin_strlen(key)) : XS_EINVAL;                    \
    }                                                                                               \
    typedef int prefix##_declared_ /* swallows the trailing semicolon */

#ifdef __cplusplus
}
#endif
#endif
