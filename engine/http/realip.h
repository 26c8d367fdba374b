/* realip.h - the client address of a request that came through trusted proxies. */
#ifndef SLUICE_REALIP_H
#define SLUICE_REALIP_H

#include "http_parse.h"
#include "netaddr.h"

/* Where realip_walk() found the client address. */
enum realip_source {
    REALIP_PEER = 0,  /* no usable field: the peer itself */
    REALIP_XFF,       /* X-Forwarded-For */
    REALIP_FORWARDED, /* Forwarded (RFC 7239) */
};

/*
 * The client address of request h whose peer (trusted by the caller) is
 * `peer`, written to *out; returns where it came from. The entries of every
 * X-Forwarded-For line, taken as one list in order, are walked from the
 * right: an address in `trusted` is a proxy and the walk goes on to its left,
 * the first one that is not is the client. When every entry is trusted the
 * left-most one is the client (nginx's real_ip_recursive). Without any
 * X-Forwarded-For line, the for= parameters of the Forwarded lines are walked
 * the same way (RFC 7239 section 5.2: quoted or not, "[IPv6]", a port after
 * ":"). An entry that is not an address (garbage, a Forwarded element without
 * for=, "unknown" or an obfuscated identifier such as "_hidden") ends the walk
 * and the last address walked is the client: whoever stands behind such an
 * entry cannot be vouched for, and skipping it would let the entries left of
 * it choose the address. Empty list elements are skipped (RFC 9110 section
 * 5.6.1). h's strings are only read.
 */
enum realip_source realip_walk(const struct http_request *h, const struct cidr_list *trusted,
                               const struct netaddr *peer, struct netaddr *out);

/*
 * Parses one node of a list entry, s[0..len) without surrounding spaces: an
 * address, "IPv4:port", "[IPv6]" or "[IPv6]:port". Returns 0 with *out set,
 * or -1.
 */
int realip_node(const char *s, size_t len, struct netaddr *out);

#endif
