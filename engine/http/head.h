/* head.h - the head of an HTTP/1.x answer: status line, framing and the fields given. */
#ifndef SLUICE_HEAD_H
#define SLUICE_HEAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum http_head_connection {
    HTTP_HEAD_CONN_NONE = 0,   /* no Connection field */
    HTTP_HEAD_CONN_CLOSE,      /* Connection: close */
    HTTP_HEAD_CONN_KEEP_ALIVE, /* Connection: keep-alive (an HTTP/1.0 client kept) */
    HTTP_HEAD_CONN_UPGRADE,    /* Connection: Upgrade (a 101, RFC 9110 7.8) */
};

/* An answer's head. Every pointer is borrowed; every field block is "Name: value\r\n" lines
 * the caller built (never checked here). */
struct http_head {
    int status;        /* 100..999 */
    int minor_version; /* 0: HTTP/1.0, else HTTP/1.1 */
    const char *date;  /* the whole "Date: ...\r\n" line, or NULL */
    size_t date_len;
    const char *content_type; /* NUL-terminated value, or NULL: no Content-Type */
    bool content_length;      /* write Content-Length: body_len */
    bool chunked;             /* else write Transfer-Encoding: chunked (RFC 9112 7.1) */
    uint64_t body_len;
    const char *headers, *headers2; /* field lines, or NULL */
    size_t headers_len, headers2_len;
    enum http_head_connection connection;
};

/* The bytes http_head_write() writes for h, at most. */
size_t http_head_size(const struct http_head *h);

/* Writes h's head, ending in the empty line, to out (http_head_size(h) bytes of room);
 * returns its length. */
size_t http_head_write(char *out, const struct http_head *h);

/* The reason phrase of status ("Not Found"), "Unknown" for a code without one here. */
const char *http_reason_phrase(int status);

#endif
