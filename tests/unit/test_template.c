/* test_template.c - unit tests of key templates: compile errors, expansion, escaping. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template.h"

/* A fake request: one value (or NULL for absent) per variable and name. */
struct entry {
    enum template_var var;
    const char *name; /* NULL for variables without a name */
    const char *val;  /* NULL: absent */
    size_t len;       /* used when val has embedded NULs; 0 means strlen */
};

struct ctx {
    const struct entry *e;
    size_t n;
    char calls[512]; /* "var:name;" per lookup, in order */
};

static int
lookup(void *vctx, enum template_var var, const char *name, size_t namelen, const char **val,
       size_t *len)
{
    struct ctx *c = vctx;
    size_t used = strlen(c->calls);

    if (name == NULL)
        assert_int_equal(namelen, 0);
    else
        assert_int_equal(strlen(name), namelen);
    snprintf(c->calls + used, sizeof(c->calls) - used, "%d:%s;", (int)var, name ? name : "-");
    for (size_t i = 0; i < c->n; i++) {
        const struct entry *e = &c->e[i];
        if (e->var != var)
            continue;
        if ((e->name == NULL) != (name == NULL))
            continue;
        if (name != NULL && strcmp(e->name, name) != 0)
            continue;
        if (e->val == NULL)
            return 0;
        *val = e->val;
        *len = e->len ? e->len : strlen(e->val);
        return 1;
    }
    return 0;
}

static struct template *
compile_ok(const char *src, unsigned allowed)
{
    char err[256] = "";
    struct template *t = template_compile(src, allowed, err, sizeof(err));
    if (t == NULL)
        fail_msg("template_compile(\"%s\") failed: %s", src, err);
    return t;
}

/* Expands src with the given entries and checks the text byte for byte. */
static void
expands_to(const char *src, const struct entry *e, size_t n, const char *want)
{
    struct template *t = compile_ok(src, TV_ALL_REQUEST | TV_BIT(TV_ROW));
    struct ctx c = {e, n, ""};
    char out[512];
    long len = template_expand(t, lookup, &c, out, sizeof(out));
    assert_int_equal(len, (long)strlen(want));
    assert_memory_equal(out, want, strlen(want) + 1);
    template_free(t);
}

static void
compile_fails(const char *src, unsigned allowed, const char *want)
{
    char err[256] = "";
    struct template *t = template_compile(src, allowed, err, sizeof(err));
    if (t != NULL)
        fail_msg("template_compile(\"%s\") should fail with: %s", src, want);
    assert_string_equal(err, want);
}

static void
test_basic(void **state)
{
    const struct entry e[] = {{TV_USER, NULL, "42", 0}};
    (void)state;
    expands_to("crm:contacts:{user}", e, 1, "crm:contacts:42");
    expands_to("{user}", e, 1, "42");
    expands_to("crm:{user}:x", e, 1, "crm:42:x");
    expands_to("static:key", e, 1, "static:key");
    expands_to("", e, 1, "");
    expands_to("{user}:{user}", e, 1, "42:42");
    /* Non-ASCII literal text is copied as is. */
    expands_to("\xd0\xba:{user}", e, 1, "\xd0\xba:42");
}

/* {path} and {query} stand alone too: the whole path, the whole (canonical) query. */
static void
test_whole_path_and_query(void **state)
{
    const struct entry e[] = {
        {TV_PATH, NULL, "/a/b%2Fc", 0},
        {TV_QUERY, NULL, "a=1&b=x+y", 0},
        {TV_PATH, "id", "7", 0},
    };
    (void)state;
    expands_to("{method}:{path}:{query}", e, 3, "%-:/a/b%252Fc:a=1&b=x+y");
    expands_to("p:{path.id}:{path}", e, 3, "p:7:/a/b%252Fc");
    struct template *t = compile_ok("{path}:{query}", TV_ALL_REQUEST);
    enum template_var var;
    const char *name = "x";
    assert_int_equal(template_single_var(t, &var, &name), 0);
    template_free(t);
    t = compile_ok("{query}", TV_ALL_REQUEST);
    assert_int_equal(template_single_var(t, &var, &name), 1);
    assert_int_equal(var, TV_QUERY);
    assert_null(name);
    template_free(t);
}

static void
test_all_variables(void **state)
{
    const struct entry e[] = {
        {TV_USER, NULL, "u1", 0},          {TV_TENANT, NULL, "t1", 0},
        {TV_TIER, NULL, "free", 0},        {TV_IP, NULL, "10.0.0.1", 0},
        {TV_METHOD, NULL, "GET", 0},       {TV_ROUTE, NULL, "/api/users/{id}", 0},
        {TV_PATH, "id", "7", 0},           {TV_QUERY, "type", "contacts", 0},
        {TV_HEADER, "x-user-id", "99", 0}, {TV_BODY, "name", "Ann", 0},
        {TV_ROW, "owner_id", "5", 0},
    };
    const char *src = "{user}:{tenant}:{tier}:{ip}:{method}:{route}:{path.id}:{query.type}:"
                      "{header.X-User-Id}:{body.name}:{row.owner_id}";
    struct template *t = compile_ok(src, TV_ALL_REQUEST | TV_BIT(TV_ROW));
    struct ctx c = {e, sizeof(e) / sizeof(e[0]), ""};
    char out[256];
    const char *want = "u1:t1:free:10.0.0.1:GET:/api/users/%7Bid%7D:7:contacts:99:Ann:5";

    (void)state;
    assert_int_equal(template_expand(t, lookup, &c, out, sizeof(out)), (long)strlen(want));
    assert_string_equal(out, want);
    /* One lookup per variable, in order; header names arrive lowercased. */
    assert_string_equal(c.calls,
                        "0:-;1:-;2:-;3:-;4:-;5:-;6:id;7:type;8:x-user-id;9:name;10:owner_id;");
    assert_int_equal(template_uses(t), TV_ALL_REQUEST | TV_BIT(TV_ROW));
    assert_string_equal(template_source(t), src);
    assert_ptr_not_equal(template_source(t), src); /* a copy */
    template_free(t);
}

static void
test_names(void **state)
{
    /* Header names are case-insensitive (lowercased); other names keep their case. */
    const struct entry e[] = {
        {TV_HEADER, "x-tenant-id", "h", 0}, {TV_PATH, "Id", "P", 0}, {TV_QUERY, "Q_a-1", "q", 0}};
    struct template *t = compile_ok("{header.X-TENANT-ID}:{path.Id}:{query.Q_a-1}", TV_ALL_REQUEST);
    struct ctx c = {e, 3, ""};
    char out[64];
    enum template_var var;
    const char *name;

    (void)state;
    assert_int_equal(template_expand(t, lookup, &c, out, sizeof(out)), 5);
    assert_string_equal(out, "h:P:q");
    assert_string_equal(c.calls, "8:x-tenant-id;6:Id;7:Q_a-1;");
    assert_int_equal(template_uses(t), TV_BIT(TV_HEADER) | TV_BIT(TV_PATH) | TV_BIT(TV_QUERY));
    assert_int_equal(template_single_var(t, &var, &name), 0);
    template_free(t);

    t = compile_ok("{header.Content-Type}", TV_ALL_REQUEST);
    assert_int_equal(template_single_var(t, &var, &name), 1);
    assert_int_equal(var, TV_HEADER);
    assert_string_equal(name, "content-type");
    template_free(t);
}

static void
test_escaping(void **state)
{
    const struct entry colon[] = {{TV_USER, NULL, "a:b", 0}};
    const struct entry pct[] = {{TV_USER, NULL, "100%", 0}};
    const struct entry braces[] = {{TV_USER, NULL, "{tenant}", 0}};
    const struct entry ctl[] = {{TV_USER, NULL, " \t\n\x1f\x7f", 0}};
    const struct entry utf8[] = {{TV_USER, NULL, "Jos\xc3\xa9\xe2\x82\xac", 0}};
    const struct entry nul[] = {{TV_USER, NULL, "a\0b", 3}};
    const struct entry plain[] = {{TV_USER, NULL, "AZaz09!\"#$&'()*+,-./;<=>?@[\\]^_`|~", 0}};
    const struct entry hexlike[] = {{TV_USER, NULL, "%3A", 0}};
    (void)state;
    expands_to("k:{user}", colon, 1, "k:a%3Ab");
    expands_to("k:{user}", pct, 1, "k:100%25");
    expands_to("k:{user}", braces, 1, "k:%7Btenant%7D");
    expands_to("k:{user}", ctl, 1, "k:%20%09%0A%1F%7F");
    expands_to("k:{user}", utf8, 1, "k:Jos%C3%A9%E2%82%AC");
    expands_to("k:{user}", nul, 1, "k:a%00b");
    expands_to("k:{user}", plain, 1, "k:AZaz09!\"#$&'()*+,-./;<=>?@[\\]^_`|~");
    expands_to("k:{user}", hexlike, 1, "k:%253A");
}

static void
test_absent_empty(void **state)
{
    const struct entry absent[] = {{TV_USER, NULL, NULL, 0}};
    const struct entry empty[] = {{TV_USER, NULL, "", 0}};
    const struct entry dash[] = {{TV_USER, NULL, "%-", 0}};
    (void)state;
    expands_to("k:{user}", absent, 1, "k:%-");
    expands_to("k:{user}", NULL, 0, "k:%-");
    expands_to("k:{user}", empty, 1, "k:");
    expands_to("k:{user}", dash, 1, "k:%25-");
}

static void
test_injective_pairs(void **state)
{
    const struct entry a[] = {{TV_USER, NULL, "a:b", 0}, {TV_TENANT, NULL, "c", 0}};
    const struct entry b[] = {{TV_USER, NULL, "a", 0}, {TV_TENANT, NULL, "b:c", 0}};
    const struct entry c1[] = {{TV_USER, NULL, NULL, 0}, {TV_TENANT, NULL, "", 0}};
    const struct entry c2[] = {{TV_USER, NULL, "", 0}, {TV_TENANT, NULL, NULL, 0}};
    const struct entry d1[] = {{TV_USER, NULL, "%-", 0}, {TV_TENANT, NULL, NULL, 0}};
    const struct entry d2[] = {{TV_USER, NULL, NULL, 0}, {TV_TENANT, NULL, "%-", 0}};
    (void)state;
    expands_to("{user}:{tenant}", a, 2, "a%3Ab:c");
    expands_to("{user}:{tenant}", b, 2, "a:b%3Ac");
    expands_to("{user}:{tenant}", c1, 2, "%-:");
    expands_to("{user}:{tenant}", c2, 2, ":%-");
    expands_to("{user}:{tenant}", d1, 2, "%25-:%-");
    expands_to("{user}:{tenant}", d2, 2, "%-:%25-");
}

/* Values built from the bytes that matter most to escaping, or absent. */
static const char *const tricky[] = {
    NULL,  "",   ":", "%", "%-", "-",    "a",  "a:", ":a", "%3A",
    "%25", "3A", "{", "}", " ",  "\xc3", "::", "a%", "-:",
};
#define NTRICKY (sizeof(tricky) / sizeof(tricky[0]))

struct outrec {
    char text[128];
    unsigned tuple[3];
};

static int
outrec_cmp(const void *a, const void *b)
{
    return strcmp(((const struct outrec *)a)->text, ((const struct outrec *)b)->text);
}

/* Expands every pair or triple of tricky values and checks that no two tuples share a text. */
/* Orders records that start with their text. */
static int
outrec_cmp_rec(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

static void
check_injective(const char *src, int nvars)
{
    struct template *t = compile_ok(src, TV_ALL_REQUEST);
    size_t total = NTRICKY * NTRICKY * (nvars == 3 ? NTRICKY : 1);
    struct outrec *recs = calloc(total, sizeof(*recs));
    size_t k = 0;

    assert_non_null(recs);
    for (size_t i = 0; i < NTRICKY; i++) {
        for (size_t j = 0; j < NTRICKY; j++) {
            for (size_t l = 0; l < (nvars == 3 ? NTRICKY : 1); l++) {
                struct entry e[3] = {{TV_USER, NULL, tricky[i], 0},
                                     {TV_TENANT, NULL, tricky[j], 0},
                                     {TV_TIER, NULL, tricky[l], 0}};
                struct ctx c = {e, 3, ""};
                assert_true(template_expand(t, lookup, &c, recs[k].text, sizeof(recs[k].text)) >=
                            0);
                recs[k].tuple[0] = (unsigned)i;
                recs[k].tuple[1] = (unsigned)j;
                recs[k].tuple[2] = (unsigned)l;
                k++;
            }
        }
    }
    qsort(recs, total, sizeof(*recs), outrec_cmp);
    for (size_t i = 1; i < total; i++)
        if (strcmp(recs[i - 1].text, recs[i].text) == 0)
            fail_msg("\"%s\": two tuples expand to \"%s\"", src, recs[i].text);
    free(recs);
    template_free(t);
}

static void
test_injective_exhaustive(void **state)
{
    (void)state;
    check_injective("{user}:{tenant}", 2);
    check_injective("x{user}:y{tenant}z", 2);
    check_injective("{user}-:-{tenant}", 2);
    check_injective("{user}:%{tenant}%", 2);
    check_injective("{user} {tenant}", 2);
    check_injective("{user}%-:{tenant}", 2);
    check_injective("{user}:{tenant}:{tier}", 3);
    check_injective("k:{user}::{tenant}:-{tier}-", 3);
}

/* Random tuples of short values over an alphabet of escaping-relevant bytes, or absent. */
static void
test_injective_random(void **state)
{
    static const char alpha[] = ":%-a3A{} \xc3";
    struct template *t = compile_ok("{user}:{tenant}-:{tier}", TV_ALL_REQUEST);
    enum { N = 40000, VLEN = 5 };
    struct rec {
        char text[64];
        char vals[3][VLEN + 2]; /* first byte 'A' absent, 'P' present */
    } *recs = calloc(N, sizeof(*recs));
    uint32_t x = 2463534242u;

    (void)state;
    assert_non_null(recs);
    for (size_t i = 0; i < N; i++) {
        struct entry e[3] = {
            {TV_USER, NULL, NULL, 0}, {TV_TENANT, NULL, NULL, 0}, {TV_TIER, NULL, NULL, 0}};
        for (int v = 0; v < 3; v++) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            size_t len = x % (VLEN + 2); /* VLEN + 1 means absent */
            char *val = recs[i].vals[v];
            val[0] = len > VLEN ? 'A' : 'P';
            for (size_t k = 0; k < len && len <= VLEN; k++) {
                x ^= x << 13, x ^= x >> 17, x ^= x << 5;
                val[1 + k] = alpha[x % (sizeof(alpha) - 1)];
            }
            if (val[0] == 'P')
                e[v].val = val + 1;
        }
        struct ctx c = {e, 3, ""};
        /* Empty values: entry len 0 means strlen, which is 0 here too. */
        assert_true(template_expand(t, lookup, &c, recs[i].text, sizeof(recs[i].text)) >= 0);
    }
    qsort(recs, N, sizeof(*recs), outrec_cmp_rec);
    for (size_t i = 1; i < N; i++)
        if (strcmp(recs[i - 1].text, recs[i].text) == 0 &&
            memcmp(recs[i - 1].vals, recs[i].vals, sizeof(recs[i].vals)) != 0)
            fail_msg("two tuples expand to \"%s\"", recs[i].text);
    free(recs);
    template_free(t);
}

static void
test_single_var(void **state)
{
    enum template_var var = TV_COUNT;
    const char *name = "unset";
    struct template *t;

    (void)state;
    t = compile_ok("{body.name}", TV_ALL_REQUEST);
    assert_int_equal(template_single_var(t, &var, &name), 1);
    assert_int_equal(var, TV_BODY);
    assert_string_equal(name, "name");
    template_free(t);

    t = compile_ok("{user}", TV_ALL_REQUEST);
    assert_int_equal(template_single_var(t, &var, &name), 1);
    assert_int_equal(var, TV_USER);
    assert_null(name);
    assert_int_equal(template_uses(t), TV_BIT(TV_USER));
    template_free(t);

    const char *nots[] = {"x{user}", "{user}:", "{user}:{tenant}", "", "user"};
    for (size_t i = 0; i < sizeof(nots) / sizeof(nots[0]); i++) {
        t = compile_ok(nots[i], TV_ALL_REQUEST);
        assert_int_equal(template_single_var(t, &var, &name), 0);
        template_free(t);
    }
    t = compile_ok("static", TV_ALL_REQUEST);
    assert_int_equal(template_uses(t), 0);
    template_free(t);
}

static void
test_compile_errors(void **state)
{
    unsigned all = TV_ALL_REQUEST;
    (void)state;
    compile_fails("a}b", all, "stray '}' at offset 1 (templates have no literal braces)");
    compile_fails("{user}}", all, "stray '}' at offset 6 (templates have no literal braces)");
    compile_fails("a{user", all, "unclosed '{' at offset 1");
    compile_fails("{", all, "unclosed '{' at offset 0");
    compile_fails("{user{tenant}", all, "unclosed '{' at offset 0");
    compile_fails("x{}", all, "empty '{}' at offset 1");
    compile_fails("{nobody}", all, "unknown variable {nobody} at offset 0");
    compile_fails("k:{User}", all, "unknown variable {User} at offset 2");
    compile_fails("{ user}", all, "unknown variable { user} at offset 0");
    compile_fails("{.id}", all, "unknown variable {.id} at offset 0");
    compile_fails("{path.}", all, "{path.} at offset 0 needs a name, as in {path.NAME}");
    compile_fails("{header}", all, "{header} at offset 0 needs a name, as in {header.NAME}");
    compile_fails("{user.id}", all, "{user.id} at offset 0: {user} takes no name");
    {
        char src[128], want[256];
        snprintf(src, sizeof(src), "{header.%0*d}", TEMPLATE_MAX_NAME + 1, 0);
        snprintf(want, sizeof(want), "the name in %s at offset 0 is longer than %d bytes", src,
                 TEMPLATE_MAX_NAME);
        compile_fails(src, all, want);
        snprintf(src, sizeof(src), "{header.%0*d}", TEMPLATE_MAX_NAME, 0);
        template_free(compile_ok(src, all));
    }
    compile_fails("{ip.}", all, "{ip.} at offset 0: {ip} takes no name");
    compile_fails("{query.a b}", all,
                  "bad name in {query.a b} at offset 0: names use letters, digits, '_' and '-'");
    compile_fails("{query.a.b}", all,
                  "bad name in {query.a.b} at offset 0: names use letters, digits, '_' and '-'");
    compile_fails(
        "{body.\xc3\xa9}", all,
        "bad name in {body.\xc3\xa9} at offset 0: names use letters, digits, '_' and '-'");
    compile_fails("on:{row.owner_id}", all, "{row.owner_id} at offset 3 is not allowed here");
    compile_fails("{user}:{tenant}", TV_BIT(TV_USER), "{tenant} at offset 7 is not allowed here");
    compile_fails("{user}{tenant}", all,
                  "{tenant} at offset 6 follows {user} without a ':' between them, so different "
                  "values could expand to the same text");
    compile_fails("{user}-{path.id}", all,
                  "{path.id} at offset 7 follows {user} without a ':' between them, so different "
                  "values could expand to the same text");
    compile_fails("a:{user}b/{tenant}", all,
                  "{tenant} at offset 10 follows {user} without a ':' between them, so different "
                  "values could expand to the same text");
    /* No error buffer is fine. */
    assert_null(template_compile("{", all, NULL, 0));
}

static void
test_separators_accepted(void **state)
{
    /* Any byte escaping never writes separates two variables. */
    const char *ok[] = {"{user}:{tenant}",        "{user} {tenant}",   "{user}\t{tenant}",
                        "{user}\xc3\xa9{tenant}", "{user}-:-{tenant}", "{user}/:{tenant}"};
    (void)state;
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        template_free(compile_ok(ok[i], TV_ALL_REQUEST));
    /* A variable may sit right at either end of the template. */
    template_free(compile_ok("{user}-x", TV_ALL_REQUEST));
    template_free(compile_ok("x-{user}", TV_ALL_REQUEST));
    template_free(compile_ok("{row.owner_id}", TV_BIT(TV_ROW)));
}

static void
test_overflow(void **state)
{
    const struct entry e[] = {{TV_USER, NULL, "42", 0}, {TV_TENANT, NULL, ":", 0}};
    struct ctx c = {e, 2, ""};
    char out[16];
    struct template *t = compile_ok("crm:{user}", TV_ALL_REQUEST);

    (void)state;
    /* "crm:42" needs 7 bytes with its NUL. */
    assert_int_equal(template_expand(t, lookup, &c, out, 7), 6);
    assert_string_equal(out, "crm:42");
    memset(out, 'X', sizeof(out));
    assert_int_equal(template_expand(t, lookup, &c, out, 6), -1);
    assert_int_equal(out[0], '\0');
    assert_int_equal(out[6], 'X'); /* nothing written past cap */
    assert_int_equal(template_expand(t, lookup, &c, out, 5), -1);
    assert_int_equal(template_expand(t, lookup, &c, out, 0), -1);
    assert_int_equal(out[0], '\0');
    template_free(t);

    /* An escape needs all three bytes plus the NUL. */
    t = compile_ok("{tenant}", TV_ALL_REQUEST);
    assert_int_equal(template_expand(t, lookup, &c, out, 4), 3);
    assert_string_equal(out, "%3A");
    assert_int_equal(template_expand(t, lookup, &c, out, 3), -1);
    assert_string_equal(out, "");
    template_free(t);

    /* So does the absent marker. */
    t = compile_ok("{tier}", TV_ALL_REQUEST);
    assert_int_equal(template_expand(t, lookup, &c, out, 3), 2);
    assert_string_equal(out, "%-");
    assert_int_equal(template_expand(t, lookup, &c, out, 2), -1);
    template_free(t);

    /* An empty expansion fits in one byte. */
    t = compile_ok("", TV_ALL_REQUEST);
    assert_int_equal(template_expand(t, lookup, &c, out, 1), 0);
    assert_string_equal(out, "");
    template_free(t);
}

/* ---- template_match ---------------------------------------------------------------------- */

/* Whether text matches src, with the entries (if any) as the known values. */
static int
matches(const char *src, const struct entry *e, size_t n, const char *text)
{
    struct template *t = compile_ok(src, TV_ALL_REQUEST);
    struct ctx c = {e, n, ""};
    int r = template_match(t, text, strlen(text), e ? lookup : NULL, &c);
    template_free(t);
    return r;
}

static void
test_match_cases(void **state)
{
    const struct entry route[] = {{TV_ROUTE, NULL, "GET /a/{id}", 0}, {TV_METHOD, NULL, "GET", 0}};
    (void)state;
    assert_true(matches("crm:contacts:{user}", NULL, 0, "crm:contacts:42"));
    assert_true(matches("crm:contacts:{user}", NULL, 0, "crm:contacts:"));
    assert_true(matches("crm:contacts:{user}", NULL, 0, "crm:contacts:%-"));
    assert_false(matches("crm:contacts:{user}", NULL, 0, "crm:contacts:4:2"));
    assert_false(matches("crm:contacts:{user}", NULL, 0, "crm:deals:42"));
    assert_false(matches("crm:contacts:{user}", NULL, 0, "crm:contacts"));
    assert_false(matches("crm:contacts:{user}", NULL, 0, "crm:contacts:4 2"));
    assert_true(matches("{user}", NULL, 0, "anything-at%3Aall"));
    assert_false(matches("{user}", NULL, 0, "a{b"));
    assert_true(matches("static:key", NULL, 0, "static:key"));
    assert_false(matches("static:key", NULL, 0, "static:key2"));
    assert_true(matches("", NULL, 0, ""));
    /* A literal after a variable that starts with bytes a value may hold. */
    assert_true(matches("{user}x:{tenant}", NULL, 0, "abcx:t"));
    assert_true(matches("{user}x:{tenant}", NULL, 0, "x:"));
    assert_false(matches("{user}x:{tenant}", NULL, 0, "abc:t"));
    assert_true(matches("p:{user}-x::{tenant}:s", NULL, 0, "p:u-x::t:s"));
    assert_false(matches("p:{user}-x::{tenant}:s", NULL, 0, "p:u-x:t:s"));
    /* Known values are matched escaped; the others are any value. */
    assert_true(
        matches("{method}:{route}:{path.id}:{user}", route, 2, "GET:GET%20/a/%7Bid%7D:7:42"));
    assert_false(
        matches("{method}:{route}:{path.id}:{user}", route, 2, "GET:GET%20/b/%7Bid%7D:7:42"));
    assert_false(
        matches("{method}:{route}:{path.id}:{user}", route, 2, "PUT:GET%20/a/%7Bid%7D:7:42"));
    assert_false(matches("{method}:{route}:{path.id}:{user}", route, 2, "GET:GET /a/{id}:7:42"));
    assert_true(matches("{method}:{route}:{path.id}:{user}", NULL, 0, "PUT:x:7:42"));
    /* A known value that is absent is still any value. */
    assert_true(matches("{tier}:{route}", route, 2, "pro:GET%20/a/%7Bid%7D"));
}

/* A reference: segments matched by backtracking, a variable taking any run of non-delimiters. */
struct refseg {
    const char *lit; /* NULL: a variable */
};

static int
is_delim(unsigned char c)
{
    return c <= 0x20 || c >= 0x7f || c == ':' || c == '{' || c == '}';
}

static int
ref_match(const struct refseg *s, size_t n, const char *text, size_t len)
{
    if (n == 0)
        return len == 0;
    if (s->lit) {
        size_t l = strlen(s->lit);
        return l <= len && memcmp(text, s->lit, l) == 0 &&
               ref_match(s + 1, n - 1, text + l, len - l);
    }
    for (size_t k = 0;; k++) {
        if (ref_match(s + 1, n - 1, text + k, len - k))
            return 1;
        if (k == len || is_delim((unsigned char)text[k]))
            return 0;
    }
}

/* Random texts over a small alphabet: template_match agrees with the backtracking reference. */
static void
test_match_random(void **state)
{
    static const struct {
        const char *src;
        struct refseg segs[8];
        size_t n;
    } cases[] = {
        {"a:{user}", {{"a:"}, {NULL}}, 2},
        {"{user}:{tenant}", {{NULL}, {":"}, {NULL}}, 3},
        {"{user}a:{tenant}-:{tier}", {{NULL}, {"a:"}, {NULL}, {"-:"}, {NULL}}, 5},
        {"x{user}:a:{tenant}a", {{"x"}, {NULL}, {":a:"}, {NULL}, {"a"}}, 5},
        {"{user}::{tenant}", {{NULL}, {"::"}, {NULL}}, 3},
        {"%{user} {tenant}:", {{"%"}, {NULL}, {" "}, {NULL}, {":"}}, 5},
    };
    static const char alpha[] = "a:-% x";
    uint32_t x = 88172645u;

    (void)state;
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        struct template *t = compile_ok(cases[c].src, TV_ALL_REQUEST);
        size_t hits = 0;
        for (int i = 0; i < 20000; i++) {
            /* Half the texts are random; half follow the template, with random values (that
             * may hold delimiters) and now and then a literal byte changed. */
            char text[32];
            size_t len = 0;
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            bool shaped = x & 1;
            for (size_t sg = 0; shaped && sg < cases[c].n; sg++) {
                const char *lit = cases[c].segs[sg].lit;
                x ^= x << 13, x ^= x >> 17, x ^= x << 5;
                size_t n = lit ? strlen(lit) : x % 4;
                for (size_t k = 0; k < n; k++) {
                    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
                    text[len++] = lit && x % 16 ? lit[k] : alpha[x % (sizeof(alpha) - 1)];
                }
            }
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            for (size_t k = 0, n = shaped ? 0 : x % 12; k < n; k++) {
                x ^= x << 13, x ^= x >> 17, x ^= x << 5;
                text[len++] = alpha[x % (sizeof(alpha) - 1)];
            }
            int want = ref_match(cases[c].segs, cases[c].n, text, len);
            if (template_match(t, text, len, NULL, NULL) != want)
                fail_msg("\"%s\" against \"%.*s\": want %d", cases[c].src, (int)len, text, want);
            hits += want;
        }
        if (hits < 20) /* the alphabet reaches matches */
            fail_msg("\"%s\": %zu matches only", cases[c].src, hits);
        template_free(t);
    }
}

/* Every expansion matches its template, with or without its values known. */
static void
test_match_expansions(void **state)
{
    static const char alpha[] = ":%-a3A{} \xc3";
    struct template *t = compile_ok("k:{user}:{tenant}-:{tier}x", TV_ALL_REQUEST);
    uint32_t x = 2463534242u;

    (void)state;
    for (int i = 0; i < 20000; i++) {
        char vals[3][8], text[128];
        struct entry e[3] = {
            {TV_USER, NULL, NULL, 0}, {TV_TENANT, NULL, NULL, 0}, {TV_TIER, NULL, NULL, 0}};
        for (int v = 0; v < 3; v++) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            size_t len = x % 7; /* 6: absent */
            for (size_t k = 0; k < len && len < 6; k++) {
                x ^= x << 13, x ^= x >> 17, x ^= x << 5;
                vals[v][k] = alpha[x % (sizeof(alpha) - 1)];
            }
            vals[v][len < 6 ? len : 0] = '\0';
            if (len < 6)
                e[v].val = vals[v];
        }
        struct ctx c = {e, 3, ""};
        long n = template_expand(t, lookup, &c, text, sizeof(text));
        assert_true(n >= 0);
        assert_true(template_match(t, text, (size_t)n, NULL, NULL));
        assert_true(template_match(t, text, (size_t)n, lookup, &c));
        /* Another known value for the user: only when it writes the same text. */
        struct entry other[3] = {e[0], e[1], e[2]};
        other[0].val = "zz";
        struct ctx oc = {other, 3, ""};
        bool same = e[0].val && strcmp(e[0].val, "zz") == 0;
        assert_int_equal(template_match(t, text, (size_t)n, lookup, &oc), same);
    }
    template_free(t);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic),
        cmocka_unit_test(test_all_variables),
        cmocka_unit_test(test_whole_path_and_query),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_absent_empty),
        cmocka_unit_test(test_injective_pairs),
        cmocka_unit_test(test_injective_exhaustive),
        cmocka_unit_test(test_injective_random),
        cmocka_unit_test(test_single_var),
        cmocka_unit_test(test_compile_errors),
        cmocka_unit_test(test_separators_accepted),
        cmocka_unit_test(test_overflow),
        cmocka_unit_test(test_match_cases),
        cmocka_unit_test(test_match_random),
        cmocka_unit_test(test_match_expansions),
    };
    template_free(NULL);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
