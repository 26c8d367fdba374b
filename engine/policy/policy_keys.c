/* policy_keys.c - which endpoint of a snapshot a cache key belongs to, from the key templates. */
#include "policy_keys.h"

#include <string.h>

#include "template.h"

/* The values an endpoint fixes in every key it writes: its name, and GET. */
static int
fixed_value(void *ctx, enum template_var var, const char *name, size_t namelen, const char **val,
            size_t *len)
{
    const struct policy_endpoint *ep = ctx;

    (void)name;
    (void)namelen;
    if (var == TV_ROUTE) {
        *val = ep->name;
        *len = strlen(ep->name);
        return 1;
    }
    if (var == TV_METHOD) {
        *val = "GET";
        *len = 3;
        return 1;
    }
    return 0;
}

const struct policy_endpoint *
policy_key_endpoint(const struct policy *p, const char *key, size_t keylen)
{
    for (size_t i = 0; i < p->nendpoints; i++) {
        const struct policy_endpoint *ep = &p->endpoints[i];
        if (!ep->cached || !ep->cache_key || !ep->name)
            continue;
        if (template_match(ep->cache_key, key, keylen, fixed_value, (void *)ep))
            return ep;
    }
    return NULL;
}
