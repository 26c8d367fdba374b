/* addr_count.h - open connections per client address, in a fixed table the workers share. */
#ifndef SLUICE_ADDR_COUNT_H
#define SLUICE_ADDR_COUNT_H

#include <stdint.h>

struct sockaddr;
struct addr_count;

#define ADDR_COUNT_NONE UINT32_MAX

/*
 * Returns a new table (the caller's, addr_count_free) that allows `cap`
 * connections per address, with at least 4 slots for each of the `total`
 * connections the server allows (1024 to 4M slots of 4 bytes; the pages of
 * a large table are touched only as used). Addresses are hashed with a random key: two that
 * meet in a slot share its cap, which the table's size makes rare and an
 * outsider cannot aim at. Aborts when out of memory.
 */
struct addr_count *addr_count_new(unsigned cap, unsigned total);
void addr_count_free(struct addr_count *t);

/*
 * The slot of the peer address sa: an IPv4 address (also IPv4-mapped in
 * IPv6) counts alone, an IPv6 address by its /64 (one host can have a whole
 * /64). ADDR_COUNT_NONE for another family.
 */
uint32_t addr_count_slot(const struct addr_count *t, const struct sockaddr *sa);

/*
 * Counts one more connection in slot and returns 0, or returns -1 and counts
 * nothing when the slot is at the cap already. Lock-free, from any thread;
 * ADDR_COUNT_NONE is always admitted.
 */
int addr_count_take(struct addr_count *t, uint32_t slot);

/* Counts one connection less in slot (one that addr_count_take admitted). */
void addr_count_release(struct addr_count *t, uint32_t slot);

#endif
