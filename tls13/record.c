/* tls13/record: RFC 8446 section 5 records over two EVP_CIPHER_CTX whose keys are set once; per
 * record only the nonce changes. */
#include "tls13/record.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <openssl/crypto.h>

enum {
    CT_CHANGE_CIPHER_SPEC = 20,
    CT_ALERT = 21,
    CT_HANDSHAKE = 22,
    CT_APPLICATION_DATA = 23,
    HS_KEY_UPDATE = 24,
    LEGACY_VERSION = 0x0303,
    ALERT_WARNING = 1,
    ALERT_FATAL = 2,
    KEY_UPDATE_NOT_REQUESTED = 0,
    KEY_UPDATE_REQUESTED = 1,
    KEY_UPDATE_MSG = 5, /* type, uint24 length = 1, request_update */
};

/* ---- the AEADs, fetched once ---- */

/* Shared by every connection of every thread: a fetched EVP_CIPHER is immutable, and fetching
 * per connection would take the provider store's lock at every handshake. Never freed. */
static EVP_CIPHER *aead_cipher[3];
static pthread_once_t aead_once = PTHREAD_ONCE_INIT;

static void aead_fetch(void)
{
    aead_cipher[TLS13_AES_128_GCM_SHA256] = EVP_CIPHER_fetch(NULL, "AES-128-GCM", NULL);
    aead_cipher[TLS13_AES_256_GCM_SHA384] = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    aead_cipher[TLS13_CHACHA20_POLY1305_SHA256] = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305",
                                                                   NULL);
}

int tls13_global_init(void)
{
    pthread_once(&aead_once, aead_fetch);
    for (size_t i = 0; i < sizeof(aead_cipher) / sizeof(aead_cipher[0]); i++)
        if (aead_cipher[i] == NULL)
            return -ENOMEM;
    return 0;
}

/* ---- one direction ---- */

/* Puts the key of DIR's current secret into its context (creating the context the first time)
 * and restarts its sequence numbers. ENC: 1 for our writes, 0 for the client's records. */
static int dir_set_key(struct tls13_dir *d, enum tls13_aead aead, size_t secret_len, int enc)
{
    struct tls13_keys k;
    if (tls13_derive_keys(aead, d->secret, secret_len, &k) != 0)
        return -EINVAL;
    int rc = 0;
    bool fresh = d->ctx == NULL;
    if (fresh && (d->ctx = EVP_CIPHER_CTX_new()) == NULL)
        rc = -ENOMEM;
    /* The first call gives the cipher; a KeyUpdate keeps it and changes only the key. The IV
     * comes with each record. */
    else if (EVP_CipherInit_ex2(d->ctx, fresh ? aead_cipher[aead] : NULL, k.key, NULL, enc,
                                NULL) != 1)
        rc = -ENOMEM;
    else {
        memcpy(d->iv, k.iv, TLS13_IV_LEN);
        d->seq = 0;
    }
    OPENSSL_cleanse(&k, sizeof(k));
    return rc;
}

/* Moves DIR to application_traffic_secret_N+1 and its keys (RFC 8446 7.2). */
static int dir_update(struct tls13_dir *d, enum tls13_aead aead, size_t secret_len, int enc)
{
    if (tls13_next_secret(aead, d->secret, secret_len) != 0)
        return -EINVAL;
    return dir_set_key(d, aead, secret_len, enc);
}

/* Sets the nonce of DIR's next record: the IV xor the 64-bit sequence number, right-aligned
 * (RFC 8446 5.3). Fails rather than let the sequence number wrap: a record is only ever
 * protected with a number that has a successor, so no (key, nonce) pair can repeat. */
static bool dir_next_nonce(struct tls13_dir *d)
{
    if (d->seq == UINT64_MAX)
        return false;
    uint8_t nonce[TLS13_IV_LEN];
    memcpy(nonce, d->iv, TLS13_IV_LEN);
    for (int i = 0; i < 8; i++)
        nonce[TLS13_IV_LEN - 1 - i] ^= (uint8_t)(d->seq >> (8 * i));
    return EVP_CipherInit_ex2(d->ctx, NULL, NULL, nonce, -1, NULL) == 1;
}

/* ---- set-up ---- */

int tls13_init(struct tls13_conn *t, enum tls13_aead aead, const struct tls13_secrets *s)
{
    memset(t, 0, sizeof(*t));
    t->peer_alert = -1;
    t->aead = aead;
    size_t len = tls13_secret_len(aead);
    t->secret_len = (uint8_t)len;
    if ((unsigned)aead > TLS13_CHACHA20_POLY1305_SHA256 || s->client_len != len ||
        s->server_len != len)
        return -EINVAL;
    int rc = tls13_global_init();
    if (rc != 0)
        return rc;
    memcpy(t->rd.secret, s->client, len);
    memcpy(t->wr.secret, s->server, len);
    rc = dir_set_key(&t->rd, aead, len, 0);
    if (rc == 0)
        rc = dir_set_key(&t->wr, aead, len, 1);
    return rc;
}

void tls13_free(struct tls13_conn *t)
{
    EVP_CIPHER_CTX_free(t->rd.ctx);
    EVP_CIPHER_CTX_free(t->wr.ctx);
    OPENSSL_cleanse(t, sizeof(*t));
}

/* ---- reading ---- */

/* Ends the connection with ALERT for the client; returns TLS13_ERROR. */
static enum tls13_status fail(struct tls13_conn *t, uint8_t alert)
{
    t->closed = true;
    t->alert = alert;
    return TLS13_ERROR;
}

/* Authenticates and decrypts the record at REC (header included, BODY_LEN bytes after it) in
 * place. Returns the TLSInnerPlaintext length, or -1 when the tag is wrong. */
static int open_in_place(struct tls13_dir *d, uint8_t *rec, size_t body_len)
{
    uint8_t *body = rec + TLS13_HEADER;
    size_t ct_len = body_len - TLS13_TAG;
    int n = 0, fin = 0;
    if (EVP_CipherUpdate(d->ctx, NULL, &n, rec, TLS13_HEADER) != 1 ||
        EVP_CipherUpdate(d->ctx, body, &n, body, (int)ct_len) != 1 ||
        EVP_CIPHER_CTX_ctrl(d->ctx, EVP_CTRL_AEAD_SET_TAG, TLS13_TAG, body + ct_len) != 1 ||
        EVP_CipherFinal_ex(d->ctx, body + n, &fin) != 1 || (size_t)(n + fin) != ct_len)
        return -1;
    d->seq++;
    return (int)ct_len;
}

/* Acts on a post-handshake handshake record: one whole KeyUpdate and nothing else. */
static enum tls13_status on_handshake(struct tls13_conn *t, const uint8_t *p, size_t len)
{
    if (len < 4 || p[0] != HS_KEY_UPDATE)
        return fail(t, TLS13_ALERT_UNEXPECTED_MESSAGE);
    if (p[1] != 0 || p[2] != 0 || p[3] != 1)
        return fail(t, TLS13_ALERT_DECODE_ERROR);
    /* A fragment, or a second message after it: KeyUpdate must end its record (RFC 8446 5.1). */
    if (len != KEY_UPDATE_MSG)
        return fail(t, TLS13_ALERT_UNEXPECTED_MESSAGE);
    if (p[4] != KEY_UPDATE_NOT_REQUESTED && p[4] != KEY_UPDATE_REQUESTED)
        return fail(t, TLS13_ALERT_ILLEGAL_PARAMETER);
    if (++t->keyupdates_in_a_row > TLS13_MAX_KEYUPDATES_IN_A_ROW)
        return fail(t, TLS13_ALERT_UNEXPECTED_MESSAGE);
    if (dir_update(&t->rd, t->aead, t->secret_len, 0) != 0)
        return fail(t, TLS13_ALERT_INTERNAL_ERROR);
    /* Several requests before we next write are answered by one KeyUpdate (RFC 8446 4.6.3). */
    if (p[4] == KEY_UPDATE_REQUESTED)
        t->keyupdate_owed = true;
    return TLS13_OK;
}

static enum tls13_status on_alert(struct tls13_conn *t, const uint8_t *p, size_t len)
{
    if (len != 2)
        return fail(t, TLS13_ALERT_DECODE_ERROR);
    t->closed = true;
    t->peer_alert = p[1];
    return p[1] == TLS13_ALERT_CLOSE_NOTIFY ? TLS13_EOF : TLS13_ERROR;
}

enum tls13_status tls13_open(struct tls13_conn *t, uint8_t *data, size_t len, size_t *consumed,
                             size_t *plain)
{
    size_t off = 0, out = 0;
    enum tls13_status st = TLS13_OK;
    *consumed = 0;
    *plain = 0;
    if (t->closed)
        return t->peer_alert == TLS13_ALERT_CLOSE_NOTIFY ? TLS13_EOF : TLS13_ERROR;

    while (st == TLS13_OK && len - off >= TLS13_HEADER) {
        uint8_t *rec = data + off;
        size_t body_len = (size_t)rec[3] << 8 | rec[4];
        /* Judged from the header alone, before the body arrives: after the handshake every
         * record is protected, so its outer type is application_data (a change_cipher_spec
         * included). The legacy version is not looked at (RFC 8446 5.1). */
        if (rec[0] != CT_APPLICATION_DATA) {
            st = fail(t, TLS13_ALERT_UNEXPECTED_MESSAGE);
            break;
        }
        if (body_len > TLS13_MAX_CIPHER) {
            st = fail(t, TLS13_ALERT_RECORD_OVERFLOW);
            break;
        }
        if (body_len < TLS13_TAG) {
            st = fail(t, TLS13_ALERT_BAD_RECORD_MAC);
            break;
        }
        if (len - off - TLS13_HEADER < body_len)
            break;
        if (!dir_next_nonce(&t->rd)) {
            st = fail(t, TLS13_ALERT_INTERNAL_ERROR);
            break;
        }
        int inner = open_in_place(&t->rd, rec, body_len);
        if (inner < 0) {
            st = fail(t, TLS13_ALERT_BAD_RECORD_MAC);
            break;
        }
        if ((size_t)inner > TLS13_MAX_PLAIN + 1) {
            st = fail(t, TLS13_ALERT_RECORD_OVERFLOW);
            break;
        }
        /* The content type is the last non-zero byte; zeros after it are padding. */
        uint8_t *p = rec + TLS13_HEADER;
        size_t n = (size_t)inner;
        while (n > 0 && p[n - 1] == 0)
            n--;
        if (n == 0) {
            st = fail(t, TLS13_ALERT_UNEXPECTED_MESSAGE);
            break;
        }
        uint8_t type = p[--n];
        off += TLS13_HEADER + body_len;
        switch (type) {
        case CT_APPLICATION_DATA:
            /* Every record shrinks by at least header + type + tag, so the plaintext never
             * reaches ciphertext still unread. */
            memmove(data + out, p, n);
            out += n;
            t->keyupdates_in_a_row = 0;
            break;
        case CT_HANDSHAKE:
            st = on_handshake(t, p, n);
            break;
        case CT_ALERT:
            st = on_alert(t, p, n);
            break;
        default: /* change_cipher_spec inside protection, or an unknown type */
            st = fail(t, TLS13_ALERT_UNEXPECTED_MESSAGE);
            break;
        }
    }
    *consumed = off;
    *plain = out;
    return st;
}

/* ---- writing ---- */

/* Protects LEN bytes from IN as one record of inner TYPE into OUT with DIR's key. Returns the
 * bytes written or -EIO. */
static int seal_one(struct tls13_dir *d, uint8_t type, const uint8_t *in, size_t len,
                    uint8_t *out)
{
    size_t body_len = len + 1 + TLS13_TAG;
    out[0] = CT_APPLICATION_DATA;
    out[1] = LEGACY_VERSION >> 8;
    out[2] = LEGACY_VERSION & 0xff;
    out[3] = (uint8_t)(body_len >> 8);
    out[4] = (uint8_t)body_len;
    uint8_t *body = out + TLS13_HEADER;
    int n = 0, m = 0, fin = 0;
    if (!dir_next_nonce(d) ||
        EVP_CipherUpdate(d->ctx, NULL, &n, out, TLS13_HEADER) != 1 ||
        EVP_CipherUpdate(d->ctx, body, &n, in, (int)len) != 1 ||
        EVP_CipherUpdate(d->ctx, body + n, &m, &type, 1) != 1 ||
        EVP_CipherFinal_ex(d->ctx, body + n + m, &fin) != 1 ||
        (size_t)(n + m + fin) != len + 1 ||
        EVP_CIPHER_CTX_ctrl(d->ctx, EVP_CTRL_AEAD_GET_TAG, TLS13_TAG, body + len + 1) != 1)
        return -EIO;
    d->seq++;
    return (int)(TLS13_HEADER + body_len);
}

/* Our KeyUpdate under the current key, then the switch to the next one. */
static int seal_key_update(struct tls13_conn *t, uint8_t *out)
{
    static const uint8_t msg[KEY_UPDATE_MSG] = { HS_KEY_UPDATE, 0, 0, 1,
                                                 KEY_UPDATE_NOT_REQUESTED };
    int n = seal_one(&t->wr, CT_HANDSHAKE, msg, sizeof(msg), out);
    if (n < 0 || dir_update(&t->wr, t->aead, t->secret_len, 1) != 0)
        return -EIO;
    t->keyupdate_owed = false;
    return n;
}

/* A seal that failed part-way (a KeyUpdate sealed and the key moved on, its record not handed
 * out; or the secret moved on and the key not) leaves our write side out of step with the
 * client: nothing more is sealed, not even an alert, and the caller closes. */
static int broken(struct tls13_conn *t)
{
    t->broken = true;
    return -EIO;
}

int tls13_seal_record(struct tls13_conn *t, const uint8_t *in, size_t len, uint8_t *out)
{
    if (len > TLS13_MAX_PLAIN || t->broken)
        return -EIO;
    int n = 0;
    /* Our own limit counts the KeyUpdate record itself, sent as the key's last record. */
    if (t->keyupdate_owed || t->wr.seq >= TLS13_RECORDS_PER_KEY - 1) {
        n = seal_key_update(t, out);
        if (n < 0)
            return broken(t);
    }
    if (len == 0)
        return n;
    int m = seal_one(&t->wr, CT_APPLICATION_DATA, in, len, out + n);
    return m < 0 ? broken(t) : n + m;
}

int tls13_seal_alert(struct tls13_conn *t, uint8_t desc, uint8_t *out)
{
    uint8_t alert[2] = { desc == TLS13_ALERT_CLOSE_NOTIFY ? ALERT_WARNING : ALERT_FATAL, desc };
    if (t->broken)
        return -EIO;
    int n = seal_one(&t->wr, CT_ALERT, alert, sizeof(alert), out);
    return n < 0 ? broken(t) : n;
}

int tls13_export(const struct tls13_conn *t, struct tls13_keys *rx, uint64_t *rx_seq,
                 struct tls13_keys *tx, uint64_t *tx_seq)
{
    if (tls13_derive_keys(t->aead, t->rd.secret, t->secret_len, rx) != 0 ||
        tls13_derive_keys(t->aead, t->wr.secret, t->secret_len, tx) != 0)
        return -EINVAL;
    *rx_seq = t->rd.seq;
    *tx_seq = t->wr.seq;
    return 0;
}
