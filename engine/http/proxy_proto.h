/* proxy_proto.h - the PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2). */
#ifndef SLUICE_PROXY_PROTO_H
#define SLUICE_PROXY_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "netaddr.h"

/* The longest header read: a v1 line (107 bytes, section 2.1) or a v2 header with its TLVs. */
#define PROXY_PROTO_V1_MAX 107
#define PROXY_PROTO_V2_MAX (16 + 4096)

/* What a header says. */
struct proxy_proto {
    int version;        /* 1 or 2 */
    int has_addr;       /* 1: src is the client's; 0: keep the peer (v1 UNKNOWN, v2 LOCAL,
                           v2 AF_UNSPEC or AF_UNIX) */
    struct netaddr src; /* the source address, when has_addr */
    uint16_t src_port;  /* the source port, when has_addr */
};

/*
 * Parses the PROXY header at the start of buf[0..len). Returns the header's
 * length (> 0) with *out set, 0 when the bytes so far are a proper prefix of a
 * header (read more), or -1 when they cannot start one: neither signature
 * ("PROXY " for v1, the 12 bytes of section 2.2 for v2), a v1 line without
 * CRLF within 107 bytes, a v1 protocol other than TCP4, TCP6 and UNKNOWN,
 * addresses not of the family named, ports not decimal within 0..65535, single
 * spaces missing; a v2 version other than 2, a command other than LOCAL and
 * PROXY, a family and protocol other than UNSPEC, TCP over IPv4 or IPv6 and
 * UNIX stream, an address block shorter than its family's, a length past
 * PROXY_PROTO_V2_MAX. TLVs after the addresses are skipped unread. buf is only
 * read.
 */
int proxy_proto_parse(const void *buf, size_t len, struct proxy_proto *out);

#endif
