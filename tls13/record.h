/* tls13/record: the TLS 1.3 record layer (RFC 8446 section 5) that carries a connection once
 * OpenSSL's handshake is over and its SSL object has been freed — the state an idle session
 * needs is two AEAD contexts, two IVs, two sequence numbers and the two secrets (for KeyUpdate).
 *
 * Pure: bytes in, bytes out; no sockets, no libuv, no SSL objects. Server side only: we read
 * with the client's keys and write with the server's.
 *
 * Input is decrypted in place: tls13_open() takes the ciphertext a read left in a buffer and
 * leaves the plaintext of its application-data records compacted at the front of that same
 * buffer (each record shrinks by at least 22 bytes, so the plaintext never overtakes the
 * ciphertext still to be read). Output is encrypted straight into the caller's write buffer.
 *
 * Handled here: framing and limits (ciphertext over 2^14 + 256 → record_overflow; plaintext over
 * 2^14 → record_overflow), per-record nonce (IV xor sequence number), inner content type and
 * zero padding, close_notify both ways, any other alert from the client → closed, a
 * post-handshake KeyUpdate from the client (read key updated; update_requested → ours is owed and
 * goes out before our next record), any other post-handshake message or a change_cipher_spec →
 * unexpected_message; a sequence number about to wrap → closed. Our write key is also updated by
 * ourselves (a KeyUpdate with update_not_requested) after TLS13_RECORDS_PER_KEY records, well
 * inside the AEAD usage limits of RFC 8446 5.5. */
#ifndef MAILSNID_TLS13_RECORD_H
#define MAILSNID_TLS13_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <openssl/evp.h>

#include "tls13/keys.h"

#define TLS13_MAX_PLAIN 16384                     /* 2^14 */
#define TLS13_MAX_CIPHER (TLS13_MAX_PLAIN + 256)  /* TLSCiphertext.length limit */
#define TLS13_HEADER 5
#define TLS13_TAG 16
/* Overhead of one record we write: header, inner content type, tag (we add no padding). */
#define TLS13_RECORD_OVERHEAD (TLS13_HEADER + 1 + TLS13_TAG)
/* Most bytes one tls13_seal_record() call writes: a KeyUpdate record, then one full record. */
#define TLS13_SEAL_MAX (TLS13_RECORD_OVERHEAD + 5 + TLS13_RECORD_OVERHEAD + TLS13_MAX_PLAIN)
/* A whole alert record. */
#define TLS13_ALERT_RECORD (TLS13_RECORD_OVERHEAD + 2)
#define TLS13_RECORDS_PER_KEY (1ULL << 24)
/* KeyUpdates in a row with no application data between them before the session is ended with
 * unexpected_message: each costs two key derivations, ~850 times the work of its bytes as
 * application data; a real client sends one now and then (BoringSSL allows 32 too). */
#define TLS13_MAX_KEYUPDATES_IN_A_ROW 32

/* Alert descriptions we send or name (RFC 8446 6). */
enum {
    TLS13_ALERT_CLOSE_NOTIFY = 0,
    TLS13_ALERT_UNEXPECTED_MESSAGE = 10,
    TLS13_ALERT_BAD_RECORD_MAC = 20,
    TLS13_ALERT_RECORD_OVERFLOW = 22,
    TLS13_ALERT_ILLEGAL_PARAMETER = 47,
    TLS13_ALERT_DECODE_ERROR = 50,
    TLS13_ALERT_INTERNAL_ERROR = 80,
};

struct tls13_dir {
    EVP_CIPHER_CTX *ctx;              /* key set once; the nonce is set per record */
    uint8_t iv[TLS13_IV_LEN];
    uint64_t seq;
    uint8_t secret[TLS13_SECRET_MAX]; /* kept for KeyUpdate */
};

struct tls13_conn {
    struct tls13_dir rd, wr;          /* rd: the client's keys; wr: ours */
    enum tls13_aead aead;
    uint8_t secret_len;
    bool keyupdate_owed;              /* the client asked for our KeyUpdate */
    uint8_t keyupdates_in_a_row;      /* the client's, since its last application data */
    bool broken;                      /* a seal failed part-way: nothing more is sealed */
    bool closed;                      /* close_notify or an error seen: nothing more is read */
    uint8_t alert;                    /* after TLS13_ERROR: the alert to send the client */
    int peer_alert;                   /* the alert the client sent, -1 when none */
};

/* Sets up both directions from the secrets (server side: read with client, write with server).
 * Both sequence numbers start at 0: a caller whose SSL object already protected records with
 * these secrets (OpenSSL writes its NewSessionTickets with the server's application key, one
 * record each, and may have read the client's first data) sets t->wr.seq / t->rd.seq to the
 * count of those records before the first tls13_open / tls13_seal_record.
 * Returns 0, -EINVAL (unusable secrets) or -ENOMEM. T is left freeable either way. */
int tls13_init(struct tls13_conn *t, enum tls13_aead aead, const struct tls13_secrets *s);
void tls13_free(struct tls13_conn *t);

enum tls13_status {
    TLS13_OK,       /* every whole record used; a partial one may remain after *consumed */
    TLS13_EOF,      /* close_notify received: the client sends nothing more (bytes after it
                     * are not looked at) */
    TLS13_ERROR,    /* fatal: t->alert is the alert to send (t->peer_alert >= 0 when the
                     * client's own alert ended it: send nothing) */
};

/* Decrypts the whole records in DATA[0, len) in place. On return DATA[0, *plain) holds the
 * application data of those records in order and *consumed says how many input bytes were whole
 * records (the caller keeps DATA[*consumed, len) for the next call). Handshake records
 * (KeyUpdate) and alerts are acted on and leave no plaintext. On TLS13_EOF and TLS13_ERROR too,
 * DATA[0, *plain) is the authenticated data of the records before the one that ended it. After
 * TLS13_EOF or TLS13_ERROR the connection takes no more input: later calls return the same
 * status and consume nothing. A header alone is enough to fail (a wrong outer type, a length
 * over the limit): the rest of that record is not waited for. */
enum tls13_status tls13_open(struct tls13_conn *t, uint8_t *data, size_t len, size_t *consumed,
                             size_t *plain);

/* Encrypts LEN (<= TLS13_MAX_PLAIN, may be 0) bytes of application data from IN as one record
 * into OUT, which has room for TLS13_SEAL_MAX bytes; a KeyUpdate we owe (the client's request,
 * or our own key's record limit) goes out first, and with LEN == 0 only that is written.
 * Returns the bytes written, or -EIO (OpenSSL failed, LEN over the limit, or the sequence number
 * would wrap: close the connection). */
int tls13_seal_record(struct tls13_conn *t, const uint8_t *in, size_t len, uint8_t *out);

/* True when a KeyUpdate is owed and should go out now even with no data to send. */
static inline bool tls13_owes_output(const struct tls13_conn *t) { return t->keyupdate_owed; }

/* Writes an encrypted alert record (TLS13_ALERT_RECORD bytes) into OUT: close_notify (warning)
 * or a fatal DESC. Returns the bytes written or -EIO. */
int tls13_seal_alert(struct tls13_conn *t, uint8_t desc, uint8_t *out);

/* Both directions' current keys and sequence numbers, for a kernel that would take over (kTLS):
 * see tls13/keys.h. */
int tls13_export(const struct tls13_conn *t, struct tls13_keys *rx, uint64_t *rx_seq,
                 struct tls13_keys *tx, uint64_t *tx_seq);

/* Loads the AEADs once per process (EVP_CIPHER_fetch); 0 or -ENOMEM. Thread-safe to call more
 * than once. */
int tls13_global_init(void);

#endif
