/* HTTP responses as bytes, built into a growable text. */
#include "proxy/http/http_reply.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool reserve(struct http_out *o, size_t n)
{
    if (o->oom)
        return false;
    if (o->len + n + 1 <= o->cap)
        return true;
    size_t cap = o->cap ? o->cap : 1024;
    while (cap < o->len + n + 1)
        cap *= 2;
    char *p = realloc(o->data, cap);
    if (!p) {
        o->oom = true;
        return false;
    }
    o->data = p;
    o->cap = cap;
    return true;
}

void http_out_add(struct http_out *o, const char *s, size_t n)
{
    if (!reserve(o, n))
        return;
    memcpy(o->data + o->len, s, n);
    o->len += n;
    o->data[o->len] = 0;
}

void http_out_str(struct http_out *o, const char *s)
{
    http_out_add(o, s, strlen(s));
}

void http_out_printf(struct http_out *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !reserve(o, (size_t)n)) {
        o->oom = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(o->data + o->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    o->len += (size_t)n;
}

/* Appends N bytes of S, XML-escaped when XML. */
static void add_text(struct http_out *o, const char *s, size_t n, bool xml)
{
    const char *run = s, *end = s + n;
    for (; xml && s < end; s++) {
        const char *ent = *s == '&' ? "&amp;" : *s == '<' ? "&lt;" : *s == '>' ? "&gt;"
                        : *s == '"' ? "&quot;" : *s == '\'' ? "&apos;" : NULL;
        if (!ent)
            continue;
        http_out_add(o, run, (size_t)(s - run));
        http_out_str(o, ent);
        run = s + 1;
    }
    http_out_add(o, run, (size_t)(end - run));
}

void http_out_xml(struct http_out *o, const char *s)
{
    add_text(o, s, strlen(s), true);
}

void http_out_template(struct http_out *o, const char *template, const char *domain, bool xml)
{
    const char *run = template, *p = template;
    for (; *p; p++) {
        if (*p != '%' || (p[1] != 'd' && p[1] != '%'))
            continue;
        add_text(o, run, (size_t)(p - run), xml);
        if (p[1] == 'd')
            add_text(o, domain, strlen(domain), xml);
        else
            http_out_add(o, "%", 1);
        run = ++p + 1;
    }
    add_text(o, run, (size_t)(p - run), xml);
}

void http_out_free(struct http_out *o)
{
    free(o->data);
    *o = (struct http_out){ 0 };
}

static const char *reason(unsigned status)
{
    switch (status) {
    case 200: return "OK";
    case 301: return "Moved Permanently";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

int http_respond(struct http_out *out, unsigned status, const char *type, const char *cache,
                 const char *headers, const char *body, size_t body_len, bool head, time_t now)
{
    char date[64];
    struct tm tm;
    /* RFC 9110 §5.6.7 IMF-fixdate; the process never sets a locale, so names are English. */
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", gmtime_r(&now, &tm));
    http_out_printf(out, "HTTP/1.1 %u %s\r\nDate: %s\r\nServer: mailsnid\r\n", status,
                    reason(status), date);
    if (type)
        http_out_printf(out, "Content-Type: %s\r\n", type);
    if (cache)
        http_out_printf(out, "Cache-Control: %s\r\n", cache);
    http_out_printf(out, "Content-Length: %zu\r\n%sConnection: close\r\n\r\n", body_len,
                    headers ? headers : "");
    if (!head && body_len)
        http_out_add(out, body, body_len);
    return out->oom ? -ENOMEM : (int)status;
}

int http_respond_error(struct http_out *out, unsigned status, const char *allow, bool head,
                       time_t now)
{
    char body[80], extra[64] = "";
    int n = snprintf(body, sizeof body, "%u %s\r\n", status, reason(status));
    if (allow)
        snprintf(extra, sizeof extra, "Allow: %s\r\n", allow);
    return http_respond(out, status, "text/plain; charset=utf-8", "no-store", extra, body,
                        (size_t)n, head, now);
}

int http_respond_redirect(struct http_out *out, const char *host, const char *target, bool head,
                          time_t now)
{
    struct http_out loc = { 0 };
    http_out_printf(&loc, "Location: https://%s%s\r\n", host, target);
    int rc = -ENOMEM;
    if (!loc.oom) {
        /* The body is for the rare client that does not follow; the target is printable
         * ASCII without spaces (http_parse.c), so it is safe in a header as it is. */
        static const char body[] = "Moved to https.\r\n";
        rc = http_respond(out, 301, "text/plain; charset=utf-8", NULL, loc.data, body,
                          sizeof body - 1, head, now);
    }
    http_out_free(&loc);
    return rc;
}
