/* sha1.h - SHA-1 digests, for naming Redis scripts (EVALSHA). */
#ifndef SLUICE_SHA1_H
#define SLUICE_SHA1_H

#include <stddef.h>

/* Writes the SHA-1 of len bytes at data to hex as 40 lowercase hex digits and a NUL. */
void sha1_hex(const void *data, size_t len, char hex[41]);

#endif
