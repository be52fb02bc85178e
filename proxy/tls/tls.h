/* tls: per-listener SSL_CTX with mailsnid's defaults. The per-connection side (handshake,
 * decrypt, encrypt over a BIO that reads straight from the connection's input buffer) is
 * declared in conn.h because it works on struct conn. */
#ifndef MAILSNID_TLS_H
#define MAILSNID_TLS_H

#include <openssl/ssl.h>

#include "conf/conf.h"
#include "certstore/certstore.h"

/* TLS 1.2 suites when tls.ciphers is not set: forward secrecy and AEAD only. */
#define TLS_DEFAULT_CIPHERS \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

/* Returns a context for LISTENER, or NULL with *ERR set to a static reason. */
SSL_CTX *tls_ctx_new(const struct conf *conf, const struct conf_listener *listener,
                     struct cs_current *certs, const char **err);
/* The BIO method shared by every connection (created once, at start). */
int tls_global_init(void);
void tls_global_free(void);

#endif
