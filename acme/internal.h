/* Shared by the files of acme/ only (and their unit tests and fuzz target).
 *
 * The rooms: parse.c (pure parsers of what a CA sends beyond JSON: header lines, Retry-After,
 * RFC 3339 times) · jws.c (account key, JWK, thumbprint, ES256 signatures, base64url) · http.c
 * (libcurl: one request, its status, headers and body) · order.c (RFC 8555: account, order,
 * authorizations, finalize, download) · ari.c (RFC 9773 certificate ID and window) · storage.c
 * (atomic files, locks, the issued pairs, status lines) · challenge.c (challenge data in storage,
 * the TLS-ALPN-01 certificate, the HTTP-01 answer) · pace.c (how long to wait: polls, back-off,
 * the new-order budget) · sched.c (the threads: who is due, who orders it). */
#ifndef MAILSNID_ACME_INTERNAL_H
#define MAILSNID_ACME_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "acme/acme.h"

/* ---- parse.c: pure functions over bytes ---- */

/* A response header line as libcurl hands it over ("Name: value\r\n"). When its name is NAME
 * (case-insensitive), points *VALUE at the value with surrounding blanks and the line end
 * removed, sets *VLEN and returns true. */
bool acme_header_match(const char *line, size_t len, const char *name, const char **value,
                       size_t *vlen);
/* Retry-After (RFC 9110 10.2.3): delta-seconds or an IMF-fixdate. Returns the seconds to wait
 * from NOW (0 for a date in the past), or -1 when V is neither. Capped at one day: a CA that
 * asks for longer gets asked again then. */
long acme_parse_retry_after(const char *v, size_t len, time_t now);
/* An RFC 3339 date-time ("2026-12-04T17:45:13Z", fraction and offset allowed) as UTC seconds.
 * Returns 0 and sets *out, or -EINVAL. */
int acme_parse_rfc3339(const char *v, size_t len, time_t *out);

/* Milliseconds from T (CLOCK_MONOTONIC) until now: the order's deadline, kept by order.c's
 * polls and http.c's requests alike. */
static inline long acme_ms_since(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long)(now.tv_sec - t->tv_sec) * 1000 + (now.tv_nsec - t->tv_nsec) / 1000000;
}

/* ---- pace.c: pure functions of time ---- */

/* Milliseconds before look number ATTEMPT (0 = the first) at a pending authorization or order:
 * short at first, doubling up to two seconds, and never less than the CA's Retry-After
 * (RETRY_AFTER_S, -1 when it sent none). */
long acme_poll_delay_ms(unsigned attempt, long retry_after_s);
/* The same wait for an order that began ELAPSED_MS ago and may take LIMIT_MS in all (its
 * authorizations, its readiness and its certificate together), or -1 when that look would
 * come after the limit: the order is abandoned, so that a CA that never decides holds an order
 * thread for a bounded time only. */
long acme_poll_wait_ms(unsigned attempt, long retry_after_s, long elapsed_ms, long limit_ms);
/* Seconds before the next attempt for a domain that has failed FAILURES times before this
 * failure: MIN_S doubling per failure up to MAX_S, or the CA's Retry-After when that is longer. */
unsigned long acme_backoff_s(unsigned failures, unsigned min_s, unsigned max_s, long retry_after_s);
/* Seconds until renewalInfo is asked again about a certificate whose window has not begun:
 * the CA's Retry-After (RETRY_AFTER_S, -1 when it sent none: six hours), but not sooner than a
 * minute nor later than a day (RFC 9773 4.3), so neither a CA's 0 nor its silence leaves a
 * certificate the CA wants replaced (a revocation ahead) unasked for long. */
unsigned long acme_ari_recheck_s(long retry_after_s);
/* The budget of new orders: PER_WINDOW per WINDOW_S seconds, refilled continuously. Takes one
 * and returns true, or returns false and sets *WHEN to the second when one will be there. */
struct acme_bucket {
    double tokens;
    time_t at;
};
bool acme_bucket_take(struct acme_bucket *b, unsigned per_window, unsigned window_s, time_t now,
                      time_t *when);
/* The bucket as the file in storage holds it: "<millionths of a token> <unix seconds>\n", each
 * 20 decimal digits. Format returns the length written (always the same), or -ENOSPC. Parse
 * takes the whole file (LEN bytes) and returns false, leaving B alone, unless it is exactly one
 * such line (any number of digits up to 20) with at most a billion tokens. */
int acme_bucket_format(const struct acme_bucket *b, char *out, size_t cap);
bool acme_bucket_parse(const char *text, size_t len, struct acme_bucket *b);

/* ---- jws.c ---- */

/* base64url without padding (RFC 7515 2). Returns a heap string. */
char *acme_b64url(const unsigned char *data, size_t len);
/* Loads STORAGE/account.key, or creates it (P-256, 0600) when there is none; two instances that
 * create it at once end up with the same key (link() decides). */
EVP_PKEY *acme_account_key(const char *storage, char *err, size_t errlen);
/* The public JWK, members in lexicographic order (RFC 7638), as compact JSON. Heap. */
char *acme_jwk_json(EVP_PKEY *key);
/* base64url(SHA-256(JWK)), the thumbprint the key authorizations end with. */
int acme_jwk_thumbprint(EVP_PKEY *key, char out[64]);
/* A flattened JWS (RFC 8555 6.2) of PAYLOAD ("" = POST-as-GET) for URL, with KID or, when KID
 * is NULL, the JWK. Heap JSON, or NULL. */
char *acme_jws(EVP_PKEY *key, const char *kid, const char *nonce, const char *url,
               const char *payload);

/* ---- http.c ---- */

struct acme_http {
    long status;
    char *body;
    size_t body_len;
    char nonce[128];                      /* Replay-Nonce, "" when none */
    char location[1024];                  /* Location, "" when none */
    long retry_after;                     /* seconds, -1 when absent */
    char error[512];                      /* transport failure (then status is 0) */
};
struct acme_net;
/* CA_FILE may be NULL (the system's trust). STOP, when it becomes true, aborts a transfer. */
struct acme_net *acme_net_new(const char *ca_file, const volatile bool *stop);
void acme_net_free(struct acme_net *net);
/* Requests end by BEGAN + SECONDS (CLOCK_MONOTONIC; an order's time) and a few seconds' grace
 * at the latest. BEGAN NULL: no deadline but the per-request 60 s. */
void acme_net_deadline(struct acme_net *net, const struct timespec *began, unsigned seconds);
/* GET (BODY NULL), HEAD (BODY NULL, HEAD true) or POST of a JOSE body. Fills R (free with
 * acme_http_clear). Returns 0 when an HTTP answer came, -EIO otherwise (R->error says why). */
int acme_net_request(struct acme_net *net, const char *url, const char *body, bool head,
                     const char *accept, struct acme_http *r);
void acme_http_clear(struct acme_http *r);

/* ---- ari.c ---- */

/* RFC 9773 4.1: base64url(AKI keyIdentifier) "." base64url(serial DER content). Heap or NULL. */
char *acme_ari_cert_id(X509 *cert);
/* The suggestedWindow of a renewalInfo answer (JSON text). Returns 0 with START and END set,
 * or -EINVAL. */
int acme_ari_window(const char *json, size_t len, time_t *start, time_t *end);

/* ---- storage.c ---- */

/* Writes DATA to PATH through a temporary file and rename(): readers see the old file or the
 * new one, never a part. MODE is the new file's. */
int acme_write_file(const char *path, const void *data, size_t len, int mode);
int acme_mkdirs(const char *path, int mode);
/* An exclusive lock STORAGE/locks/NAME.lock, between threads and instances sharing STORAGE:
 * the file, held open under an fcntl OFD lock. One left by a holder that died is taken over
 * once it is STALE seconds old. Returns the lock (an fd >= 0) for acme_unlock, -EBUSY when
 * another holds it, or -errno. */
int acme_lock(const char *storage, const char *name, long stale);
/* Releases LOCK (acme_lock's answer for NAME): removes the file when its body is still this
 * thread's (a host that cannot see our kernel lock may have taken it over), then closes. */
void acme_unlock(const char *storage, const char *name, int lock);
/* Takes one new order from the budget that every instance sharing STORAGE with the same
 * PER_WINDOW and WINDOW_S draws from (the CA counts the orders of the account they share).
 * Its state lives in STORAGE/pace-PER_WINDOW-WINDOW_S, read and rewritten in place under an
 * open-file-description lock on that file (fcntl F_OFD_SETLK: it holds between threads of one
 * process as between processes, goes over NFS, and is gone with its holder). A file that is
 * empty is a full budget; one that cannot be read as a budget is an empty one (it refills from
 * now: never more orders than the limit); a time in it ahead of NOW (a host whose clock runs
 * ahead wrote it) counts as NOW. The file is written when an order is taken, or when what it
 * held was one of those two (else the refill would be counted from a new NOW at every look).
 * *STATE is the caller's own copy of the budget: it is set to what the file held (after the
 * take) whenever the file was read. Returns 1 when taken; 0 with *WHEN set when not, or when
 * another holder kept the lock for a second; -errno when the storage cannot be used. */
int acme_pace_take_shared(const char *storage, unsigned per_window, unsigned window_s, time_t now,
                          struct acme_bucket *state, time_t *when);
/* Installs CHAIN_PEM + KEY_PEM as STORAGE/certs/DOMAIN/{fullchain,privkey}.pem in one step
 * (a new folder under STORAGE/archive, then the DOMAIN link swapped by rename()). */
int acme_store_pair(const char *storage, const char *domain, const char *chain_pem,
                    size_t chain_len, const char *key_pem, size_t key_len);
/* The stored leaf of DOMAIN (first certificate of fullchain.pem), or NULL. */
X509 *acme_stored_cert(const char *storage, const char *domain);
/* One line of state for --certs: STORAGE/status/DOMAIN ("pending" or "failing: reason"). */
void acme_status_write(const char *storage, const char *domain, const char *line);

/* ---- challenge.c: the client's side ---- */
int acme_challenge_put(const char *storage, const char *type, const char *key,
                       const char *key_authorization);
void acme_challenge_remove(const char *storage, const char *type, const char *key);

/* ---- order.c ---- */

struct acme_client;
typedef void acme_log_fn(enum conf_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* LOG (may be NULL) hears about the account: registered, or its key put aside. */
struct acme_client *acme_client_new(const struct acme_settings *s, const volatile bool *stop,
                                    acme_log_fn *log);
/* New settings for the same CA and storage (a reload): S replaces the client's, which may go. */
void acme_client_settings(struct acme_client *c, const struct acme_settings *s);
void acme_client_free(struct acme_client *c);
/* What one attempt came to. */
struct acme_result {
    bool ok;
    long retry_after;                     /* the CA asked to wait this long (-1: it did not) */
    bool rate_limited;                    /* a 429: every order waits, not only this domain's */
    char error[512];                      /* the CA's problem document or our reason */
};
/* Orders, validates and stores a certificate for DOMAIN covering NAMES; CERT_ID (ARI, may be
 * NULL) is the certificate it replaces. */
void acme_client_order(struct acme_client *c, const char *domain, char **names, size_t n_names,
                       const char *replaces, struct acme_result *res);
/* How many badNonce answers were retried so far (RFC 8555 6.5). */
unsigned long acme_client_nonce_retries(const struct acme_client *c);
/* GET renewalInfo/CERT_ID (reading the directory first when it has not been). Returns 0 with
 * the window and *RETRY_AFTER (seconds, -1 when the CA sent none), -ENOENT when the directory
 * has no renewalInfo, or another negative value when the CA could not be asked or answered
 * nonsense. */
int acme_client_ari(struct acme_client *c, const char *cert_id, time_t *start, time_t *end,
                    long *retry_after);

#endif
