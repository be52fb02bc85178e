/* http.c: one request to the CA over libcurl, on the ACME thread. The handle is kept between
 * requests so its connection to the CA is reused. Bodies are capped: a CA's answer is a few KB,
 * and a hostile or broken one must not fill memory. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <curl/curl.h>

#include "acme/internal.h"

#define BODY_MAX (1 << 20)
#define REQUEST_MAX_MS 60000L             /* a CA that has not answered by then will not */
#define CONNECT_MAX_MS 15000L
/* A look at an order just before its deadline still gets its answer: the deadline the requests
 * keep is this much later than the order's, and the poll loops (order.c) keep the order's. */
#define REQUEST_GRACE_S 5

struct acme_net {
    CURL *curl;
    char *ca_file;
    const volatile bool *stop;
    struct timespec began;                /* CLOCK_MONOTONIC: the order's start */
    unsigned deadline_s;                  /* its order_timeout; 0: no order, no deadline */
};

void acme_net_deadline(struct acme_net *net, const struct timespec *began, unsigned seconds)
{
    net->deadline_s = began ? seconds : 0;
    if (began)
        net->began = *began;
}

/* Milliseconds left before the deadline and its grace (negative when past), or REQUEST_MAX_MS
 * without one. */
static long ms_left(const struct acme_net *net)
{
    if (!net->deadline_s)
        return REQUEST_MAX_MS;
    return ((long)net->deadline_s + REQUEST_GRACE_S) * 1000 - acme_ms_since(&net->began);
}

struct acme_net *acme_net_new(const char *ca_file, const volatile bool *stop)
{
    struct acme_net *n = calloc(1, sizeof *n);
    if (!n)
        return NULL;
    n->curl = curl_easy_init();
    n->ca_file = ca_file ? strdup(ca_file) : NULL;
    n->stop = stop;
    if (!n->curl || (ca_file && !n->ca_file)) {
        acme_net_free(n);
        return NULL;
    }
    return n;
}

void acme_net_free(struct acme_net *net)
{
    if (!net)
        return;
    if (net->curl)
        curl_easy_cleanup(net->curl);
    free(net->ca_file);
    free(net);
}

void acme_http_clear(struct acme_http *r)
{
    free(r->body);
    memset(r, 0, sizeof *r);
    r->retry_after = -1;
}

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    struct acme_http *r = arg;
    size_t len = size * n;
    if (r->body_len + len > BODY_MAX)
        return 0;
    char *b = realloc(r->body, r->body_len + len + 1);
    if (!b)
        return 0;
    memcpy(b + r->body_len, data, len);
    r->body = b;
    r->body_len += len;
    b[r->body_len] = '\0';
    return len;
}

static void copy_value(char *dst, size_t cap, const char *v, size_t len)
{
    if (len >= cap)
        len = cap - 1;
    memcpy(dst, v, len);
    dst[len] = '\0';
}

static size_t on_header(char *line, size_t size, size_t n, void *arg)
{
    struct acme_http *r = arg;
    size_t len = size * n;
    const char *v;
    size_t vlen;
    /* A redirect or a 100 Continue starts a new set of headers: only the last counts. */
    if (len > 5 && memcmp(line, "HTTP/", 5) == 0) {
        r->nonce[0] = r->location[0] = '\0';
        r->retry_after = -1;
    } else if (acme_header_match(line, len, "Replay-Nonce", &v, &vlen)) {
        copy_value(r->nonce, sizeof r->nonce, v, vlen);
    } else if (acme_header_match(line, len, "Location", &v, &vlen)) {
        copy_value(r->location, sizeof r->location, v, vlen);
    } else if (acme_header_match(line, len, "Retry-After", &v, &vlen)) {
        r->retry_after = acme_parse_retry_after(v, vlen, time(NULL));
    }
    return len;
}

static int on_progress(void *arg, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
    (void)a; (void)b; (void)c; (void)d;
    const struct acme_net *n = arg;
    return n->stop && *n->stop;
}

int acme_net_request(struct acme_net *net, const char *url, const char *body, bool head,
                     const char *accept, struct acme_http *r)
{
    CURL *c = net->curl;
    struct curl_slist *hdr = NULL;
    char accept_line[128], detail[CURL_ERROR_SIZE] = "";

    acme_http_clear(r);
    /* Inside an order, no request outlives the order's time: a CA that stops answering is
     * an order that stays pending, not a thread gone for a minute per request. */
    long limit = ms_left(net);
    if (limit <= 0) {
        snprintf(r->error, sizeof r->error, "%s: not asked: the order's %u s (order_timeout) "
                 "are over", url, net->deadline_s);
        return -EIO;
    }
    if (limit > REQUEST_MAX_MS)
        limit = REQUEST_MAX_MS;
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, limit < CONNECT_MAX_MS ? limit : CONNECT_MAX_MS);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, limit);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "mailsnid-acme");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, net);
    /* curl_easy_strerror says only "SSL peer certificate or SSH remote key was not OK"; the
     * buffer says which ("unable to get local issuer certificate", "no alternative certificate
     * subject name matches"), and that is what an operator fixing ca_file needs. */
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, detail);
    if (net->ca_file)
        curl_easy_setopt(c, CURLOPT_CAINFO, net->ca_file);
    if (accept) {
        snprintf(accept_line, sizeof accept_line, "Accept: %s", accept);
        hdr = curl_slist_append(hdr, accept_line);
    }
    if (body) {
        hdr = curl_slist_append(hdr, "Content-Type: application/jose+json");
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    } else if (head) {
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    CURLcode rc = curl_easy_perform(c);
    curl_slist_free_all(hdr);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, NULL);   /* DETAIL goes out of scope */
    if (rc == CURLE_OPERATION_TIMEDOUT && net->deadline_s && ms_left(net) < 50) {
        snprintf(r->error, sizeof r->error, "%s: no answer, and the order's %u s "
                 "(order_timeout) are over", url, net->deadline_s);
        return -EIO;
    }
    if (rc != CURLE_OK) {
        snprintf(r->error, sizeof r->error, "%s: %s%s%s", url, curl_easy_strerror(rc),
                 detail[0] ? ": " : "", detail);
        return -EIO;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    return 0;
}
