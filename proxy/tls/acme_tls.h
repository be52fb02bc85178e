/* acme_tls: the TLS-ALPN-01 responder (RFC 8737) on mailsnid's TLS listeners. A ClientHello
 * that offers exactly ALPN "acme-tls/1" for a name with a challenge pending in acme.storage gets
 * the challenge certificate and "acme-tls/1" selected; the connection ends after the handshake
 * and never reaches a backend. Every other hello goes to certstore's callback as before. */
#ifndef MAILSNID_ACME_TLS_H
#define MAILSNID_ACME_TLS_H

#include <stdbool.h>
#include <openssl/ssl.h>

#include "certstore/certstore.h"

/* Installs the ClientHello callback on CTX: certstore's alone when STORAGE is NULL (no acme
 * block), else the responder in front of it. STORAGE and CERTS must outlive CTX (both belong
 * to the generation that owns CTX). */
void acme_tls_install(SSL_CTX *ctx, struct cs_current *certs, const char *storage);
/* Was SSL's handshake a TLS-ALPN-01 validation? (Then the connection ends after it.) */
bool acme_tls_is_challenge(const SSL *ssl);

#endif
