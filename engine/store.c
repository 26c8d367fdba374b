/* store.c - what both stores share: reference-counted cache entries and the store clock. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "store.h"

struct store_entry *
store_entry_new(uint16_t status, char *content_type, char *body, size_t body_len)
{
    struct store_entry *e = calloc(1, sizeof(*e));

    if (!e) {
        fprintf(stderr, "sluice: out of memory (cache entry)\n");
        abort();
    }
    e->refs = 1;
    e->status = status;
    e->content_type = content_type;
    e->body = body;
    e->body_len = body_len;
    return e;
}

void
store_entry_ref(struct store_entry *e)
{
    __atomic_add_fetch(&e->refs, 1, __ATOMIC_RELAXED);
}

void
store_entry_release(struct store_entry *e)
{
    if (!e)
        return;
    if (__atomic_sub_fetch(&e->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    free(e->content_type);
    free(e->headers);
    free(e->etag);
    free(e->body);
    free(e);
}

uint64_t
store_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}
