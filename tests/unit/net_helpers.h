/* net_helpers.h - what the unit tests of network clients share: a listening socket on loopback. */
#ifndef SLUICE_TEST_NET_HELPERS_H
#define SLUICE_TEST_NET_HELPERS_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

/*
 * A socket listening on 127.0.0.1 on a port the system picks (*port), with
 * `backlog`. Nobody accepts from it unless the test does: connects complete
 * and the peer never speaks (a black hole). Returns the fd; the test closes it.
 */
static inline int
test_listen_loopback(int backlog, int *port)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;

    assert_true(fd >= 0);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(fd, backlog), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

#endif
