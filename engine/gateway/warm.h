/* warm.h - cache warming: the warm callers of each generation, filled in the background at a
 * bounded rate. */
#ifndef SLUICE_WARM_H
#define SLUICE_WARM_H

#include "req.h"

/* Makes wk the warming worker (its timer); then gw_warm_start() warms each new generation. */
void gw_warm_init(struct gw_worker *wk);

/* Starts warming generation p's warm callers in the background (drops an unfinished one). */
void gw_warm_start(struct gw_worker *wk, struct policy *p);

/*
 * Returns the statement that runs a warm query `sql` (a policy_warm's): its rows as one JSON
 * array of objects, as a new string. `sluice check` prepares the same text.
 */
char *gw_warm_query_sql(const char *sql);

/* Stops warming and frees its state (requests in flight finish on their own). */
void gw_warm_free(struct gw_worker *wk);

#endif
