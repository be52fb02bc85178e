/* tls13/keys: the suite table, the keylog-line parser and HKDF-Expand-Label through OpenSSL's
 * "TLS13-KDF". */
#include "tls13/keys.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

/* Fetched once: EVP_KDF_fetch goes through the provider store under a lock, and worker threads
 * derive keys at every handshake's end. An EVP_KDF is immutable once fetched, so the threads
 * share it; each derivation has its own EVP_KDF_CTX. Never freed (lives as long as the process,
 * like the provider that owns it). */
static EVP_KDF *tls13_kdf;
static pthread_once_t tls13_kdf_once = PTHREAD_ONCE_INIT;
static void kdf_fetch(void)
{
    tls13_kdf = EVP_KDF_fetch(NULL, OSSL_KDF_NAME_TLS1_3_KDF, NULL);
}

bool tls13_aead_of_suite(uint16_t suite, enum tls13_aead *aead)
{
    switch (suite) {
    case 0x1301: *aead = TLS13_AES_128_GCM_SHA256; return true;
    case 0x1302: *aead = TLS13_AES_256_GCM_SHA384; return true;
    case 0x1303: *aead = TLS13_CHACHA20_POLY1305_SHA256; return true;
    default: return false;
    }
}

size_t tls13_secret_len(enum tls13_aead aead)
{
    return aead == TLS13_AES_256_GCM_SHA384 ? 48 : 32;
}

static size_t key_len(enum tls13_aead aead)
{
    return aead == TLS13_AES_128_GCM_SHA256 ? 16 : 32;
}


/* ---- keylog lines ---- */

/* A table, not branches: the digits of random secrets defeat branch prediction, and the parser
 * runs inside every TLS 1.3 handshake. */
static const signed char hex_table[256] = {
    ['0'] = 1, ['1'] = 2, ['2'] = 3, ['3'] = 4, ['4'] = 5, ['5'] = 6, ['6'] = 7, ['7'] = 8,
    ['8'] = 9, ['9'] = 10, ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15,
    ['f'] = 16, ['A'] = 11, ['B'] = 12, ['C'] = 13, ['D'] = 14, ['E'] = 15, ['F'] = 16,
};

static int hex_val(char c)
{
    return hex_table[(unsigned char)c] - 1;
}

/* Decodes N hex digits (N even, all checked by hex_run) from S into OUT. */
static void unhex(const char *s, size_t n, uint8_t *out)
{
    for (size_t i = 0; i < n; i += 2)
        out[i / 2] = (uint8_t)(hex_val(s[i]) << 4 | hex_val(s[i + 1]));
}

/* Length of the run of hex digits at S. */
static size_t hex_run(const char *s)
{
    size_t n = 0;
    while (hex_val(s[n]) >= 0)
        n++;
    return n;
}

#define CLIENT_RANDOM_HEX 64 /* OpenSSL always logs the 32-byte ClientHello.random */

int tls13_keylog_line(struct tls13_secrets *s, const char *line)
{
    static const char client_label[] = "CLIENT_TRAFFIC_SECRET_0";
    static const char server_label[] = "SERVER_TRAFFIC_SECRET_0";

    size_t label_len = strcspn(line, " ");
    bool client = label_len == sizeof(client_label) - 1 &&
                  memcmp(line, client_label, label_len) == 0;
    bool server = label_len == sizeof(server_label) - 1 &&
                  memcmp(line, server_label, label_len) == 0;
    if (!client && !server)
        return 0;

    /* Parsed completely before anything is stored: a malformed line leaves S as it was. */
    const char *p = line + label_len;
    if (*p++ != ' ' || hex_run(p) != CLIENT_RANDOM_HEX)
        return -EINVAL;
    p += CLIENT_RANDOM_HEX;
    if (*p++ != ' ')
        return -EINVAL;
    /* A TLS 1.3 secret is as long as the suite's hash: SHA-256 or SHA-384. Anything else is a
     * cut or garbled line, not a secret to be used. */
    size_t n = hex_run(p);
    if ((n != 2 * 32 && n != 2 * 48) || p[n] != '\0')
        return -EINVAL;

    uint8_t *dst = client ? s->client : s->server;
    uint8_t *dst_len = client ? &s->client_len : &s->server_len;
    unhex(p, n, dst);
    *dst_len = (uint8_t)(n / 2);
    return 1;
}

/* ---- HKDF-Expand-Label ---- */

/* A KDF context set up for HKDF-Expand-Label(SECRET, <label>, "", <len>) with AEAD's hash;
 * the label goes with each derive. NULL when OpenSSL fails. */
static EVP_KDF_CTX *expand_ctx(enum tls13_aead aead, const uint8_t *secret, size_t secret_len)
{
    pthread_once(&tls13_kdf_once, kdf_fetch);
    if (tls13_kdf == NULL || secret_len != tls13_secret_len(aead))
        return NULL;
    /* OpenSSL 3.0's HKDF cannot duplicate a context (EVP_KDF_CTX_dup came to it in 3.1), so the
     * digest is named, and fetched, for each one. */
    EVP_KDF_CTX *kctx = EVP_KDF_CTX_new(tls13_kdf);
    if (kctx == NULL)
        return NULL;

    int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
    static const char prefix[] = "tls13 ";
    static const uint8_t empty[1];
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
                                         aead == TLS13_AES_256_GCM_SHA384 ? "SHA384" : "SHA256", 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)secret, secret_len),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PREFIX, (void *)prefix,
                                          sizeof(prefix) - 1),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_DATA, (void *)empty, 0),
        OSSL_PARAM_construct_end(),
    };
    if (EVP_KDF_CTX_set_params(kctx, params) != 1) {
        EVP_KDF_CTX_free(kctx);
        return NULL;
    }
    return kctx;
}

static bool expand_label(EVP_KDF_CTX *kctx, const char *label, uint8_t *out, size_t len)
{
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_LABEL, (void *)label, strlen(label)),
        OSSL_PARAM_construct_end(),
    };
    return EVP_KDF_derive(kctx, out, len, params) == 1;
}

int tls13_derive_keys(enum tls13_aead aead, const uint8_t *secret, size_t secret_len,
                      struct tls13_keys *out)
{
    EVP_KDF_CTX *kctx = expand_ctx(aead, secret, secret_len);
    if (kctx == NULL)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    out->aead = aead;
    out->key_len = (uint8_t)key_len(aead);
    bool ok = expand_label(kctx, "key", out->key, out->key_len) &&
              expand_label(kctx, "iv", out->iv, TLS13_IV_LEN);
    EVP_KDF_CTX_free(kctx);
    if (!ok) {
        OPENSSL_cleanse(out, sizeof(*out));
        return -EINVAL;
    }
    return 0;
}

int tls13_next_secret(enum tls13_aead aead, uint8_t *secret, size_t secret_len)
{
    EVP_KDF_CTX *kctx = expand_ctx(aead, secret, secret_len);
    if (kctx == NULL)
        return -EINVAL;
    /* The KDF copied the old secret into its context, so writing over it in place is safe. */
    uint8_t next[TLS13_SECRET_MAX];
    bool ok = expand_label(kctx, "traffic upd", next, secret_len);
    EVP_KDF_CTX_free(kctx);
    if (ok)
        memcpy(secret, next, secret_len);
    OPENSSL_cleanse(next, sizeof(next));
    return ok ? 0 : -EINVAL;
}
