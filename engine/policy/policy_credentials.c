/* policy_credentials.c - the identity's credentials compiled: the jwt block's keys read from the
 * policy directory (JWK sets, PEM keys, HMAC secrets from a file or the environment) into a key
 * set, and the api_key block's lookup. */
#define _GNU_SOURCE
#include <errno.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "policy_compile.h"
#include "util.h"

#define KEY_FILE_MAX (1u << 20) /* a key file larger than this is refused */

char *
policy_read_file(struct compile *c, const char *rel, size_t max, size_t *len, const char *what)
{
    char *path = xasprintf("%s/%s", c->dir ? c->dir : ".", rel);
    FILE *f = fopen(path, "rb");
    struct sbuf text = {0};
    if (!f) {
        cerr(c, "%s \"%s\": cannot read %s: %s", what, rel, path, strerror(errno));
        free(path);
        return NULL;
    }
    char buf[8192];
    size_t r;
    while ((r = fread(buf, 1, sizeof(buf), f)) > 0 && text.len <= max)
        sbuf_add(&text, buf, r);
    int failed = ferror(f);
    fclose(f);
    if (failed || text.len > max) {
        cerr(c, "%s \"%s\": %s", what, rel, failed ? "cannot read it" : "larger than 1 MiB");
        sbuf_free(&text);
        free(path);
        return NULL;
    }
    sbuf_add(&text, "", 1); /* the NUL */
    struct policy *p = c->p;
    p->files = xrealloc(p->files, (p->nfiles + 1) * sizeof(*p->files));
    struct policy_file *pf = &p->files[p->nfiles++];
    pf->path = path;
    snprintf(pf->hash, sizeof(pf->hash), "%016llx",
             (unsigned long long)util_fnv1a(text.p, text.len - 1));
    *len = text.len - 1;
    return text.p;
}

/* Frees a secret's bytes after wiping them. */
static void
free_secret(char *s, size_t len)
{
    if (s)
        explicit_bzero(s, len);
    free(s);
}

/* One key source at the top: { jwks | pem | secret_file | secret_env, kid, alg }. */
static void
compile_key(struct compile *c, struct policy_jwt *j, size_t index)
{
    lua_State *L = c->L;
    char *jwks = field_str(L, "jwks"), *pem = field_str(L, "pem");
    char *sfile = field_str(L, "secret_file"), *senv = field_str(L, "secret_env");
    char *kid = field_str(L, "kid"), *alg = field_str(L, "alg");
    char err[512];
    size_t len;
    if (jwks) {
        char *text = policy_read_file(c, jwks, KEY_FILE_MAX, &len, "identity: jwt.keys");
        char *notes = NULL;
        if (text && jwk_set_add_jwks(&j->keys, text, len, jwks, &notes, err, sizeof(err)) != 0)
            cerr(c, "identity: jwt.keys: %s", err);
        /* Keys the set holds that sluice does not verify with: left out, each said. */
        for (const char *l = notes; l && *l; l += strcspn(l, "\n") + (l[strcspn(l, "\n")] != 0))
            log_warn("%s:%d: identity: jwt.keys: %.*s", c->file ? c->file : "?", c->line,
                     (int)strcspn(l, "\n"), l);
        free(notes);
        free(text);
    } else if (pem) {
        char *text = policy_read_file(c, pem, KEY_FILE_MAX, &len, "identity: jwt.keys");
        if (text && jwk_set_add_pem(&j->keys, text, len, kid, alg, pem, err, sizeof(err)) != 0)
            cerr(c, "identity: jwt.keys[%zu]: %s", index, err);
        free(text);
    } else if (sfile) {
        char *text = policy_read_file(c, sfile, KEY_FILE_MAX, &len, "identity: jwt.keys");
        if (text) {
            /* The file's bytes, less one final line break. */
            if (len && text[len - 1] == '\n')
                len--;
            if (len && text[len - 1] == '\r')
                len--;
            if (jwk_set_add_secret(&j->keys, (unsigned char *)text, len, kid, sfile, err,
                                   sizeof(err)) != 0)
                cerr(c, "identity: jwt.keys[%zu]: %s", index, err);
        }
        free_secret(text, len);
    } else if (senv) {
        const char *v = getenv(senv);
        char *source = xasprintf("environment variable %s", senv);
        if (!v || !*v)
            cerr(c, "identity: jwt.keys[%zu]: the environment variable %s is not set", index, senv);
        else if (jwk_set_add_secret(&j->keys, (const unsigned char *)v, strlen(v), kid, source, err,
                                    sizeof(err)) != 0)
            cerr(c, "identity: jwt.keys[%zu]: %s", index, err);
        free(source);
    }
    free(jwks);
    free(pem);
    free(sfile);
    free(senv);
    free(kid);
    free(alg);
}

void
compile_jwt(struct compile *c)
{
    lua_State *L = c->L;
    lua_getfield(L, -1, "jwt");
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    struct policy_jwt *j = xcalloc(1, sizeof(*j));
    c->p->identity.jwt = j;
    j->issuer = field_str(L, "issuer");
    j->audience = field_str(L, "audience");
    j->required = field_bool(L, "required");
    j->rules.keys = &j->keys;
    j->rules.issuer = j->issuer;
    j->rules.audience = j->audience;
    j->rules.leeway_s = (double)field_int(L, "leeway_ms", 30000) / 1000.0;
    size_t before = c->errs->len;
    lua_getfield(L, -1, "keys");
    size_t n = lua_istable(L, -1) ? lua_rawlen(L, -1) : 0;
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        if (lua_istable(L, -1))
            compile_key(c, j, i);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (c->errs->len == before && j->keys.n == 0)
        cerr(c, "identity: jwt.keys: no key sluice can verify tokens with");
    lua_pop(L, 1);
}

void
policy_jwt_free(struct policy_jwt *j)
{
    if (!j)
        return;
    jwk_set_fini(&j->keys);
    free(j->issuer);
    free(j->audience);
    free(j);
}

void
compile_api_key(struct compile *c)
{
    lua_State *L = c->L;
    lua_getfield(L, -1, "api_key");
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    struct policy_api_key *k = xcalloc(1, sizeof(*k));
    c->p->identity.api_key = k;
    k->header = field_str(L, "header");
    k->query = field_str(L, "query");
    k->required = field_bool(L, "required");
    k->ttl_ms = (uint64_t)field_int(L, "ttl_ms", 60000);
    size_t len = 0;
    char *sql = field_lstr(L, "sql", &len);
    if (!sql || (!k->header && !k->query)) {
        cerr(c, "identity: api_key: incomplete");
    } else {
        /* The row, if any, as one JSON object: its columns are the caller's claims. */
        while (len > 0 && (sql[len - 1] == ';' || sql[len - 1] == ' ' || sql[len - 1] == '\n' ||
                           sql[len - 1] == '\t' || sql[len - 1] == '\r'))
            len--;
        k->sql = xasprintf("SELECT row_to_json(t)::text FROM (%.*s) t LIMIT 1", (int)len, sql);
    }
    free(sql);
    lua_pop(L, 1);
}

void
policy_api_key_free(struct policy_api_key *k)
{
    if (!k)
        return;
    free(k->header);
    free(k->query);
    free(k->sql);
    free(k);
}
