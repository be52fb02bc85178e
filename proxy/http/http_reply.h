/* http_reply: HTTP/1.1 responses as bytes — status line and headers, the plain HTTP listener's
 * redirect, short error answers — and the growable text they are written into, with the XML
 * escaping and %d templates that client setup fills it with. Pure: no I/O, the time is passed in.
 *
 * Every response says Connection: close: mailsnid answers one request per connection and
 * leaves keep-alive to the backend. */
#ifndef MAILSNID_HTTP_REPLY_H
#define MAILSNID_HTTP_REPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

/* Text being built. Ownership: the caller's; http_out_free() releases it. After an allocation
 * fails, appends do nothing and oom stays set. */
struct http_out {
    char *data;
    size_t len, cap;
    bool oom;
};

void http_out_add(struct http_out *o, const char *s, size_t n);
void http_out_str(struct http_out *o, const char *s);
void http_out_printf(struct http_out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends S with & < > " ' as XML entities, so any value is safe in text and attributes. */
void http_out_xml(struct http_out *o, const char *s);
/* Appends TEMPLATE with "%d" replaced by DOMAIN and "%%" by "%", XML-escaped when XML. */
void http_out_template(struct http_out *o, const char *template, const char *domain, bool xml);
void http_out_free(struct http_out *o);

/* A whole response into OUT: status line, Date (from NOW), Content-Type and Cache-Control when
 * given, Content-Length, HEADERS (each ending in CRLF; may be NULL), Connection: close, then
 * BODY unless the request was HEAD. Each of these returns STATUS (the one it wrote), or -ENOMEM. */
int http_respond(struct http_out *out, unsigned status, const char *type, const char *cache,
                 const char *headers, const char *body, size_t body_len, bool head, time_t now);
/* A short text/plain answer for an error status (400, 404, 405 with ALLOW, 414, ...). */
int http_respond_error(struct http_out *out, unsigned status, const char *allow, bool head,
                       time_t now);
/* 301 to https://HOST + TARGET (the host without its port: https has its own). */
int http_respond_redirect(struct http_out *out, const char *host, const char *target, bool head,
                          time_t now);

#endif
