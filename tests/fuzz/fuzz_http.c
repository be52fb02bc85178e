/* libFuzzer target for what reads a client's HTTP bytes: the request-head parser and the
 * Autodiscover request scanner. Beyond "no crash", it checks what the connection relies on: the
 * parser's answer is the same however the bytes are split (whole, cut where the first byte says,
 * byte by byte), the bytes consumed never exceed the input, a finished head has a NUL-terminated
 * host of at most HTTP_HOST_MAX bytes and an origin-form target, an error carries one of the
 * statuses the parser documents; an e-mail address the scanner accepts has one '@' and no
 * character XML would give a meaning to. */
#include "proxy/http/http_parse.h"
#include "proxy/http/http_setup.h"

#include <stdlib.h>
#include <string.h>

static enum http_parse_result feed(struct http_parser *p, const uint8_t *data, size_t size,
                                   size_t step, size_t *used)
{
    enum http_parse_result r = HTTP_PARSE_MORE;
    http_parser_init(p);
    *used = 0;
    for (size_t off = 0; off < size && r == HTTP_PARSE_MORE;) {
        size_t n = step && step < size - off ? step : size - off, c;
        r = http_parse(p, (const char *)data + off, n, &c);
        if (c > n || (r == HTTP_PARSE_MORE && c != n))
            abort();
        *used += c;
        off += n;
    }
    return r;
}

static void same(const struct http_parser *a, enum http_parse_result ra, size_t ua,
                 const struct http_parser *b, enum http_parse_result rb, size_t ub)
{
    if (ra != rb || ua != ub || a->status != b->status ||
        memcmp(&a->req, &b->req, sizeof a->req) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct http_parser whole, part;
    size_t uw, up;
    enum http_parse_result rw = feed(&whole, data, size, 0, &uw), rp;

    if (uw > size)
        abort();
    if (rw == HTTP_PARSE_DONE) {
        const struct http_request *r = &whole.req;
        if (strlen(r->host) > HTTP_HOST_MAX || r->target_len > HTTP_TARGET_MAX ||
            strlen(r->target) != r->target_len || !(r->target[0] == '/' || r->target[0] == '*') ||
            (r->version != 10 && r->version != 11) || (r->version == 11 && !r->has_host) ||
            (r->has_length && r->has_transfer_encoding) || uw > HTTP_HEAD_MAX)
            abort();
    } else if (rw == HTTP_PARSE_ERROR) {
        unsigned s = whole.status;
        if (s != 400 && s != 414 && s != 431 && s != 501 && s != 505)
            abort();
    } else if (uw != size || size > HTTP_HEAD_MAX) {
        abort();
    }
    if (size) {
        rp = feed(&part, data, size, 1 + data[0] % (size < 255 ? size : 255), &up);
        same(&whole, rw, uw, &part, rp, up);
    }
    if (size <= 2048) {
        rp = feed(&part, data, size, 1, &up);
        same(&whole, rw, uw, &part, rp, up);
    }
    char email[320];
    if (size <= HTTP_SETUP_BODY_MAX && http_autodiscover_email((const char *)data, size, email,
                                                               sizeof email) == 0) {
        const char *at = strchr(email, '@');
        if (!at || strchr(at + 1, '@') || strpbrk(email, "<>&\"\r\n \t"))
            abort();
    }
    return 0;
}
