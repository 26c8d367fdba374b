/* codec.c - content codings of response bodies: gzip (zlib), br (libbrotli), zstd (libzstd). */
#include "codec.h"

#include <brotli/decode.h>
#include <brotli/encode.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>
#include <zstd.h>

#include "util.h"

#define GZIP_LEVEL 6
#define BROTLI_QUALITY 5 /* about gzip's speed with a smaller result; 11 is far too slow */
#define BROTLI_WINDOW 22
#define ZSTD_LEVEL 3

static uint64_t counts[CODEC_N]; /* atomic */

static const char *const names[CODEC_N] = {"br", "zstd", "gzip"};

const char *
codec_name(enum codec c)
{
    return c < CODEC_N ? names[c] : "identity";
}

int
codec_from_name(const char *name, size_t len)
{
    for (int c = 0; c < CODEC_N; c++)
        if (strlen(names[c]) == len && strncasecmp(name, names[c], len) == 0)
            return c;
    if (len == 6 && strncasecmp(name, "x-gzip", 6) == 0)
        return CODEC_GZIP;
    return -1;
}

static char *
gzip_encode(const void *in, size_t len, size_t *outlen)
{
    z_stream z = {0};
    char *out = NULL;

    if (len > UINT32_MAX ||
        deflateInit2(&z, GZIP_LEVEL, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return NULL;
    size_t cap = deflateBound(&z, (uLong)len) + 32;
    out = xmalloc(cap);
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)len;
    z.next_out = (Bytef *)out;
    z.avail_out = (uInt)cap;
    if (deflate(&z, Z_FINISH) != Z_STREAM_END) {
        free(out);
        out = NULL;
    } else {
        *outlen = z.total_out;
    }
    deflateEnd(&z);
    return out;
}

static char *
gzip_decode(const void *in, size_t len, size_t max, size_t *outlen)
{
    z_stream z = {0};
    size_t cap = len * 4 + 64;
    char *out = NULL;
    int rc = Z_DATA_ERROR;

    if (len > UINT32_MAX || inflateInit2(&z, 15 + 16) != Z_OK)
        return NULL;
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)len;
    for (;;) {
        if (z.total_out == cap || !out) {
            if (out)
                cap *= 2;
            if (cap > UINT32_MAX)
                break;
            out = xrealloc(out, cap);
        }
        z.next_out = (Bytef *)out + z.total_out;
        z.avail_out = (uInt)(cap - z.total_out);
        rc = inflate(&z, Z_NO_FLUSH);
        if (rc == Z_STREAM_END || (rc != Z_OK && rc != Z_BUF_ERROR) || z.total_out > max ||
            (z.avail_out != 0 && z.avail_in == 0))
            break;
    }
    inflateEnd(&z);
    if (rc != Z_STREAM_END || z.total_out > max || z.avail_in != 0) {
        free(out);
        return NULL;
    }
    *outlen = z.total_out;
    return out;
}

static char *
br_encode(const void *in, size_t len, size_t *outlen)
{
    size_t cap = BrotliEncoderMaxCompressedSize(len);
    char *out;

    if (cap == 0)
        return NULL;
    out = xmalloc(cap);
    *outlen = cap;
    if (!BrotliEncoderCompress(BROTLI_QUALITY, BROTLI_WINDOW, BROTLI_MODE_GENERIC, len, in, outlen,
                               (uint8_t *)out)) {
        free(out);
        return NULL;
    }
    return out;
}

static char *
br_decode(const void *in, size_t len, size_t max, size_t *outlen)
{
    BrotliDecoderState *d = BrotliDecoderCreateInstance(NULL, NULL, NULL);
    const uint8_t *next_in = in;
    size_t avail_in = len, cap = len * 4 + 64, n = 0;
    char *out = NULL;
    BrotliDecoderResult r = BROTLI_DECODER_RESULT_NEEDS_MORE_OUTPUT;

    if (!d)
        return NULL;
    while (r == BROTLI_DECODER_RESULT_NEEDS_MORE_OUTPUT && n <= max) {
        out = xrealloc(out, cap);
        uint8_t *next_out = (uint8_t *)out + n;
        size_t avail_out = cap - n;
        r = BrotliDecoderDecompressStream(d, &avail_in, &next_in, &avail_out, &next_out, NULL);
        n = cap - avail_out;
        cap *= 2;
    }
    BrotliDecoderDestroyInstance(d);
    if (r != BROTLI_DECODER_RESULT_SUCCESS || n > max || avail_in != 0) {
        free(out);
        return NULL;
    }
    *outlen = n;
    return out;
}

static char *
zstd_encode(const void *in, size_t len, size_t *outlen)
{
    size_t cap = ZSTD_compressBound(len);
    char *out = xmalloc(cap);
    size_t n = ZSTD_compress(out, cap, in, len, ZSTD_LEVEL);

    if (ZSTD_isError(n)) {
        free(out);
        return NULL;
    }
    *outlen = n;
    return out;
}

static char *
zstd_decode(const void *in, size_t len, size_t max, size_t *outlen)
{
    ZSTD_DStream *d = ZSTD_createDStream();
    ZSTD_inBuffer ib = {in, len, 0};
    size_t cap = len * 4 + 64, rc = 1;
    ZSTD_outBuffer ob = {NULL, 0, 0};

    if (!d)
        return NULL;
    while (rc != 0 && ob.pos <= max) {
        if (ob.pos == ob.size) {
            ob.dst = xrealloc(ob.dst, cap);
            ob.size = cap;
            cap *= 2;
        }
        size_t was_in = ib.pos, was_out = ob.pos;
        rc = ZSTD_decompressStream(d, &ob, &ib);
        if (ZSTD_isError(rc) || (rc != 0 && ib.pos == was_in && ob.pos == was_out))
            break; /* an error, or a frame cut short */
    }
    ZSTD_freeDStream(d);
    if (rc != 0 || ob.pos > max || ib.pos != len) {
        free(ob.dst);
        return NULL;
    }
    *outlen = ob.pos;
    return ob.dst;
}

char *
codec_encode(enum codec c, const void *in, size_t len, size_t *outlen)
{
    char *out = NULL;
    size_t n = 0;

    switch (c) {
    case CODEC_BR:
        out = br_encode(in, len, &n);
        break;
    case CODEC_ZSTD:
        out = zstd_encode(in, len, &n);
        break;
    case CODEC_GZIP:
        out = gzip_encode(in, len, &n);
        break;
    default:
        return NULL;
    }
    if (out && n >= len) {
        free(out);
        out = NULL;
    }
    if (!out)
        return NULL;
    __atomic_add_fetch(&counts[c], 1, __ATOMIC_RELAXED);
    *outlen = n;
    return out;
}

char *
codec_decode(enum codec c, const void *in, size_t len, size_t max, size_t *outlen)
{
    switch (c) {
    case CODEC_BR:
        return br_decode(in, len, max, outlen);
    case CODEC_ZSTD:
        return zstd_decode(in, len, max, outlen);
    case CODEC_GZIP:
        return gzip_decode(in, len, max, outlen);
    default:
        return NULL;
    }
}

uint64_t
codec_count(enum codec c)
{
    return c < CODEC_N ? __atomic_load_n(&counts[c], __ATOMIC_RELAXED) : 0;
}
