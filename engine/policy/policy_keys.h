/* policy_keys.h - which endpoint of a snapshot a cache key belongs to. */
#ifndef SLUICE_POLICY_KEYS_H
#define SLUICE_POLICY_KEYS_H

#include <stddef.h>

#include "policy.h"

/*
 * Returns the first endpoint of p (in policy order) whose cache key template
 * could have written key[0..keylen), or NULL when none could; borrowed from
 * p. Entries do not record their endpoint: this reads the key back. Only
 * cached endpoints are looked at. A Vary variant's key (the primary key,
 * byte 0x1f, the fields' values) matches none: pass its primary part, the
 * text before that byte. A template's literal parts must appear in order;
 * {route} must be the endpoint's own name and {method} "GET" (only GET and
 * HEAD are cached, and HEAD is keyed as GET), both escaped as expansion
 * escapes them; every other variable takes any value (template_match()). So
 * a default key ("{method}:{route}:...") belongs to its own endpoint only,
 * while two endpoints whose templates can write the same text (a key
 * "items:{user}" declared twice) share their keys and the first is named.
 */
const struct policy_endpoint *policy_key_endpoint(const struct policy *p, const char *key,
                                                  size_t keylen);

#endif
