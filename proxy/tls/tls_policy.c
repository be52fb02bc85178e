/* The handshake's policy callbacks: ALPN selection and the binding of session tickets to the
 * listener and name they were issued for. Both run inside OpenSSL's processing of the
 * ClientHello, after the certificate callback (certstore/select.c) has recorded the SNI. */
#include "proxy/tls/tls_policy.h"

#include <stdbool.h>
#include <string.h>

#include "acme/challenge.h"
#include "certstore/certstore.h"
#include "proxy/tls/acme_tls.h"
#include "proxy/conn/conn.h"
#include "proxy/runtime/server.h"

/* ---- ALPN ---- */

static bool alpn_is(const unsigned char *p, size_t n, const char *name)
{
    return n == strlen(name) && memcmp(p, name, n) == 0;
}

static bool alpn_is_mail(const unsigned char *p, size_t n)
{
    return alpn_is(p, n, "imap") || alpn_is(p, n, "pop3") || alpn_is(p, n, "smtp");
}

/* ARG is the listener's own protocol identifier. OpenSSL has checked the list's framing (every
 * entry non-empty, lengths adding up) before it calls us. */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    const char *own = arg;
    bool mail_only = true;
    /* The ClientHello callback answered a TLS-ALPN-01 validation: it offered only this. */
    if (acme_tls_is_challenge(ssl)) {
        *out = (const unsigned char *)ACME_TLS_ALPN;
        *outlen = (unsigned char)strlen(ACME_TLS_ALPN);
        return SSL_TLSEXT_ERR_OK;
    }
    for (unsigned i = 0; i < inlen && in[i] <= inlen - i - 1; i += 1u + in[i]) {
        const unsigned char *p = in + i + 1;
        if (alpn_is(p, in[i], own)) {
            *out = p;
            *outlen = in[i];
            return SSL_TLSEXT_ERR_OK;
        }
        mail_only = mail_only && alpn_is_mail(p, in[i]);
    }
    /* A mail listener speaks nothing else; an HTTP one leaves clients that offer only h2 (say)
     * to carry on as before, since HTTP/1.1 is what they fall back to. */
    bool refuse = alpn_is_mail((const unsigned char *)own, strlen(own)) || mail_only;
    return refuse ? SSL_TLSEXT_ERR_ALERT_FATAL : SSL_TLSEXT_ERR_NOACK;
}

/* ---- session tickets ---- */

/* What a ticket is bound to: "LISTENER\0SNI" (SNI empty when the client sent none). The SNI
 * chose the certificate and chooses the route, so resuming under another name would route
 * and log the session as that name's; the listener keeps a ticket from the IMAP port (shared
 * tls.ticket_keys decrypt on every port) out of the POP3 one. Returns the length, or 0 when
 * there is nothing to bind to (then the ticket never resumes). */
static size_t session_binding(SSL *ssl, char *out, size_t cap)
{
    const struct conn *c = SSL_get_app_data(ssl);
    const struct cs_choice *choice = cs_choice_of(ssl);
    if (!c || !choice)
        return 0;
    int n = snprintf(out, cap, "%s%c%s", c->listener->conf->name, '\0', choice->sni);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

#define BINDING_MAX 512

static int session_ticket_gen(SSL *ssl, void *arg)
{
    (void)arg;
    char b[BINDING_MAX];
    size_t n = session_binding(ssl, b, sizeof b);
    return n == 0 || SSL_SESSION_set1_ticket_appdata(SSL_get_session(ssl), b, n);
}

static SSL_TICKET_RETURN session_ticket_dec(SSL *ssl, SSL_SESSION *ss,
                                            const unsigned char *keyname, size_t keyname_len,
                                            SSL_TICKET_STATUS status, void *arg)
{
    (void)keyname;
    (void)keyname_len;
    (void)arg;
    if (status != SSL_TICKET_SUCCESS && status != SSL_TICKET_SUCCESS_RENEW)
        return SSL_TICKET_RETURN_IGNORE_RENEW;
    char b[BINDING_MAX];
    size_t n = session_binding(ssl, b, sizeof b), len = 0;
    void *data = NULL;
    if (!SSL_SESSION_get0_ticket_appdata(ss, &data, &len) || n == 0 || len != n ||
        memcmp(data, b, n) != 0)
        return SSL_TICKET_RETURN_IGNORE_RENEW; /* a full handshake, and a ticket for this name */
    return status == SSL_TICKET_SUCCESS ? SSL_TICKET_RETURN_USE : SSL_TICKET_RETURN_USE_RENEW;
}

const char *tls_policy_alpn_id(enum conf_proto proto)
{
    return proto == CONF_PROTO_HTTP ? "http/1.1" : conf_proto_name(proto);
}

void tls_policy_install(SSL_CTX *ctx, enum conf_proto proto)
{
    /* The identifiers are static strings: they outlive every context. */
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, (void *)tls_policy_alpn_id(proto));
    SSL_CTX_set_session_ticket_cb(ctx, session_ticket_gen, session_ticket_dec, NULL);
}
