/* store_redis_fleet.c - the Redis store's fleet: instances publishing themselves to one hash. */
#define _GNU_SOURCE
#include "store_redis_fleet.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "embedded.h"
#include "log.h"
#include "util.h"

#define MAX_MEMBERS 1024 /* instances reported at most */

struct fleet_op {
    uint64_t *failed;
    store_fleet_fn *done;
    void *arg;
};

static const struct embedded_file *
fleet_script(void)
{
    for (const struct embedded_file *f = embedded_lua; f->module; f++)
        if (strcmp(f->module, "redis.fleet") == 0)
            return f;
    log_abort("the script redis.fleet is not embedded");
}

/* Copies the next tab-separated field of [*p, end) into out (cap bytes with the NUL); after the
 * last one *p is NULL, and reading past it fails. */
static int
field(const char **p, const char *end, char *out, size_t cap)
{
    if (!*p)
        return -1;
    const char *tab = memchr(*p, '\t', (size_t)(end - *p));
    const char *e = tab ? tab : end;

    if ((size_t)(e - *p) >= cap)
        return -1;
    memcpy(out, *p, (size_t)(e - *p));
    out[e - *p] = '\0';
    *p = tab ? tab + 1 : NULL;
    return 0;
}

static int
number(const char *s, uint64_t *v)
{
    char *e;

    errno = 0;
    *v = strtoull(s, &e, 10);
    return errno || e == s || *e ? -1 : 0;
}

int
redis_fleet_parse(const char *id, size_t idlen, const char *v, size_t len,
                  struct store_fleet_member *m)
{
    const char *p = v, *end = v + len;
    char seen[24], gen[24], started[24], sup[4], dup[4];

    memset(m, 0, sizeof(*m));
    if (idlen == 0 || idlen >= sizeof(m->id) || memchr(id, '\0', idlen))
        return -1;
    memcpy(m->id, id, idlen);
    if (field(&p, end, seen, sizeof(seen)) || field(&p, end, m->listen, sizeof(m->listen)) ||
        field(&p, end, m->policy_hash, sizeof(m->policy_hash)) ||
        field(&p, end, gen, sizeof(gen)) || field(&p, end, started, sizeof(started)) ||
        field(&p, end, sup, sizeof(sup)) || field(&p, end, dup, sizeof(dup)) || p)
        return -1;
    if (number(seen, &m->seen_ms) || number(gen, &m->generation) || number(started, &m->started_ms))
        return -1;
    m->store_up = strcmp(sup, "1") == 0;
    m->db_up = strcmp(dup, "1") == 0;
    return 0;
}

static void
on_fleet(void *arg, redisReply *r)
{
    struct fleet_op *op = arg;
    struct store_fleet_member *m = NULL;
    size_t n = 0;
    int status = 0;

    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 1) {
        status = r ? -1 : STORE_UNAVAILABLE;
        (*op->failed)++;
        goto out;
    }
    size_t cap = (r->elements - 1) / 2;
    m = xcalloc(cap ? cap : 1, sizeof(*m));
    for (size_t i = 1; i + 1 < r->elements && n < MAX_MEMBERS; i += 2) {
        const redisReply *id = r->element[i], *v = r->element[i + 1];
        if (id->type == REDIS_REPLY_STRING && v->type == REDIS_REPLY_STRING &&
            redis_fleet_parse(id->str, id->len, v->str, v->len, &m[n]) == 0)
            n++;
    }
out:
    op->done(op->arg, status, status == 0 ? m : NULL, n);
    free(m);
    free(op);
}

void
redis_fleet(struct redis_conn *c, uint64_t *failed, const struct store_fleet_member *me,
            uint64_t ttl_ms, store_fleet_fn *done, void *arg)
{
    const struct embedded_file *script = fleet_script();
    struct fleet_op *op = xmalloc(sizeof(*op));
    char rec[512];
    struct sbuf b = {0};

    *op = (struct fleet_op){.failed = failed, .done = done, .arg = arg};
    int len = snprintf(rec, sizeof(rec), "%s\t%s\t%llu\t%llu\t%d\t%d",
                       strchr(me->listen, '\t') ? "" : me->listen, me->policy_hash,
                       (unsigned long long)me->generation, (unsigned long long)me->started_ms,
                       me->store_up ? 1 : 0, me->db_up ? 1 : 0);
    resp_argc(&b, 7);
    resp_str(&b, "EVAL");
    resp_arg(&b, script->source, script->len);
    resp_str(&b, "1");
    resp_str(&b, REDIS_FLEET_KEY);
    resp_str(&b, me->id);
    resp_arg(&b, rec, (size_t)len < sizeof(rec) ? (size_t)len : sizeof(rec) - 1);
    resp_u64(&b, ttl_ms);
    redis_conn_send(c, -1, &b, on_fleet, op);
}
