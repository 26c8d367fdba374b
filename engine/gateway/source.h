/* source.h - the origins of a request: SQL statements, fixed answers, and the dispatch to the
 * upstream source. */
#ifndef SLUICE_SOURCE_H
#define SLUICE_SOURCE_H

#include "req.h"

/*
 * Sends the request to its endpoint's origin (SQL, upstream or fixed
 * answer); the answer fills the cache, invalidates a write's tags and/or is
 * replied. Fails the request with 503 once its worker is closing.
 */
void gw_to_origin(struct gw_req *rq);

#endif
