/* Listening sockets. They are created and bound by hand rather than with uv_tcp_bind because
 * every worker needs its own socket on the same address (SO_REUSEPORT: the kernel spreads
 * connections across workers with no shared accept lock), and Debian's libuv 1.44 has no
 * UV_TCP_REUSEPORT. All sockets are bound at start, before privileges are dropped. */
#include "proxy/runtime/listener.h"

#include <errno.h>
#include <stdbool.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy/conn/conn.h"
#include "proxy/ops/log.h"

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
    struct worker_listener *wl = server->data;
    if (status < 0) {
        log_warning("listener %s: accept: %s", wl->rt->conf->name, uv_strerror(status));
        return;
    }
    conn_accept(wl->worker, wl->rt, server);
}

int listener_start(struct worker *w, struct listen_slot *slot, struct listener_rt *rt, int fd)
{
    struct worker_listener *wl = calloc(1, sizeof *wl);
    if (!wl) {
        close(fd);
        return UV_ENOMEM;
    }
    int r = uv_tcp_init(&w->loop, &wl->handle);
    if (r < 0) {
        close(fd);
        free(wl);
        return r;
    }
    wl->worker = w;
    wl->slot = slot;
    wl->rt = rt;
    wl->handle.data = wl;
    wl->next = w->listeners;
    w->listeners = wl;
    if ((r = uv_tcp_open(&wl->handle, fd)) < 0) {
        close(fd);
        listener_stop(wl);
        return r;
    }
    if ((r = uv_listen((uv_stream_t *)&wl->handle, LISTEN_BACKLOG, on_connection)) < 0) {
        listener_stop(wl);
        return r;
    }
    return 0;
}

static void on_listener_closed(uv_handle_t *h)
{
    free(h->data);
}

void listener_stop(struct worker_listener *wl)
{
    struct worker_listener **p = &wl->worker->listeners;
    while (*p && *p != wl)
        p = &(*p)->next;
    if (*p)
        *p = wl->next;
    if (!uv_is_closing((uv_handle_t *)&wl->handle))
        uv_close((uv_handle_t *)&wl->handle, on_listener_closed);
}
