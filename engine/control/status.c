/* status.c - the state of the process as one JSON object: policy generations and reloads, the
 * store's health, the access log, database-driven invalidation. */
#include "status.h"

#include "gateway.h"
#include "notify.h"
#include "reload.h"

json_t *
status_json(const struct status_sources *src)
{
    json_t *o = src->reloader ? reloader_status(src->reloader) : json_object();
    if (src->gateway)
        json_object_set_new(o, "store", gateway_store_status(src->gateway));
    if (src->gateway)
        json_object_set_new(o, "database", gateway_db_status(src->gateway));
    if (src->gateway)
        json_object_set_new(o, "access_log", gateway_access_status(src->gateway));
    if (src->gateway)
        json_object_set_new(o, "fleet", gateway_fleet_status(src->gateway));
    if (src->notifier)
        json_object_set_new(o, "notify", notify_status(src->notifier));
    return o;
}
