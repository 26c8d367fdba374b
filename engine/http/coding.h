/* coding.h - choosing a response's content coding from a request's Accept-Encoding. */
#ifndef SLUICE_CODING_H
#define SLUICE_CODING_H

#include <stddef.h>

#include "codec.h"
#include "http_parse.h"

/*
 * The coding among `offered` (a set of CODEC_BIT()s) to answer with for the Accept-Encoding
 * field values values[0..n) taken together (RFC 9110 section 12.5.3; q values, section
 * 12.4.2): the offered coding with the highest q above 0, a coding not listed taking the q of
 * "*" when there is one; among equal q values the server's preference, br, then zstd, then
 * gzip. A coding is chosen only when its q is at least that of "identity" if the field lists
 * identity (or "*" with no identity). Returns the coding, or -1 for the identity body: no
 * field at all (n 0), an empty one, nothing offered acceptable. "identity;q=0" with nothing
 * acceptable still gets -1: the identity body is the answer a client refusing everything
 * gets (the server may answer 415, and does not). Members that do not parse are ignored.
 */
int coding_negotiate(const struct http_str *values, size_t n, unsigned offered);

/* coding_negotiate() over the request's Accept-Encoding fields (every line of it). */
int coding_for_request(const struct http_request *h, unsigned offered);

#endif
