/* select.c: the ClientHello callback that picks the certificate for each handshake, and what it
 * leaves behind on the SSL for logs.
 *
 * The callback reads the SNI straight out of the ClientHello (before OpenSSL parses extensions),
 * so the choice happens once, early, and the listener's SSL_CTX never needs a certificate of its
 * own. A server_name extension whose lengths do not add up fails the handshake with a
 * decode_error alert: OpenSSL would reject it a moment later anyway, and serving the default
 * certificate to a garbled hello would only hide the problem. A well-formed extension carrying
 * a name that is not a host name is treated as a name that matches nothing (kind DEFAULT). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/tls1.h>

#include "certstore/internal.h"

int cs_sni_parse(const unsigned char *ext, size_t len, const unsigned char **name,
                 size_t *name_len)
{
    *name = NULL;
    *name_len = 0;
    if (len < 2)
        return -EINVAL;
    size_t list = (size_t)ext[0] << 8 | ext[1];
    if (list != len - 2 || list == 0)
        return -EINVAL;
    const unsigned char *p = ext + 2, *end = ext + len;
    while (p < end) {
        if ((size_t)(end - p) < 3)
            return -EINVAL;
        unsigned type = p[0];
        size_t n = (size_t)p[1] << 8 | p[2];
        p += 3;
        if ((size_t)(end - p) < n)
            return -EINVAL;
        /* RFC 6066 allows one name per type; the first host_name wins. */
        if (type == TLSEXT_NAMETYPE_host_name && !*name) {
            *name = p;
            *name_len = n;
        }
        p += n;
    }
    return 0;
}

static int choice_index = -1;
static pthread_once_t choice_index_once = PTHREAD_ONCE_INIT;

static void choice_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                           void *argp)
{
    (void)parent; (void)ad; (void)idx; (void)argl; (void)argp;
    free(ptr);
}

/* SSL_dup would otherwise share the pointer and free it twice. */
static int choice_ex_dup(CRYPTO_EX_DATA *to, const CRYPTO_EX_DATA *from, void **from_d, int idx,
                         long argl, void *argp)
{
    (void)to; (void)from; (void)idx; (void)argl; (void)argp;
    *from_d = NULL;
    return 1;
}

static void choice_index_init(void)
{
    choice_index = SSL_get_ex_new_index(0, NULL, NULL, choice_ex_dup, choice_ex_free);
}

static int choice_ex_index(void)
{
    pthread_once(&choice_index_once, choice_index_init);
    return choice_index;
}

int cs_client_hello_sni(SSL *ssl, char out[CS_NAME_MAX + 1])
{
    const unsigned char *ext = NULL, *sni = NULL;
    size_t ext_len = 0, sni_len = 0;
    out[0] = '\0';
    if (!SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &ext, &ext_len))
        return 0;
    if (cs_sni_parse(ext, ext_len, &sni, &sni_len) < 0)
        return -EINVAL;
    if (!sni)
        return 0;
    int n = cs_name_normalize((const char *)sni, sni_len, false, out);
    if (n < 0)
        out[0] = '\0';
    return n < 0 ? 0 : n;
}

static int client_hello_cb(SSL *ssl, int *alert, void *arg)
{
    return cs_select_client_hello(ssl, alert, arg);
}

int cs_select_client_hello(SSL *ssl, int *alert, struct cs_current *current)
{
    const unsigned char *ext = NULL, *sni = NULL;
    size_t ext_len = 0, sni_len = 0;
    char norm[CS_NAME_MAX + 1];
    const char *name = NULL;
    size_t name_len = 0;

    if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &ext, &ext_len)) {
        if (cs_sni_parse(ext, ext_len, &sni, &sni_len) < 0) {
            *alert = SSL_AD_DECODE_ERROR;
            return SSL_CLIENT_HELLO_ERROR;
        }
        if (sni) {
            int n = cs_name_normalize((const char *)sni, sni_len, false, norm);
            name = n < 0 ? "" : norm;
            name_len = n < 0 ? 0 : (size_t)n;
        }
    }

    /* After a HelloRetryRequest the callback runs again for the second ClientHello: reuse. */
    int idx = choice_ex_index();
    struct cs_choice *choice = idx < 0 ? NULL : SSL_get_ex_data(ssl, idx);
    if (!choice) {
        choice = calloc(1, sizeof(*choice) + CS_NAME_MAX + 1);
        if (!choice || idx < 0 || !SSL_set_ex_data(ssl, idx, choice)) {
            free(choice);
            *alert = SSL_AD_INTERNAL_ERROR;
            return SSL_CLIENT_HELLO_ERROR;
        }
    }

    struct cs_store *store = cs_current_get(current);
    if (!store) {
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_CLIENT_HELLO_ERROR;
    }
    struct cs_match m;
    cs_store_lookup_normalized(store, name, name_len, time(NULL), &m);
    choice->kind = m.kind;
    memcpy(choice->sni, name ? name : "", name_len);
    choice->sni[name_len] = '\0';

    /* Whatever an earlier ClientHello or the SSL_CTX left must not be picked by sigalgs. */
    SSL_certs_clear(ssl);
    int rc = SSL_CLIENT_HELLO_SUCCESS;
    for (int t = 0; t < CS_KEY_TYPES; t++) {
        const struct cs_pair *p = m.pair[t];
        if (p && !SSL_use_cert_and_key(ssl, p->x509, p->key, p->chain ? p->chain->certs : NULL,
                                       1)) {
            ERR_clear_error();
            *alert = SSL_AD_INTERNAL_ERROR;
            rc = SSL_CLIENT_HELLO_ERROR;
            break;
        }
    }
    /* The SSL now holds its own references to the X509s, which keep the pairs alive. */
    cs_store_unref(store);
    return rc;
}

void cs_select_install(SSL_CTX *ctx, struct cs_current *current)
{
    SSL_CTX_set_client_hello_cb(ctx, client_hello_cb, current);
}

const struct cs_choice *cs_choice_of(const SSL *ssl)
{
    int idx = choice_ex_index();
    return idx < 0 ? NULL : SSL_get_ex_data(ssl, idx);
}

struct cs_choice *cs_choice_take(SSL *ssl)
{
    int idx = choice_ex_index();
    struct cs_choice *choice = idx < 0 ? NULL : SSL_get_ex_data(ssl, idx);
    if (!choice)
        return NULL;
    SSL_set_ex_data(ssl, idx, NULL);
    size_t len = strlen(choice->sni);
    struct cs_choice *small = malloc(sizeof(*small) + len + 1);
    if (!small)
        return choice;                    /* the roomy one will do */
    small->kind = choice->kind;
    memcpy(small->sni, choice->sni, len + 1);
    free(choice);
    return small;
}

const char *cs_cert_path(const X509 *cert)
{
    const struct cs_pair *pair = cs_pair_of_x509(cert);
    return pair ? pair->paths : "-";
}

const char *cs_used_cert_path(const SSL *ssl)
{
    return cs_cert_path(SSL_get_certificate(ssl));
}
