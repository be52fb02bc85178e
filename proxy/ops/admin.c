/* A deliberately tiny HTTP/1.0 server: one request per connection, request head bounded to
 * ADMIN_REQUEST_MAX bytes and ADMIN_TIMEOUT_MS, two paths, then close. It serves nothing else,
 * and listens on loopback unless the operator writes another address. */
#include "proxy/ops/admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/ops/log.h"
#include "proxy/ops/metrics.h"
#include "proxy/runtime/upgrade.h"

#define ADMIN_REQUEST_MAX 4096
#define ADMIN_TIMEOUT_MS 5000

struct admin {
    struct server *srv;
    uv_tcp_t listener;
};

struct admin_conn {
    struct server *srv;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t write;
    int open_handles;
    size_t len;
    char *response;
    char request[ADMIN_REQUEST_MAX];
};

static void on_conn_closed(uv_handle_t *h)
{
    struct admin_conn *a = h->data;
    if (--a->open_handles == 0) {
        free(a->response);
        free(a);
    }
}

static void admin_conn_close(struct admin_conn *a)
{
    if (!uv_is_closing((uv_handle_t *)&a->tcp)) {
        uv_close((uv_handle_t *)&a->tcp, on_conn_closed);
        uv_close((uv_handle_t *)&a->timer, on_conn_closed);
    }
}

static void on_written(uv_write_t *req, int status)
{
    (void)status;
    admin_conn_close(req->data);
}

static void respond(struct admin_conn *a, int code, const char *type, const char *body, size_t body_len)
{
    const char *reason = code == 200 ? "OK" : code == 503 ? "Service Unavailable"
                       : code == 404 ? "Not Found" : code == 405 ? "Method Not Allowed" : "Bad Request";
    size_t cap = body_len + 256;
    a->response = malloc(cap);
    if (!a->response) {
        admin_conn_close(a);
        return;
    }
    int head = snprintf(a->response, cap, "HTTP/1.0 %d %s\r\nContent-Type: %s\r\n"
                        "Content-Length: %zu\r\nConnection: close\r\n\r\n", code, reason, type, body_len);
    memcpy(a->response + head, body, body_len);
    uv_buf_t b = uv_buf_init(a->response, (unsigned)(head + body_len));
    a->write.data = a;
    uv_read_stop((uv_stream_t *)&a->tcp);
    if (uv_write(&a->write, (uv_stream_t *)&a->tcp, &b, 1, on_written) < 0)
        admin_conn_close(a);
}

static void handle_request(struct admin_conn *a)
{
    const char *req = a->request;
    bool get = strncmp(req, "GET ", 4) == 0;
    const char *path = get ? req + 4 : "";
    size_t plen = strcspn(path, " \r\n?");
    if (!get) {
        respond(a, 405, "text/plain", "GET only\n", 9);
    } else if (plen == 8 && memcmp(path, "/metrics", 8) == 0) {
        char *body = NULL;
        size_t body_len = 0;
        FILE *f = open_memstream(&body, &body_len);
        if (!f) {
            admin_conn_close(a);
            return;
        }
        metrics_render(a->srv, f);
        fclose(f);
        respond(a, 200, "text/plain; version=0.0.4", body, body_len);
        free(body);
    } else if (plen == 8 && memcmp(path, "/healthz", 8) == 0) {
        if (atomic_load(&a->srv->unhealthy))
            respond(a, 503, "text/plain", "draining\n", 9);
        else
            respond(a, 200, "text/plain", "ok\n", 3);
    } else {
        respond(a, 404, "text/plain", "not found\n", 10);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    (void)suggested;
    struct admin_conn *a = h->data;
    *out = uv_buf_init(a->request + a->len, (unsigned)(sizeof a->request - 1 - a->len));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    (void)b;
    struct admin_conn *a = s->data;
    if (nread < 0) {
        admin_conn_close(a);
        return;
    }
    a->len += (size_t)nread;
    a->request[a->len] = 0;
    if (strstr(a->request, "\r\n\r\n") || strstr(a->request, "\n\n"))
        handle_request(a);
    else if (a->len == sizeof a->request - 1)
        respond(a, 400, "text/plain", "request too long\n", 17);
}

static void on_timeout(uv_timer_t *t)
{
    admin_conn_close(t->data);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct admin *adm = server->data;
    if (status < 0)
        return;
    struct admin_conn *a = calloc(1, sizeof *a);
    if (!a)
        return;
    a->srv = adm->srv;
    uv_tcp_init(server->loop, &a->tcp);
    uv_timer_init(server->loop, &a->timer);
    a->tcp.data = a->timer.data = a;
    a->open_handles = 2;
    if (uv_accept(server, (uv_stream_t *)&a->tcp) < 0) {
        admin_conn_close(a);
        return;
    }
    uv_timer_start(&a->timer, on_timeout, ADMIN_TIMEOUT_MS, 0);
    uv_read_start((uv_stream_t *)&a->tcp, on_alloc, on_read);
}

static void on_admin_closed(uv_handle_t *h);

/* The endpoint on CONF's admin address, listening; NULL (logged) when it cannot bind. */
static struct admin *admin_open(struct server *srv, const struct conf *conf)
{
    struct admin *adm = calloc(1, sizeof *adm);
    if (!adm)
        return NULL;
    adm->srv = srv;
    uv_tcp_init(srv->loop, &adm->listener);
    adm->listener.data = adm;
    /* After a SIGUSR2 upgrade, the old process's socket: health checks never see it closed. */
    int fd = upgrade_take_admin_fd(&conf->admin.ss);
    int r = fd >= 0 ? uv_tcp_open(&adm->listener, fd)
                    : uv_tcp_bind(&adm->listener, (const struct sockaddr *)&conf->admin.ss, 0);
    if (r < 0 && fd >= 0)
        close(fd); /* uv_tcp_open failed: the handle did not take it */
    if (r == 0)
        r = uv_listen((uv_stream_t *)&adm->listener, 64, on_connection);
    if (r < 0) {
        log_err("%s: admin %s: %s", conf->path, conf->admin.text, uv_strerror(r));
        uv_close((uv_handle_t *)&adm->listener, on_admin_closed);
        return NULL;
    }
    return adm;
}

int admin_start(struct server *srv)
{
    if (!srv->conf->has_admin)
        return 0;
    srv->admin = admin_open(srv, srv->conf);
    return srv->admin ? 0 : -1;
}

int admin_replace(struct server *srv, const struct conf *old, const struct conf *new)
{
    if (old->has_admin == new->has_admin &&
        (!new->has_admin || (old->admin.len == new->admin.len &&
                             memcmp(&old->admin.ss, &new->admin.ss, new->admin.len) == 0)))
        return 0;
    struct admin *adm = NULL;
    if (new->has_admin && !(adm = admin_open(srv, new)))
        return -1;
    admin_stop(srv);
    srv->admin = adm;
    return 0;
}

static void on_admin_closed(uv_handle_t *h)
{
    free(h->data);
}

void admin_stop(struct server *srv)
{
    if (!srv->admin)
        return;
    uv_close((uv_handle_t *)&srv->admin->listener, on_admin_closed);
    srv->admin = NULL;
}

uv_tcp_t *admin_listener(struct server *srv)
{
    return srv->admin ? &srv->admin->listener : NULL;
}
