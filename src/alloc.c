/* The allocator hook: libc default, process-wide default, counting wrapper. */
#include <xsync/alloc.h>

#include <stdlib.h>

#include "internal.h"

static void *libc_alloc(void *state, size_t size)
{
    (void)state;
    return malloc(size);
}

static void libc_free(void *state, void *ptr, size_t size)
{
    (void)state;
    (void)size;
    free(ptr);
}

static const xs_allocator libc_allocator = {libc_alloc, libc_free, NULL};
/* Release/acquire: whoever reads a new default sees the struct initialised. */
static _Atomic(const xs_allocator *) default_allocator = &libc_allocator;

const xs_allocator *xs_allocator_libc(void)
{
    return &libc_allocator;
}

const xs_allocator *xs_allocator_default(void)
{
    return atomic_load_explicit(&default_allocator, memory_order_acquire);
}

const xs_allocator *xs_allocator_set_default(const xs_allocator *a)
{
    return atomic_exchange_explicit(&default_allocator, a ? a : &libc_allocator,
                                    memory_order_acq_rel);
}

const xs_allocator *xs__allocator_resolve(const xs_allocator *a)
{
    return a ? a : xs_allocator_default();
}

void *xs__alloc(const xs_allocator *a, size_t size)
{
    return a->alloc(a->state, size);
}

void *xs__calloc(const xs_allocator *a, size_t size)
{
    void *p = a->alloc(a->state, size);
    if (p)
        memset(p, 0, size);
    return p;
}

void xs__free(const xs_allocator *a, void *ptr, size_t size)
{
    if (ptr)
        a->free(a->state, ptr, size);
}

/* ---- counting allocator ---- */

static void *counter_alloc(void *state, size_t size)
{
    xs_alloc_counter *c = state;
    /* Counters are statistics only: relaxed is enough. */
    if (atomic_load_explicit(&c->countdown, memory_order_relaxed) > 0) {
        int64_t left = atomic_fetch_sub_explicit(&c->countdown, 1, memory_order_relaxed);
        if (left == 1) {
            if (atomic_load_explicit(&c->fail_all, memory_order_relaxed))
                atomic_store_explicit(&c->countdown, -1, memory_order_relaxed);
            atomic_fetch_add_explicit(&c->failures, 1, memory_order_relaxed);
            return NULL;
        }
    } else if (atomic_load_explicit(&c->countdown, memory_order_relaxed) < 0) {
        atomic_fetch_add_explicit(&c->failures, 1, memory_order_relaxed);
        return NULL;
    }
    void *p = c->inner->alloc(c->inner->state, size);
    if (!p)
        return NULL;
    atomic_fetch_add_explicit(&c->allocs, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&c->bytes, (int64_t)size, memory_order_relaxed);
    atomic_fetch_add_explicit(&c->live_bytes, (int64_t)size, memory_order_relaxed);
    return p;
}

static void counter_free(void *state, void *ptr, size_t size)
{
    xs_alloc_counter *c = state;
    atomic_fetch_add_explicit(&c->frees, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&c->live_bytes, (int64_t)size, memory_order_relaxed);
    c->inner->free(c->inner->state, ptr, size);
}

void xs_alloc_counter_init(xs_alloc_counter *c, const xs_allocator *inner)
{
    c->allocator.alloc = counter_alloc;
    c->allocator.free = counter_free;
    c->allocator.state = c;
    c->inner = inner ? inner : &libc_allocator;
    atomic_init(&c->allocs, 0);
    atomic_init(&c->frees, 0);
    atomic_init(&c->bytes, 0);
    atomic_init(&c->live_bytes, 0);
    atomic_init(&c->failures, 0);
    atomic_init(&c->countdown, 0);
    atomic_init(&c->fail_all, 0);
}

void xs_alloc_counter_fail_at(xs_alloc_counter *c, int64_t k, int fail_all)
{
    atomic_store_explicit(&c->fail_all, fail_all != 0, memory_order_relaxed);
    atomic_store_explicit(&c->countdown, k > 0 ? k : 0, memory_order_relaxed);
}
