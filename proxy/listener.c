/* Listening sockets. They are created and bound by hand rather than with uv_tcp_bind because
 * every worker needs its own socket on the same address (SO_REUSEPORT: the kernel spreads
 * connections across workers with no shared accept lock), and Debian's libuv 1.44 has no
 * UV_TCP_REUSEPORT. All sockets are bound at start, before privileges are dropped. */
#include "proxy/listener.h"

#include <errno.h>
#include <stdbool.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy/conn.h"
#include "proxy/log.h"

#define LISTEN_BACKLOG 1024

/* A TCP socket for L's address, bound; with REUSEPORT every worker gets its own. */
static int bound_socket(const struct conf_listener *l, bool reuseport)
{
    int family = l->listen.ss.ss_family;
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1, zero = 0;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0))
        goto fail;
    /* "[::]:995" serves IPv4 too, as operators expect from a wildcard address; the config
     * refuses a second listener on the same port, so nothing else wants the IPv4 side. */
    if (family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero) < 0)
        goto fail;
    if (bind(fd, (const struct sockaddr *)&l->listen.ss, l->listen.len) < 0)
        goto fail;
    return fd;
fail:;
    int e = errno;
    close(fd);
    return -e;
}

int listener_check_free(const struct conf_listener *l)
{
    int fd = bound_socket(l, false);
    if (fd < 0)
        return fd;
    close(fd);
    return 0;
}

int listener_bind(const struct conf_listener *l)
{
    int fd = bound_socket(l, true);
    if (fd >= 0 && listen(fd, LISTEN_BACKLOG) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

static void on_connection(uv_stream_t *server, int status)
{
    struct worker *w = server->loop->data;
    struct listener_rt *l = server->data;
    if (status < 0) {
        log_warning("listener %s: accept: %s", l->conf->name, uv_strerror(status));
        return;
    }
    conn_accept(w, l, server);
}

int listener_start(struct worker *w, size_t index, int fd)
{
    uv_tcp_t *h = &w->listeners[index];
    int r = uv_tcp_init(&w->loop, h);
    if (r < 0)
        return r;
    h->data = &w->server->listeners[index];
    if ((r = uv_tcp_open(h, fd)) < 0 || (r = uv_listen((uv_stream_t *)h, LISTEN_BACKLOG, on_connection)) < 0)
        return r;
    return 0;
}
