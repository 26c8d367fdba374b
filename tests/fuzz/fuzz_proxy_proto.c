/* fuzz_proxy_proto.c - libFuzzer target: the PROXY protocol header parser, and the
 * X-Forwarded-For / Forwarded walk on the bytes after a header. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy_proto.h"
#include "realip.h"

/* Checked in every build type (assert() vanishes under NDEBUG). */
#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c);                  \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct proxy_proto pp, again;
    if (size > PROXY_PROTO_V2_MAX + 256)
        return 0;
    /* A copy of exactly `size` bytes, so the sanitizer sees any read past the end. */
    uint8_t *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    int r = proxy_proto_parse(buf, size, &pp);
    CHECK(r >= -1 && (r <= 0 || (size_t)r <= size));
    if (r > 0) {
        CHECK(pp.version == 1 || pp.version == 2);
        CHECK(pp.version != 1 || r <= PROXY_PROTO_V1_MAX);
        CHECK(r <= PROXY_PROTO_V2_MAX);
        /* The header alone says the same; every shorter prefix waits for more. */
        CHECK(proxy_proto_parse(buf, (size_t)r, &again) == r);
        CHECK(again.has_addr == pp.has_addr && again.version == pp.version);
        CHECK(!pp.has_addr || memcmp(&again.src, &pp.src, sizeof(pp.src)) == 0);
        for (size_t k = 0; k < (size_t)r; k += 1 + (size_t)r / 64)
            CHECK(proxy_proto_parse(buf, k, &again) == 0);
    } else if (r == 0) {
        /* Waiting is only for what can still become a header. */
        CHECK(size < PROXY_PROTO_V2_MAX);
        for (size_t k = 0; k < size; k += 1 + size / 64)
            CHECK(proxy_proto_parse(buf, k, &again) == 0);
    } else {
        /* Once refused, more bytes do not help. */
        uint8_t *more = malloc(size + 8);
        memcpy(more, buf, size);
        memset(more + size, '\n', 8);
        CHECK(proxy_proto_parse(more, size + 8, &again) == -1);
        free(more);
    }
    /* The rest as one X-Forwarded-For and one Forwarded value, walked past 10/8 and ::1. */
    size_t off = r > 0 ? (size_t)r : 0;
    static struct cidr_list trusted;
    static int init;
    if (!init) {
        char err[128];
        CHECK(cidr_list_parse("10.0.0.0/8,::1,127.0.0.1", &trusted, err, sizeof(err)) == 0);
        init = 1;
    }
    struct http_request h;
    memset(&h, 0, sizeof(h));
    h.nheaders = 2;
    h.headers[0].name = (struct http_str){"X-Forwarded-For", 15};
    h.headers[1].name = (struct http_str){"Forwarded", 9};
    const char *rest = (const char *)buf + off;
    size_t rlen = size - off, half = rlen / 2;
    h.headers[0].value = (struct http_str){rest, half};
    h.headers[1].value = (struct http_str){rest + half, rlen - half};
    struct netaddr peer = {.a = {127, 0, 0, 1}}, out;
    enum realip_source s = realip_walk(&h, &trusted, &peer, &out);
    CHECK(s == REALIP_PEER || s == REALIP_XFF);
    h.nheaders = 1;
    h.headers[0] = h.headers[1];
    s = realip_walk(&h, &trusted, &peer, &out);
    CHECK(s == REALIP_PEER || s == REALIP_FORWARDED);
    free(buf);
    return 0;
}
