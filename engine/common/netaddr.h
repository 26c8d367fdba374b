/* netaddr.h - IP addresses as bytes, their text and key forms, and lists of CIDR ranges. */
#ifndef SLUICE_NETADDR_H
#define SLUICE_NETADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sockaddr;

/* Room for an address's text ("ffff:...:255.255.255.255" and its NUL). */
#define NETADDR_TEXT_MAX 46
/* Room for an address's key: its text and "/128". */
#define NETADDR_KEY_MAX 52

/* An IPv4 or IPv6 address. An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is held as IPv4. */
struct netaddr {
    uint8_t v6; /* 0: IPv4 in a[0..3], 1: IPv6 in a[0..15] */
    uint8_t a[16];
};

/*
 * Parses s[0..len): exactly one address, "192.0.2.1" or "2001:db8::1", nothing
 * around it. Returns 0 with *out set, or -1 (out untouched).
 */
int netaddr_parse(const char *s, size_t len, struct netaddr *out);

/* The address of an AF_INET or AF_INET6 socket address: 0, or -1 for another family. */
int netaddr_from_sockaddr(const struct sockaddr *sa, struct netaddr *out);

/* Writes the address's text into out (cap >= NETADDR_TEXT_MAX) and returns its length. */
size_t netaddr_text(const struct netaddr *a, char *out, size_t cap);

/*
 * Writes the address's key into out (cap >= NETADDR_KEY_MAX) and returns its length: an
 * IPv4 address as its text, an IPv6 one cut to its first v6_prefix bits (1..128) followed
 * by "/N" ("2001:db8:1:2::/64"), or its text alone when v6_prefix is 128. One host may hold
 * a whole /64, so counting IPv6 callers by address would let it be a thousand callers.
 */
size_t netaddr_key(const struct netaddr *a, unsigned v6_prefix, char *out, size_t cap);

/* A CIDR range: the addresses whose first `bits` bits are those of net. */
struct cidr {
    struct netaddr net;
    unsigned bits;
};

/* A list of ranges; zeroed, it is empty. */
struct cidr_list {
    struct cidr *v;
    size_t n;
};

/*
 * Parses "CIDR[,CIDR...]" into *list (zeroed by the caller): each item an
 * IPv4 or IPv6 address with an optional "/N" (without it, the one address),
 * spaces around items allowed. An empty item, a prefix beyond the family's
 * width and an address with bits set past its prefix ("10.0.0.1/8") are
 * errors. Returns 0 (the list then owns its array: cidr_list_free), or -1
 * with a message naming the bad item in err and nothing to free.
 */
int cidr_list_parse(const char *s, struct cidr_list *list, char *err, size_t errlen);

/* Whether a falls in one of the list's ranges (an empty list holds nothing). */
bool cidr_list_match(const struct cidr_list *list, const struct netaddr *a);

/* Frees the list's array and empties it. */
void cidr_list_free(struct cidr_list *list);

#endif
