/* head.c - the head of an HTTP/1.x answer: status line, framing and the fields given. */
#include "head.h"

#include <string.h>

#include "util.h"

const char *
http_reason_phrase(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 102:
        return "Processing";
    case 103:
        return "Early Hints";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

size_t
http_head_size(const struct http_head *h)
{
    /* "HTTP/1.x " 9, a status of up to 3 digits and a space, CRLF; "Content-Type: " and CRLF;
     * "Content-Length: " 16, 20 digits, CRLF, or "Transfer-Encoding: chunked\r\n" 28;
     * "Connection: keep-alive\r\n" 24; CRLF. */
    size_t ct = h->content_type ? strlen(h->content_type) : 0;
    return 9 + 4 + strlen(http_reason_phrase(h->status)) + 2 + h->date_len + 14 + ct + 2 + 28 + 20 +
           2 + h->headers_len + h->headers2_len + 24 + 2;
}

static char *
put(char *o, const char *s, size_t n)
{
    if (n)
        memcpy(o, s, n);
    return o + n;
}

size_t
http_head_write(char *out, const struct http_head *h)
{
    const char *reason = http_reason_phrase(h->status);
    char *o = out;
    o = put(o, h->minor_version == 0 ? "HTTP/1.0 " : "HTTP/1.1 ", 9);
    o += util_u64(o, (uint64_t)(h->status % 1000));
    *o++ = ' ';
    o = put(o, reason, strlen(reason));
    o = put(o, "\r\n", 2);
    o = put(o, h->date, h->date ? h->date_len : 0);
    if (h->content_type) {
        o = put(o, "Content-Type: ", 14);
        o = put(o, h->content_type, strlen(h->content_type));
        o = put(o, "\r\n", 2);
    }
    if (h->content_length) {
        o = put(o, "Content-Length: ", 16);
        o += util_u64(o, h->body_len);
        o = put(o, "\r\n", 2);
    } else if (h->chunked) {
        o = put(o, "Transfer-Encoding: chunked\r\n", 28);
    }
    o = put(o, h->headers, h->headers ? h->headers_len : 0);
    o = put(o, h->headers2, h->headers2 ? h->headers2_len : 0);
    if (h->connection == HTTP_HEAD_CONN_CLOSE)
        o = put(o, "Connection: close\r\n", 19);
    else if (h->connection == HTTP_HEAD_CONN_KEEP_ALIVE)
        o = put(o, "Connection: keep-alive\r\n", 24);
    else if (h->connection == HTTP_HEAD_CONN_UPGRADE)
        o = put(o, "Connection: Upgrade\r\n", 21);
    o = put(o, "\r\n", 2);
    return (size_t)(o - out);
}
