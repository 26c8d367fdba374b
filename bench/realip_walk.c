/* realip_walk.c - what finding the client behind trusted proxies costs a request in CPU alone:
 * the X-Forwarded-For walk of a parsed request from a trusted peer, the client's text and its
 * key, as server.c does them once per request. Built as target realip_walk_timing (run by
 * bench/realip.sh); prints the client found and nanoseconds per request, the least of 5 rounds. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "realip.h"

#define ROUNDS 5
#define PER_ROUND 2000000L

int
main(void)
{
    static const char req[] = "GET /api/bench HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
                              "User-Agent: wrk\r\nAccept: */*\r\n"
                              "X-Forwarded-For: 203.0.113.7, 10.0.0.2\r\n\r\n";
    struct http_request h;
    struct cidr_list trusted = {0};
    struct netaddr peer, out;
    char err[128], text[NETADDR_TEXT_MAX], key[NETADDR_KEY_MAX];
    volatile size_t sink = 0;
    double best = 0;
    if (http_parse_request(req, sizeof req - 1, &h) <= 0 ||
        cidr_list_parse("127.0.0.1/32,10.0.0.0/8", &trusted, err, sizeof err) != 0 ||
        netaddr_parse("127.0.0.1", 9, &peer) != 0)
        return 1;
    for (int r = 0; r < ROUNDS; r++) {
        struct timespec a, b;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);
        for (long i = 0; i < PER_ROUND; i++) {
            realip_walk(&h, &trusted, &peer, &out);
            size_t n = netaddr_text(&out, text, sizeof text);
            memcpy(key, text, n + 1);
            sink += n + (size_t)key[0];
        }
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
        double ns = ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) /
                    (double)PER_ROUND;
        if (r == 0 || ns < best)
            best = ns;
    }
    printf("client %s: %.1f ns per request (walk, text, key)\n", text, best);
    cidr_list_free(&trusted);
    return 0;
}
