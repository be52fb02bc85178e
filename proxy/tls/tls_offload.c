/* tls_offload: once a TLS 1.3 session is established and the relay begins, hands it from
 * OpenSSL to the record layer of tls13/ and frees the SSL object. OpenSSL 3.0 keeps ~14 KB of
 * handshake-era state per SSL for the life of a connection; what a session needs from then on
 * is two AEAD contexts, two IVs, two sequence numbers and the two secrets (issue 14). An idle
 * IMAP session is the common connection on a mail host, so that is most of the memory.
 *
 * The secrets come from OpenSSL's keylog callback (the only way OpenSSL 3.0 gives them out),
 * gathered during the handshake into c->secrets. Anything unusual stays on OpenSSL exactly as
 * before: TLS 1.2, a suite tls13/ does not carry (the CCM ones), accepted early data, bytes
 * OpenSSL has already read past the handshake, tls.offload = false.
 *
 * From then on this file carries the connection's TLS: it decrypts c->cin in place and hands
 * the plaintext on in the same buffer, and encrypts the backend's bytes straight into the
 * client's write buffer. */
#include "proxy/tls/tls_offload.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>

#include "proxy/conn/conn.h"
#include "proxy/ops/log.h"
#include "proxy/ops/metrics.h"
#include "proxy/tls/ssl_wipe.h"
#include "tls13/frames.h"
#include "tls13/record.h"

struct tls_offload {
    struct tls13_conn rl;
    struct cs_choice *choice;  /* owned: taken over from the SSL (routing, log, metrics) */
    X509 *cert;                /* a reference: the log names the files it came from */
    const char *cipher;        /* OpenSSL's static name of the suite */
    bool alpn;                 /* the client and we agreed on the listener's own protocol */
    bool close_notify_sent;
};

/* ---- during the handshake: what the hand-over will need ---- */

struct tls_handover {
    struct tls13_secrets secrets;
    /* The records OpenSSL writes under the server's application key — its session tickets, and
     * anything written before the relay — counted from the moment that key is in use (its
     * secret is logged right after the server's Finished has been written): the count is our
     * first write sequence number, which OpenSSL 3.0 has no call to tell. */
    struct tls13_frames written;
    bool counting;
    /* OpenSSL read bytes after the handshake: records under the client's key whose count (and
     * any KeyUpdate among them) only OpenSSL knows, so the session stays with it. */
    bool read_past_handshake;
};

static const char server_secret_label[] = "SERVER_TRAFFIC_SECRET_0 ";

static void keylog(const SSL *ssl, const char *line)
{
    struct conn *c = SSL_get_app_data(ssl);
    if (!c)
        return;
    if (!c->handover && !(c->handover = calloc(1, sizeof *c->handover)))
        return; /* no offload for this one: it stays on OpenSSL */
    if (tls13_keylog_line(&c->handover->secrets, line) == 1 &&
        strncmp(line, server_secret_label, sizeof server_secret_label - 1) == 0)
        c->handover->counting = true;
}

void tls_offload_saw_write(struct conn *c, const char *data, size_t len)
{
    if (c->handover && c->handover->counting)
        tls13_frames_feed(&c->handover->written, (const uint8_t *)data, len);
}

void tls_offload_saw_read(struct conn *c)
{
    if (c->handover && SSL_is_init_finished(c->ssl))
        c->handover->read_past_handshake = true;
}

void tls_offload_install(SSL_CTX *ctx, bool enabled)
{
    if (!enabled)
        return;
    if (tls13_global_init() == 0) {
        SSL_CTX_set_keylog_callback(ctx, keylog);
        return;
    }
    /* OpenSSL without one of the three AEADs (a FIPS provider lacks ChaCha20-Poly1305): said
     * once, not silently, since every session then keeps OpenSSL's ~14 KB. */
    static atomic_bool said;
    if (!atomic_exchange(&said, true))
        log_warning("tls.offload: OpenSSL cannot give the TLS 1.3 record layer one of "
                    "AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305: every session stays on OpenSSL");
}

void tls_offload_forget_secrets(struct conn *c)
{
    if (c->handover) {
        OPENSSL_cleanse(c->handover, sizeof *c->handover);
        free(c->handover);
        c->handover = NULL;
    }
}

/* ---- the hand-over ---- */

/* The AEAD tls13/ would carry C's session with, or false when it stays on OpenSSL. */
static bool can_offload(struct conn *c, enum tls13_aead *aead)
{
    const struct tls_handover *h = c->handover;
    const SSL_CIPHER *cipher = SSL_get_current_cipher(c->ssl);
    return h && h->secrets.client_len && h->secrets.server_len && h->counting &&
           tls13_frames_at_boundary(&h->written) && !h->read_past_handshake &&
           SSL_version(c->ssl) == TLS1_3_VERSION &&
           SSL_get_early_data_status(c->ssl) != SSL_EARLY_DATA_ACCEPTED &&
           !SSL_has_pending(c->ssl) && cipher &&
           tls13_aead_of_suite((uint16_t)(SSL_CIPHER_get_id(cipher) & 0xFFFF), aead);
}

void tls_offload_begin(struct conn *c)
{
    enum tls13_aead aead;
    struct tls_offload *o = NULL;
    if (!c->ssl)
        return; /* not a TLS session */
    if (!can_offload(c, &aead) || !(o = calloc(1, sizeof *o)) ||
        tls13_init(&o->rl, aead, &c->handover->secrets) < 0) {
        if (o) {
            tls13_free(&o->rl);
            free(o);
        }
        tls_offload_forget_secrets(c);
        metrics_tls_carried(c, false);
        return;
    }
    o->rl.wr.seq = c->handover->written.records;
    tls_offload_forget_secrets(c);
    o->choice = cs_choice_take(c->ssl);
    if ((o->cert = SSL_get_certificate(c->ssl)))
        X509_up_ref(o->cert);
    o->cipher = SSL_get_cipher_name(c->ssl);
    const unsigned char *alpn = NULL;
    unsigned alpn_len = 0;
    SSL_get0_alpn_selected(c->ssl, &alpn, &alpn_len);
    o->alpn = alpn_len > 0;
    ssl_free_wiped(c->ssl);
    c->ssl = NULL;
    c->offload = o;
    metrics_tls_carried(c, true);
}

void tls_offload_free(struct conn *c)
{
    struct tls_offload *o = c->offload;
    tls_offload_forget_secrets(c);
    if (!o)
        return;
    tls13_free(&o->rl);
    free(o->choice);
    X509_free(o->cert);
    free(o);
    c->offload = NULL;
}

/* ---- what the rest of the connection asks about the session ---- */

const struct cs_choice *tls_offload_choice(const struct conn *c) { return c->offload->choice; }
const char *tls_offload_cipher(const struct conn *c) { return c->offload->cipher; }
bool tls_offload_alpn_agreed(const struct conn *c) { return c->offload->alpn; }

const char *tls_offload_cert_path(const struct conn *c)
{
    return cs_cert_path(c->offload->cert);
}

/* ---- writing ---- */

/* Seals LEN bytes (at most a record's worth; 0 writes only a KeyUpdate we owe) into the
 * client's write buffer. */
static int seal(struct conn *c, const char *data, size_t len)
{
    struct buf *out = conn_client_room(c, TLS13_SEAL_MAX);
    if (!out)
        return -ENOMEM;
    int n = tls13_seal_record(&c->offload->rl, (const uint8_t *)data, len,
                              (uint8_t *)out->data + out->len);
    if (n < 0) {
        snprintf(c->error, sizeof c->error, "client TLS write: record layer failed");
        return -EIO;
    }
    out->len += (uint32_t)n;
    return 0;
}

int tls_offload_encrypt(struct conn *c, const char *data, size_t len)
{
    while (len) {
        size_t n = len < TLS13_MAX_PLAIN ? len : TLS13_MAX_PLAIN;
        int r = seal(c, data, n);
        if (r < 0)
            return r;
        data += n;
        len -= n;
    }
    return conn_flush_client(c);
}

void tls_offload_close_notify(struct conn *c)
{
    struct tls_offload *o = c->offload;
    if (o->close_notify_sent)
        return;
    o->close_notify_sent = true;
    struct buf *out = conn_client_room(c, TLS13_ALERT_RECORD);
    if (!out)
        return;
    int n = tls13_seal_alert(&o->rl, TLS13_ALERT_CLOSE_NOTIFY, (uint8_t *)out->data + out->len);
    if (n > 0)
        out->len += (uint32_t)n;
}

/* ---- reading ---- */

/* A fatal error in the client's records: the alert it earned (none when its own alert ended
 * the session), then close. */
static void fail(struct conn *c)
{
    struct tls_offload *o = c->offload;
    if (o->rl.peer_alert >= 0) {
        snprintf(c->error, sizeof c->error, "client TLS: alert %d received", o->rl.peer_alert);
    } else {
        snprintf(c->error, sizeof c->error, "client TLS: record layer sent alert %u", o->rl.alert);
        struct buf *out = conn_client_room(c, TLS13_ALERT_RECORD);
        int n = out ? tls13_seal_alert(&o->rl, o->rl.alert, (uint8_t *)out->data + out->len) : -1;
        if (n > 0)
            out->len += (uint32_t)n;
    }
    o->close_notify_sent = true; /* after a fatal alert nothing more is said */
    conn_fail_with_reply(c, OUT_CLIENT_ERROR, NULL);
}

void tls_offload_client_input(struct conn *c)
{
    struct tls_offload *o = c->offload;
    struct buf *in = c->cin;
    if (in && buf_unread(in) && !c->client_held) {
        size_t consumed = 0, plain = 0;
        enum tls13_status st = tls13_open(&o->rl, (uint8_t *)in->data + in->off, buf_unread(in),
                                          &consumed, &plain);
        /* The client asked for our KeyUpdate: it goes now, once for however many it sent. */
        if (tls13_owes_output(&o->rl) && seal(c, NULL, 0) < 0) {
            conn_close(c, OUT_CLIENT_ERROR);
            return;
        }
        if (plain) {
            /* The plaintext leaves in this buffer; a partial record behind it moves to a new one. */
            size_t rest = st == TLS13_OK ? buf_unread(in) - consumed : 0;
            struct buf *tail = NULL;
            if (rest) {
                if (!(tail = buf_get())) {
                    conn_close(c, OUT_NOMEM);
                    return;
                }
                memcpy(tail->data, in->data + in->off + consumed, rest);
                tail->len = (uint32_t)rest;
            }
            in->len = in->off + (uint32_t)plain;
            c->cin = tail;
            relay_client_plaintext(c, in);
            if (c->state == CONN_CLOSED)
                return;
        } else {
            in->off += (uint32_t)consumed;
        }
        if (st == TLS13_EOF) {
            if (c->cin)
                c->cin->off = c->cin->len;
            if (conn_flush_client(c) == 0)
                relay_client_eof(c);
            return;
        }
        if (st == TLS13_ERROR) {
            fail(c);
            return;
        }
    }
    /* The client's TCP stream ended: a record cut short is its end too (as OpenSSL is told
     * with SSL_OP_IGNORE_UNEXPECTED_EOF). */
    if (c->client_eof && !c->client_held) {
        if (conn_flush_client(c) == 0)
            relay_client_eof(c);
        return;
    }
    conn_flush_client(c);
}
