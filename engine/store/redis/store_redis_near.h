/* store_redis_near.h - the Redis store's local copies of responses, by cache key and fill token. */
#ifndef SLUICE_STORE_REDIS_NEAR_H
#define SLUICE_STORE_REDIS_NEAR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "hmap.h"
#include "store_redis_codec.h"

struct store_entry;

/* A copy: a reference on the entry stored under key with token. */
struct near_entry {
    struct hmap_node node;       /* in the table, by key */
    TAILQ_ENTRY(near_entry) lru; /* in the recency list */
    unsigned char token[TOKEN_LEN];
    struct store_entry *entry; /* one reference */
    size_t charge;
    size_t keylen;
    char key[];
};

/* The copies of one store handle (set up with near_init()). One thread only. */
struct near {
    struct hmap map;              /* by key */
    size_t nsecondary;            /* copies of secondary entries among them */
    TAILQ_HEAD(, near_entry) lru; /* least recently used first */
    size_t bytes, max_bytes;
};

/* Sets up n, empty, to keep copies within max_bytes. */
void near_init(struct near *n, size_t max_bytes);

/* Returns the copy of key, made the most recent, or NULL. The copy is borrowed from n. */
struct near_entry *near_find(struct near *n, const char *key, size_t keylen);

/* Drops the copy of key, if any (its reference on the entry is released). */
void near_drop(struct near *n, const char *key, size_t keylen);

/*
 * Keeps a new reference to entry as the copy of key stored with token (TOKEN_LEN bytes,
 * copied), replacing any other and dropping the least recently used ones over the byte
 * budget. An entry larger than a quarter of the budget is not kept (the old copy goes).
 */
void near_put(struct near *n, const char *key, size_t keylen, const unsigned char *token,
              struct store_entry *entry);

/* Drops the copies of key and, for a primary, of its secondaries (a walk of them all). */
void near_drop_entry(struct near *n, const char *key, size_t keylen);

/* Drops every copy and frees the table; n is empty after. */
void near_free(struct near *n);

#endif
