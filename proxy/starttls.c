/* The plaintext phase of a STARTTLS listener, wired to a connection: backend lines relayed with
 * the capability edited, client lines checked, and at STARTTLS the switch — pipelined bytes
 * dropped (CVE-2011-0411, CVE-2014-3556), the plaintext backend session closed, the handshake
 * run, and a fresh backend session opened whose PROXY header can now carry the TLS facts and
 * the SNI name. The fresh session's greeting is swallowed: the client already had one. */
#include <stdio.h>
#include <string.h>

#include "proxy/conn.h"
#include "proxy/log.h"
#include "proxy/metrics.h"

static int to_client(void *ctx, const char *data, size_t len)
{
    return conn_send_client(ctx, data, len);
}

static int to_backend(void *ctx, const char *data, size_t len)
{
    return conn_send_backend(ctx, data, len);
}

static void begin_tls(struct conn *c)
{
    const char *reply = st_starttls_reply(c->st);
    if (conn_send_client(c, reply, strlen(reply)) < 0 || conn_flush_client(c) < 0) {
        if (c->state != CONN_CLOSED)
            conn_close(c, OUT_CLIENT_ERROR);
        return;
    }
    conn_backend_read_stop(c);
    upstream_close(c);
    buf_put(c->bin);
    c->bin = NULL;
    st_free(c->st);
    c->st = NULL;
    c->starttls_done = true;
    metrics_starttls(c);
    if (c->discarded)
        log_notice("listener %s: dropped %llu bytes pipelined after STARTTLS",
                   c->listener->conf->name, (unsigned long long)c->discarded);
    tls_begin(c);
}

static void go_blind(struct conn *c)
{
    /* Backend bytes that were waiting for the end of their line go through as they are. */
    if (c->bin && buf_unread(c->bin)) {
        if (conn_send_client(c, c->bin->data + c->bin->off, buf_unread(c->bin)) < 0)
            return;
        c->bin->off = c->bin->len;
    }
    if (conn_flush_client(c) < 0 || conn_flush_backend(c) < 0)
        return;
    st_free(c->st);
    c->st = NULL;
    relay_start(c);
}

void starttls_begin(struct conn *c)
{
    conn_backend_read_start(c);
    conn_client_read_start(c);
    if (c->cin && buf_unread(c->cin))
        starttls_client_input(c);
}

void starttls_client_input(struct conn *c)
{
    struct buf *b = c->cin;
    if (!c->backend_connected) {
        /* Only after a PROXY header: bytes before the backend is there wait in c->cin. */
        conn_client_read_stop(c);
        return;
    }
    if (st_starttls_asked(c->st)) {
        c->discarded += buf_unread(b);
        b->off = b->len;
        return;
    }
    size_t used = 0;
    struct st_sink sink = { c, to_client, to_backend };
    enum st_event ev = st_client_input(c->st, b->data + b->off, buf_unread(b), &used, &sink);
    b->off += (uint32_t)used;
    c->bytes_up += used;
    if (conn_flush_backend(c) < 0 || conn_flush_client(c) < 0)
        return;
    switch (ev) {
    case ST_MORE:
        break;
    case ST_CLOSE:
        snprintf(c->error, sizeof c->error, "client line too long or too many commands");
        conn_fail_with_reply(c, OUT_PROTOCOL, NULL);
        break;
    case ST_BLIND:
        go_blind(c);
        break;
    case ST_STARTTLS:
        c->discarded += buf_unread(b);
        b->off = b->len;
        if (st_starttls_ready(c->st))
            begin_tls(c);
        break;
    }
}

void starttls_backend_input(struct conn *c)
{
    struct buf *b = c->bin;
    size_t used = 0;
    struct st_sink sink = { c, to_client, to_backend };
    enum st_event ev = st_backend_input(c->st, b->data + b->off, buf_unread(b), &used, &sink);
    b->off += (uint32_t)used;
    c->bytes_down += used;
    if (conn_flush_client(c) < 0)
        return;
    if (ev == ST_CLOSE) {
        snprintf(c->error, sizeof c->error, "backend line too long");
        conn_fail_with_reply(c, OUT_BACKEND_ERROR, conn_unavailable_reply(c));
        return;
    }
    if (st_starttls_ready(c->st))
        begin_tls(c);
}

void greeting_backend_input(struct conn *c)
{
    struct buf *b = c->bin;
    long n = st_greeting_length(c->listener->conf->proto, b->data + b->off, buf_unread(b));
    if (n == 0)
        return;
    if (n < 0) {
        snprintf(c->error, sizeof c->error, "backend refused the session after STARTTLS");
        conn_fail_with_reply(c, OUT_BACKEND_DOWN, conn_unavailable_reply(c));
        return;
    }
    b->off += (uint32_t)n;
    /* The relay still edits capabilities (STARTTLS must not be offered again) until the
     * client goes blind. */
    c->st = st_new_after_tls(c->listener->conf->proto);
    if (!c->st) {
        conn_close(c, OUT_NOMEM);
        return;
    }
    relay_start(c);
    /* Whatever the backend sent after its greeting is the session's, not ours. */
    if (c->state == CONN_RELAY && c->st && c->bin && buf_unread(c->bin))
        starttls_backend_input(c);
}

/* After STARTTLS: the client went blind (logged in, or a command the engine does not know):
 * everything held is sent on and the relay carries bytes unchanged from here. */
static void after_tls_blind(struct conn *c, struct buf *b)
{
    struct st_sink sink = { c, to_client, to_backend };
    if (st_flush(c->st, &sink) < 0)
        goto out;
    if (c->bin && buf_unread(c->bin)) {
        if (conn_send_client(c, c->bin->data + c->bin->off, buf_unread(c->bin)) < 0)
            goto out;
        c->bytes_down += buf_unread(c->bin);
        c->bin->off = c->bin->len;
    }
    st_free(c->st);
    c->st = NULL;
    if (conn_flush_backend(c) < 0)
        goto out;
    struct buf *rest = c->pin;
    c->pin = NULL;
    if (rest && buf_unread(rest))
        relay_client_plaintext(c, rest);
    else
        buf_put(rest);
    if (c->state == CONN_RELAY && buf_unread(b)) {
        relay_client_plaintext(c, b);
        return;
    }
out:
    buf_put(b);
}

void starttls_after_tls_client_input(struct conn *c, struct buf *b)
{
    if (c->state != CONN_RELAY) {
        buf_put(b);
        return;
    }
    struct st_sink sink = { c, to_client, to_backend };
    while (buf_unread(b)) {
        if (!c->pin && !(c->pin = buf_get())) {
            buf_put(b);
            conn_close(c, OUT_NOMEM);
            return;
        }
        struct buf *p = c->pin;
        if (p->off) {
            memmove(p->data, p->data + p->off, buf_unread(p));
            p->len -= p->off;
            p->off = 0;
        }
        uint32_t n = buf_unread(b) < buf_room(p) ? buf_unread(b) : buf_room(p);
        memcpy(p->data + p->len, b->data + b->off, n);
        p->len += n;
        b->off += n;
        size_t used = 0;
        enum st_event ev = st_client_input(c->st, p->data + p->off, buf_unread(p), &used, &sink);
        p->off += (uint32_t)used;
        c->bytes_up += used;
        if (conn_flush_backend(c) < 0 || conn_flush_client(c) < 0) {
            buf_put(b);
            return;
        }
        if (ev == ST_CLOSE) {
            buf_put(b);
            snprintf(c->error, sizeof c->error, "client line too long or too many commands");
            conn_fail_with_reply(c, OUT_PROTOCOL, NULL);
            return;
        }
        if (ev == ST_BLIND) {
            after_tls_blind(c, b);
            return;
        }
    }
    buf_put(b);
    if (c->pin && !buf_unread(c->pin)) {
        buf_put(c->pin);
        c->pin = NULL;
    }
}
