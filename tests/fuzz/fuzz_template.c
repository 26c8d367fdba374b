/* fuzz_template.c - libFuzzer target: compiles input as a key template and expands it. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template.h"

/* Checked in every build type (assert() vanishes under NDEBUG). */
#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c);                  \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/*
 * Input: template text, then optionally a NUL byte and value bytes. Values are
 * handed out in order, one per lookup: each takes a length byte (0xff means
 * absent) and that many bytes, wrapping around the value bytes.
 */
struct values {
    const uint8_t *p;
    size_t len, pos;
};

static int
lookup(void *vctx, enum template_var var, const char *name, size_t namelen, const char **val,
       size_t *len)
{
    struct values *v = vctx;
    size_t n;

    CHECK((unsigned)var < TV_COUNT);
    CHECK(name == NULL ? namelen == 0 : strlen(name) == namelen && namelen > 0);
    if (v->len == 0)
        return 0;
    n = v->p[v->pos % v->len];
    v->pos++;
    if (n == 0xff)
        return 0;
    if (n > v->len)
        n = v->len;
    *val = (const char *)v->p + (v->pos % v->len);
    if (n > v->len - (v->pos % v->len))
        n = v->len - (v->pos % v->len);
    *len = n;
    v->pos += n;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t tlen = nul ? (size_t)(nul - data) : size;
    char *src = malloc(tlen + 1);
    char err[256];
    struct template *t;

    memcpy(src, data, tlen);
    src[tlen] = '\0';
    t = template_compile(src, TV_ALL_REQUEST | TV_BIT(TV_ROW), err, sizeof(err));
    if (t == NULL) {
        CHECK(strlen(err) < sizeof(err));
        free(src);
        return 0;
    }
    CHECK(strcmp(template_source(t), src) == 0);

    /* Each variable takes at least 3 source bytes and expands to at most 3 * 255 bytes. */
    size_t bound = tlen + 1 + (tlen / 3 + 1) * (3 * 255 + 2);
    char *big = malloc(bound);
    struct values v = {nul ? nul + 1 : NULL, nul ? size - tlen - 1 : 0, 0};
    long full = template_expand(t, lookup, &v, big, bound);
    CHECK(full >= 0);
    CHECK((size_t)full < bound && big[full] == '\0' && strlen(big) == (size_t)full);

    /* Expand again into buffers of exact sizes around the needed one: ASan sees any overflow. */
    size_t caps[] = {0,
                     1,
                     2,
                     3,
                     4,
                     (size_t)full / 2,
                     (size_t)full - 2,
                     (size_t)full - 1,
                     (size_t)full,
                     (size_t)full + 1,
                     (size_t)full + 2};
    for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
        size_t cap = caps[i];
        if (cap > (size_t)full + 2)
            continue; /* wrapped below zero */
        char *out = malloc(cap ? cap : 1);
        v.pos = 0;
        long n = template_expand(t, lookup, &v, out, cap);
        if (cap > (size_t)full) {
            CHECK(n == full);
            CHECK(memcmp(out, big, (size_t)full + 1) == 0);
        } else {
            CHECK(n == -1);
            CHECK(cap == 0 || out[0] == '\0');
        }
        free(out);
    }
    free(big);

    enum template_var var;
    const char *name;
    if (template_single_var(t, &var, &name)) {
        CHECK(template_uses(t) == TV_BIT(var));
        CHECK(src[0] == '{' && src[tlen - 1] == '}');
    }
    template_free(t);
    free(src);
    return 0;
}
