/* TLS for one connection, over a custom BIO instead of a memory BIO pair: OpenSSL reads
 * ciphertext straight out of the buffer libuv read into (c->cin), and its output is appended to
 * c->cout, which is submitted once per processing step so a handshake flight leaves in one
 * write. That is one copy each way and no ciphertext buffered per idle connection. */
#include "proxy/tls/tls.h"

#include <errno.h>
#include <string.h>
#include <openssl/err.h>

#include "proxy/tls/acme_tls.h"
#include "proxy/conn/conn.h"
#include "proxy/ops/log.h"
#include "proxy/tls/tickets.h"
#include "proxy/tls/ssl_wipe.h"
#include "proxy/tls/tls_offload.h"
#include "proxy/tls/tls_policy.h"

static BIO_METHOD *bio_method;

static int bio_read(BIO *bio, char *out, int len)
{
    struct conn *c = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    struct buf *b = c->cin;
    if (!b || buf_unread(b) == 0) {
        if (c->client_eof)
            return 0;
        BIO_set_retry_read(bio);
        return -1;
    }
    uint32_t n = buf_unread(b) < (uint32_t)len ? buf_unread(b) : (uint32_t)len;
    memcpy(out, b->data + b->off, n);
    b->off += n;
    tls_offload_saw_read(c);
    return (int)n;
}

static int bio_write(BIO *bio, const char *in, int len)
{
    struct conn *c = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    tls_offload_saw_write(c, in, (size_t)len);
    size_t left = (size_t)len;
    while (left) {
        if (!c->cout && !(c->cout = buf_get()))
            return -1;
        uint32_t room = buf_room(c->cout);
        if (room == 0) {
            if (conn_flush_client(c) < 0)
                return -1;
            continue;
        }
        uint32_t n = left < room ? (uint32_t)left : room;
        memcpy(c->cout->data + c->cout->len, in, n);
        c->cout->len += n;
        in += n;
        left -= n;
    }
    return len;
}

static long bio_ctrl(BIO *bio, int cmd, long num, void *ptr)
{
    (void)num;
    (void)ptr;
    struct conn *c = BIO_get_data(bio);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_EOF:
        return c && c->client_eof && (!c->cin || buf_unread(c->cin) == 0);
    default:
        return 0;
    }
}

static int bio_create(BIO *bio)
{
    BIO_set_init(bio, 1);
    return 1;
}

int tls_global_init(void)
{
    bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "mailsnid-conn");
    if (!bio_method)
        return -ENOMEM;
    BIO_meth_set_read(bio_method, bio_read);
    BIO_meth_set_write(bio_method, bio_write);
    BIO_meth_set_ctrl(bio_method, bio_ctrl);
    BIO_meth_set_create(bio_method, bio_create);
    return 0;
}

void tls_global_free(void)
{
    BIO_meth_free(bio_method);
    bio_method = NULL;
}

SSL_CTX *tls_ctx_new(const struct conf *conf, const struct conf_listener *listener,
                     struct cs_current *certs, const char **err)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        *err = "cannot create TLS context";
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, conf->tls.min_version ? conf->tls.min_version : TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_PRIORITIZE_CHACHA | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* Idle IMAP connections are the common case: let OpenSSL drop its ~34 KB of record
     * buffers whenever they are empty. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    /* Stateless tickets resume sessions; a server-side cache would only cost memory. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 1);
    if (!SSL_CTX_set_cipher_list(ctx, conf->tls.ciphers ? conf->tls.ciphers : TLS_DEFAULT_CIPHERS)) {
        *err = "tls.ciphers: no usable cipher in the list";
        goto fail;
    }
    if (conf->tls.ciphersuites && !SSL_CTX_set_ciphersuites(ctx, conf->tls.ciphersuites)) {
        *err = "tls.ciphersuites: no usable suite in the list";
        goto fail;
    }
    if (!SSL_CTX_set1_groups_list(ctx, "X25519:P-256:P-384")) {
        *err = "cannot set key exchange groups";
        goto fail;
    }
    tls_policy_install(ctx, listener->proto);
    if (conf->tls.ticket_keys)
        tickets_install(ctx);
    acme_tls_install(ctx, certs, conf->acme.enabled ? conf->acme.storage : NULL);
    tls_offload_install(ctx, conf->tls.offload);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

/* Records OpenSSL's reason for a failure in the connection's log detail, and empties the
 * thread's error queue so the next connection starts clean. */
static void note_ssl_error(struct conn *c, const char *what)
{
    unsigned long e = ERR_peek_last_error();
    if (e)
        snprintf(c->error, sizeof c->error, "%s: %s", what, ERR_reason_error_string(e) ?
                 ERR_reason_error_string(e) : "unknown");
    else if (!c->error[0])
        snprintf(c->error, sizeof c->error, "%s", what);
    ERR_clear_error();
}

static void release_cin_if_empty(struct conn *c)
{
    if (c->cin && buf_unread(c->cin) == 0) {
        buf_put(c->cin);
        c->cin = NULL;
    }
}

void tls_begin(struct conn *c)
{
    c->ssl = SSL_new(c->listener->ssl_ctx);
    BIO *bio = c->ssl ? BIO_new(bio_method) : NULL;
    if (!bio) {
        ssl_free_wiped(c->ssl);
        c->ssl = NULL;
        conn_close(c, OUT_NOMEM);
        return;
    }
    BIO_set_data(bio, c);
    SSL_set_bio(c->ssl, bio, bio);
    SSL_set_app_data(c->ssl, c);
    SSL_set_accept_state(c->ssl);
    c->state = CONN_HANDSHAKE;
    conn_arm_timer(c, c->listener->conf->handshake_timeout_ms);
    conn_client_read_start(c);
    if (c->cin && buf_unread(c->cin))
        tls_client_input(c);
}

static void handshake_step(struct conn *c)
{
    int r = SSL_do_handshake(c->ssl);
    bool wrote = c->cout && buf_unread(c->cout); /* OpenSSL queued records (an alert, say) */
    if (conn_flush_client(c) < 0) {
        conn_close(c, OUT_CLIENT_ERROR);
        return;
    }
    if (r == 1) {
        /* Application data that came with the client's Finished stays in c->cin (or inside
         * OpenSSL) and is read once the backend is there to take it. */
        conn_client_read_stop(c);
        c->tls_resumed = SSL_session_reused(c->ssl);
        /* A TLS-ALPN-01 validation is over once the handshake is (RFC 8737 3). */
        if (acme_tls_is_challenge(c->ssl)) {
            snprintf(c->error, sizeof c->error, "acme tls-alpn-01 validation");
            conn_fail_with_reply(c, OUT_OK, NULL);
            return;
        }
        if (c->limited) {
            log_notice("listener %s: %s", c->listener->conf->name, c->error);
            conn_fail_with_reply(c, OUT_LIMIT, st_busy_reply(c->listener->conf->proto));
            return;
        }
        if (http_wanted(c)) {
            http_begin(c);
            return;
        }
        c->state = CONN_CONNECTING;
        upstream_connect(c);
        return;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        if (c->client_eof) {
            snprintf(c->error, sizeof c->error, "client closed during handshake");
            conn_close(c, OUT_HANDSHAKE_FAILED);
        }
        return;
    }
    unsigned long reason = ERR_GET_REASON(ERR_peek_last_error());
    note_ssl_error(c, "handshake");
    /* OpenSSL queues an alert for most failures; let it reach the client before closing. When
     * the bytes were not TLS at all it writes nothing, so answer in the client's terms: a
     * browser that spoke plain HTTP gets a readable 400, anything else a fatal TLS alert. */
    if (!wrote) {
        static const char http_on_tls[] =
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 41\r\n"
            "Connection: close\r\n\r\nThis port speaks HTTPS, not plain HTTP.\r\n";
        /* A fatal unexpected_message alert record, TLS 1.2 framing. */
        static const char alert[] = { 0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0a };
        bool http = reason == SSL_R_HTTP_REQUEST && c->listener->conf->proto == CONF_PROTO_HTTP;
        ssl_free_wiped(c->ssl); /* what follows is not TLS, and the log must not claim it was */
        c->ssl = NULL;
        if (conn_send_client(c, http ? http_on_tls : alert,
                             http ? sizeof http_on_tls - 1 : sizeof alert) < 0) {
            conn_close(c, OUT_HANDSHAKE_FAILED);
            return;
        }
    }
    conn_fail_with_reply(c, OUT_HANDSHAKE_FAILED, NULL);
}

/* Decrypts what the client sent and hands it to the relay, a buffer of up to 64 KB at a time
 * (several records gathered into one write to the backend), until OpenSSL wants more bytes or
 * a queue this feeds is full: the backend's, or the client's own, which OpenSSL's answers to
 * KeyUpdate messages fill (flow.c; reading resumes from on_write). */
static void decrypt_step(struct conn *c)
{
    for (;;) {
        if (c->client_held)
            break;
        struct buf *b = buf_get();
        if (!b) {
            conn_close(c, OUT_NOMEM);
            return;
        }
        int n = 0, e = SSL_ERROR_NONE;
        while (b->len < BUF_READ_SIZE) {
            n = SSL_read(c->ssl, b->data + b->len, (int)(BUF_READ_SIZE - b->len));
            if (n <= 0) {
                e = SSL_get_error(c->ssl, n);
                break;
            }
            b->len += (uint32_t)n;
        }
        if (b->len) {
            relay_client_plaintext(c, b);
            if (c->state == CONN_CLOSED)
                return;
        } else {
            buf_put(b);
        }
        if (e == SSL_ERROR_NONE)
            continue; /* the buffer filled up: there may be more */
        if (e == SSL_ERROR_WANT_READ)
            break;
        if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && c->client_eof)) {
            ERR_clear_error();
            if (conn_flush_client(c) < 0)
                return;
            relay_client_eof(c);
            return;
        }
        note_ssl_error(c, "client TLS");
        conn_close(c, OUT_CLIENT_ERROR);
        return;
    }
    conn_flush_client(c);
}

void tls_client_input(struct conn *c)
{
    if (c->offload) {
        if (c->state == CONN_RELAY && !c->client_done)
            tls_offload_client_input(c);
        if (c->state != CONN_CLOSED)
            release_cin_if_empty(c);
        return;
    }
    if (c->state == CONN_HANDSHAKE)
        handshake_step(c);
    else if (c->state == CONN_RELAY && !c->client_done)
        decrypt_step(c);
    if (c->state != CONN_CLOSED)
        release_cin_if_empty(c);
}

int tls_encrypt(struct conn *c, const char *data, size_t len)
{
    if (c->offload)
        return tls_offload_encrypt(c, data, len);
    /* OpenSSL cuts the data into records of at most 16 KB; they gather in c->cout and leave
     * in one write. */
    while (len) {
        int chunk = len > BUF_READ_SIZE ? BUF_READ_SIZE : (int)len;
        int n = SSL_write(c->ssl, data, chunk);
        if (n <= 0) {
            note_ssl_error(c, "client TLS write");
            return -EIO;
        }
        data += n;
        len -= (size_t)n;
    }
    return conn_flush_client(c);
}

void tls_send_close_notify(struct conn *c)
{
    if (c->offload) {
        tls_offload_close_notify(c);
        return;
    }
    if (!(SSL_get_shutdown(c->ssl) & SSL_SENT_SHUTDOWN))
        SSL_shutdown(c->ssl);
    ERR_clear_error();
}

/* ---- the session, whichever record layer carries it ---- */

bool tls_in_use(const struct conn *c)
{
    return c->ssl || c->offload;
}

bool tls_is_up(const struct conn *c)
{
    return c->offload || (c->ssl && SSL_is_init_finished(c->ssl));
}

const struct cs_choice *tls_choice(const struct conn *c)
{
    return c->offload ? tls_offload_choice(c) : c->ssl ? cs_choice_of(c->ssl) : NULL;
}

const char *tls_version_name(const struct conn *c)
{
    /* Only TLS 1.3 is offloaded. */
    return c->offload ? "TLSv1.3" : tls_is_up(c) ? SSL_get_version(c->ssl) : "-";
}

const char *tls_cipher_name(const struct conn *c)
{
    return c->offload ? tls_offload_cipher(c) : tls_is_up(c) ? SSL_get_cipher_name(c->ssl) : "-";
}

const char *tls_cert_path(const struct conn *c)
{
    /* A resumed handshake sends no certificate; the one OpenSSL still has set is whichever was
     * loaded last for the name (RSA after ECDSA, say), not the one the session began with. */
    if (c->tls_resumed)
        return "-";
    return c->offload ? tls_offload_cert_path(c) : tls_is_up(c) ? cs_used_cert_path(c->ssl) : "-";
}

const char *tls_alpn_agreed(const struct conn *c)
{
    /* The policy only ever agrees to the listener's own identifier (tls_policy.c). */
    const char *own = tls_policy_alpn_id(c->listener->conf->proto);
    if (c->offload)
        return tls_offload_alpn_agreed(c) ? own : NULL;
    const unsigned char *alpn = NULL;
    unsigned len = 0;
    if (tls_is_up(c))
        SSL_get0_alpn_selected(c->ssl, &alpn, &len);
    return len ? own : NULL;
}
