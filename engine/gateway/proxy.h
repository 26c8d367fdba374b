/* proxy.h - the upstream source: a request forwarded to an app, its answer cached by HTTP rules. */
#ifndef SLUICE_PROXY_H
#define SLUICE_PROXY_H

#include "req.h"

/* Sends the request to its endpoint's upstream; the answer is stored and/or replied. */
void gw_proxy_run(struct gw_req *rq);

#endif
