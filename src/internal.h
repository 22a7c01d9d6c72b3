/* Internal helpers shared by the modules (never installed). */
#ifndef XSYNC_INTERNAL_H
#define XSYNC_INTERNAL_H

#include <sched.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <xsync/alloc.h>
#include <xsync/error.h>

#define XS_LIKELY(x) __builtin_expect(!!(x), 1)
#define XS_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define XS_CONTAINER_OF(p, type, member) ((type *)(void *)((char *)(p) - offsetof(type, member)))

/* NULL: the process default, read once (objects keep what this returns). */
const xs_allocator *xs__allocator_resolve(const xs_allocator *a);
void *xs__alloc(const xs_allocator *a, size_t size);
void *xs__calloc(const xs_allocator *a, size_t size);
void xs__free(const xs_allocator *a, void *ptr, size_t size);

/* The spin-wait hint: lets the sibling hyperthread run, saves power. */
static inline void xs__cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* One pause of a polling loop of `rounds` rounds: a short spin in the
 * first half, giving the CPU away in the second. */
static inline void xs__poll_pause(int round, int rounds)
{
    if (round < rounds / 2) {
        for (int i = 0; i < 32; i++)
            xs__cpu_relax();
    } else {
        sched_yield();
    }
}

/* a + b clamped to [INT64_MIN, INT64_MAX]. */
static inline int64_t xs__add_sat(int64_t a, int64_t b)
{
    int64_t r;
    if (__builtin_add_overflow(a, b, &r))
        return b > 0 ? INT64_MAX : INT64_MIN;
    return r;
}

/* An intrusive doubly linked list: a node embedded in each element, the
 * list a pointer to the first node.  The caller provides the locking. */
typedef struct xs__dnode {
    struct xs__dnode *prev, *next;
} xs__dnode;

static inline void xs__dpush(xs__dnode **head, xs__dnode *n)
{
    n->prev = NULL;
    n->next = *head;
    if (*head)
        (*head)->prev = n;
    *head = n;
}

static inline void xs__dremove(xs__dnode **head, xs__dnode *n)
{
    if (n->prev)
        n->prev->next = n->next;
    else
        *head = n->next;
    if (n->next)
        n->next->prev = n->prev;
}

#endif
