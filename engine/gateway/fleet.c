/* fleet.c - the instances sharing this one's store: publishing this one, the last list seen. */
#define _GNU_SOURCE
#include "fleet.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

void
gw_fleet_init(struct gw_fleet *f, uint64_t ttl_ms)
{
    char host[64] = "";

    memset(f, 0, sizeof(*f));
    pthread_mutex_init(&f->lock, NULL);
    f->ttl_ms = ttl_ms ? ttl_ms : GW_FLEET_TTL_MS;
    f->every_ms = f->ttl_ms / 6 < GW_FLEET_EVERY_MS ? f->ttl_ms / 6 : GW_FLEET_EVERY_MS;
    if (f->every_ms < 100)
        f->every_ms = 100;
    if (gethostname(host, sizeof(host) - 1) != 0 || !host[0])
        snprintf(host, sizeof(host), "localhost");
    snprintf(f->id, sizeof(f->id), "%s:%ld", host, (long)getpid());
    f->started_ms = store_now_ms();
}

void
gw_fleet_free(struct gw_fleet *f)
{
    free(f->members);
    f->members = NULL;
    pthread_mutex_destroy(&f->lock);
}

void
gw_fleet_set_listen(struct gw_fleet *f, const char *listen)
{
    pthread_mutex_lock(&f->lock);
    snprintf(f->listen, sizeof(f->listen), "%s", listen);
    pthread_mutex_unlock(&f->lock);
}

struct publish {
    struct gw_fleet *f;
    bool shared;
};

static void
on_fleet(void *arg, int status, const struct store_fleet_member *m, size_t n)
{
    struct publish *p = arg;
    struct gw_fleet *f = p->f;

    pthread_mutex_lock(&f->lock);
    f->busy = false;
    if (status == 0) {
        free(f->members);
        f->members = n ? xmalloc(n * sizeof(*m)) : NULL;
        if (n)
            memcpy(f->members, m, n * sizeof(*m));
        f->n = n;
        f->updated_ms = store_now_ms();
        f->shared = p->shared;
    }
    pthread_mutex_unlock(&f->lock);
    free(p);
}

void
gw_fleet_publish(struct gw_fleet *f, struct store *s, const char *policy_hash, uint64_t generation,
                 bool store_up, bool db_up)
{
    struct store_fleet_member me = {.generation = generation,
                                    .started_ms = f->started_ms,
                                    .store_up = store_up,
                                    .db_up = db_up};
    uint64_t ttl;

    pthread_mutex_lock(&f->lock);
    if (f->busy) {
        pthread_mutex_unlock(&f->lock);
        return;
    }
    f->busy = true;
    snprintf(me.id, sizeof(me.id), "%s", f->id);
    snprintf(me.listen, sizeof(me.listen), "%s", f->listen);
    ttl = f->ttl_ms;
    pthread_mutex_unlock(&f->lock);
    snprintf(me.policy_hash, sizeof(me.policy_hash), "%s", policy_hash);

    struct publish *p = xmalloc(sizeof(*p));
    /* the memory store's fleet is this process's; a shared store that is down falls back to it */
    *p = (struct publish){.f = f, .shared = store_up && strcmp(s->ops->name, "memory") != 0};
    store_fleet(s, &me, ttl, on_fleet, p); /* may complete before it returns */
}

json_t *
gw_time_json(uint64_t ms)
{
    char when[UTIL_RFC3339_LEN];

    if (!ms)
        return json_null();
    util_rfc3339_ms(when, ms);
    return json_string(when);
}

json_t *
gw_fleet_json(struct gw_fleet *f)
{
    json_t *list = json_array();
    bool same = true;
    uint64_t now = store_now_ms(), ref = 0;

    pthread_mutex_lock(&f->lock);
    /* The store's clock at the publication: the latest seen (this instance's own). */
    for (size_t i = 0; i < f->n; i++)
        if (f->members[i].seen_ms > ref)
            ref = f->members[i].seen_ms;
    uint64_t since = f->updated_ms && now > f->updated_ms ? now - f->updated_ms : 0;
    for (size_t i = 0; i < f->n; i++) {
        const struct store_fleet_member *m = &f->members[i];
        if (strcmp(m->policy_hash, f->members[0].policy_hash) != 0)
            same = false;
        json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:o, s:I, s:b, s:b, s:b}", "id", m->id,
                              "listen", m->listen, "policy_hash", m->policy_hash, "generation",
                              (json_int_t)m->generation, "started", gw_time_json(m->started_ms),
                              "seen_ms_ago", (json_int_t)(ref - m->seen_ms + since), "store_up",
                              m->store_up, "db_up", m->db_up, "self", strcmp(m->id, f->id) == 0);
        json_array_append_new(list, o);
    }
    json_t *o = json_pack("{s:o, s:b, s:I, s:o, s:b}", "instances", list, "same_policies", same,
                          "ttl_ms", (json_int_t)f->ttl_ms, "updated", gw_time_json(f->updated_ms),
                          "shared", f->shared);
    pthread_mutex_unlock(&f->lock);
    return o;
}
