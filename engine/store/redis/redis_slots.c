/* redis_slots.c - Redis Cluster's key distribution: CRC16, hash tags, slots, the slot map. */
#define _GNU_SOURCE
#include "redis_slots.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static uint16_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void
crc_init(void)
{
    for (unsigned i = 0; i < 256; i++) {
        uint16_t c = (uint16_t)(i << 8);
        for (int b = 0; b < 8; b++)
            c = (uint16_t)(c & 0x8000 ? (c << 1) ^ 0x1021 : c << 1);
        crc_table[i] = c;
    }
}

uint16_t
redis_slots_crc16(const void *p, size_t len)
{
    const unsigned char *s = p;
    uint16_t crc = 0;

    pthread_once(&crc_once, crc_init);
    for (size_t i = 0; i < len; i++)
        crc = (uint16_t)((crc << 8) ^ crc_table[((crc >> 8) ^ s[i]) & 0xff]);
    return crc;
}

unsigned
redis_slots_key_slot(const void *k, size_t len)
{
    const char *s = k;
    const char *open = memchr(s, '{', len);

    if (open) {
        size_t rest = len - (size_t)(open - s) - 1;
        const char *close = memchr(open + 1, '}', rest);
        if (close && close > open + 1)
            return redis_slots_crc16(open + 1, (size_t)(close - open - 1)) & (REDIS_SLOTS - 1);
    }
    return redis_slots_crc16(s, len) & (REDIS_SLOTS - 1);
}

static int
reply_int(const redisReply *r, long long *out)
{
    if (r->type != REDIS_REPLY_INTEGER)
        return -1;
    *out = r->integer;
    return 0;
}

int
redis_slots_parse(const redisReply *r, struct redis_slot_map *map, char *err, size_t errlen)
{
    *map = (struct redis_slot_map){0};
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        snprintf(err, errlen, "CLUSTER SLOTS: %s",
                 r && r->type == REDIS_REPLY_ERROR ? r->str : "not an array");
        return -1;
    }
    map->ranges = r->elements ? xcalloc(r->elements, sizeof(*map->ranges)) : NULL;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        struct redis_slot_range *rg = &map->ranges[map->n];
        long long first, last, port;
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 || reply_int(e->element[0], &first) ||
            reply_int(e->element[1], &last) || first < 0 || last < first || last >= REDIS_SLOTS) {
            snprintf(err, errlen, "CLUSTER SLOTS: range %zu is malformed", i);
            goto bad;
        }
        const redisReply *m = e->element[2];
        if (m->type != REDIS_REPLY_ARRAY || m->elements < 2 ||
            (m->element[0]->type != REDIS_REPLY_STRING && m->element[0]->type != REDIS_REPLY_NIL) ||
            reply_int(m->element[1], &port) || port < 1 || port > 65535) {
            snprintf(err, errlen, "CLUSTER SLOTS: range %zu has no usable master", i);
            goto bad;
        }
        rg->first = (unsigned)first;
        rg->last = (unsigned)last;
        rg->port = (int)port;
        if (m->element[0]->type == REDIS_REPLY_STRING && m->element[0]->len < sizeof(rg->host) &&
            strcmp(m->element[0]->str, "?") != 0)
            memcpy(rg->host, m->element[0]->str, m->element[0]->len);
        map->n++;
    }
    return 0;
bad:
    redis_slots_free(map);
    return -1;
}

void
redis_slots_free(struct redis_slot_map *map)
{
    free(map->ranges);
    map->ranges = NULL;
    map->n = 0;
}

int
redis_slots_redirect(const char *msg, size_t len, unsigned *slot, char *host, size_t cap, int *port)
{
    int kind;
    const char *p, *end = msg + len;

    if (len > 6 && memcmp(msg, "MOVED ", 6) == 0) {
        kind = 1;
        p = msg + 6;
    } else if (len > 4 && memcmp(msg, "ASK ", 4) == 0) {
        kind = 2;
        p = msg + 4;
    } else {
        return 0;
    }
    unsigned long s = 0;
    const char *d = p;
    while (p < end && *p >= '0' && *p <= '9' && s < REDIS_SLOTS)
        s = s * 10 + (unsigned long)(*p++ - '0');
    if (p == d || s >= REDIS_SLOTS || p >= end || *p != ' ')
        return 0;
    p++;
    const char *colon = memrchr(p, ':', (size_t)(end - p));
    if (!colon || colon == p || (size_t)(colon - p) >= cap)
        return 0;
    long pt = 0;
    const char *q = colon + 1;
    if (q == end)
        return 0;
    for (; q < end && *q >= '0' && *q <= '9' && pt <= 65535; q++)
        pt = pt * 10 + (*q - '0');
    if (q != end || pt < 1 || pt > 65535)
        return 0;
    memcpy(host, p, (size_t)(colon - p));
    host[colon - p] = '\0';
    *slot = (unsigned)s;
    *port = (int)pt;
    return kind;
}
