/* redis_slots.h - Redis Cluster's key distribution: CRC16, hash tags, slots, the slot map. */
#ifndef SLUICE_REDIS_SLOTS_H
#define SLUICE_REDIS_SLOTS_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#define REDIS_SLOTS 16384

/*
 * Returns the CRC16 of p[0..len) as the Redis Cluster specification's key
 * distribution model defines it (CCITT/XMODEM: polynomial 0x1021, initial
 * value 0, no reflection): CRC16("123456789") is 0x31C3.
 */
uint16_t redis_slots_crc16(const void *p, size_t len);

/*
 * Returns the slot (0..16383) of the key k[0..len): CRC16 of its hash tag
 * (the bytes between its first '{' and the first '}' after it, when there
 * are any) or else of the whole key, modulo 16384 (the specification's
 * "Hash tags").
 */
unsigned redis_slots_key_slot(const void *k, size_t len);

/* A master serving a range of slots, as CLUSTER SLOTS says it. */
struct redis_slot_range {
    unsigned first, last; /* inclusive */
    char host[256];       /* "" when the node did not know its address: the one asked */
    int port;
};

/* The ranges of a CLUSTER SLOTS reply; owned by the caller, freed with redis_slots_free(). */
struct redis_slot_map {
    struct redis_slot_range *ranges;
    size_t n;
};

/*
 * Reads a CLUSTER SLOTS reply (r borrowed): per range its first and last
 * slot and its master (the first node). Returns 0 with *map filled (the
 * caller's, freed with redis_slots_free()), or -1 with a message in err
 * when r is not such a reply (an error, a slot beyond 16383, a range without
 * a master). Slots no range covers are simply absent.
 */
int redis_slots_parse(const redisReply *r, struct redis_slot_map *map, char *err, size_t errlen);

/* Frees what redis_slots_parse() allocated in map (not map); idempotent. */
void redis_slots_free(struct redis_slot_map *map);

/*
 * Reads a redirection: "MOVED slot host:port" or "ASK slot host:port" in
 * msg[0..len). Returns 1 for MOVED, 2 for ASK, with *slot, host (cap bytes
 * with the NUL) and *port set; 0 when msg is neither (or malformed).
 */
int redis_slots_redirect(const char *msg, size_t len, unsigned *slot, char *host, size_t cap,
                         int *port);

#endif
