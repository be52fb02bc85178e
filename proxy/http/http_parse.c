/* The request-head parser: a byte-at-a-time state machine (nginx's sw_* style) so that it
 * resumes anywhere. Lines may end in CRLF or a bare LF (RFC 9112 §2.2); a bare CR, a line folded
 * onto the previous one, whitespace before a field's colon, a control character in a value,
 * two Host fields, two different Content-Lengths or a Content-Length beside a Transfer-Encoding
 * is refused with 400, as RFC 9112 asks of a server that must not be confused about where a
 * request ends. */
#include "proxy/http/http_parse.h"

#include <string.h>

enum {
    S_START, S_METHOD, S_TARGET, S_VERSION, S_REQ_LF, S_FIELD_START, S_NAME, S_VALUE_OWS,
    S_VALUE, S_FIELD_LF, S_END_LF, S_DONE, S_ERROR,
};

enum { F_OTHER, F_HOST, F_LENGTH, F_TE };

static bool is_tchar(unsigned char ch)
{
    if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z'))
        return true;
    return ch && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static char lower(char ch)
{
    return ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch;
}

void http_parser_init(struct http_parser *p)
{
    memset(p, 0, sizeof *p);
    p->state = S_START;
}

/* *CONSUMED ends at the byte that was refused. */
static enum http_parse_result fail(struct http_parser *p, unsigned status, size_t *consumed,
                                   size_t at)
{
    *consumed = at;
    p->state = S_ERROR;
    p->status = status;
    return HTTP_PARSE_ERROR;
}

static bool tok_is(const struct http_parser *p, const char *s)
{
    return !p->tok_long && p->tok_len == strlen(s) && memcmp(p->tok, s, p->tok_len) == 0;
}

static bool tok_is_nocase(const struct http_parser *p, const char *s)
{
    if (p->tok_long || p->tok_len != strlen(s))
        return false;
    for (size_t i = 0; i < p->tok_len; i++)
        if (lower(p->tok[i]) != s[i])
            return false;
    return true;
}

static void tok_add(struct http_parser *p, char ch)
{
    if (p->tok_len < sizeof p->tok)
        p->tok[p->tok_len++] = ch;
    else
        p->tok_long = true;
}

static unsigned end_method(struct http_parser *p)
{
    if (p->tok_long)
        return 501;
    p->req.method = tok_is(p, "GET") ? HTTP_GET : tok_is(p, "HEAD") ? HTTP_HEAD
                  : tok_is(p, "POST") ? HTTP_POST : HTTP_OTHER;
    return 0;
}

static unsigned end_version(struct http_parser *p)
{
    if (tok_is(p, "HTTP/1.1"))
        p->req.version = 11;
    else if (tok_is(p, "HTTP/1.0"))
        p->req.version = 10;
    else if (p->tok_len == 8 && !p->tok_long && memcmp(p->tok, "HTTP/", 5) == 0 &&
             p->tok[5] >= '0' && p->tok[5] <= '9' && p->tok[6] == '.' &&
             p->tok[7] >= '0' && p->tok[7] <= '9')
        return 505;
    else
        return 400;
    return 0;
}

/* uri-host [ ":" port ] into OUT (lower-cased, port and one trailing dot dropped). Registered
 * names are limited to what DNS and IP addresses use; an IPv6 literal keeps its brackets. */
static bool parse_host(const char *v, size_t len, char *out, size_t cap)
{
    size_t end = len, i = 0;
    const char *colon = NULL;

    if (len && v[0] == '[') {
        const char *close = memchr(v, ']', len);
        if (!close)
            return false;
        end = (size_t)(close - v) + 1;
        for (i = 1; i < end - 1; i++)
            if (!((v[i] >= '0' && v[i] <= '9') || (lower(v[i]) >= 'a' && lower(v[i]) <= 'f') ||
                  v[i] == ':' || v[i] == '.'))
                return false;
        if (end < len) {
            if (v[end] != ':')
                return false;
            colon = v + end;
        }
    } else {
        colon = memchr(v, ':', len);
        end = colon ? (size_t)(colon - v) : len;
        for (i = 0; i < end; i++)
            if (!((v[i] >= '0' && v[i] <= '9') || (lower(v[i]) >= 'a' && lower(v[i]) <= 'z') ||
                  v[i] == '-' || v[i] == '.' || v[i] == '_' || v[i] == '~'))
                return false;
        if (end > 1 && v[end - 1] == '.')
            end--;
    }
    if (colon) {
        size_t digits = len - (size_t)(colon - v) - 1;
        if (digits > 5)
            return false;
        for (i = 1; i <= digits; i++)
            if (colon[i] < '0' || colon[i] > '9')
                return false;
    }
    if (end >= cap)
        return false;
    for (i = 0; i < end; i++)
        out[i] = lower(v[i]);
    out[end] = 0;
    return true;
}

static unsigned end_field(struct http_parser *p)
{
    while (p->val_len && (p->val[p->val_len - 1] == ' ' || p->val[p->val_len - 1] == '\t'))
        p->val_len--;
    switch (p->field) {
    case F_HOST:
        if (p->host_seen || !parse_host(p->val, p->val_len, p->req.host, sizeof p->req.host))
            return 400;
        p->host_seen = p->req.has_host = true;
        return 0;
    case F_LENGTH: {
        uint64_t n = 0;
        if (p->val_len == 0 || p->val_len > 15)
            return 400;
        for (size_t i = 0; i < p->val_len; i++) {
            if (p->val[i] < '0' || p->val[i] > '9')
                return 400;
            n = n * 10 + (uint64_t)(p->val[i] - '0');
        }
        if (p->req.has_length && p->req.content_length != n)
            return 400;
        p->req.has_length = true;
        p->req.content_length = n;
        return 0;
    }
    case F_TE:
        p->req.has_transfer_encoding = true;
        return 0;
    default:
        return 0;
    }
}

static bool starts_nocase(const char *s, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    if (len < n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (lower(s[i]) != prefix[i])
            return false;
    return true;
}

/* The request-target as an origin-form path: absolute-form ("http://host/path", which a client
 * must be allowed to send, RFC 9112 §3.2.2) gives its authority as the host, overriding Host. */
static unsigned end_head(struct http_parser *p)
{
    struct http_request *r = &p->req;
    size_t skip = starts_nocase(r->target, r->target_len, "http://") ? 7
                : starts_nocase(r->target, r->target_len, "https://") ? 8 : 0;

    if (skip) {
        size_t a = skip;
        while (a < r->target_len && r->target[a] != '/' && r->target[a] != '?')
            a++;
        if (memchr(r->target + skip, '@', a - skip) ||
            !parse_host(r->target + skip, a - skip, r->host, sizeof r->host))
            return 400;
        r->has_host = true;
        size_t rest = r->target_len - a;
        bool slash = rest && r->target[a] == '/';
        memmove(r->target + !slash, r->target + a, rest);
        r->target[0] = '/';
        r->target_len = rest + !slash;
        r->target[r->target_len] = 0;
    } else if (!(r->target_len && r->target[0] == '/') &&
               !(r->method == HTTP_OTHER && r->target_len == 1 && r->target[0] == '*')) {
        return 400;
    }
    if (r->version == 11 && !p->host_seen)
        return 400;
    if (r->has_length && r->has_transfer_encoding)
        return 400;
    return 0;
}

enum http_parse_result http_parse(struct http_parser *p, const char *data, size_t len,
                                  size_t *consumed)
{
    size_t i = 0;
    unsigned status = 0;

    *consumed = 0;
    if (p->state == S_DONE)
        return HTTP_PARSE_DONE;
    if (p->state == S_ERROR)
        return HTTP_PARSE_ERROR;
    for (; i < len; i++) {
        unsigned char ch = (unsigned char)data[i];
        if (++p->total > HTTP_HEAD_MAX)
            return fail(p, p->state == S_TARGET ? 414 : 431, consumed, i);
        switch (p->state) {
        case S_START:
            if (ch == '\r' || ch == '\n')
                break; /* empty lines before the request line are ignored */
            if (!is_tchar(ch))
                return fail(p, 400, consumed, i);
            p->state = S_METHOD;
            tok_add(p, (char)ch);
            break;
        case S_METHOD:
            if (ch == ' ') {
                if ((status = end_method(p)))
                    return fail(p, status, consumed, i);
                p->state = S_TARGET;
            } else if (is_tchar(ch)) {
                tok_add(p, (char)ch);
            } else {
                return fail(p, 400, consumed, i);
            }
            break;
        case S_TARGET:
            if (ch == ' ' && p->req.target_len) {
                p->req.target[p->req.target_len] = 0;
                p->tok_len = 0;
                p->tok_long = false;
                p->state = S_VERSION;
            } else if (ch > 0x20 && ch < 0x7f) {
                if (p->req.target_len == HTTP_TARGET_MAX)
                    return fail(p, 414, consumed, i);
                p->req.target[p->req.target_len++] = (char)ch;
            } else {
                return fail(p, 400, consumed, i);
            }
            break;
        case S_VERSION:
            if (ch == '\r' || ch == '\n') {
                if ((status = end_version(p)))
                    return fail(p, status, consumed, i);
                p->state = ch == '\r' ? S_REQ_LF : S_FIELD_START;
            } else if (ch > 0x20 && ch < 0x7f) {
                tok_add(p, (char)ch);
            } else {
                return fail(p, 400, consumed, i);
            }
            break;
        case S_REQ_LF:
        case S_FIELD_LF:
            if (ch != '\n')
                return fail(p, 400, consumed, i);
            if (p->state == S_FIELD_LF && (status = end_field(p)))
                return fail(p, status, consumed, i);
            p->state = S_FIELD_START;
            break;
        case S_FIELD_START:
            if (ch == '\r' || ch == '\n') {
                if (ch == '\r') {
                    p->state = S_END_LF;
                    break;
                }
                goto head_end;
            }
            if (!is_tchar(ch))
                return fail(p, 400, consumed, i); /* obs-fold, or a field with no name */
            p->tok_len = 0;
            p->tok_long = false;
            tok_add(p, (char)ch);
            p->state = S_NAME;
            break;
        case S_NAME:
            if (ch == ':') {
                p->field = tok_is_nocase(p, "host") ? F_HOST
                         : tok_is_nocase(p, "content-length") ? F_LENGTH
                         : tok_is_nocase(p, "transfer-encoding") ? F_TE : F_OTHER;
                p->val_len = 0;
                p->state = S_VALUE_OWS;
            } else if (is_tchar(ch)) {
                tok_add(p, (char)ch);
            } else {
                return fail(p, 400, consumed, i);
            }
            break;
        case S_VALUE_OWS:
            if (ch == ' ' || ch == '\t')
                break;
            p->state = S_VALUE;
            /* fall through */
        case S_VALUE:
            if (ch == '\r' || ch == '\n') {
                if (ch == '\r') {
                    p->state = S_FIELD_LF;
                    break;
                }
                if ((status = end_field(p)))
                    return fail(p, status, consumed, i);
                p->state = S_FIELD_START;
            } else if (ch == '\t' || ch >= 0x20) {
                if (ch == 0x7f)
                    return fail(p, 400, consumed, i);
                if (p->field == F_HOST || p->field == F_LENGTH) {
                    if (p->val_len == sizeof p->val)
                        return fail(p, 400, consumed, i);
                    p->val[p->val_len++] = (char)ch;
                }
            } else {
                return fail(p, 400, consumed, i);
            }
            break;
        case S_END_LF:
            if (ch != '\n')
                return fail(p, 400, consumed, i);
            goto head_end;
        }
        continue;
head_end:
        if ((status = end_head(p)))
            return fail(p, status, consumed, i);
        p->state = S_DONE;
        *consumed = i + 1;
        return HTTP_PARSE_DONE;
    }
    *consumed = len;
    return HTTP_PARSE_MORE;
}
