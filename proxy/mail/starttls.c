/* The plaintext phase of a STARTTLS listener, wired to a connection: backend lines relayed with
 * the capability edited, client lines checked, and at STARTTLS the switch — pipelined bytes
 * dropped (CVE-2011-0411, CVE-2014-3556), the plaintext backend session closed, the handshake
 * run, and a fresh backend session opened whose PROXY header can now carry the TLS facts and
 * the SNI name. The fresh session's greeting is swallowed: the client already had one. The
 * same engine then edits that session, and an implicit-TLS listener's, until the client logs
 * in. A client that half-closes before TLS has its end passed on, as in the relay. */
#include <stdio.h>
#include <string.h>

#include "proxy/conn/conn.h"
#include "proxy/ops/log.h"
#include "proxy/ops/metrics.h"

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

/* The engine is done: what it holds and the backend bytes waiting for the end of their line go
 * to the client as they are, and from here the relay carries bytes unchanged. */
static int release_engine(struct conn *c)
{
    struct st_sink sink = { c, to_client, to_backend };
    if (st_flush(c->st, &sink) < 0)
        return -1;
    if (c->bin && buf_unread(c->bin)) {
        if (conn_send_client(c, c->bin->data + c->bin->off, buf_unread(c->bin)) < 0)
            return -1;
        c->bytes_down += buf_unread(c->bin);
        c->bin->off = c->bin->len;
    }
    if (c->pin && buf_unread(c->pin) && !c->client_done &&
        conn_send_backend(c, c->pin->data + c->pin->off, buf_unread(c->pin)) < 0)
        return -1;
    buf_put(c->pin);
    c->pin = NULL;
    st_free(c->st);
    c->st = NULL;
    return conn_flush_backend(c) < 0 ? -1 : conn_flush_client(c);
}

/* A blind client keeps the engine only while a refusal still waits for the responses ahead
 * of it, so that its replies stay in order. */
static bool engine_finished(const struct conn *c)
{
    return c->st && st_is_blind(c->st) && !st_refusals_queued(c->st);
}

static void go_blind(struct conn *c)
{
    if (conn_flush_client(c) < 0 || conn_flush_backend(c) < 0)
        return;
    if (engine_finished(c) && release_engine(c) < 0)
        return;
    relay_start(c);
    if (c->state == CONN_RELAY && c->client_eof)
        relay_client_eof(c);
}

/* The client ended its stream before TLS. Like a half-close in the relay, the end is passed on
 * to the backend, whose answers to what the client sent still reach the client (EHLO + QUIT +
 * FIN). An unfinished line is dropped, never forwarded unread. */
static void client_eof_pre_tls(struct conn *c)
{
    if (c->cin)
        c->cin->off = c->cin->len;
    if (st_starttls_asked(c->st)) {
        conn_fail_with_reply(c, OUT_OK, NULL); /* no TLS to run on a closed stream */
        return;
    }
    relay_client_eof(c);
}

void starttls_begin(struct conn *c)
{
    conn_backend_read_start(c);
    conn_client_read_start(c);
    if ((c->cin && buf_unread(c->cin)) || c->client_eof)
        starttls_client_input(c);
}

static void client_lines(struct conn *c)
{
    struct buf *b = c->cin;
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

void starttls_client_input(struct conn *c)
{
    if (!c->backend_connected) {
        /* Only after a PROXY header: bytes before the backend is there wait in c->cin. */
        conn_client_read_stop(c);
        return;
    }
    if (c->cin && buf_unread(c->cin))
        client_lines(c);
    if (c->state == CONN_PRE_TLS && c->client_eof)
        client_eof_pre_tls(c);
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
    if (ev == ST_CLOSE && c->state == CONN_RELAY && c->listener->conf->tls == CONF_TLS_IMPLICIT) {
        /* Implicit TLS: editing the backend's STARTTLS out is a courtesy, not a guard; a
         * backend whose lines the engine cannot read is relayed as it is. */
        release_engine(c);
        return;
    }
    if (ev == ST_CLOSE) {
        snprintf(c->error, sizeof c->error, "backend line too long");
        conn_fail_with_reply(c, OUT_BACKEND_ERROR, conn_unavailable_reply(c));
        return;
    }
    if (engine_finished(c)) {
        release_engine(c);
        return;
    }
    if (st_starttls_ready(c->st))
        begin_tls(c);
}

void starttls_backend_eof(struct conn *c)
{
    /* After the client's own QUIT / LOGOUT, or its end of stream, the backend closing is the
     * session's normal end; otherwise it went away (a restart, a crash). Then the client gets
     * the protocol's "try later" even between commands: an SMTP 421 and an IMAP BYE may come at
     * any time, and a client about to send its next command (EHLO after the greeting) would
     * otherwise meet a bare close. A client that half-closed gets it only if it still waits. */
    bool quit = st_client_quit(c->st);
    bool normal = quit || c->client_done;
    if (!normal)
        snprintf(c->error, sizeof c->error, "backend closed the session");
    bool reply = !quit && (!normal || st_awaiting_response(c->st));
    conn_fail_with_reply(c, normal ? OUT_OK : OUT_BACKEND_ERROR,
                         reply ? conn_unavailable_reply(c) : NULL);
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
    c->st = st_new(c->listener->conf->proto, ST_AFTER_STARTTLS);
    if (!c->st) {
        conn_close(c, OUT_NOMEM);
        return;
    }
    relay_start(c);
    /* Whatever the backend sent after its greeting is the session's, not ours. */
    if (c->state == CONN_RELAY && c->st && c->bin && buf_unread(c->bin))
        starttls_backend_input(c);
}

/* Once TLS is up (after STARTTLS, or on an implicit-TLS listener) and until the client goes
 * blind: decrypted client bytes gather in c->pin until they make whole lines for the engine. */
void starttls_after_tls_client_input(struct conn *c, struct buf *b)
{
    if (c->state != CONN_RELAY) {
        buf_put(b);
        return;
    }
    struct st_sink sink = { c, to_client, to_backend };
    while (c->st && buf_unread(b)) {
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
        if (engine_finished(c) && release_engine(c) < 0) {
            buf_put(b);
            return;
        }
    }
    if (c->pin && !buf_unread(c->pin)) {
        buf_put(c->pin);
        c->pin = NULL;
    }
    if (c->st && c->pin && c->listener->conf->tls == CONF_TLS_IMPLICIT &&
        c->state == CONN_RELAY && release_engine(c) < 0) {
        /* Implicit TLS: a client whose write ends mid-line is not sending mail commands one
         * line at a time; it is relayed as it is rather than kept waiting for a line end. */
        buf_put(b);
        return;
    }
    if (!c->st && c->state == CONN_RELAY && buf_unread(b)) {
        /* The engine let go mid-buffer (the client went blind): the rest goes as it is. */
        relay_client_plaintext(c, b);
        return;
    }
    buf_put(b);
}
