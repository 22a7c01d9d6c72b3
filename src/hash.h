/*
 * hash — a keyed hash over byte strings (internal; shared by map and
 * singleflight).
 *
 * The construction is a multiply-fold mix: two 64-bit words are multiplied
 * into 128 bits and the halves folded with xor, which diffuses every input
 * bit into both halves in one multiplication.  Keys up to 16 bytes are read
 * as two (possibly overlapping) words and cost two mixes; longer keys are
 * absorbed 16 bytes per mix (three independent lanes above 48 bytes).  Every
 * word is combined with a secret derived from the seed before it is
 * multiplied, so an attacker who does not know the seed cannot aim for the
 * product's zero (the weakness of mixes keyed by public constants), and a set
 * of keys that collide under one seed is unrelated under another.
 *
 * Not a cryptographic MAC: it resists precomputed collision sets, not an
 * adversary who can observe hash values.
 */
#ifndef XSYNC_HASH_H
#define XSYNC_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Per-seed secrets: derive once (xs__hash_key_init), hash many times. */
typedef struct xs__hash_key {
    uint64_t k[4];
} xs__hash_key;

/* Derives the secrets from a 64-bit seed (any value, 0 included). */
void xs__hash_key_init(xs__hash_key *key, uint64_t seed);

/* A fresh unpredictable seed (getrandom where available, else clock,
 * addresses and a counter mixed).  Two calls return different values except
 * by a 64-bit coincidence.  Thread-safe. */
uint64_t xs__hash_random_seed(void);

static inline uint64_t xs__hash_mix(uint64_t a, uint64_t b)
{
#ifdef __SIZEOF_INT128__
    unsigned __int128 r = (unsigned __int128)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
#else
    uint64_t al = (uint32_t)a, ah = a >> 32, bl = (uint32_t)b, bh = b >> 32;
    uint64_t ll = al * bl, lh = al * bh, hl = ah * bl, hh = ah * bh;
    uint64_t mid = (ll >> 32) + (uint32_t)lh + (uint32_t)hl;
    uint64_t lo = (mid << 32) | (uint32_t)ll;
    uint64_t hi = hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
    return lo ^ hi;
#endif
}

static inline uint64_t xs__hash_r64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint64_t xs__hash_r32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* The hash of len bytes at p (p may be NULL when len is 0). */
static inline uint64_t xs__hash(const xs__hash_key *key, const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t a, b, s = key->k[0];
    if (len <= 16) {
        if (len >= 8) {
            a = xs__hash_r64(p);
            b = xs__hash_r64(p + len - 8);
        } else if (len >= 4) {
            a = xs__hash_r32(p);
            b = xs__hash_r32(p + len - 4);
        } else if (len > 0) {
            a = ((uint64_t)p[0] << 16) | ((uint64_t)p[len >> 1] << 8) | p[len - 1];
            b = 0;
        } else {
            a = b = 0;
        }
    } else {
        size_t n = len;
        if (n > 48) {
            uint64_t s1 = s ^ key->k[2], s2 = s ^ key->k[3];
            do {
                s = xs__hash_mix(xs__hash_r64(p) ^ key->k[1], xs__hash_r64(p + 8) ^ s);
                s1 = xs__hash_mix(xs__hash_r64(p + 16) ^ key->k[2], xs__hash_r64(p + 24) ^ s1);
                s2 = xs__hash_mix(xs__hash_r64(p + 32) ^ key->k[3], xs__hash_r64(p + 40) ^ s2);
                p += 48;
                n -= 48;
            } while (n > 48);
            s ^= s1 ^ s2;
        }
        while (n > 16) {
            s = xs__hash_mix(xs__hash_r64(p) ^ key->k[1], xs__hash_r64(p + 8) ^ s);
            p += 16;
            n -= 16;
        }
        /* the last 16 bytes, overlapping what was absorbed when n < 16 */
        a = xs__hash_r64(p + n - 16);
        b = xs__hash_r64(p + n - 8);
    }
    uint64_t h = xs__hash_mix(a ^ key->k[1], b ^ s);
    return xs__hash_mix(h ^ key->k[2] ^ (uint64_t)len, key->k[3] ^ (h >> 29));
}

#endif
