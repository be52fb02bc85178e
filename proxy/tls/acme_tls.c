/* acme_tls.c: see acme_tls.h. The challenge data is read from storage in the ClientHello, on
 * the worker's loop: one small file, and only for hellos that offer nothing but "acme-tls/1",
 * which no mail or web client does. */
#include "proxy/tls/acme_tls.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/tls1.h>

#include "acme/challenge.h"
#include "proxy/ops/log.h"

struct responder {
    struct cs_current *certs;
    const char *storage;
};

static int ctx_index = -1, ssl_index = -1;
static pthread_once_t index_once = PTHREAD_ONCE_INIT;

static void ctx_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent; (void)ad; (void)idx; (void)argl; (void)argp;
    free(ptr);
}

static void index_init(void)
{
    ctx_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, ctx_ex_free);
    ssl_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

/* Exactly one protocol offered, and it is "acme-tls/1" (RFC 8737 3: the validator offers only
 * that one). */
static bool offers_only_acme(SSL *ssl)
{
    const unsigned char *ext;
    size_t len, n = strlen(ACME_TLS_ALPN);
    if (!SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_application_layer_protocol_negotiation, &ext, &len))
        return false;
    return len == 3 + n && ext[0] == 0 && ext[1] == 1 + n && ext[2] == n &&
           memcmp(ext + 3, ACME_TLS_ALPN, n) == 0;
}

static int client_hello(SSL *ssl, int *alert, void *arg)
{
    struct responder *r = arg;
    char name[CS_NAME_MAX + 1];
    if (offers_only_acme(ssl) && cs_client_hello_sni(ssl, name) > 0) {
        X509 *cert;
        EVP_PKEY *key;
        if (acme_tlsalpn01_answer(r->storage, name, &cert, &key) == 0) {
            SSL_certs_clear(ssl);
            int ok = SSL_use_cert_and_key(ssl, cert, key, NULL, 1) &&
                     SSL_set_ex_data(ssl, ssl_index, (void *)1);
            X509_free(cert);
            EVP_PKEY_free(key);
            if (!ok) {
                ERR_clear_error();
                *alert = SSL_AD_INTERNAL_ERROR;
                return SSL_CLIENT_HELLO_ERROR;
            }
            log_info("acme: answering a tls-alpn-01 validation for %s", name);
            return SSL_CLIENT_HELLO_SUCCESS;
        }
    }
    return cs_select_client_hello(ssl, alert, r->certs);
}

void acme_tls_install(SSL_CTX *ctx, struct cs_current *certs, const char *storage)
{
    pthread_once(&index_once, index_init);
    struct responder *r = storage && ctx_index >= 0 && ssl_index >= 0 ? malloc(sizeof *r) : NULL;
    if (!r || !SSL_CTX_set_ex_data(ctx, ctx_index, r)) {
        if (storage)
            log_err("acme: no TLS-ALPN-01 responder on a listener (out of memory)");
        free(r);
        cs_select_install(ctx, certs);
        return;
    }
    r->certs = certs;
    r->storage = storage;
    SSL_CTX_set_client_hello_cb(ctx, client_hello, r);
}

bool acme_tls_is_challenge(const SSL *ssl)
{
    return ssl_index >= 0 && SSL_get_ex_data(ssl, ssl_index) != NULL;
}
