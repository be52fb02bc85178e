/* tls_offload: TLS 1.3 sessions carried by tls13/'s record layer once the relay begins, with
 * OpenSSL's SSL object freed (see tls_offload.c). Functions taking a conn need c->offload set,
 * except tls_offload_begin (which may leave the session on OpenSSL) and tls_offload_free. */
#ifndef MAILSNID_TLS_OFFLOAD_H
#define MAILSNID_TLS_OFFLOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <openssl/ssl.h>

#include "certstore/certstore.h"

struct conn;

/* Makes CTX hand each handshake's traffic secrets to its connection (when ENABLED). */
void tls_offload_install(SSL_CTX *ctx, bool enabled);
/* Moves C's established session off OpenSSL when it can; otherwise it stays as it is. */
void tls_offload_begin(struct conn *c);
/* Releases the record layer and the secrets gathered during the handshake (conn_free). */
void tls_offload_free(struct conn *c);
void tls_offload_forget_secrets(struct conn *c);
/* The connection's BIO saw OpenSSL write LEN bytes / read some bytes. */
void tls_offload_saw_write(struct conn *c, const char *data, size_t len);
void tls_offload_saw_read(struct conn *c);

void tls_offload_client_input(struct conn *c);
int tls_offload_encrypt(struct conn *c, const char *data, size_t len);
void tls_offload_close_notify(struct conn *c);

const struct cs_choice *tls_offload_choice(const struct conn *c);
const char *tls_offload_cipher(const struct conn *c);
const char *tls_offload_cert_path(const struct conn *c);
bool tls_offload_alpn_agreed(const struct conn *c);

#endif
