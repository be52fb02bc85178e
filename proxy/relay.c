/* The relay: bytes both ways once the session is established, with back-pressure (a side
 * whose peer has more than RELAY_HIGH_WATER bytes queued is not read until the queue falls
 * under RELAY_LOW_WATER, so a slow reader bounds what we buffer) and half-close (the client's
 * end is passed on as a TCP shutdown; the backend's end closes the session after the client
 * has been sent everything, with a TLS close_notify). */
#include "proxy/conn.h"
#include "proxy/log.h"
#include "proxy/metrics.h"

#define RELAY_HIGH_WATER (256 * 1024)
#define RELAY_LOW_WATER (64 * 1024)

static size_t queued(uv_tcp_t *t)
{
    return uv_stream_get_write_queue_size((uv_stream_t *)t);
}

bool relay_backend_congested(struct conn *c)
{
    return queued(&c->backend) > RELAY_HIGH_WATER;
}

void relay_start(struct conn *c)
{
    c->state = CONN_RELAY;
    c->last_active_ms = conn_now_ms(c);
    conn_arm_timer(c, c->listener->conf->idle_timeout_ms);
    metrics_session_started(c);
    conn_backend_read_start(c);
    conn_client_read_start(c);
    /* The client may have sent data along with its last handshake message. */
    if (c->ssl)
        tls_client_input(c);
    else if (c->cin && buf_unread(c->cin)) {
        struct buf *b = c->cin;
        c->cin = NULL;
        relay_client_plaintext(c, b);
    }
}

void relay_client_plaintext(struct conn *c, struct buf *b)
{
    if (c->st) {
        starttls_after_tls_client_input(c, b);
        return;
    }
    c->bytes_up += buf_unread(b);
    int r = conn_send_buf(c, (uv_stream_t *)&c->backend, b);
    if (r < 0) {
        snprintf(c->error, sizeof c->error, "backend write: %s", uv_strerror(r));
        conn_close(c, OUT_BACKEND_ERROR);
        return;
    }
    if (relay_backend_congested(c))
        conn_client_read_stop(c);
}

static void on_backend_shutdown(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status; /* a failed shutdown shows up as an error on the next read */
}

void relay_client_eof(struct conn *c)
{
    if (c->client_done)
        return;
    c->client_done = true;
    conn_client_read_stop(c);
    if (c->backend_done) {
        conn_fail_with_reply(c, OUT_OK, NULL);
        return;
    }
    /* Queued after every pending write: the backend sees all data, then end of stream, and may
     * still answer (a client that half-closes after its request). */
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->backend, on_backend_shutdown) < 0)
        conn_fail_with_reply(c, OUT_OK, NULL);
}

void relay_backend_read(struct conn *c, ssize_t nread, struct buf *b)
{
    if (nread == UV_EOF) {
        c->backend_done = true;
        conn_backend_read_stop(c);
        conn_fail_with_reply(c, OUT_OK, NULL);
        return;
    }
    c->bytes_down += buf_unread(b);
    int r;
    if (c->ssl) {
        r = tls_encrypt(c, b->data + b->off, buf_unread(b));
        buf_put(b);
    } else {
        r = conn_send_buf(c, (uv_stream_t *)&c->client, b);
    }
    if (r < 0) {
        if (c->state != CONN_CLOSED) {
            snprintf(c->error, sizeof c->error, "client write: %s", uv_strerror(r));
            conn_close(c, OUT_CLIENT_ERROR);
        }
        return;
    }
    if (queued(&c->client) > RELAY_HIGH_WATER)
        conn_backend_read_stop(c);
}

void relay_writes_drained(struct conn *c)
{
    if (c->state != CONN_RELAY)
        return;
    if (!c->client_reading && !c->client_done && queued(&c->backend) < RELAY_LOW_WATER) {
        conn_client_read_start(c);
        /* Ciphertext left in c->cin or plaintext inside OpenSSL when reading paused. */
        if (c->ssl)
            tls_client_input(c);
        if (c->state != CONN_RELAY)
            return;
    }
    if (!c->backend_reading && !c->backend_done && queued(&c->client) < RELAY_LOW_WATER)
        conn_backend_read_start(c);
}
