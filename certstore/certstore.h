/* certstore: every certificate/key pair the proxy can present, indexed by SNI name.
 *
 * A store is an immutable snapshot. It is built off the event loop (at start and on reload),
 * published through a struct cs_current, and read by the TLS ClientHello callback on any worker
 * thread. It is reference-counted: the holder keeps one reference, each lookup in flight takes
 * one, and the snapshot is freed when the last goes. Pairs (parsed X509 + key + chain) are
 * reference-counted too, so a rebuild shares every unchanged pair with the previous snapshot.
 *
 * There is one SSL_CTX per listener, not one per certificate: the ClientHello callback installs
 * the chosen pair on the SSL object itself (SSL_use_cert_and_key), which keeps a loaded
 * certificate down to its parsed X509, key and a shared chain. */
#ifndef MAILSNID_CERTSTORE_H
#define MAILSNID_CERTSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <openssl/ssl.h>

struct conf;
struct cs_store;
struct cs_pair;
struct cs_current;

/* How the certificate for a handshake was chosen. */
enum cs_kind { CS_KIND_NONE, CS_KIND_EXACT, CS_KIND_WILDCARD, CS_KIND_DEFAULT };
/* NONE = the client sent no SNI (it gets the default pair); DEFAULT = it sent a name nothing matched. */

enum cs_key_type { CS_KEY_ECDSA, CS_KEY_RSA, CS_KEY_OTHER, CS_KEY_TYPES };

/* Longest DNS name we accept, without the trailing dot (RFC 1035: 253 characters in text form). */
#define CS_NAME_MAX 253

/* Lower-cases NAME (LEN bytes, not necessarily NUL-terminated), drops one trailing dot, and
 * checks that it is a plausible host name: labels of 1..63 bytes of [a-z0-9-_], a leading "*."
 * only when ALLOW_WILDCARD. Writes the result, NUL-terminated, to OUT (CS_NAME_MAX + 1 bytes).
 * Returns its length, or -EINVAL. */
int cs_name_normalize(const char *name, size_t len, bool allow_wildcard, char *out);
/* The hash of a normalised name for the store's index, and for any other index of names that
 * follows the same rules (proxy/runtime/routes.c). */
uint64_t cs_name_hash(const char *name, size_t len);

/* Builds a snapshot from CONF: the default pair, the explicit pairs and every pair found under
 * cert_dirs (certbot's live/NAME/{fullchain,privkey}.pem, symlinks followed). PREVIOUS (may be
 * NULL) lends its pairs whose files have not changed. On success returns 0 and sets *out.
 * A default pair or explicit pair that cannot be loaded is an error: returns -EINVAL and
 * *errors gets "FILE:LINE: reason\n" lines (LINE = the config line of the entry). A bad folder
 * under cert_dirs is skipped with a warning. Warnings (expired certificates, skipped folders,
 * keys readable by others) are appended to *warnings as "FILE: reason\n" lines. Both strings are
 * heap-allocated or NULL; the caller frees them.
 * struct conf records no line for tls = { } nor for cert_dirs, so errors about the default pair
 * and about a cert_dirs entry that cannot be opened carry LINE 0. The default pair's own names
 * are indexed too (a client asking for the server's name gets kind EXACT). Safe to call from any
 * thread while PREVIOUS is serving; PREVIOUS is only read. */
int cs_store_build(const struct conf *conf, struct cs_store *previous, struct cs_store **out,
                   char **errors, char **warnings);
/* A snapshot like PREVIOUS (built by cs_store_build with an acme block whose storage is STORAGE)
 * in which only the ACME pairs of DOMAINS are read again from STORAGE/certs/DOMAIN: added,
 * replaced, kept (files unchanged, or unreadable now: warned) or dropped (folder gone), with
 * the same rules and the same order as a full build, so the result serves what cs_store_build
 * would serve with the same configuration. The configuration and every other file are not
 * read: a new ACME pair goes live without the cost of a reload, which grows with the number
 * of pairs on disk. Nothing but memory can fail (-ENOMEM); the rest is as cs_store_build. */
int cs_store_update_acme(struct cs_store *previous, const char *storage, char *const *domains,
                         size_t n_domains, struct cs_store **out, char **errors, char **warnings);
void cs_store_ref(struct cs_store *store);
void cs_store_unref(struct cs_store *store);

/* Counts for logs, -t and --certs. */
struct cs_stats {
    size_t pairs, exact_names, wildcard_names, skipped;
    size_t pairs_added, pairs_changed, pairs_removed; /* against PREVIOUS at build time; with no
                                                        * PREVIOUS every pair counts as added */
};
void cs_store_stats(const struct cs_store *store, struct cs_stats *stats);

/* The result of a lookup: the kind, and the best pair of each key type (NULL when none). */
struct cs_match {
    enum cs_kind kind;
    const struct cs_pair *pair[CS_KEY_TYPES];
};
/* Pure lookup: exact name, then a one-label wildcard, then the default pair; valid pairs are
 * preferred over expired or not-yet-valid ones at every step (see SPEC.md). SNI may be NULL.
 * NOW is the time used for validity. At a "valid" step only the valid pairs are returned, even
 * when that leaves a key type empty (a valid ECDSA pair is never joined by an expired RSA one).
 * An SNI that is not a host name counts as a name that matches nothing (kind DEFAULT). The pairs
 * stay valid as long as the caller's reference to STORE. */
void cs_store_lookup(const struct cs_store *store, const char *sni, size_t sni_len, time_t now,
                     struct cs_match *match);

/* What a pair says about itself, for logs. Strings live as long as the pair. */
const char *cs_pair_cert_path(const struct cs_pair *pair);
enum cs_key_type cs_pair_key_type(const struct cs_pair *pair);
time_t cs_pair_not_after(const struct cs_pair *pair);
const char *cs_key_type_name(enum cs_key_type type);

/* Calls FN for every pair of the snapshot (for the per-certificate expiry metric). */
void cs_store_foreach_pair(const struct cs_store *store,
                           void (*fn)(const struct cs_pair *pair, void *arg), void *arg);

/* Prints the SNI map, one line per name: name, kind, cert file, key type, not-after date;
 * then the default pair, then counts and the soonest expiries. */
void cs_store_print(const struct cs_store *store, FILE *out);

/* The published snapshot. Readers on any thread; one writer (the reload path). */
struct cs_current *cs_current_new(struct cs_store *store);  /* takes over the caller's reference */
void cs_current_free(struct cs_current *current);
struct cs_store *cs_current_get(struct cs_current *current); /* returns a new reference */
void cs_current_set(struct cs_current *current, struct cs_store *store); /* takes over the reference */

/* Installs the ClientHello callback on CTX: it reads the SNI name, looks it up in CURRENT's
 * snapshot and installs the matching pair(s) on the SSL (both ECDSA and RSA when the name has
 * both, so that OpenSSL picks by the client's signature algorithms). Any certificate the SSL
 * inherited from CTX is cleared first, so CTX needs none. A server_name extension whose lengths
 * do not add up fails the handshake with a decode_error alert. CURRENT must outlive CTX. */
void cs_select_install(SSL_CTX *ctx, struct cs_current *current);

/* The callback itself, for a ClientHello callback that handles some hellos on its own (the
 * ACME TLS-ALPN-01 responder) and hands the rest to this one. */
int cs_select_client_hello(SSL *ssl, int *alert, struct cs_current *current);
/* Inside a ClientHello callback: the normalised SNI name into OUT. Returns its length, 0 when
 * there is none (or it is not a host name), -EINVAL when the extension is garbled. */
int cs_client_hello_sni(SSL *ssl, char out[CS_NAME_MAX + 1]);

/* After the handshake: what the callback chose for this SSL. */
struct cs_choice {
    enum cs_kind kind;
    char sni[];                         /* normalised SNI name, "" when none: room for
                                         * CS_NAME_MAX on the SSL, its length once taken */
};
const struct cs_choice *cs_choice_of(const SSL *ssl); /* NULL if the callback did not run */
/* Takes the choice away from SSL (the caller frees it): for a session that outlives its SSL.
 * What is returned is as small as its name (an idle session keeps it for hours). */
struct cs_choice *cs_choice_take(SSL *ssl);
/* Path of the certificate OpenSSL actually used for SSL (after the handshake), or "-". The
 * string lives as long as SSL holds that certificate, even across reloads. */
const char *cs_used_cert_path(const SSL *ssl);
/* The same for a certificate held by reference (X509_up_ref keeps the string alive). */
const char *cs_cert_path(const X509 *cert);

#endif
