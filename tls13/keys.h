/* tls13/keys: what a finished TLS 1.3 handshake hands to the record layer — the AEAD and the two
 * application traffic secrets — and the keys derived from them.
 *
 * This is the seam for the kernel as well: struct tls13_keys holds exactly what Linux kTLS takes
 * (setsockopt(TCP_ULP, "tls"), then TLS_TX / TLS_RX with a tls12_crypto_info_* carrying key,
 * the 12-byte IV split as salt + iv, and the record sequence number), so a kernel with
 * CONFIG_TLS could be given the same keys instead of tls13/record.c.
 *
 * Key derivation uses OpenSSL's own "TLS13-KDF" (EVP_KDF, HKDF-Expand-Label); nothing here
 * implements HKDF by hand. Pure: no sockets, no libuv, no SSL objects. */
#ifndef MAILSNID_TLS13_KEYS_H
#define MAILSNID_TLS13_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TLS13_SECRET_MAX 48 /* SHA-384 */
#define TLS13_KEY_MAX 32
#define TLS13_IV_LEN 12

enum tls13_aead {
    TLS13_AES_128_GCM_SHA256,       /* TLS_AES_128_GCM_SHA256       0x1301 */
    TLS13_AES_256_GCM_SHA384,       /* TLS_AES_256_GCM_SHA384       0x1302 */
    TLS13_CHACHA20_POLY1305_SHA256, /* TLS_CHACHA20_POLY1305_SHA256 0x1303 */
};

/* The AEAD for a TLS 1.3 cipher suite id (the low 16 bits of SSL_CIPHER_get_id, e.g. 0x1301).
 * Returns false for a suite the record layer does not carry (the CCM ones): OpenSSL keeps it. */
bool tls13_aead_of_suite(uint16_t suite, enum tls13_aead *aead);

/* Secret length (hash length) of AEAD's suite: 32 or 48. */
size_t tls13_secret_len(enum tls13_aead aead);

/* Collected from OpenSSL's keylog callback during the handshake. */
struct tls13_secrets {
    uint8_t client[TLS13_SECRET_MAX]; /* client_application_traffic_secret_0 */
    uint8_t server[TLS13_SECRET_MAX]; /* server_application_traffic_secret_0 */
    uint8_t client_len, server_len;   /* 0 until seen */
};

/* Takes one NSS keylog line as OpenSSL's keylog callback gives it ("LABEL <client_random hex>
 * <secret hex>", no newline) and keeps the secret when LABEL is CLIENT_TRAFFIC_SECRET_0 or
 * SERVER_TRAFFIC_SECRET_0. Returns 1 when kept, 0 for other labels, -EINVAL for a malformed
 * line of those labels (single spaces between fields, a client random of 32 bytes, a secret of
 * 32 or 48 bytes, hex digits in either case, nothing after it); S is left unchanged then. */
int tls13_keylog_line(struct tls13_secrets *s, const char *line);

/* One direction's keys: what the record layer — or the kernel — encrypts with. */
struct tls13_keys {
    enum tls13_aead aead;
    uint8_t key[TLS13_KEY_MAX];
    uint8_t key_len;
    uint8_t iv[TLS13_IV_LEN];
};

/* key = HKDF-Expand-Label(secret, "key", "", key_len); iv = HKDF-Expand-Label(secret, "iv", "", 12)
 * (RFC 8446 7.3). Returns 0, or -EINVAL when OpenSSL fails. */
int tls13_derive_keys(enum tls13_aead aead, const uint8_t *secret, size_t secret_len,
                      struct tls13_keys *out);

/* application_traffic_secret_N+1 = HKDF-Expand-Label(secret_N, "traffic upd", "", Hash.length)
 * (RFC 8446 7.2), in place. Returns 0 or -EINVAL. */
int tls13_next_secret(enum tls13_aead aead, uint8_t *secret, size_t secret_len);

#endif
