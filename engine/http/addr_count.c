/* addr_count.c - open connections per client address, in a fixed table the workers share. */
#define _GNU_SOURCE
#include "addr_count.h"

#include <netinet/in.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>

#include "util.h"

struct addr_count {
    unsigned cap;
    uint32_t mask; /* slots - 1 */
    uint64_t key;  /* mixed into every hash */
    atomic_uint slots[];
};

struct addr_count *
addr_count_new(unsigned cap, unsigned total)
{
    size_t n = 1024;
    while (n < 4 * (size_t)total && n < (1u << 22))
        n *= 2;
    struct addr_count *t = xcalloc(1, sizeof(*t) + n * sizeof(t->slots[0]));
    t->cap = cap;
    t->mask = (uint32_t)(n - 1);
    if (getrandom(&t->key, sizeof(t->key), GRND_NONBLOCK) != sizeof(t->key))
        t->key = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)t;
    return t;
}

void
addr_count_free(struct addr_count *t)
{
    free(t);
}

uint32_t
addr_count_slot(const struct addr_count *t, const struct sockaddr *sa)
{
    unsigned char key[8 + 8];
    size_t n = 8;

    memcpy(key, &t->key, 8);
    if (sa->sa_family == AF_INET) {
        memcpy(key + 8, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
        n += 4;
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a)) {
            memcpy(key + 8, a->s6_addr + 12, 4);
            n += 4;
        } else {
            memcpy(key + 8, a->s6_addr, 8);
            n += 8;
        }
    } else {
        return ADDR_COUNT_NONE;
    }
    uint64_t h = util_fnv1a(key, n);
    return (uint32_t)((h ^ (h >> 32)) & t->mask);
}

int
addr_count_take(struct addr_count *t, uint32_t slot)
{
    if (slot == ADDR_COUNT_NONE)
        return 0;
    atomic_uint *c = &t->slots[slot];
    unsigned v = atomic_load_explicit(c, memory_order_relaxed);
    do {
        if (v >= t->cap)
            return -1;
    } while (!atomic_compare_exchange_weak_explicit(c, &v, v + 1, memory_order_relaxed,
                                                    memory_order_relaxed));
    return 0;
}

void
addr_count_release(struct addr_count *t, uint32_t slot)
{
    if (slot != ADDR_COUNT_NONE)
        atomic_fetch_sub_explicit(&t->slots[slot], 1, memory_order_relaxed);
}
