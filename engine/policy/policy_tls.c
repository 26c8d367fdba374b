/* policy_tls.c - an https upstream's TLS client context, built once per upstream per generation
 * from the policy directory's files: the CAs it trusts, its client certificate, verification. */
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "policy_compile.h"
#include "util.h"

#define TLS_FILE_MAX (1u << 20) /* a CA, certificate or key file larger than this is refused */

/* The last OpenSSL error as text (and the queue emptied), for a message. */
static void
ssl_error_text(char *out, size_t outlen)
{
    unsigned long e = ERR_get_error();
    if (e == 0)
        snprintf(out, outlen, "no detail from OpenSSL");
    else
        ERR_error_string_n(e, out, outlen);
    ERR_clear_error();
}

/* A memory BIO over the PEM file `rel` (read from the policy directory, hashed into its
 * files), or NULL with an error added to c. *text is the buffer the BIO reads; free it. */
static BIO *
pem_file(struct compile *c, struct policy_upstream *u, const char *rel, const char *field,
         char **text)
{
    char what[160];
    size_t len;
    snprintf(what, sizeof what, "upstream \"%s\": %s", u->name ? u->name : "?", field);
    *text = policy_read_file(c, rel, TLS_FILE_MAX, &len, what);
    if (!*text)
        return NULL;
    BIO *bio = BIO_new_mem_buf(*text, (int)len);
    if (!bio)
        log_abort("out of memory (BIO)");
    return bio;
}

/* Adds every certificate of ca_file to the context's store (and nothing else: the system's
 * CAs are not trusted then). Returns 0, or -1 with an error added to c. */
static int
load_ca_file(struct compile *c, struct policy_upstream *u, SSL_CTX *ctx)
{
    char *text = NULL, err[256];
    BIO *bio = pem_file(c, u, u->ca_file, "ca_file", &text);
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    int n = 0, rc = -1;
    X509 *x;
    if (!bio)
        return -1;
    while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        int ok = X509_STORE_add_cert(store, x);
        X509_free(x);
        if (!ok) {
            ssl_error_text(err, sizeof err);
            cerr(c, "upstream \"%s\": ca_file \"%s\": %s", u->name, u->ca_file, err);
            goto out;
        }
        n++;
    }
    ERR_clear_error(); /* the end of the file reads as an error */
    if (n == 0) {
        cerr(c, "upstream \"%s\": ca_file \"%s\": no PEM certificate in it", u->name, u->ca_file);
        goto out;
    }
    rc = 0;
out:
    BIO_free(bio);
    free(text);
    return rc;
}

/* The client certificate (cert_file: the certificate, then its chain) and its key. Returns 0,
 * or -1 with an error added to c. */
static int
load_client_cert(struct compile *c, struct policy_upstream *u, SSL_CTX *ctx)
{
    char *ctext = NULL, *ktext = NULL, err[256];
    BIO *cbio = pem_file(c, u, u->cert_file, "cert_file", &ctext);
    BIO *kbio = pem_file(c, u, u->key_file, "key_file", &ktext);
    X509 *x = NULL;
    EVP_PKEY *key = NULL;
    int rc = -1;
    if (!cbio || !kbio)
        goto out;
    if ((x = PEM_read_bio_X509(cbio, NULL, NULL, NULL)) == NULL ||
        SSL_CTX_use_certificate(ctx, x) != 1) {
        ssl_error_text(err, sizeof err);
        cerr(c, "upstream \"%s\": cert_file \"%s\": not a PEM certificate sluice can use (%s)",
             u->name, u->cert_file, err);
        goto out;
    }
    for (X509 *extra; (extra = PEM_read_bio_X509(cbio, NULL, NULL, NULL)) != NULL;)
        if (SSL_CTX_add0_chain_cert(ctx, extra) != 1)
            X509_free(extra);
    ERR_clear_error();
    if ((key = PEM_read_bio_PrivateKey(kbio, NULL, NULL, NULL)) == NULL) {
        ssl_error_text(err, sizeof err);
        cerr(c, "upstream \"%s\": key_file \"%s\": not an unencrypted PEM private key (%s)",
             u->name, u->key_file, err);
        goto out;
    }
    if (X509_check_private_key(x, key) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1) {
        ERR_clear_error();
        cerr(c, "upstream \"%s\": key_file \"%s\" is not the key of cert_file \"%s\"", u->name,
             u->key_file, u->cert_file);
        goto out;
    }
    rc = 0;
out:
    X509_free(x);
    EVP_PKEY_free(key);
    BIO_free(cbio);
    BIO_free(kbio);
    free(ctext);
    free(ktext);
    return rc;
}

void
compile_upstream_tls(struct compile *c, struct policy_upstream *u)
{
    lua_State *L = c->L;
    char err[256];
    SSL_CTX *ctx;
    int bad = 0;

    u->tls = field_bool(L, "tls");
    if (!u->tls)
        return;
    u->ca_file = field_str(L, "ca_file");
    u->cert_file = field_str(L, "cert_file");
    u->key_file = field_str(L, "key_file");
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        ssl_error_text(err, sizeof err);
        cerr(c, "upstream \"%s\": cannot make a TLS context: %s", u->name, err);
        return;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* The chain is verified; the host name (or address) is set per connection (upstream.c). */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    /* The pool writes from its own buffers, which may move between two tries. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* Reads take what the socket holds (not a record header, then its body: two syscalls). */
    SSL_CTX_set_read_ahead(ctx, 1);
    /* Sessions are kept by the pool, per host, for resumption on the next connection. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
    if (u->ca_file) {
        bad |= load_ca_file(c, u, ctx) != 0;
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        ssl_error_text(err, sizeof err);
        cerr(c, "upstream \"%s\": cannot load the system's CA certificates: %s", u->name, err);
        bad = 1;
    }
    /* Every file is checked, so that one run of sluice check names every bad one. */
    if (u->cert_file || u->key_file)
        bad |= !u->cert_file || !u->key_file || load_client_cert(c, u, ctx) != 0;
    if (bad) {
        SSL_CTX_free(ctx);
        return;
    }
    u->ssl_ctx = ctx;
}

void
policy_upstream_tls_free(struct policy_upstream *u)
{
    SSL_CTX_free(u->ssl_ctx);
    u->ssl_ctx = NULL;
    free(u->ca_file);
    free(u->cert_file);
    free(u->key_file);
}
