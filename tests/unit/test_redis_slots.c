/* test_redis_slots.c - Redis Cluster key distribution: CRC16, hash tags, slot maps, redirections.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "redis_cluster.h"
#include "redis_slots.h"
#include "store_redis_codec.h"

#define S(str) (str), strlen(str)

/* Key distribution model: the CRC16 is XMODEM; the specification's check value. */
static void
test_key_distribution_model_crc16_check_value(void **state)
{
    assert_int_equal(redis_slots_crc16(S("123456789")), 0x31C3);
    assert_int_equal(redis_slots_crc16("", 0), 0);
}

/* Key distribution model: slots of known keys (as CLUSTER KEYSLOT answers them). */
static void
test_key_distribution_model_known_slots(void **state)
{
    assert_int_equal(redis_slots_key_slot(S("foo")), 12182);
    assert_int_equal(redis_slots_key_slot(S("bar")), 5061);
    assert_int_equal(redis_slots_key_slot(S("hello")), 866);
    assert_int_equal(redis_slots_key_slot(S("123456789")), 0x31C3 & 16383);
}

/* Hash tags: the first {...} with something inside decides; an empty one does not. */
static void
test_hash_tags_first_non_empty_braces(void **state)
{
    unsigned a = redis_slots_key_slot(S("{user1000}.following"));

    assert_int_equal(a, redis_slots_key_slot(S("{user1000}.followers")));
    assert_int_equal(a, redis_slots_key_slot(S("user1000")));
    /* Only the first '{' counts, and the first '}' after it. */
    assert_int_equal(redis_slots_key_slot(S("foo{bar}{zap}")), redis_slots_key_slot(S("bar")));
    assert_int_equal(redis_slots_key_slot(S("foo{{bar}}zap")), redis_slots_key_slot(S("{bar")));
    /* "{}" is not a hash tag: the whole key is hashed. */
    assert_int_equal(redis_slots_key_slot(S("foo{}{bar}")),
                     redis_slots_crc16(S("foo{}{bar}")) & 16383);
    /* No closing brace: the whole key. */
    assert_int_equal(redis_slots_key_slot(S("foo{bar")), redis_slots_crc16(S("foo{bar")) & 16383);
}

/* The store's keys of one caller share one slot: limit, entry, response, lease and tag. */
static void
test_hash_tags_store_keys_of_one_caller_share_a_slot(void **state)
{
    struct sbuf b = {0};
    struct limiter_rule id = {.algo = LIMITER_SLIDING_WINDOW, .limit = 100, .window_ms = 3600000};
    unsigned slot;

    codec_limit_key(&b, &id, S("tier:u:42"));
    slot = redis_slots_key_slot(b.p, b.len);
    const char kinds[] = {'c', 'r', 'f', 'v'};
    for (size_t i = 0; i < sizeof(kinds); i++) {
        b.len = 0;
        codec_cache_key(&b, kinds[i], S("crm:contacts:42"));
        assert_int_equal(redis_slots_key_slot(b.p, b.len), slot);
    }
    b.len = 0;
    codec_cache_key(&b, 't', S("crm:42"));
    assert_int_equal(redis_slots_key_slot(b.p, b.len), slot);
    sbuf_free(&b);
}

static redisReply *
r_int(long long v)
{
    redisReply *r = calloc(1, sizeof(*r));
    r->type = REDIS_REPLY_INTEGER;
    r->integer = v;
    return r;
}

static redisReply *
r_str(const char *s)
{
    redisReply *r = calloc(1, sizeof(*r));
    r->type = REDIS_REPLY_STRING;
    r->len = strlen(s);
    r->str = strdup(s);
    return r;
}

static redisReply *
r_arr(size_t n, ...)
{
    va_list ap;
    redisReply *r = calloc(1, sizeof(*r));

    r->type = REDIS_REPLY_ARRAY;
    r->elements = n;
    r->element = calloc(n ? n : 1, sizeof(*r->element));
    va_start(ap, n);
    for (size_t i = 0; i < n; i++)
        r->element[i] = va_arg(ap, redisReply *);
    va_end(ap);
    return r;
}

/* Key distribution model: CLUSTER SLOTS gives each range's master first, then its replicas. */
static void
test_key_distribution_model_cluster_slots_reply(void **state)
{
    redisReply *r = r_arr(
        3,
        r_arr(4, r_int(0), r_int(5460), r_arr(3, r_str("127.0.0.1"), r_int(7000), r_str("id1")),
              r_arr(3, r_str("127.0.0.1"), r_int(7004), r_str("id5"))),
        r_arr(3, r_int(5461), r_int(10922), r_arr(2, r_str(""), r_int(7001))),
        r_arr(3, r_int(10923), r_int(16383), r_arr(2, r_str("127.0.0.2"), r_int(7002))));
    struct redis_slot_map m;
    char err[128];

    assert_int_equal(redis_slots_parse(r, &m, err, sizeof(err)), 0);
    assert_int_equal(m.n, 3);
    assert_int_equal(m.ranges[0].first, 0);
    assert_int_equal(m.ranges[0].last, 5460);
    assert_string_equal(m.ranges[0].host, "127.0.0.1");
    assert_int_equal(m.ranges[0].port, 7000);
    assert_string_equal(m.ranges[1].host, ""); /* unknown: the node asked */
    assert_int_equal(m.ranges[1].port, 7001);
    assert_int_equal(m.ranges[2].first, 10923);
    assert_int_equal(m.ranges[2].last, 16383);
    redis_slots_free(&m);
    redis_slots_free(&m);
    freeReplyObject(r);

    /* A slot beyond 16383, a range without a master, an error: refused. */
    r = r_arr(1, r_arr(3, r_int(0), r_int(16384), r_arr(2, r_str("h"), r_int(1))));
    assert_int_equal(redis_slots_parse(r, &m, err, sizeof(err)), -1);
    assert_null(m.ranges);
    freeReplyObject(r);
    r = r_arr(1, r_arr(2, r_int(0), r_int(10)));
    assert_int_equal(redis_slots_parse(r, &m, err, sizeof(err)), -1);
    freeReplyObject(r);
    redisReply e = {.type = REDIS_REPLY_ERROR,
                    .str = "ERR This instance has cluster support disabled",
                    .len = 46};
    assert_int_equal(redis_slots_parse(&e, &m, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "cluster support disabled"));
}

/* MOVED/ASK redirection: the slot and the node named in the error. */
static void
test_moved_and_ask_redirection_parsed(void **state)
{
    char host[64];
    unsigned slot;
    int port;

    assert_int_equal(
        redis_slots_redirect(S("MOVED 3999 127.0.0.1:6381"), &slot, host, sizeof(host), &port), 1);
    assert_int_equal(slot, 3999);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 6381);
    assert_int_equal(
        redis_slots_redirect(S("ASK 16383 ::1:7002"), &slot, host, sizeof(host), &port), 2);
    assert_int_equal(slot, 16383);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 7002);
    assert_int_equal(redis_slots_redirect(S("MOVED 16384 h:1"), &slot, host, sizeof(host), &port),
                     0);
    assert_int_equal(redis_slots_redirect(S("MOVED 1 h:"), &slot, host, sizeof(host), &port), 0);
    assert_int_equal(redis_slots_redirect(S("MOVED 1 h:70000"), &slot, host, sizeof(host), &port),
                     0);
    assert_int_equal(redis_slots_redirect(S("TRYAGAIN x"), &slot, host, sizeof(host), &port), 0);
    assert_int_equal(redis_slots_redirect(S("ASK x h:1"), &slot, host, sizeof(host), &port), 0);
}

/* redis+cluster:// names the seed nodes, each with the URL's user and password. */
static void
test_cluster_url_names_seed_nodes(void **state)
{
    struct redis_endpoint ep[REDIS_CLUSTER_MAX_SEEDS];
    char err[256];

    assert_true(redis_cluster_is_url("redis+cluster://h:1"));
    assert_false(redis_cluster_is_url("redis://h:1"));
    assert_int_equal(redis_cluster_parse_url("redis+cluster://u:p%40ss@10.0.0.1:7000,[::1]:7001,"
                                             "node-c:7002",
                                             ep, REDIS_CLUSTER_MAX_SEEDS, err, sizeof(err)),
                     3);
    assert_string_equal(ep[0].host, "10.0.0.1");
    assert_int_equal(ep[0].port, 7000);
    assert_string_equal(ep[1].host, "::1");
    assert_int_equal(ep[1].port, 7001);
    assert_string_equal(ep[2].host, "node-c");
    for (int i = 0; i < 3; i++) {
        assert_string_equal(ep[i].user, "u");
        assert_string_equal(ep[i].password, "p@ss");
    }
    assert_int_equal(redis_cluster_parse_url("redis+cluster://h:7000/0", ep, 16, err, sizeof(err)),
                     1);
    assert_int_equal(redis_cluster_parse_url("redis+cluster://h:7000/1", ep, 16, err, sizeof(err)),
                     -1);
    assert_non_null(strstr(err, "database 0"));
    assert_int_equal(redis_cluster_parse_url("redis+cluster://", ep, 16, err, sizeof(err)), -1);
    assert_int_equal(redis_cluster_parse_url("redis+cluster://a:1,b:x", ep, 16, err, sizeof(err)),
                     -1);
    assert_int_equal(
        redis_cluster_parse_url("redis+cluster://a:1,b:2,c:3", ep, 2, err, sizeof(err)), -1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_distribution_model_crc16_check_value),
        cmocka_unit_test(test_key_distribution_model_known_slots),
        cmocka_unit_test(test_hash_tags_first_non_empty_braces),
        cmocka_unit_test(test_hash_tags_store_keys_of_one_caller_share_a_slot),
        cmocka_unit_test(test_key_distribution_model_cluster_slots_reply),
        cmocka_unit_test(test_moved_and_ask_redirection_parsed),
        cmocka_unit_test(test_cluster_url_names_seed_nodes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
