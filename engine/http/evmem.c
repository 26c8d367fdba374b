/* evmem.c - libevent's allocations: its buffer blocks recycled per thread. */
#define _GNU_SOURCE /* malloc_usable_size */
#include "evmem.h"

#include <event2/event.h>
#include <malloc.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* A kept block is poisoned under AddressSanitizer (but for its link word), so that a use of a
 * freed libevent buffer is still reported. */
#if defined(__SANITIZE_ADDRESS__)
#define EVMEM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EVMEM_ASAN 1
#endif
#endif
#ifdef EVMEM_ASAN
#include <sanitizer/asan_interface.h>
#else
#define ASAN_POISON_MEMORY_REGION(p, n) ((void)(p), (void)(n))
#define ASAN_UNPOISON_MEMORY_REGION(p, n) ((void)(p), (void)(n))
#endif

#define MIN_SHIFT 10 /* 1 KiB, libevent's smallest chain */
#define MAX_SHIFT 16 /* 64 KiB */
#define NCLASS (MAX_SHIFT - MIN_SHIFT + 1)
#define SLACK 64 /* a block of 2^k bytes has a usable size below 2^k + SLACK */

/* What a thread keeps: per size, a list threaded through the blocks' first words. */
struct kept {
    void *head[NCLASS];
    unsigned n[NCLASS];
    size_t bytes;    /* in all the lists */
    bool registered; /* its destructor will run at the thread's exit */
};

static __thread struct kept kept;
static pthread_key_t kept_key;
static pthread_once_t kept_once = PTHREAD_ONCE_INIT;

/* Frees every block a thread keeps (its key's destructor, at its exit). */
static void
kept_flush(void *arg)
{
    struct kept *k = arg;

    for (int c = 0; c < NCLASS; c++) {
        while (k->head[c]) {
            void *b = k->head[c];
            k->head[c] = *(void **)b;
            ASAN_UNPOISON_MEMORY_REGION(b, (size_t)1 << (c + MIN_SHIFT));
            free(b);
        }
        k->n[c] = 0;
    }
    k->bytes = 0;
}

static void
kept_key_create(void)
{
    if (pthread_key_create(&kept_key, kept_flush) != 0) {
        fprintf(stderr, "sluice: pthread_key_create failed (evmem)\n");
        abort();
    }
}

/* The class of a request of n bytes, or -1 when it has none. */
static int
class_of_request(size_t n)
{
    if (n < (1u << MIN_SHIFT) || n > (1u << MAX_SHIFT) || (n & (n - 1)) != 0)
        return -1;
    return __builtin_ctzll(n) - MIN_SHIFT;
}

/* The class a block of `usable` bytes can serve without waste, or -1. */
static int
class_of_block(size_t usable)
{
    if (usable < (1u << MIN_SHIFT) || usable >= (1u << MAX_SHIFT) + SLACK)
        return -1;
    int k = 63 - __builtin_clzll(usable);
    if (k > MAX_SHIFT || usable - ((size_t)1 << k) >= SLACK)
        return -1;
    return k - MIN_SHIFT;
}

void *
evmem_malloc(size_t n)
{
    int c = class_of_request(n);

    if (c >= 0 && kept.head[c]) {
        void *b = kept.head[c];
        kept.head[c] = *(void **)b;
        kept.n[c]--;
        kept.bytes -= n;
        ASAN_UNPOISON_MEMORY_REGION(b, n);
        return b;
    }
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "sluice: out of memory (%zu bytes for libevent)\n", n);
        abort();
    }
    return p;
}

void *
evmem_realloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);

    if (!q) {
        fprintf(stderr, "sluice: out of memory (%zu bytes for libevent)\n", n);
        abort();
    }
    return q;
}

void
evmem_free(void *p)
{
    if (!p)
        return;
    int c = class_of_block(malloc_usable_size(p));
    size_t size = c < 0 ? 0 : (size_t)1 << (c + MIN_SHIFT);
    if (c < 0 || kept.n[c] >= EVMEM_CLASS_BLOCKS || kept.bytes + size > EVMEM_THREAD_BYTES) {
        free(p);
        return;
    }
    if (!kept.registered) {
        pthread_once(&kept_once, kept_key_create);
        pthread_setspecific(kept_key, &kept);
        kept.registered = true;
    }
    *(void **)p = kept.head[c];
    kept.head[c] = p;
    kept.n[c]++;
    kept.bytes += size;
    ASAN_POISON_MEMORY_REGION((char *)p + sizeof(void *), size - sizeof(void *));
}

void
evmem_install(void)
{
    event_set_mem_functions(evmem_malloc, evmem_realloc, evmem_free);
}

size_t
evmem_kept(size_t *bytes)
{
    size_t n = 0;

    for (int c = 0; c < NCLASS; c++)
        n += kept.n[c];
    if (bytes)
        *bytes = kept.bytes;
    return n;
}
