/* hash — seed expansion and random seeds for the keyed hash. */
#include "hash.h"

#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#if defined(__linux__)
#include <sys/random.h>
#endif

/* A splitmix-style step: a Weyl increment, then an invertible avalanche. */
static uint64_t expand(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

void xs__hash_key_init(xs__hash_key *key, uint64_t seed)
{
    uint64_t state = seed;
    for (int i = 0; i < 4; i++) {
        uint64_t v = expand(&state);
        /* An all-zero secret would let a zero data word cancel it. */
        key->k[i] = v ? v : UINT64_C(0x2545F4914F6CDD1D);
    }
}

uint64_t xs__hash_random_seed(void)
{
    /* Differs per call even if the entropy source fails. */
    static _Atomic uint64_t calls;
    uint64_t n = atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed);
    uint64_t r = 0;
#if defined(__linux__)
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
        r = 0;
#endif
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t state = r ^ ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)ts.tv_nsec ^
                     ((uint64_t)getpid() << 48) ^ (uint64_t)(uintptr_t)&ts;
    state ^= expand(&n);
    return expand(&state);
}
