/* The HTTP phase of a connection (state CONN_HTTP): on protocol = "http" listeners the first
 * request's head is read — decrypted on TLS listeners, as it comes on plain ones — to decide who
 * answers it. A client-setup host of a listed domain is answered here (http_setup.c); the
 * plain listener redirects everything else to https://, or hands it to its backend when it has
 * one; on TLS listeners everything else goes to the backend. What goes to the backend leaves
 * byte for byte as it came, and from then on the connection is a plain relay: nothing after
 * the first head is ever parsed.
 *
 * TLS connections enter this phase only when they may be for a setup host (no SNI, or an SNI
 * that is one), so webmail sessions go straight to the backend as before.
 *
 * After an answer the connection reads and drops what the client still sends until it closes
 * (or HTTP_LINGER_MS passes): closing with unread bytes would make the kernel reset the
 * connection, and the client could lose the answer (an oversized body, a pipelined request). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/err.h>

#include "acme/challenge.h"
#include "proxy/conn/conn.h"
#include "proxy/http/http_parse.h"
#include "proxy/http/http_reply.h"
#include "proxy/http/http_setup.h"

#define HTTP_LINGER_MS 2000

/* Ownership: the connection's (c->http) from http_begin() until the request is handed to the
 * backend (to_backend), or else until the connection is freed (http_free). */
struct http_session {
    struct http_parser parser;
    size_t fed;                        /* plaintext bytes given to the parser */
    size_t head_len;                   /* once the head is complete: its length */
    bool answered;                     /* the answer is queued: reading only to drop */
};

static const char *const site_names[] = {
    [HTTP_SITE_NONE] = "redirect", [HTTP_SITE_AUTOCONFIG] = "autoconfig",
    [HTTP_SITE_AUTODISCOVER] = "autodiscover", [HTTP_SITE_MTA_STS] = "mta-sts",
};

void http_free(struct conn *c)
{
    free(c->http);
    c->http = NULL;
}

bool http_wanted(struct conn *c)
{
    const struct http_setup *s = c->gen->setup;
    if (c->listener->conf->proto != CONF_PROTO_HTTP)
        return false;
    if (!c->ssl)
        return true;
    const struct cs_choice *choice = cs_choice_of(c->ssl);
    const char *domain;
    return http_setup_active(s) &&
           (!choice || !choice->sni[0] || http_setup_site(s, choice->sni, &domain) != HTTP_SITE_NONE);
}

/* The plaintext read so far: the decrypted bytes on TLS, the client's input otherwise. */
static struct buf *plaintext(struct conn *c)
{
    return c->ssl ? c->hin : c->cin;
}

/* Hands the connection to its backend, the bytes read so far to be sent first. */
static void to_backend(struct conn *c)
{
    http_free(c);
    conn_client_read_stop(c);
    c->state = CONN_CONNECTING;
    upstream_connect(c);
}

/* Sends the response in O (STATUS is its status, or -ENOMEM from the builder). */
static void send_answer(struct conn *c, struct http_out *o, const char *what, int status)
{
    if (status < 0 || o->oom) {
        conn_close(c, OUT_NOMEM);
        return;
    }
    snprintf(c->error, sizeof c->error, "http %s %d", what, status);
    c->http->answered = true;
    if (conn_send_client(c, o->data, o->len) < 0) {
        if (c->state != CONN_CLOSED)
            conn_close(c, OUT_CLIENT_ERROR);
        return;
    }
    if (c->ssl)
        tls_send_close_notify(c);
    if (c->state == CONN_CLOSED || conn_flush_client(c) < 0)
        return;
    conn_arm_timer(c, HTTP_LINGER_MS);
    /* What the client sent beyond the request is dropped from here on. */
    struct buf *b = plaintext(c);
    if (b)
        b->off = b->len;
}

static void answer_status(struct conn *c, unsigned status)
{
    struct http_out o = { 0 };
    send_answer(c, &o, "error", http_respond_error(&o, status, NULL, false, time(NULL)));
    http_out_free(&o);
}

#define ACME_CHALLENGE_PREFIX "/.well-known/acme-challenge/"

/* GET /.well-known/acme-challenge/TOKEN with ACME on: the key authorization from acme.storage
 * (any instance sharing it answers), or 404. Returns false for any other request. */
static bool answer_http01(struct conn *c, const struct http_request *req, time_t now)
{
    const struct conf_acme *acme = &c->gen->conf->acme;
    size_t plen = sizeof ACME_CHALLENGE_PREFIX - 1;
    if (!acme->enabled || (req->method != HTTP_GET && req->method != HTTP_HEAD) ||
        strncmp(req->target, ACME_CHALLENGE_PREFIX, plen) != 0)
        return false;
    char token[256], keyauth[256];
    size_t n = strcspn(req->target + plen, "?");
    struct http_out o = { 0 };
    int status, len = -EINVAL;
    if (n < sizeof token) {
        memcpy(token, req->target + plen, n);
        token[n] = '\0';
        len = acme_http01_key_authorization(acme->storage, token, keyauth, sizeof keyauth);
    }
    if (len >= 0)
        status = http_respond(&o, 200, "text/plain", "no-store", NULL, keyauth, (size_t)len,
                              req->method == HTTP_HEAD, now);
    else
        status = http_respond_error(&o, 404, NULL, req->method == HTTP_HEAD, now);
    send_answer(c, &o, "acme-challenge", status);
    http_out_free(&o);
    return true;
}

/* The head is complete (h->head_len bytes of the plaintext): answers, redirects or hands the
 * connection to the backend. Returns false while an Autodiscover body is still on its way. */
static bool decide(struct conn *c)
{
    const struct http_request *req = &c->http->parser.req;
    const struct http_setup *s = c->gen->setup;
    struct buf *b = plaintext(c);
    const char *domain = NULL;
    enum http_site site = req->has_host ? http_setup_site(s, req->host, &domain) : HTTP_SITE_NONE;
    struct http_out o = { 0 };
    time_t now = time(NULL);
    int status;

    if (site != HTTP_SITE_NONE) {
        long want = http_setup_body_wanted(req);
        const char *body = want < 0 ? NULL : "";
        if (want > 0) {
            size_t have = buf_unread(b) - c->http->head_len;
            if (have < (size_t)want)
                return false;
            body = b->data + b->off + c->http->head_len;
        }
        status = http_setup_answer(s, site, domain, req, body, c->ssl != NULL, now, &o);
        send_answer(c, &o, site_names[site], status);
        http_out_free(&o);
        return true;
    }
    /* ACME HTTP-01 on plain listeners, before the backend and the redirect: a CA validating
     * a name of ours must get the answer whatever else port 80 does. */
    if (!c->ssl && answer_http01(c, req, now))
        return true;
    if (c->ssl || c->listener->conf->n_backends) {
        to_backend(c);
        return true;
    }
    if (!req->has_host || !req->host[0]) {
        answer_status(c, 400);
        return true;
    }
    status = http_respond_redirect(&o, req->host, req->target, req->method == HTTP_HEAD, now);
    send_answer(c, &o, site_names[HTTP_SITE_NONE], status);
    http_out_free(&o);
    return true;
}

/* Feeds the plaintext not yet parsed, then decides once the head is complete. */
static void parse_more(struct conn *c)
{
    struct http_session *h = c->http;
    struct buf *b = plaintext(c);

    if (!h->head_len && b && h->fed < buf_unread(b)) {
        size_t used;
        enum http_parse_result r = http_parse(&h->parser, b->data + b->off + h->fed,
                                              buf_unread(b) - h->fed, &used);
        h->fed += used;
        if (r == HTTP_PARSE_ERROR) {
            /* Not ours to judge when there is a backend: it gets the bytes as they came. */
            if (c->ssl || c->listener->conf->n_backends)
                to_backend(c);
            else
                answer_status(c, h->parser.status);
            return;
        }
        if (r == HTTP_PARSE_DONE)
            h->head_len = h->fed;
    }
    if (h->head_len && decide(c))
        return;
    if (c->client_eof) {
        /* A connection that closes without a byte (a load balancer's TCP check) is no error. */
        if (!h->fed) {
            conn_close(c, OUT_OK);
            return;
        }
        snprintf(c->error, sizeof c->error, "client closed before a whole request");
        conn_close(c, OUT_CLIENT_ERROR);
    }
}

/* TLS: decrypts what there is into c->hin (the head and body are bounded far below one
 * buffer, so a full one means the request is not one we answer: the parser has said so). */
static bool decrypt(struct conn *c)
{
    if (!c->hin && !(c->hin = buf_get())) {
        conn_close(c, OUT_NOMEM);
        return false;
    }
    struct buf *b = c->hin;
    while (b->len < BUF_READ_SIZE) {
        int n = SSL_read(c->ssl, b->data + b->len, (int)(BUF_READ_SIZE - b->len));
        if (n > 0) {
            b->len += (uint32_t)n;
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ)
            break;
        if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && c->client_eof)) {
            ERR_clear_error();
            c->client_eof = true;
            break;
        }
        snprintf(c->error, sizeof c->error, "client TLS: %s",
                 ERR_reason_error_string(ERR_peek_last_error()) ?
                 ERR_reason_error_string(ERR_peek_last_error()) : "error");
        ERR_clear_error();
        conn_close(c, OUT_CLIENT_ERROR);
        return false;
    }
    /* OpenSSL may have answered something (a KeyUpdate). */
    return conn_flush_client(c) == 0;
}

void http_client_input(struct conn *c)
{
    if (c->http->answered) {
        if (c->cin)
            c->cin->off = c->cin->len;
        if (c->client_eof)
            conn_fail_with_reply(c, OUT_OK, NULL);
        return;
    }
    if (c->ssl && !decrypt(c))
        return;
    parse_more(c);
}

void http_timeout(struct conn *c)
{
    if (c->http->answered) {
        conn_fail_with_reply(c, OUT_OK, NULL);
        return;
    }
    snprintf(c->error, sizeof c->error, "no whole request within handshake_timeout");
    conn_close(c, OUT_IDLE_TIMEOUT);
}

void http_begin(struct conn *c)
{
    if (!(c->http = calloc(1, sizeof *c->http))) {
        conn_close(c, OUT_NOMEM);
        return;
    }
    http_parser_init(&c->http->parser);
    c->state = CONN_HTTP;
    /* The request must come as promptly as a handshake: a connection that sends nothing (or
     * a head byte by byte) must not hold its buffer for the idle timeout. */
    conn_arm_timer(c, c->listener->conf->handshake_timeout_ms);
    conn_client_read_start(c);
    if (c->state == CONN_HTTP && ((c->cin && buf_unread(c->cin)) || c->ssl))
        http_client_input(c);
}
