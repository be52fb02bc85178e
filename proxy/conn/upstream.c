/* Connecting to the backend: the listener's list (or the SNI route's) tried in order, each
 * attempt bounded by connect_timeout; the PROXY header, when configured, is the first thing
 * written. When no backend answers, the client hears it in its protocol's own words. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "proxy/conn/conn.h"
#include "proxy/ops/log.h"
#include "proxy/ops/metrics.h"
#include "proxy/conn/proxyproto.h"
#include "proxy/runtime/routes.h"

static void attempt(struct conn *c);

static void on_backend_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    c->backend_open = false;
    c->backend_connected = false;
    c->backend_reading = false;
    if (conn_release_handle(c))
        return;
    if (c->want_connect && c->state != CONN_CLOSED) {
        c->want_connect = false;
        attempt(c);
    }
}

void upstream_close(struct conn *c)
{
    /* What was gathered for this backend session must never reach the next one. */
    buf_put(c->bout);
    c->bout = NULL;
    if (c->backend_open && !uv_is_closing((uv_handle_t *)&c->backend))
        uv_close((uv_handle_t *)&c->backend, on_backend_closed);
}

static void choose_backends(struct conn *c)
{
    const struct conf_listener *l = c->listener->conf;
    c->backends = l->backends;
    c->n_backends = l->n_backends;
    c->proxy_protocol = l->proxy_protocol;
    const struct cs_choice *choice = tls_choice(c);
    if (!choice || !choice->sni[0])
        return;
    /* The connection's own generation: a reload never moves an open session. */
    const struct conf_route *r = routes_lookup(c->gen->routes, choice->sni, l->proto);
    if (!r)
        return;
    c->backends = r->backends[l->proto];
    c->n_backends = r->n_backends[l->proto];
    if (r->has_proxy_protocol)
        c->proxy_protocol = r->proxy_protocol;
}

static int send_proxy_header(struct conn *c)
{
    uint8_t hdr[512];
    int n;
    if (c->proxy_protocol == CONF_PP_V1) {
        n = pp_build_v1((char *)hdr, sizeof hdr, (struct sockaddr *)&c->peer,
                        (struct sockaddr *)&c->local);
    } else {
        struct pp_tls tls = { 0 };
        if (tls_is_up(c)) {
            const struct cs_choice *choice = tls_choice(c);
            tls.authority = choice && choice->sni[0] ? choice->sni : NULL;
            tls.ssl = true;
            tls.version = tls_version_name(c);
            tls.cipher = tls_cipher_name(c);
            /* Only ALPN the client and we agreed on, which is always the listener's own
             * protocol (tls_policy.c): Dovecot drops a connection whose ALPN is not its own. */
            tls.alpn = tls_alpn_agreed(c);
        }
        n = pp_build_v2(hdr, sizeof hdr, (struct sockaddr *)&c->peer,
                        (struct sockaddr *)&c->local, &tls);
    }
    if (n < 0)
        return n;
    return conn_send_backend(c, (const char *)hdr, (size_t)n);
}

static void all_failed(struct conn *c)
{
    log_warning("listener %s: no backend answered (%s)", c->listener->conf->name, c->error);
    conn_fail_with_reply(c, OUT_BACKEND_DOWN, conn_unavailable_reply(c));
}

static void on_connect(uv_connect_t *req, int status)
{
    struct conn *c = req->data;
    c->connecting = false;
    if (c->state == CONN_CLOSED)
        return;
    if (status < 0) {
        const struct conf_addr *a = &c->backends[c->backend_index];
        snprintf(c->error, sizeof c->error, "backend %s: %s", a->text,
                 c->connect_timed_out ? "connect timeout" : uv_strerror(status));
        log_info("listener %s: %s", c->listener->conf->name, c->error);
        metrics_backend_error(a);
        c->backend_index++;
        c->want_connect = true;
        upstream_close(c);
        return;
    }
    c->backend_connected = true;
    c->error[0] = 0;
    uv_tcp_nodelay(&c->backend, 1);
    if (c->proxy_protocol != CONF_PP_NONE &&
        (send_proxy_header(c) < 0 || conn_flush_backend(c) < 0)) {
        if (c->state != CONN_CLOSED && c->state != CONN_FLUSHING)
            conn_close(c, OUT_NOMEM);
        return;
    }
    if (c->state == CONN_PRE_TLS) {
        starttls_begin(c);
    } else if (c->starttls_done) {
        c->state = CONN_GREETING;
        conn_arm_timer(c, c->listener->conf->connect_timeout_ms);
        conn_backend_read_start(c);
    } else {
        relay_start(c);
    }
}

static void attempt(struct conn *c)
{
    if (c->backend_index >= c->n_backends) {
        all_failed(c);
        return;
    }
    int r = uv_tcp_init(&c->worker->loop, &c->backend);
    if (r < 0) {
        conn_close(c, OUT_NOMEM);
        return;
    }
    c->backend.data = c;
    c->backend_open = true;
    c->open_handles++;
    c->connect_req.data = c;
    c->connect_timed_out = false;
    const struct conf_addr *a = &c->backends[c->backend_index];
    r = uv_tcp_connect(&c->connect_req, &c->backend, (const struct sockaddr *)&a->ss, on_connect);
    if (r < 0) {
        snprintf(c->error, sizeof c->error, "backend %s: %s", a->text, uv_strerror(r));
        metrics_backend_error(a);
        c->backend_index++;
        c->want_connect = true;
        upstream_close(c);
        return;
    }
    c->connecting = true;
    conn_arm_timer(c, c->listener->conf->connect_timeout_ms);
}

void upstream_connect(struct conn *c)
{
    choose_backends(c);
    c->backend_index = 0;
    if (c->backend_open) {
        /* The pre-STARTTLS backend session is still closing: connect once it has. */
        c->want_connect = true;
        upstream_close(c);
        return;
    }
    attempt(c);
}

void upstream_timeout(struct conn *c)
{
    /* Closing the handle cancels the connect; on_connect then moves to the next backend. */
    c->connect_timed_out = true;
    upstream_close(c);
}
