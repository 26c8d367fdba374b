/* fuzz_query.c - libFuzzer target: the canonical query parse; its encoding must parse back to the
 * same parameters and encode to the same text. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "query.h"

/* Checked in every build type (assert() vanishes under NDEBUG). */
#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c);                  \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static bool
same(const struct http_query *a, const struct http_query *b)
{
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++) {
        const struct http_query_param *x = &a->params[i], *y = &b->params[i];
        if (x->nlen != y->nlen || x->vlen != y->vlen || x->has_value != y->has_value ||
            memcmp(x->name, y->name, x->nlen) || memcmp(x->value, y->value, x->vlen))
            return false;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct http_query a, b;
    static char b1[8192], b2[8192], e1[3 * 8192], e2[3 * 8192];
    if (size > 4096)
        return 0;
    if (http_query_parse((const char *)data, size, b1, sizeof(b1), &a) != HTTP_QUERY_OK)
        return 0;
    for (size_t i = 1; i < a.n; i++) /* sorted by name */
        CHECK(memcmp(a.params[i - 1].name, a.params[i].name,
                     a.params[i - 1].nlen < a.params[i].nlen ? a.params[i - 1].nlen
                                                             : a.params[i].nlen) <= 0);
    long l1 = http_query_encode(&a, NULL, 0, e1, sizeof(e1));
    CHECK(l1 >= 0 && (size_t)l1 == strlen(e1));
    for (long i = 0; i < l1; i++) /* nothing a parser could split or read twice ways */
        CHECK(e1[i] != ' ' && e1[i] != '#' && (unsigned char)e1[i] > 0x20 &&
              (unsigned char)e1[i] < 0x7f);
    CHECK(http_query_parse(e1, (size_t)l1, b2, sizeof(b2), &b) == HTTP_QUERY_OK);
    CHECK(same(&a, &b));
    long l2 = http_query_encode(&b, NULL, 0, e2, sizeof(e2));
    CHECK(l1 == l2 && memcmp(e1, e2, (size_t)l1) == 0);
    return 0;
}
