/* The relay: bytes both ways once the session is established, and half-close (the client's
 * end is passed on as a TCP shutdown; the backend's end closes the session after the client
 * has been sent everything, with a TLS close_notify). Back-pressure is not the relay's: the
 * writes it queues stop the reading that feeds them (flow.c), in this phase as in the others. */
#include "proxy/conn/conn.h"
#include "proxy/ops/log.h"
#include "proxy/ops/metrics.h"
#include "proxy/tls/tls_offload.h"

void relay_start(struct conn *c)
{
    c->state = CONN_RELAY;
    c->last_active_ms = conn_now_ms(c);
    conn_arm_timer(c, c->listener->conf->idle_timeout_ms);
    metrics_session_started(c);
    /* From here on a TLS 1.3 session needs only its keys: OpenSSL's state goes (issue 14). */
    tls_offload_begin(c);
    conn_backend_read_start(c);
    conn_client_read_start(c);
    /* An HTTP request read to decide where it goes (http_conn.c) leaves first, as it came. */
    if (c->hin) {
        struct buf *b = c->hin;
        c->hin = NULL;
        relay_client_plaintext(c, b);
        if (c->state != CONN_RELAY)
            return;
    }
    /* The client may have sent data along with its last handshake message. */
    if (tls_in_use(c))
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
    if (r < 0)
        conn_backend_write_failed(c, r);
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
    if (conn_push_backend(c) < 0)
        return;
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
    if (tls_in_use(c)) {
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
    }
}
