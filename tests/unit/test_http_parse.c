/* Unit tests for proxy/http/http_parse.c. Every input is parsed whole, split in two at every byte
 * offset, and byte by byte; all three must agree on the result, the status, the bytes consumed
 * and every field of the request. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/http/http_parse.h"
#include "check.h"

/* Feeds IN in steps of STEP bytes, or in two pieces cut at CUT, or whole (both 0); returns the
 * result with the total consumed. */
static enum http_parse_result feed(struct http_parser *p, const char *in, size_t len,
                                   size_t step, size_t cut, size_t *used)
{
    enum http_parse_result r = HTTP_PARSE_MORE;
    size_t off = 0;
    http_parser_init(p);
    *used = 0;
    while (off < len) {
        size_t n = step ? step : (cut && off < cut ? cut - off : len - off);
        if (n > len - off)
            n = len - off;
        size_t c;
        r = http_parse(p, in + off, n, &c);
        *used += c;
        if (r != HTTP_PARSE_MORE)
            break;
        if (c != n) {
            fprintf(stderr, "MORE consumed %zu of %zu\n", c, n);
            check_failures++;
        }
        off += n;
    }
    return r;
}

/* Parses IN every way and checks they agree; returns the whole-input parser in *OUT. */
static enum http_parse_result parse_all(const char *in, size_t len, struct http_parser *out,
                                        size_t *used)
{
    enum http_parse_result whole = feed(out, in, len, 0, 0, used);
    struct http_parser *p = malloc(sizeof *p);
    for (size_t k = 1; k < len; k++) {
        size_t u;
        enum http_parse_result r = feed(p, in, len, 0, k, &u);
        check_count++;
        if (r != whole || u != *used || p->status != out->status ||
            memcmp(&p->req, &out->req, sizeof p->req) != 0) {
            check_failures++;
            fprintf(stderr, "split at %zu differs for %.*s\n", k, (int)(len < 60 ? len : 60), in);
            break;
        }
    }
    size_t u;
    enum http_parse_result r = feed(p, in, len, 1, 0, &u);
    CHECK(r == whole && u == *used && p->status == out->status &&
          memcmp(&p->req, &out->req, sizeof p->req) == 0);
    free(p);
    return whole;
}

static struct http_parser P;

static enum http_parse_result run(const char *in, size_t *used)
{
    size_t u;
    enum http_parse_result r = parse_all(in, strlen(in), &P, used ? used : &u);
    return r;
}

static void expect_status(const char *in, unsigned status)
{
    enum http_parse_result r = run(in, NULL);
    check_count++;
    if (r != HTTP_PARSE_ERROR || P.status != status) {
        check_failures++;
        fprintf(stderr, "want %u, got result %d status %u for: %s\n", status, r, P.status, in);
    }
}

static void test_good(void)
{
    size_t used;
    const char *in = "GET /mail/config-v1.1.xml?emailaddress=a%40b.example HTTP/1.1\r\n"
                     "Host: AutoConfig.Alpha.Example:443\r\nUser-Agent: x\r\n\r\nBODY";
    CHECK(run(in, &used) == HTTP_PARSE_DONE);
    CHECK(used == strlen(in) - 4);
    CHECK(P.req.method == HTTP_GET && P.req.version == 11);
    CHECK_STR(P.req.target, "/mail/config-v1.1.xml?emailaddress=a%40b.example");
    CHECK(P.req.has_host);
    CHECK_STR(P.req.host, "autoconfig.alpha.example");
    CHECK(!P.req.has_length && !P.req.has_transfer_encoding);

    CHECK(run("POST /Autodiscover/Autodiscover.xml HTTP/1.1\nhost:a.example.\n"
              "content-length:  42 \t\nContent-Length: 42\n\n", NULL) == HTTP_PARSE_DONE);
    CHECK(P.req.method == HTTP_POST && P.req.has_length && P.req.content_length == 42);
    CHECK_STR(P.req.host, "a.example");

    CHECK(run("\r\n\r\nHEAD / HTTP/1.0\r\n\r\n", NULL) == HTTP_PARSE_DONE);
    CHECK(P.req.method == HTTP_HEAD && P.req.version == 10 && !P.req.has_host);

    CHECK(run("GET http://Mail.Example.com:80?q=1 HTTP/1.1\r\nHost: other\r\n\r\n", NULL) == HTTP_PARSE_DONE);
    CHECK_STR(P.req.host, "mail.example.com");
    CHECK_STR(P.req.target, "/?q=1");
    CHECK(run("GET HTTPS://x.example/a/b HTTP/1.0\r\n\r\n", NULL) == HTTP_PARSE_DONE);
    CHECK_STR(P.req.host, "x.example");
    CHECK_STR(P.req.target, "/a/b");

    CHECK(run("OPTIONS * HTTP/1.1\r\nHost: [2001:DB8::1]:8080\r\n\r\n", NULL) == HTTP_PARSE_DONE);
    CHECK(P.req.method == HTTP_OTHER);
    CHECK_STR(P.req.host, "[2001:db8::1]");
    CHECK_STR(P.req.target, "*");

    CHECK(run("PUT /x HTTP/1.1\r\nHost:\r\nTransfer-Encoding: chunked\r\nX: \x80\xff\r\n\r\n", NULL) == HTTP_PARSE_DONE);
    CHECK(P.req.has_host && P.req.host[0] == 0 && P.req.has_transfer_encoding);

    /* Incomplete stays incomplete, having used every byte. */
    CHECK(run("GET / HTTP/1.1\r\nHost: a\r\n", &used) == HTTP_PARSE_MORE);
    CHECK(used == strlen("GET / HTTP/1.1\r\nHost: a\r\n"));

    /* After DONE nothing more is taken. */
    size_t c = 99;
    CHECK(run("GET / HTTP/1.0\r\n\r\n", NULL) == HTTP_PARSE_DONE);
    CHECK(http_parse(&P, "x", 1, &c) == HTTP_PARSE_DONE && c == 0);
}

static void test_bad(void)
{
    expect_status("GET / HTTP/1.1\r\n\r\n", 400);                       /* no Host */
    expect_status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400);  /* two */
    expect_status("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a:123456\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400);            /* space before colon */
    expect_status("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400);       /* bare CR */
    expect_status("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 9999999999999999\r\n\r\n", 400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400);
    expect_status("GET  / HTTP/1.1\r\n", 400);
    expect_status("GET /\x7f HTTP/1.1\r\n", 400);
    expect_status("GET /\xc3\xa9 HTTP/1.1\r\n", 400);
    expect_status("GET / HTTP/2.0\r\n", 505);
    expect_status("GET / HTTP/1.1x\r\n", 400);
    expect_status("GET /\r\n", 400);                                      /* HTTP/0.9 */
    expect_status("GET x HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    expect_status("GET http://u@h/ HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    expect_status("\x16\x03\x01\x02\x00", 400);                           /* a ClientHello */
    expect_status("GETTINGLONGERTHANANYMETHODEVERWAS / HTTP/1.1\r\n", 501);

    char *big = malloc(HTTP_HEAD_MAX + 64);
    memset(big, 'a', HTTP_HEAD_MAX + 63);
    big[HTTP_HEAD_MAX + 63] = 0;
    memcpy(big, "GET /", 5);
    expect_status(big, 414);                                              /* target too long */
    snprintf(big, HTTP_HEAD_MAX, "GET / HTTP/1.1\r\nHost: a\r\nCookie: ");
    memset(big + strlen(big), 'c', HTTP_HEAD_MAX);
    big[HTTP_HEAD_MAX + 10] = 0;
    expect_status(big, 431);                                              /* head too long */
    free(big);
}

int main(void)
{
    test_good();
    test_bad();
    return check_report("test_http_parse");
}
