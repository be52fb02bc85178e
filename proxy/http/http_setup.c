/* Client setup answers. The XML is written out directly (no XML library for three fixed
 * documents); every value that comes from the config or the request goes through
 * http_out_xml(). The Autodiscover request is read by a small scanner that looks for the two
 * elements Outlook sends and refuses anything with a DTD, so no entity is ever expanded. */
#include "proxy/http/http_setup.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct http_setup {
    const struct conf *conf;
    const char **domains;              /* the conf's domains, sorted, for bsearch */
    size_t n_domains;
};

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

struct http_setup *http_setup_new(const struct conf *conf)
{
    struct http_setup *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->conf = conf;
    if (conf->n_domains && (conf->has_autoconfig || conf->has_mta_sts)) {
        if (!(s->domains = malloc(conf->n_domains * sizeof *s->domains))) {
            free(s);
            return NULL;
        }
        for (size_t i = 0; i < conf->n_domains; i++)
            s->domains[s->n_domains++] = conf->domains[i];
        qsort(s->domains, s->n_domains, sizeof *s->domains, cmp_str);
    }
    return s;
}

void http_setup_free(struct http_setup *s)
{
    if (!s)
        return;
    free(s->domains);
    free(s);
}

bool http_setup_active(const struct http_setup *s)
{
    return s && s->n_domains > 0;
}

static const struct {
    const char *prefix;
    enum http_site site;
} sites[] = {
    { "autoconfig.", HTTP_SITE_AUTOCONFIG },
    { "autodiscover.", HTTP_SITE_AUTODISCOVER },
    { "mta-sts.", HTTP_SITE_MTA_STS },
};

enum http_site http_setup_site(const struct http_setup *s, const char *host, const char **domain)
{
    if (!http_setup_active(s))
        return HTTP_SITE_NONE;
    for (size_t i = 0; i < sizeof sites / sizeof sites[0]; i++) {
        size_t n = strlen(sites[i].prefix);
        if (strncmp(host, sites[i].prefix, n) != 0)
            continue;
        bool on = sites[i].site == HTTP_SITE_MTA_STS ? s->conf->has_mta_sts : s->conf->has_autoconfig;
        const char *d = host + n;
        if (on && bsearch(&d, s->domains, s->n_domains, sizeof *s->domains, cmp_str)) {
            *domain = d;
            return sites[i].site;
        }
        return HTTP_SITE_NONE;
    }
    return HTTP_SITE_NONE;
}

long http_setup_body_wanted(const struct http_request *req)
{
    if (req->has_transfer_encoding || (req->has_length && req->content_length > HTTP_SETUP_BODY_MAX))
        return -1;
    return req->has_length ? (long)req->content_length : 0;
}

/* ---- Thunderbird autoconfig (clientConfig 1.1) ---- */

static const char *socket_name(enum conf_socket s)
{
    return s == CONF_SOCKET_STARTTLS ? "STARTTLS" : "SSL";
}

static void autoconfig_server(struct http_out *o, const char *elem, const char *type,
                              const struct conf_setup_server *srv, const char *domain)
{
    if (!srv->host)
        return;
    http_out_printf(o, "    <%s type=\"%s\">\n      <hostname>", elem, type);
    http_out_template(o, srv->host, domain, true);
    http_out_printf(o, "</hostname>\n      <port>%u</port>\n      <socketType>%s</socketType>\n"
                       "      <username>%%EMAILADDRESS%%</username>\n"
                       "      <authentication>password-cleartext</authentication>\n    </%s>\n",
                    srv->port, socket_name(srv->socket), elem);
}

static void autoconfig_xml(const struct conf *conf, const char *domain, struct http_out *o)
{
    http_out_str(o, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<clientConfig version=\"1.1\">\n"
                    "  <emailProvider id=\"");
    http_out_xml(o, domain);
    http_out_str(o, "\">\n    <domain>");
    http_out_xml(o, domain);
    http_out_str(o, "</domain>\n    <displayName>");
    http_out_template(o, conf->autoconfig.display_name ? conf->autoconfig.display_name : "%d",
                      domain, true);
    http_out_str(o, "</displayName>\n    <displayShortName>");
    http_out_xml(o, domain);
    http_out_str(o, "</displayShortName>\n");
    autoconfig_server(o, "incomingServer", "imap", &conf->autoconfig.imap, domain);
    autoconfig_server(o, "incomingServer", "pop3", &conf->autoconfig.pop3, domain);
    autoconfig_server(o, "outgoingServer", "smtp", &conf->autoconfig.smtp, domain);
    http_out_str(o, "  </emailProvider>\n</clientConfig>\n");
}

/* ---- Outlook Autodiscover (POX, response schema 2006a) ---- */

#define AD_RESPONSE_SCHEMA "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"

static bool is_name_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == ':' || ch == '_' || ch == '-' || ch == '.';
}

/* At P (just after a '<'): whether the element name there, prefix dropped, is NAME; *AFTER
 * is set past the name. */
static bool name_is(const char *p, const char *end, const char *name, const char **after)
{
    const char *local = p;
    while (p < end && is_name_char(*p)) {
        if (*p == ':')
            local = p + 1;
        p++;
    }
    *after = p;
    return (size_t)(p - local) == strlen(name) && memcmp(local, name, (size_t)(p - local)) == 0;
}

/* The text of the first element whose local name is NAME: *TEXT and *N, or false when there is
 * none or it is not "<name ...>text</". */
static bool find_element(const char *b, const char *end, const char *name, const char **text,
                         size_t *n)
{
    for (const char *p = b; (p = memchr(p, '<', (size_t)(end - p))); p++) {
        const char *q;
        if (!name_is(p + 1, end, name, &q))
            continue;
        const char *gt = memchr(q, '>', (size_t)(end - q));
        if (!gt || gt[-1] == '/')
            return false;
        const char *t = gt + 1, *lt = memchr(t, '<', (size_t)(end - t));
        if (!lt || lt + 1 >= end || lt[1] != '/')
            return false;
        *text = t;
        *n = (size_t)(lt - t);
        return true;
    }
    return false;
}

static void trim(const char **t, size_t *n)
{
    while (*n && strchr(" \t\r\n", (*t)[*n - 1]))
        (*n)--;
    while (*n && strchr(" \t\r\n", **t))
        (*t)++, (*n)--;
}

static bool valid_email(const char *s, size_t n)
{
    const char *at = memchr(s, '@', n);
    if (!at || at == s || at - s > 64 || n - (size_t)(at - s) - 1 > 253)
        return false;
    for (const char *p = s; p < at; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              (*p && strchr("!#$%'*+-/=?^_`{|}~.", *p))))
            return false;
    size_t label = 0;
    for (const char *p = at + 1; p < s + n; p++) {
        if (*p == '.') {
            if (label == 0)
                return false;
            label = 0;
        } else if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                   (*p >= '0' && *p <= '9') || *p == '-') {
            if (++label > 63)
                return false;
        } else {
            return false;
        }
    }
    return label > 0;
}

int http_autodiscover_email(const char *body, size_t len, char *out, size_t cap)
{
    const char *t, *root = body, *end = body + len;
    size_t n;

    /* No DTD, so no entity or external reference can be declared; no NUL inside. */
    if (memmem(body, len, "<!DOCTYPE", 9) || memmem(body, len, "<!ENTITY", 8) ||
        memchr(body, 0, len))
        return -EINVAL;
    /* The first element must be Autodiscover (after an XML declaration or comments). */
    while ((root = memchr(root, '<', (size_t)(end - root))) && root + 1 < end &&
           (root[1] == '?' || root[1] == '!'))
        root++;
    if (!root || !name_is(root + 1, end, "Autodiscover", &t))
        return -EINVAL;
    if (find_element(root, end, "AcceptableResponseSchema", &t, &n)) {
        trim(&t, &n);
        if (n != strlen(AD_RESPONSE_SCHEMA) || memcmp(t, AD_RESPONSE_SCHEMA, n) != 0)
            return -EINVAL; /* a mobile (ActiveSync) request: not a mail account we describe */
    }
    if (!find_element(root, end, "EMailAddress", &t, &n))
        return -EINVAL;
    trim(&t, &n);
    if (!valid_email(t, n) || n >= cap)
        return -EINVAL;
    memcpy(out, t, n);
    out[n] = 0;
    return 0;
}

static void autodiscover_protocol(struct http_out *o, const char *type,
                                  const struct conf_setup_server *srv, const char *domain,
                                  const char *login)
{
    if (!srv->host)
        return;
    http_out_printf(o, "      <Protocol>\n        <Type>%s</Type>\n        <Server>", type);
    http_out_template(o, srv->host, domain, true);
    /* Encryption (SSL = TLS from the first byte, TLS = STARTTLS) overrides SSL where Outlook
     * knows it; older versions read SSL. */
    http_out_printf(o, "</Server>\n        <Port>%u</Port>\n        <DomainRequired>off</DomainRequired>\n"
                       "        <LoginName>", srv->port);
    http_out_xml(o, login);
    http_out_printf(o, "</LoginName>\n        <SPA>off</SPA>\n        <SSL>on</SSL>\n"
                       "        <Encryption>%s</Encryption>\n        <AuthRequired>on</AuthRequired>\n"
                       "      </Protocol>\n", srv->socket == CONF_SOCKET_STARTTLS ? "TLS" : "SSL");
}

static void autodiscover_xml(const struct conf *conf, const char *domain, const char *login,
                             struct http_out *o)
{
    http_out_str(o, "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Autodiscover xmlns=\""
                    "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006\">\n"
                    "  <Response xmlns=\"" AD_RESPONSE_SCHEMA "\">\n    <Account>\n"
                    "      <AccountType>email</AccountType>\n      <Action>settings</Action>\n");
    autodiscover_protocol(o, "IMAP", &conf->autoconfig.imap, domain, login);
    autodiscover_protocol(o, "POP3", &conf->autoconfig.pop3, domain, login);
    autodiscover_protocol(o, "SMTP", &conf->autoconfig.smtp, domain, login);
    http_out_str(o, "    </Account>\n  </Response>\n</Autodiscover>\n");
}

/* ---- MTA-STS (RFC 8461 §3.2) ---- */

static void mta_sts_policy(const struct conf *conf, const char *domain, struct http_out *o)
{
    static const char *const modes[] = { "enforce", "testing", "none" };
    http_out_printf(o, "version: STSv1\r\nmode: %s\r\n", modes[conf->mta_sts.mode]);
    for (size_t i = 0; i < conf->mta_sts.n_mx; i++) {
        http_out_str(o, "mx: ");
        http_out_template(o, conf->mta_sts.mx[i], domain, false);
        http_out_str(o, "\r\n");
    }
    http_out_printf(o, "max_age: %u\r\n", conf->mta_sts.max_age);
}

/* ---- dispatch ---- */

static bool path_is(const struct http_request *req, const char *path, bool nocase)
{
    size_t n = strcspn(req->target, "?");
    return n == strlen(path) && (nocase ? strncasecmp(req->target, path, n) : strncmp(req->target, path, n)) == 0;
}

static bool get_or_head(const struct http_request *req)
{
    return req->method == HTTP_GET || req->method == HTTP_HEAD;
}

int http_setup_answer(const struct http_setup *s, enum http_site site, const char *domain,
                      const struct http_request *req, const char *body, bool tls, time_t now,
                      struct http_out *out)
{
    const struct conf *conf = s->conf;
    bool head = req->method == HTTP_HEAD;
    struct http_out doc = { 0 };
    const char *type = NULL, *cache = "no-cache";
    int rc;

    switch (site) {
    case HTTP_SITE_AUTOCONFIG:
        if (!path_is(req, "/mail/config-v1.1.xml", false) &&
            !path_is(req, "/.well-known/autoconfig/mail/config-v1.1.xml", false))
            return http_respond_error(out, 404, NULL, head, now);
        if (!get_or_head(req))
            return http_respond_error(out, 405, "GET, HEAD", head, now);
        autoconfig_xml(conf, domain, &doc);
        type = "application/xml; charset=utf-8";
        break;
    case HTTP_SITE_AUTODISCOVER: {
        char email[320];
        if (!path_is(req, "/autodiscover/autodiscover.xml", true))
            return http_respond_error(out, 404, NULL, head, now);
        if (req->method != HTTP_POST)
            return http_respond_error(out, 405, "POST", head, now);
        if (!body || http_autodiscover_email(body, (size_t)req->content_length, email, sizeof email) < 0)
            return http_respond_error(out, 400, NULL, false, now);
        autodiscover_xml(conf, domain, email, &doc);
        type = "text/xml; charset=utf-8";
        break;
    }
    case HTTP_SITE_MTA_STS:
        if (!tls) {
            /* The policy is only valid over HTTPS (RFC 8461 §3.3). */
            struct http_out host = { 0 };
            http_out_printf(&host, "mta-sts.%s", domain);
            rc = host.oom ? -ENOMEM : http_respond_redirect(out, host.data, req->target, head, now);
            http_out_free(&host);
            return rc;
        }
        if (!path_is(req, "/.well-known/mta-sts.txt", false))
            return http_respond_error(out, 404, NULL, head, now);
        if (!get_or_head(req))
            return http_respond_error(out, 405, "GET, HEAD", head, now);
        mta_sts_policy(conf, domain, &doc);
        type = "text/plain";
        /* Senders cache the policy by max_age and must not use HTTP caching (§3.3). */
        cache = "no-store";
        break;
    default:
        return http_respond_error(out, 404, NULL, head, now);
    }
    rc = doc.oom ? -ENOMEM : http_respond(out, 200, type, cache, NULL, doc.data, doc.len, head, now);
    http_out_free(&doc);
    return rc;
}
