/* libFuzzer target for the TLS 1.3 record layer (tls13_open) and the keylog-line parser.
 *
 * Random bytes alone would never get past the AEAD tag, so the input is a little program: its
 * first byte picks the AEAD, then come operations [op][len_hi][len_lo][bytes]: raw bytes put
 * on the wire as they are (garbage, headers, partial records), or a TLSInnerPlaintext that the
 * harness protects with the key and sequence number the record layer expects at that point
 * (tls13_export gives them, so the fuzzer reaches KeyUpdate, alerts, padding and limits), with
 * a chosen outer type and legacy version, a broken tag, or a wrong sequence number.
 *
 * Beyond "no crash" it checks what callers rely on: consumed and plain stay within the input,
 * what is left over is less than one whole record, an error names a known alert and the
 * connection then takes nothing more, EOF comes from close_notify, and the same stream gives
 * the same outcome — status, alert, plaintext, KeyUpdate owed — whether it arrives as the
 * program built it, all at once, or one byte at a time. What we send next reads back at a
 * mirrored client: an owed KeyUpdate and data while the connection is open, the alert after an
 * error.
 *
 * clang-14 -g -O1 -fsanitize=fuzzer,address,undefined -I. tests/fuzz/fuzz_tls13.c \
 *     tls13/record.c tls13/keys.c -lcrypto -o /tmp/fuzz_tls13 && /tmp/fuzz_tls13 \
 *     tests/fuzz/corpus/tls13 */
#include "tls13/keys.h"
#include "tls13/record.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define STREAM_MAX (1 << 17)

static const uint8_t client_secret[TLS13_SECRET_MAX] = "client application traffic 0 of the fuzzer";
static const uint8_t server_secret[TLS13_SECRET_MAX] = "server application traffic 0 of the fuzzer";

static struct tls13_secrets secrets(enum tls13_aead aead, bool mirror)
{
    struct tls13_secrets s;
    memset(&s, 0, sizeof(s));
    memcpy(s.client, mirror ? server_secret : client_secret, TLS13_SECRET_MAX);
    memcpy(s.server, mirror ? client_secret : server_secret, TLS13_SECRET_MAX);
    s.client_len = s.server_len = (uint8_t)tls13_secret_len(aead);
    return s;
}

static const EVP_CIPHER *cipher_of(enum tls13_aead aead)
{
    return aead == TLS13_AES_128_GCM_SHA256   ? EVP_aes_128_gcm()
           : aead == TLS13_AES_256_GCM_SHA384 ? EVP_aes_256_gcm()
                                              : EVP_chacha20_poly1305();
}

/* Protects INNER[0, len) as one record under K at SEQ with the given outer type and version. */
static size_t seal(const struct tls13_keys *k, uint64_t seq, uint8_t outer, uint16_t version,
                   const uint8_t *inner, size_t len, uint8_t *out)
{
    size_t body = len + TLS13_TAG;
    uint8_t nonce[TLS13_IV_LEN];
    memcpy(nonce, k->iv, sizeof(nonce));
    for (int i = 0; i < 8; i++)
        nonce[4 + i] ^= (uint8_t)(seq >> (56 - 8 * i));
    out[0] = outer;
    out[1] = (uint8_t)(version >> 8);
    out[2] = (uint8_t)version;
    out[3] = (uint8_t)(body >> 8);
    out[4] = (uint8_t)body;
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n;
    if (!c || !EVP_EncryptInit_ex(c, cipher_of(k->aead), NULL, k->key, nonce) ||
        !EVP_EncryptUpdate(c, NULL, &n, out, TLS13_HEADER) ||
        (len && !EVP_EncryptUpdate(c, out + TLS13_HEADER, &n, inner, (int)len)) ||
        !EVP_EncryptFinal_ex(c, out + TLS13_HEADER + len, &n) ||
        !EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, TLS13_TAG, out + TLS13_HEADER + len))
        abort();
    EVP_CIPHER_CTX_free(c);
    return TLS13_HEADER + body;
}

/* A connection fed as a caller feeds it: append what arrived, open, keep the tail. */
struct reader {
    struct tls13_conn t;
    uint8_t *buf;
    size_t have;
    uint8_t *plain;
    size_t plain_len;
    enum tls13_status st;
};

static bool known_alert(uint8_t a)
{
    return a == TLS13_ALERT_UNEXPECTED_MESSAGE || a == TLS13_ALERT_BAD_RECORD_MAC ||
           a == TLS13_ALERT_RECORD_OVERFLOW || a == TLS13_ALERT_ILLEGAL_PARAMETER ||
           a == TLS13_ALERT_DECODE_ERROR || a == TLS13_ALERT_INTERNAL_ERROR;
}

static void reader_init(struct reader *r, enum tls13_aead aead)
{
    struct tls13_secrets s = secrets(aead, false);
    if (tls13_init(&r->t, aead, &s) != 0)
        abort();
    r->buf = malloc(STREAM_MAX);
    r->plain = malloc(STREAM_MAX);
    if (!r->buf || !r->plain)
        abort();
    r->have = r->plain_len = 0;
    r->st = TLS13_OK;
}

static void reader_free(struct reader *r)
{
    tls13_free(&r->t);
    free(r->buf);
    free(r->plain);
}

static void reader_feed(struct reader *r, const uint8_t *p, size_t len)
{
    if (r->st != TLS13_OK || len == 0)
        return;
    memcpy(r->buf + r->have, p, len);
    r->have += len;
    size_t consumed = (size_t)-1, plain = (size_t)-1;
    r->st = tls13_open(&r->t, r->buf, r->have, &consumed, &plain);
    if (consumed > r->have || plain > consumed)
        abort();
    memcpy(r->plain + r->plain_len, r->buf, plain);
    r->plain_len += plain;
    memmove(r->buf, r->buf + consumed, r->have - consumed);
    r->have -= consumed;
    switch (r->st) {
    case TLS13_OK:
        /* Whatever is left is less than one whole record. */
        if (r->have >= TLS13_HEADER &&
            r->have >= TLS13_HEADER + (size_t)(r->buf[3] << 8 | r->buf[4]))
            abort();
        if (r->t.closed)
            abort();
        break;
    case TLS13_EOF:
        if (!r->t.closed || r->t.peer_alert != TLS13_ALERT_CLOSE_NOTIFY)
            abort();
        break;
    case TLS13_ERROR:
        if (!r->t.closed || (r->t.peer_alert < 0 && !known_alert(r->t.alert)) ||
            r->t.peer_alert == TLS13_ALERT_CLOSE_NOTIFY)
            abort();
        break;
    default:
        abort();
    }
    if (r->st != TLS13_OK) {
        /* Closed for good: nothing more is read, and it says so again. */
        uint8_t more[TLS13_HEADER] = { 23, 3, 3, 0, 0 };
        if (tls13_open(&r->t, more, sizeof(more), &consumed, &plain) != r->st || consumed ||
            plain)
            abort();
    }
}

static bool same_outcome(const struct reader *a, const struct reader *b)
{
    return a->st == b->st && a->plain_len == b->plain_len &&
           memcmp(a->plain, b->plain, a->plain_len) == 0 &&
           a->t.keyupdate_owed == b->t.keyupdate_owed &&
           (a->st != TLS13_ERROR || (a->t.alert == b->t.alert &&
                                     a->t.peer_alert == b->t.peer_alert)) &&
           (a->st != TLS13_OK || a->t.rd.seq == b->t.rd.seq);
}

/* Our answer must read back at the client's side: with the connection still open, the owed
 * KeyUpdate then data; after an error of the client's making, the alert it names. */
static void answer(struct reader *r, enum tls13_aead aead)
{
    static uint8_t out[TLS13_SEAL_MAX];
    struct tls13_secrets m = secrets(aead, true);
    struct tls13_conn cli;
    size_t consumed, plain;
    if (tls13_init(&cli, aead, &m) != 0)
        abort();
    if (r->st == TLS13_ERROR) {
        if (tls13_seal_alert(&r->t, r->t.alert, out) != TLS13_ALERT_RECORD ||
            tls13_open(&cli, out, TLS13_ALERT_RECORD, &consumed, &plain) != TLS13_ERROR ||
            cli.peer_alert != r->t.alert)
            abort();
        tls13_free(&cli);
        return;
    }
    bool owed = tls13_owes_output(&r->t);
    int w = tls13_seal_record(&r->t, (const uint8_t *)"ok", 2, out);
    if (w != (owed ? TLS13_RECORD_OVERHEAD + 5 : 0) + TLS13_RECORD_OVERHEAD + 2 ||
        tls13_owes_output(&r->t) ||
        tls13_open(&cli, out, (size_t)w, &consumed, &plain) != TLS13_OK || plain != 2 ||
        memcmp(out, "ok", 2) != 0)
        abort();
    tls13_free(&cli);
}

static void fuzz_keylog(const uint8_t *data, size_t size)
{
    char *line = malloc(size + 1);
    if (!line)
        abort();
    memcpy(line, data, size);
    line[size] = '\0';
    struct tls13_secrets s, before;
    memset(&s, 0x5a, sizeof(s));
    before = s;
    int rc = tls13_keylog_line(&s, line);
    if (rc == 1) {
        bool client = s.client_len != before.client_len;
        uint8_t len = client ? s.client_len : s.server_len;
        if ((len != 32 && len != 48) || strncmp(line, client ? "CLIENT" : "SERVER", 6) != 0)
            abort();
    } else if ((rc != 0 && rc != -EINVAL) || memcmp(&s, &before, sizeof(s)) != 0) {
        abort();
    }
    free(line);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_keylog(data, size);
    if (size < 1 || tls13_global_init() != 0)
        return 0;
    enum tls13_aead aead = (enum tls13_aead)(data[0] % 3);

    static uint8_t stream[STREAM_MAX];
    size_t n = 0;
    struct reader built;
    reader_init(&built, aead);
    for (size_t off = 1; off + 3 <= size;) {
        uint8_t op = data[off];
        size_t len = (size_t)data[off + 1] << 8 | data[off + 2];
        off += 3;
        if (len > size - off)
            len = size - off;
        if (len > TLS13_MAX_CIPHER)
            len = TLS13_MAX_CIPHER;
        const uint8_t *p = data + off;
        off += len;
        size_t start = n;
        if (n + len + TLS13_HEADER + TLS13_TAG > STREAM_MAX)
            break;
        if ((op & 3) == 0) {
            memcpy(stream + n, p, len);
            n += len;
        } else {
            struct tls13_keys rx, tx;
            uint64_t rx_seq, tx_seq;
            if (tls13_export(&built.t, &rx, &rx_seq, &tx, &tx_seq) != 0)
                abort();
            uint8_t outer = op & 4 ? (uint8_t)(op >> 3) : 23;
            uint16_t version = op & 8 ? 0x0301 : 0x0303;
            n += seal(&rx, (op & 3) == 3 ? rx_seq + 1 : rx_seq, outer, version, p, len,
                      stream + n);
            if ((op & 3) == 2)
                stream[n - 1] ^= 0x80;
        }
        reader_feed(&built, stream + start, n - start);
    }

    /* The same bytes at once, and one at a time. */
    struct reader once, bytes;
    reader_init(&once, aead);
    reader_init(&bytes, aead);
    reader_feed(&once, stream, n);
    for (size_t i = 0; i < n; i++)
        reader_feed(&bytes, stream + i, 1);
    if (!same_outcome(&built, &once) || !same_outcome(&built, &bytes))
        abort();
    if (built.st == TLS13_OK || (built.st == TLS13_ERROR && built.t.peer_alert < 0))
        answer(&built, aead);

    reader_free(&built);
    reader_free(&once);
    reader_free(&bytes);
    return 0;
}
