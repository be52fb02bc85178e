/* acme/challenge.h: the answers to ACME challenges, for the listeners in proxy/ to call.
 *
 * The client writes each pending challenge's key authorization into acme.storage (see
 * storage.c) before it tells the CA to validate, and removes it afterwards; these functions
 * read it from there. So any instance that shares the storage answers, whichever instance
 * ordered. They are thread-safe, keep no state, and cost one small file read: call them only
 * for requests that are challenges (a ClientHello offering exactly ALPN "acme-tls/1", a GET of
 * /.well-known/acme-challenge/TOKEN). */
#ifndef MAILSNID_ACME_CHALLENGE_H
#define MAILSNID_ACME_CHALLENGE_H

#include <stddef.h>
#include <openssl/ssl.h>

/* The ALPN protocol of TLS-ALPN-01 (RFC 8737 6.2). */
#define ACME_TLS_ALPN "acme-tls/1"

/* TLS-ALPN-01 (RFC 8737): when a challenge for NAME (a normalised host name, the ClientHello's
 * SNI) is pending in STORAGE, builds the certificate to present: self-signed, a fresh P-256
 * key, NAME as its only SAN, and the critical id-pe-acmeIdentifier extension holding the
 * SHA-256 of the key authorization. Returns 0 with *CERT and *KEY set (the caller frees them),
 * -ENOENT when nothing is pending for NAME, or another negative errno. */
int acme_tlsalpn01_answer(const char *storage, const char *name, X509 **cert, EVP_PKEY **key);

/* HTTP-01 (RFC 8555 8.3): the body to answer GET /.well-known/acme-challenge/TOKEN with (as
 * text/plain, status 200). Writes the key authorization, NUL-terminated, to OUT and returns its
 * length; returns -ENOENT when no challenge with TOKEN is pending, -EINVAL when TOKEN is not a
 * base64url token (answer 404 for both), -ENOSPC when CAP is too small (256 is enough). */
int acme_http01_key_authorization(const char *storage, const char *token, char *out, size_t cap);

#endif
