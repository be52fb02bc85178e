/* The PROXY header from a load balancer (listener option proxy_protocol_in): accepted only
 * from the `trusted` networks, within the handshake timeout; it replaces the connection's
 * addresses for logs, routing and the header we send on. Anything wrong closes the connection
 * before a byte reaches a backend. */
#include <stdio.h>

#include "proxy/conn/conn.h"
#include "proxy/ops/log.h"
#include "proxy/ops/metrics.h"
#include "proxy/conn/proxyproto.h"

static bool trusted(const struct conn *c)
{
    const struct conf_listener *l = c->listener->conf;
    for (size_t i = 0; i < l->n_trusted; i++)
        if (conf_cidr_match(&l->trusted[i], (const struct sockaddr *)&c->peer))
            return true;
    return false;
}

static void refuse(struct conn *c, const char *why)
{
    snprintf(c->error, sizeof c->error, "PROXY header refused: %s", why);
    metrics_proxy_refused(c);
    conn_close(c, OUT_PROXY_HEADER);
}

void proxyin_begin(struct conn *c)
{
    if (!trusted(c)) {
        refuse(c, "source not in trusted");
        return;
    }
    c->state = CONN_PROXY_IN;
    conn_arm_timer(c, c->listener->conf->handshake_timeout_ms);
    conn_client_read_start(c);
}

void proxyin_client_input(struct conn *c)
{
    struct buf *b = c->cin;
    struct pp_addrs addrs;
    int n = pp_parse((const uint8_t *)b->data + b->off, buf_unread(b), &addrs);
    if (n == 0)
        return;
    if (n < 0) {
        refuse(c, n == -E2BIG ? "header too long" : "malformed header");
        return;
    }
    b->off += (uint32_t)n;
    /* LOCAL is the balancer speaking for itself (HAProxy's checks of a mail port send it):
     * the addresses stay the real ones, and the per-client limit is for clients. */
    c->proxy_local = addrs.local;
    if (!addrs.local) {
        c->peer = addrs.src;
        c->local = addrs.dst;
    }
    /* Client bytes after the header wait in c->cin until the session wants them. */
    conn_client_read_stop(c);
    conn_start_session(c);
}
