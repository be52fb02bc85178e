/* tls13: the record layer against the published RFC 8448 trace, against itself for every AEAD,
 * and against OpenSSL's own TLS 1.3 (a real SSL pair over memory BIOs whose server hands its
 * secrets over); hostile records crafted with a separate little sealer; every split of the input;
 * the keylog-line parser. */
#include "tls13/keys.h"
#include "tls13/record.h"
#include "check.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/rand.h>

/* ---- helpers ---- */

/* Decodes hex, spaces allowed between digits; returns the byte count. */
static size_t unhex(const char *s, uint8_t *out)
{
    size_t n = 0;
    for (; *s; s++) {
        if (*s == ' ')
            continue;
        unsigned v;
        sscanf(s, "%2x", &v);
        out[n++] = (uint8_t)v;
        s++;
    }
    return n;
}

/* Fills S with random secrets of AEAD's length. */
static void random_secrets(struct tls13_secrets *s, enum tls13_aead aead)
{
    s->client_len = s->server_len = (uint8_t)tls13_secret_len(aead);
    RAND_bytes(s->client, sizeof(s->client));
    RAND_bytes(s->server, sizeof(s->server));
}

/* The client's view of S: its secrets swapped, so that a second tls13_conn writes what the
 * client would and reads what we write. */
static struct tls13_secrets mirrored(const struct tls13_secrets *s)
{
    struct tls13_secrets m = *s;
    memcpy(m.client, s->server, sizeof(m.client));
    memcpy(m.server, s->client, sizeof(m.server));
    m.client_len = s->server_len;
    m.server_len = s->client_len;
    return m;
}

static const enum tls13_aead all_aeads[] = {
    TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
};
#define N_AEADS (sizeof(all_aeads) / sizeof(all_aeads[0]))

/* ---- RFC 8448 section 3, "Simple 1-RTT Handshake" ---- */

#define R8448_C_AP_SECRET "9e 40 64 6c e7 9a 7f 9d c0 5a f8 88 9b ce 65 52 87 5a fa 0b 06 df 00 " \
                          "87 f7 92 eb b7 c1 75 04 a5"
#define R8448_S_AP_SECRET "a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32 82 04 b4 f4 4b fb 6b " \
                          "3a 4b 4f 1f 3f cb 63 16 43"
#define R8448_C_KEY "17 42 2d da 59 6e d5 d9 ac d8 90 e3 c6 3f 50 51"
#define R8448_C_IV "5b 78 92 3d ee 08 57 90 33 e5 23 d9"
#define R8448_S_KEY "9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56"
#define R8448_S_IV "cf 78 2b 88 dd 83 54 9a ad f1 e9 84"
/* {client} send application_data record; its payload is 00 01 .. 31, as is the server's. */
#define R8448_C_APP "17 03 03 00 43 a2 3f 70 54 b6 2c 94 d0 af fa fe 82 28 ba 55 cb ef ac ea " \
                    "42 f9 14 aa 66 bc ab 3f 2b 98 19 a8 a5 b4 6b 39 5b d5 4a 9a 20 44 1e 2b " \
                    "62 97 4e 1f 5a 62 92 a2 97 70 14 bd 1e 3d ea e6 3a ee bb 21 69 49 15 e4"
/* {server} send application_data record: its second record under this key (the first carried
 * the NewSessionTicket). */
#define R8448_S_APP "17 03 03 00 43 2e 93 7e 11 ef 4a c7 40 e5 38 ad 36 00 5f c4 a4 69 32 fc " \
                    "32 25 d0 5f 82 aa 1b 36 e3 0e fa f9 7d 90 e6 df fc 60 2d cb 50 1a 59 a8 " \
                    "fc c4 9c 4b f2 e5 f0 a2 1c 00 47 c2 ab f3 32 54 0d d0 32 e1 67 c2 95 5d"
/* {client} / {server} send alert record: close_notify (01 00). */
#define R8448_C_ALERT "17 03 03 00 13 c9 87 27 60 65 56 66 b7 4d 7f f1 15 3e fd 6d b6 d0 b0 e3"
#define R8448_S_ALERT "17 03 03 00 13 b5 8f d6 71 66 eb f5 99 d2 47 20 cf be 7e fa 7a 88 64 a9"

static struct tls13_secrets rfc8448_secrets(void)
{
    struct tls13_secrets s;
    memset(&s, 0, sizeof(s));
    s.client_len = (uint8_t)unhex(R8448_C_AP_SECRET, s.client);
    s.server_len = (uint8_t)unhex(R8448_S_AP_SECRET, s.server);
    return s;
}

static void test_rfc8448_keys(void)
{
    struct tls13_secrets s = rfc8448_secrets();
    uint8_t want[32];
    struct tls13_keys k;

    CHECK(tls13_derive_keys(TLS13_AES_128_GCM_SHA256, s.client, s.client_len, &k) == 0);
    CHECK(k.key_len == 16 && k.aead == TLS13_AES_128_GCM_SHA256);
    CHECK(unhex(R8448_C_KEY, want) == 16 && memcmp(k.key, want, 16) == 0);
    CHECK(unhex(R8448_C_IV, want) == 12 && memcmp(k.iv, want, 12) == 0);

    CHECK(tls13_derive_keys(TLS13_AES_128_GCM_SHA256, s.server, s.server_len, &k) == 0);
    CHECK(unhex(R8448_S_KEY, want) == 16 && memcmp(k.key, want, 16) == 0);
    CHECK(unhex(R8448_S_IV, want) == 12 && memcmp(k.iv, want, 12) == 0);

    /* A secret of the wrong length for the suite's hash is refused, not truncated. */
    CHECK(tls13_derive_keys(TLS13_AES_256_GCM_SHA384, s.server, s.server_len, &k) == -EINVAL);
    CHECK(tls13_next_secret(TLS13_AES_128_GCM_SHA256, s.server, 31) == -EINVAL);
}

static void test_rfc8448_records(void)
{
    struct tls13_secrets s = rfc8448_secrets(), m = mirrored(&s);
    uint8_t payload[50], buf[256], want[256], out[TLS13_SEAL_MAX];
    for (size_t i = 0; i < sizeof(payload); i++)
        payload[i] = (uint8_t)i;
    size_t consumed, plain;

    /* We, the server, read the client's data record and its close_notify in one go. */
    struct tls13_conn srv;
    CHECK(tls13_init(&srv, TLS13_AES_128_GCM_SHA256, &s) == 0);
    size_t n = unhex(R8448_C_APP, buf);
    n += unhex(R8448_C_ALERT, buf + n);
    CHECK(n == 72 + 24);
    CHECK(tls13_open(&srv, buf, n, &consumed, &plain) == TLS13_EOF);
    CHECK(consumed == n && plain == 50 && memcmp(buf, payload, 50) == 0);
    CHECK(srv.closed && srv.peer_alert == TLS13_ALERT_CLOSE_NOTIFY);

    /* Our data record and close_notify are the published bytes, at sequence numbers 1 and 2. */
    srv.wr.seq = 1;
    CHECK(tls13_seal_record(&srv, payload, sizeof(payload), out) == 72);
    CHECK(unhex(R8448_S_APP, want) == 72 && memcmp(out, want, 72) == 0);
    CHECK(tls13_seal_alert(&srv, TLS13_ALERT_CLOSE_NOTIFY, out) == TLS13_ALERT_RECORD);
    CHECK(unhex(R8448_S_ALERT, want) == 24 && memcmp(out, want, 24) == 0);
    tls13_free(&srv);

    /* The client's side, played by a mirrored connection: its records re-encrypt to the
     * published bytes and the server's records decrypt. */
    struct tls13_conn cli;
    CHECK(tls13_init(&cli, TLS13_AES_128_GCM_SHA256, &m) == 0);
    CHECK(tls13_seal_record(&cli, payload, sizeof(payload), out) == 72);
    CHECK(unhex(R8448_C_APP, want) == 72 && memcmp(out, want, 72) == 0);
    CHECK(tls13_seal_alert(&cli, TLS13_ALERT_CLOSE_NOTIFY, out) == TLS13_ALERT_RECORD);
    CHECK(unhex(R8448_C_ALERT, want) == 24 && memcmp(out, want, 24) == 0);
    cli.rd.seq = 1;
    n = unhex(R8448_S_APP, buf);
    n += unhex(R8448_S_ALERT, buf + n);
    CHECK(tls13_open(&cli, buf, n, &consumed, &plain) == TLS13_EOF);
    CHECK(consumed == n && plain == 50 && memcmp(buf, payload, 50) == 0);
    tls13_free(&cli);
}

/* ---- every AEAD against itself ---- */

static void test_roundtrip(enum tls13_aead aead)
{
    struct tls13_secrets s, m;
    random_secrets(&s, aead);
    m = mirrored(&s);
    struct tls13_conn srv, cli;
    CHECK(tls13_init(&srv, aead, &s) == 0);
    CHECK(tls13_init(&cli, aead, &m) == 0);

    static uint8_t msg[TLS13_MAX_PLAIN], buf[3 * TLS13_SEAL_MAX];
    RAND_bytes(msg, sizeof(msg));
    size_t lens[] = { 1, 17, 1000, TLS13_MAX_PLAIN };
    size_t consumed, plain;
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        /* Ours to the client, two records in one read. */
        int a = tls13_seal_record(&srv, msg, lens[i], buf);
        int b = tls13_seal_record(&srv, msg, lens[i], buf + a);
        CHECK(a == (int)(lens[i] + TLS13_RECORD_OVERHEAD) && b == a);
        CHECK(tls13_open(&cli, buf, (size_t)(a + b), &consumed, &plain) == TLS13_OK);
        CHECK(consumed == (size_t)(a + b) && plain == 2 * lens[i]);
        CHECK(memcmp(buf, msg, lens[i]) == 0 && memcmp(buf + lens[i], msg, lens[i]) == 0);

        /* The client's to us. */
        a = tls13_seal_record(&cli, msg, lens[i], buf);
        CHECK(tls13_open(&srv, buf, (size_t)a, &consumed, &plain) == TLS13_OK);
        CHECK(consumed == (size_t)a && plain == lens[i] && memcmp(buf, msg, lens[i]) == 0);
    }
    CHECK(srv.wr.seq == 8 && cli.rd.seq == 8 && srv.rd.seq == 4);
    tls13_free(&srv);
    tls13_free(&cli);
}

int main(void)
{
    CHECK(tls13_global_init() == 0);
    test_rfc8448_keys();
    test_rfc8448_records();
    for (size_t i = 0; i < N_AEADS; i++)
        test_roundtrip(all_aeads[i]);
    return check_report("test_tls13");
}
