/* Unit tests for proxy/http/http_setup.c and proxy/http/http_reply.c: which hosts are setup sites, the
 * three documents with their headers (and HEAD), XML escaping, the Autodiscover request
 * scanner on good, hostile and truncated bodies, and the redirect. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../conf/conf.h"
#include "proxy/http/http_setup.h"
#include "check.h"

const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:libconfig_yylex\n";
}

static char dir[PATH_MAX];

static struct conf *load(const char *text)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/setup.cfg", dir);
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        perror(path);
        exit(2);
    }
    struct conf *c = NULL;
    char *err = NULL;
    if (conf_load(path, &c, &err) != 0) {
        fprintf(stderr, "%s", err ? err : "conf_load failed\n");
        exit(2);
    }
    unlink(path);
    return c;
}

#define BASE "tls = { default_cert = \"/etc/c.pem\"; default_key = \"/etc/k.pem\"; };\n" \
    "listeners = ( { name = \"h\"; listen = \"0.0.0.0:80\"; protocol = \"http\"; tls = \"none\"; } );\n" \
    "domains = [ \"alpha.example\", \"beta.example\", \"gamma.example\" ];\n"
#define SETUP "autoconfig = { display_name = \"<Mail> & \\\"%d\\\" 'at' 100%%\";\n" \
    "  imap = { host = \"imap.%d\"; port = 993; socket = \"SSL\"; };\n" \
    "  pop3 = { host = \"pop.%d\"; port = 110; socket = \"STARTTLS\"; };\n" \
    "  smtp = { host = \"smtp.%d\"; port = 587; socket = \"STARTTLS\"; }; };\n" \
    "mta_sts = { mode = \"testing\"; mx = [ \"mx1.%d\", \"*.mx.%d\" ]; max_age = 86400; };\n"

/* A response taken apart. */
struct resp {
    unsigned status;
    char head[4096];
    const char *body;
    size_t body_len;
};

static bool parse_resp(const struct http_out *o, struct resp *r)
{
    const char *end = o->data ? strstr(o->data, "\r\n\r\n") : NULL;
    if (!end || (size_t)(end - o->data) >= sizeof r->head)
        return false;
    memcpy(r->head, o->data, (size_t)(end - o->data) + 2);
    r->head[end - o->data + 2] = 0;
    r->body = end + 4;
    r->body_len = o->len - (size_t)(end + 4 - o->data);
    return sscanf(r->head, "HTTP/1.1 %u ", &r->status) == 1;
}

/* The value of header NAME (with ": "), or "" . */
static const char *header(const struct resp *r, const char *name)
{
    static char v[512];
    char pat[64];
    snprintf(pat, sizeof pat, "\r\n%s: ", name);
    const char *p = strstr(r->head, pat);
    if (!p)
        return "";
    p += strlen(pat);
    size_t n = strcspn(p, "\r");
    snprintf(v, sizeof v, "%.*s", (int)n, p);
    return v;
}

static struct http_request req_of(const char *text)
{
    struct http_parser p;
    size_t used;
    http_parser_init(&p);
    if (http_parse(&p, text, strlen(text), &used) != HTTP_PARSE_DONE) {
        fprintf(stderr, "bad test request: %s\n", text);
        exit(2);
    }
    return p.req;
}

static struct http_out out;
static struct resp R;

static unsigned answer(const struct http_setup *s, const char *request, const char *body, bool tls)
{
    struct http_request req = req_of(request);
    const char *domain = NULL;
    enum http_site site = http_setup_site(s, req.host, &domain);
    http_out_free(&out);
    memset(&R, 0, sizeof R);
    CHECK(site != HTTP_SITE_NONE);
    if (site == HTTP_SITE_NONE)
        return 0;
    int status = http_setup_answer(s, site, domain, &req, body, tls, 1700000000, &out);
    CHECK(parse_resp(&out, &R) && (unsigned)status == R.status);
    char len[32];
    snprintf(len, sizeof len, "%zu", R.body_len);
    if (req.method != HTTP_HEAD)
        CHECK_STR(header(&R, "Content-Length"), len);
    CHECK_STR(header(&R, "Connection"), "close");
    CHECK_STR(header(&R, "Date"), "Tue, 14 Nov 2023 22:13:20 GMT");
    return R.status;
}

static bool body_has(const char *s)
{
    return R.body && memmem(R.body, R.body_len, s, strlen(s)) != NULL;
}

static void test_sites(struct http_setup *s, struct http_setup *none)
{
    const char *d = NULL;
    CHECK(http_setup_site(s, "autoconfig.alpha.example", &d) == HTTP_SITE_AUTOCONFIG);
    CHECK_STR(d, "alpha.example");
    CHECK(http_setup_site(s, "autodiscover.gamma.example", &d) == HTTP_SITE_AUTODISCOVER);
    CHECK(http_setup_site(s, "mta-sts.beta.example", &d) == HTTP_SITE_MTA_STS);
    CHECK_STR(d, "beta.example");
    CHECK(http_setup_site(s, "autoconfig.delta.example", &d) == HTTP_SITE_NONE);
    CHECK(http_setup_site(s, "webmail.alpha.example", &d) == HTTP_SITE_NONE);
    CHECK(http_setup_site(s, "alpha.example", &d) == HTTP_SITE_NONE);
    CHECK(http_setup_site(s, "autoconfig.", &d) == HTTP_SITE_NONE);
    CHECK(http_setup_site(s, "x.autoconfig.alpha.example", &d) == HTTP_SITE_NONE);
    CHECK(http_setup_site(s, "autoconfig.autoconfig.alpha.example", &d) == HTTP_SITE_NONE);
    /* Listed domains, but no autoconfig/mta_sts block: nothing is served. */
    CHECK(!http_setup_active(none));
    CHECK(http_setup_site(none, "autoconfig.alpha.example", &d) == HTTP_SITE_NONE);
    CHECK(http_setup_site(none, "mta-sts.alpha.example", &d) == HTTP_SITE_NONE);
}

static void test_autoconfig(struct http_setup *s)
{
    const char *get = "GET /mail/config-v1.1.xml?emailaddress=joe%40alpha.example HTTP/1.1\r\n"
                      "Host: autoconfig.alpha.example\r\n\r\n";
    CHECK(answer(s, get, NULL, true) == 200);
    CHECK_STR(header(&R, "Content-Type"), "application/xml; charset=utf-8");
    CHECK_STR(header(&R, "Cache-Control"), "no-cache");
    CHECK(body_has("<emailProvider id=\"alpha.example\">"));
    CHECK(body_has("<incomingServer type=\"imap\">\n      <hostname>imap.alpha.example</hostname>\n"
                   "      <port>993</port>\n      <socketType>SSL</socketType>"));
    CHECK(body_has("<incomingServer type=\"pop3\">\n      <hostname>pop.alpha.example</hostname>\n"
                   "      <port>110</port>\n      <socketType>STARTTLS</socketType>"));
    CHECK(body_has("<outgoingServer type=\"smtp\">\n      <hostname>smtp.alpha.example</hostname>\n"
                   "      <port>587</port>\n      <socketType>STARTTLS</socketType>"));
    CHECK(body_has("<username>%EMAILADDRESS%</username>"));
    /* Every character XML gives a meaning is escaped; %% is a percent sign. */
    CHECK(body_has("<displayName>&lt;Mail&gt; &amp; &quot;alpha.example&quot; &apos;at&apos; 100%</displayName>"));
    size_t full = R.body_len;

    CHECK(answer(s, "HEAD /.well-known/autoconfig/mail/config-v1.1.xml HTTP/1.1\r\n"
                    "Host: autoconfig.alpha.example\r\n\r\n", NULL, false) == 200);
    CHECK(R.body_len == 0);
    char len[32];
    snprintf(len, sizeof len, "%zu", full);
    CHECK_STR(header(&R, "Content-Length"), len); /* what GET would have sent */

    CHECK(answer(s, "GET /mail/config-v1.1.xml HTTP/1.0\r\nHost: autoconfig.gamma.example\r\n\r\n",
                 NULL, false) == 200);
    CHECK(body_has("<hostname>imap.gamma.example</hostname>"));
    CHECK(answer(s, "GET /mail/other.xml HTTP/1.1\r\nHost: autoconfig.alpha.example\r\n\r\n",
                 NULL, true) == 404);
    CHECK(answer(s, "DELETE /mail/config-v1.1.xml HTTP/1.1\r\nHost: autoconfig.alpha.example\r\n\r\n",
                 NULL, true) == 405);
    CHECK_STR(header(&R, "Allow"), "GET, HEAD");
}

#define AD_REQ(addr) "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n" \
    "<Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006\">\r\n" \
    "  <Request>\r\n    <EMailAddress>" addr "</EMailAddress>\r\n" \
    "    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>\r\n" \
    "  </Request>\r\n</Autodiscover>\r\n"

static unsigned autodiscover(struct http_setup *s, const char *body)
{
    char req[512];
    snprintf(req, sizeof req, "POST /AutoDiscover/AutoDiscover.xml HTTP/1.1\r\n"
             "Host: autodiscover.alpha.example\r\nContent-Length: %zu\r\n\r\n", strlen(body));
    return answer(s, req, body, true);
}

static void test_autodiscover(struct http_setup *s)
{
    CHECK(autodiscover(s, AD_REQ("Joe.User+tag@Alpha.Example")) == 200);
    CHECK_STR(header(&R, "Content-Type"), "text/xml; charset=utf-8");
    CHECK(body_has("<Response xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a\">"));
    CHECK(body_has("<Type>IMAP</Type>\n        <Server>imap.alpha.example</Server>\n        <Port>993</Port>"));
    CHECK(body_has("<LoginName>Joe.User+tag@Alpha.Example</LoginName>"));
    CHECK(body_has("<Type>SMTP</Type>\n        <Server>smtp.alpha.example</Server>\n        <Port>587</Port>"));
    CHECK(body_has("<Encryption>TLS</Encryption>"));
    CHECK(body_has("<Encryption>SSL</Encryption>"));
    /* A prefixed namespace and no schema element are fine. */
    CHECK(autodiscover(s, "<a:Autodiscover xmlns:a=\"x\"><a:Request><a:EMailAddress> u@alpha.example "
                          "</a:EMailAddress></a:Request></a:Autodiscover>") == 200);
    CHECK(body_has("<LoginName>u@alpha.example</LoginName>"));

    CHECK(autodiscover(s, AD_REQ("not-an-address")) == 400);
    CHECK(autodiscover(s, AD_REQ("a&amp;b@alpha.example")) == 400);
    CHECK(autodiscover(s, AD_REQ("a<b@alpha.example")) == 400);
    CHECK(autodiscover(s, AD_REQ("@alpha.example")) == 400);
    CHECK(autodiscover(s, AD_REQ("a@alpha..example")) == 400);
    CHECK(autodiscover(s, "<!DOCTYPE x [<!ENTITY e \"u@alpha.example\">]>"
                          "<Autodiscover><Request><EMailAddress>&e;</EMailAddress></Request></Autodiscover>") == 400);
    CHECK(autodiscover(s, "<Other><EMailAddress>u@alpha.example</EMailAddress></Other>") == 400);
    CHECK(autodiscover(s, "<Autodiscover><Request><EMailAddress/></Request></Autodiscover>") == 400);
    CHECK(autodiscover(s, "<Autodiscover><Request><EMailAddress>u@alpha.example</EMailAddress>"
                          "<AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006"
                          "</AcceptableResponseSchema></Request></Autodiscover>") == 400);
    CHECK(autodiscover(s, "") == 400);
    CHECK(answer(s, "POST /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: autodiscover.alpha.example\r\n"
                    "Content-Length: 100000\r\n\r\n", NULL, true) == 400);
    CHECK(answer(s, "GET /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: autodiscover.alpha.example\r\n\r\n",
                 NULL, true) == 405);
    CHECK_STR(header(&R, "Allow"), "POST");
    CHECK(answer(s, "POST /autodiscover/other.xml HTTP/1.1\r\nHost: autodiscover.alpha.example\r\n\r\n",
                 NULL, true) == 404);

    /* Every truncation of a good request is refused or read, never read past. */
    const char *good = AD_REQ("u@alpha.example");
    char email[320];
    for (size_t n = 0; n < strlen(good); n++) {
        char *copy = malloc(n ? n : 1);
        memcpy(copy, good, n);
        int rc = http_autodiscover_email(copy, n, email, sizeof email);
        CHECK(rc == -EINVAL || (rc == 0 && strcmp(email, "u@alpha.example") == 0));
        free(copy);
    }
    CHECK(http_autodiscover_email(good, strlen(good), email, 8) == -EINVAL);
}

static void test_mta_sts(struct http_setup *s)
{
    const char *get = "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.beta.example\r\n\r\n";
    CHECK(answer(s, get, NULL, true) == 200);
    CHECK_STR(header(&R, "Content-Type"), "text/plain");
    CHECK_STR(header(&R, "Cache-Control"), "no-store");
    CHECK(R.body_len == strlen("version: STSv1\r\nmode: testing\r\nmx: mx1.beta.example\r\n"
                               "mx: *.mx.beta.example\r\nmax_age: 86400\r\n") &&
          memcmp(R.body, "version: STSv1\r\nmode: testing\r\nmx: mx1.beta.example\r\n"
                         "mx: *.mx.beta.example\r\nmax_age: 86400\r\n", R.body_len) == 0);
    /* Never over plain HTTP: there it is a redirect to https. */
    CHECK(answer(s, get, NULL, false) == 301);
    CHECK_STR(header(&R, "Location"), "https://mta-sts.beta.example/.well-known/mta-sts.txt");
    CHECK(!body_has("STSv1"));
    CHECK(answer(s, "GET /.well-known/other HTTP/1.1\r\nHost: mta-sts.beta.example\r\n\r\n", NULL, true) == 404);
    CHECK(answer(s, "POST /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.beta.example\r\n\r\n", NULL, true) == 405);
}

static void test_reply(void)
{
    struct http_out o = { 0 };
    CHECK(http_respond_redirect(&o, "webmail.alpha.example", "/a/b?c=d&e", false, 0) == 301);
    CHECK(parse_resp(&o, &R) && R.status == 301);
    CHECK_STR(header(&R, "Location"), "https://webmail.alpha.example/a/b?c=d&e");
    CHECK_STR(header(&R, "Date"), "Thu, 01 Jan 1970 00:00:00 GMT");
    http_out_free(&o);
    CHECK(http_respond_error(&o, 431, NULL, true, 0) == 431);
    CHECK(parse_resp(&o, &R) && R.status == 431 && R.body_len == 0);
    CHECK(strstr(R.head, "431 Request Header Fields Too Large\r\n") != NULL);
    http_out_free(&o);
    http_out_template(&o, "a%%b%dc%d", "<x>", true);
    CHECK_STR(o.data, "a%b&lt;x&gt;c&lt;x&gt;");
    http_out_free(&o);
    http_out_template(&o, "%d", "y", false);
    CHECK_STR(o.data, "y");
    http_out_free(&o);

    struct http_request r = { .has_length = true, .content_length = HTTP_SETUP_BODY_MAX };
    CHECK(http_setup_body_wanted(&r) == HTTP_SETUP_BODY_MAX);
    r.content_length++;
    CHECK(http_setup_body_wanted(&r) == -1);
    r = (struct http_request){ .has_transfer_encoding = true };
    CHECK(http_setup_body_wanted(&r) == -1);
    r = (struct http_request){ 0 };
    CHECK(http_setup_body_wanted(&r) == 0);
}

int main(void)
{
    char tmpl[] = "/tmp/test_http_setup_XXXXXX";
    if (!mkdtemp(tmpl) || !realpath(tmpl, dir)) {
        perror("mkdtemp");
        return 2;
    }
    struct conf *conf = load(BASE SETUP), *bare = load(BASE);
    struct http_setup *s = http_setup_new(conf), *none = http_setup_new(bare);
    CHECK(s && none && http_setup_active(s));
    test_sites(s, none);
    test_autoconfig(s);
    test_autodiscover(s);
    test_mta_sts(s);
    test_reply();
    http_out_free(&out);
    http_setup_free(s);
    http_setup_free(none);
    conf_free(conf);
    conf_free(bare);
    rmdir(dir);
    return check_report("test_http_setup");
}
