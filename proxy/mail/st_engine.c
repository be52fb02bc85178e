/* The STARTTLS engine: line splitting, the queue of commands awaiting their responses, and the
 * decisions common to every protocol. What a line means is up to the protocol files. */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/mail/st_internal.h"

static const struct st_ops *ops_for(enum conf_proto proto)
{
    switch (proto) {
    case CONF_PROTO_IMAP: return &st_imap_ops;
    case CONF_PROTO_POP3: return &st_pop3_ops;
    case CONF_PROTO_SMTP: return &st_smtp_ops;
    default: return NULL;
    }
}

struct st_session *st_new(enum conf_proto proto, enum st_mode mode)
{
    const struct st_ops *ops = ops_for(proto);
    if (!ops)
        return NULL;
    struct st_session *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->proto = proto;
    s->ops = ops;
    s->mode = mode;
    if (mode != ST_AFTER_STARTTLS) {
        /* The backend speaks first; after STARTTLS its greeting was swallowed and the client
         * speaks first. */
        s->pending[0] = ST_KIND_GREETING;
        s->n_pending = 1;
    }
    return s;
}

int st_flush(struct st_session *s, const struct st_sink *sink)
{
    int r = s->held_len ? sink->to_client(sink->ctx, s->held, s->held_len) : 0;
    s->held_len = 0;
    return r;
}

void st_free(struct st_session *s)
{
    if (!s)
        return;
    free(s->replies);
    free(s->reply);
    free(s->held);
    free(s);
}

int st_hold(struct st_session *s, const char *line, size_t len)
{
    if (len > s->held_cap) {
        char *p = realloc(s->held, len);
        if (!p)
            return -ENOMEM;
        s->held = p;
        s->held_cap = len;
    }
    memcpy(s->held, line, len);
    s->held_len = len;
    return 0;
}

void st_hold_release(struct st_session *s)
{
    free(s->held);
    s->held = NULL;
    s->held_len = s->held_cap = 0;
}

int st_set_reply(struct st_session *s, const char *prefix, size_t plen, const char *text)
{
    size_t tlen = strlen(text);
    char *p = realloc(s->reply, plen + tlen + 1);
    if (!p)
        return -ENOMEM;
    memcpy(p, prefix, plen);
    memcpy(p + plen, text, tlen + 1);
    s->reply = p;
    return 0;
}

int st_say(const struct st_sink *sink, const char *text)
{
    return sink->to_client(sink->ctx, text, strlen(text));
}

bool st_starttls_ready(const struct st_session *s)
{
    return s->starttls_asked && s->n_pending == 0;
}

bool st_starttls_asked(const struct st_session *s)
{
    return s->starttls_asked;
}

const char *st_starttls_reply(const struct st_session *s)
{
    return s->reply;
}

bool st_awaiting_response(const struct st_session *s)
{
    return s->n_pending > 0;
}

bool st_refusals_queued(const struct st_session *s)
{
    return s->replies_off < s->replies_len;
}

bool st_is_blind(const struct st_session *s)
{
    return s->blind;
}

bool st_client_quit(const struct st_session *s)
{
    return s->quit_asked;
}

bool st_word_starts(const char *word, size_t len, const char *upper)
{
    size_t n = strlen(upper);
    return len >= n && st_word_is(word, n, upper);
}

bool st_word_is(const char *word, size_t len, const char *upper)
{
    size_t n = strlen(upper);
    if (len != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (toupper((unsigned char)word[i]) != upper[i])
            return false;
    return true;
}

const char *st_first_word(const char *line, size_t len, const char **word, size_t *wlen)
{
    size_t i = 0;
    while (i < len && line[i] != ' ')
        i++;
    *word = line;
    *wlen = i;
    return i < len ? line + i + 1 : line + len;
}

size_t st_strip_eol(const char *line, size_t len)
{
    if (len && line[len - 1] == '\n')
        len--;
    if (len && line[len - 1] == '\r')
        len--;
    return len;
}

bool st_has_token(const char *list, size_t len, const char *token)
{
    size_t i = 0;
    while (i < len) {
        while (i < len && list[i] == ' ')
            i++;
        size_t start = i;
        while (i < len && list[i] != ' ')
            i++;
        if (i > start && st_word_is(list + start, i - start, token))
            return true;
    }
    return false;
}

/* Finds the end of the first line in DATA: returns its length including the LF, 0 when there
 * is no LF yet. */
static size_t line_length(const char *data, size_t len)
{
    const char *lf = memchr(data, '\n', len);
    return lf ? (size_t)(lf - data) + 1 : 0;
}

/* The refusal sink: appends to the session's queue of refusal texts. */
static int queue_text(void *ctx, const char *data, size_t len)
{
    struct st_session *s = ctx;
    if (s->replies_len + len > s->replies_cap) {
        size_t cap = s->replies_cap ? s->replies_cap : 256;
        while (cap < s->replies_len + len)
            cap *= 2;
        char *p = realloc(s->replies, cap);
        if (!p)
            return -ENOMEM;
        s->replies = p;
        s->replies_cap = cap;
    }
    memcpy(s->replies + s->replies_len, data, len);
    s->replies_len += len;
    return 0;
}

static void push(struct st_session *s, enum st_kind kind)
{
    s->pending[(s->head + s->n_pending++) % ST_PIPELINE_MAX] = (uint8_t)kind;
}

static void pop(struct st_session *s)
{
    s->head = (s->head + 1) % ST_PIPELINE_MAX;
    s->n_pending--;
}

/* Queues the refusal of LINE behind the commands still waiting for their responses. */
static int queue_refusal(struct st_session *s, enum st_kind kind, const char *line, size_t len)
{
    size_t before = s->replies_len;
    struct st_sink queue = { s, queue_text, NULL };
    if (s->ops->refuse(s, kind, line, len, &queue) < 0)
        return -ENOMEM;
    s->reply_len[(s->head + s->n_pending) % ST_PIPELINE_MAX] = (uint32_t)(s->replies_len - before);
    push(s, ST_KIND_REFUSED);
    return 0;
}

/* Sends the refusals that have come to the head of the queue: every response before them has
 * been relayed. */
static int send_refusals(struct st_session *s, const struct st_sink *sink)
{
    while (s->n_pending && s->pending[s->head] == ST_KIND_REFUSED) {
        uint32_t n = s->reply_len[s->head];
        if (sink->to_client(sink->ctx, s->replies + s->replies_off, n) < 0)
            return -1;
        s->replies_off += n;
        pop(s);
    }
    if (s->replies_off == s->replies_len && s->replies) {
        free(s->replies);
        s->replies = NULL;
        s->replies_len = s->replies_off = s->replies_cap = 0;
    }
    return 0;
}

enum st_event st_client_input(struct st_session *s, const char *data, size_t len,
                              size_t *consumed, const struct st_sink *sink)
{
    size_t used = 0;
    enum st_event ev = ST_MORE;
    if (s->blind) {
        /* Still relaying responses the client asked for before it went blind. */
        *consumed = len;
        return len && sink->to_backend(sink->ctx, data, len) < 0 ? ST_CLOSE : ST_MORE;
    }
    while (used < len && !s->starttls_asked) {
        size_t n = line_length(data + used, len - used);
        if (n == 0 || n > ST_LINE_MAX) {
            if (n > ST_LINE_MAX || len - used >= ST_LINE_MAX) {
                st_say(sink, s->ops->line_too_long);
                ev = ST_CLOSE;
            }
            break;
        }
        const char *line = data + used;
        size_t bare = st_strip_eol(line, n);
        /* The cap is for plaintext sessions; after TLS the backend polices its own. */
        if (!st_tls_active(s) && ++s->commands > ST_PRETLS_COMMANDS_MAX) {
            st_say(sink, s->ops->too_many_commands);
            ev = ST_CLOSE;
            break;
        }
        enum st_kind kind = s->ops->classify(s, line, bare);
        if (kind == ST_KIND_STARTTLS && !st_tls_active(s)) {
            if (s->ops->starttls_reply(s, line, bare) < 0)
                return ST_CLOSE;
            used += n;
            s->starttls_asked = true;
            ev = ST_STARTTLS;
            break;
        }
        bool refuse = kind == ST_KIND_BAD_STARTTLS || kind == ST_KIND_STARTTLS ||
                      (s->mode == ST_REQUIRED && (kind == ST_KIND_LOGIN || kind == ST_KIND_OTHER));
        bool blind = !refuse && (kind == ST_KIND_LOGIN || kind == ST_KIND_OTHER);
        if (!blind && s->n_pending == ST_PIPELINE_MAX) {
            st_say(sink, s->ops->too_many_commands);
            ev = ST_CLOSE;
            break;
        }
        used += n;
        if (refuse) {
            if (queue_refusal(s, kind, line, bare) < 0 || send_refusals(s, sink) < 0)
                return ST_CLOSE;
            continue;
        }
        if (sink->to_backend(sink->ctx, line, n) < 0)
            return ST_CLOSE;
        if (blind) {
            /* Optional STARTTLS and a client that carries on in plaintext (an MTA on port 25,
             * or a login without TLS): from here on its bytes go through unread. */
            s->blind = true;
            if (used < len && sink->to_backend(sink->ctx, data + used, len - used) < 0)
                return ST_CLOSE;
            used = len;
            ev = ST_BLIND;
            break;
        }
        push(s, kind);
    }
    *consumed = used;
    return ev;
}

enum st_event st_backend_input(struct st_session *s, const char *data, size_t len,
                               size_t *consumed, const struct st_sink *sink)
{
    size_t used = 0;
    while (used < len) {
        size_t n = line_length(data + used, len - used);
        if (n == 0 || n > ST_BACKEND_LINE_MAX) {
            if (n > ST_BACKEND_LINE_MAX || len - used >= ST_BACKEND_LINE_MAX) {
                *consumed = used;
                return ST_CLOSE;
            }
            break;
        }
        if (s->n_pending == 0) {
            /* Unsolicited (an untagged EXISTS, a timeout BYE) or the answer to the command
             * that made the client blind: relay unchanged. */
            if (sink->to_client(sink->ctx, data + used, n) < 0)
                return ST_CLOSE;
            used += n;
            continue;
        }
        enum st_kind kind = (enum st_kind)s->pending[s->head];
        bool done = false;
        if (s->ops->backend_line(s, kind, data + used, n, sink, &done) < 0)
            return ST_CLOSE;
        used += n;
        s->response_lines++;
        if (done) {
            pop(s);
            s->in_response = false;
            s->response_lines = 0;
            s->response_has_starttls = false;
            if (send_refusals(s, sink) < 0)
                return ST_CLOSE;
        } else {
            s->in_response = true;
        }
    }
    *consumed = used;
    return ST_MORE;
}

long st_greeting_length(enum conf_proto proto, const char *data, size_t len)
{
    size_t used = 0;
    for (;;) {
        size_t n = line_length(data + used, len - used);
        if (n == 0)
            return len - used >= ST_BACKEND_LINE_MAX ? -1 : 0;
        const char *line = data + used;
        used += n;
        switch (proto) {
        case CONF_PROTO_IMAP:
            return n >= 4 && memcmp(line, "* OK", 4) == 0 ? (long)used : -1;
        case CONF_PROTO_POP3:
            return n >= 3 && memcmp(line, "+OK", 3) == 0 ? (long)used : -1;
        case CONF_PROTO_SMTP:
            if (n < 4 || memcmp(line, "220", 3) != 0)
                return -1;
            if (line[3] == '-')
                continue;
            return (long)used;
        default:
            return -1;
        }
    }
}

const char *st_unavailable_reply(enum conf_proto proto)
{
    switch (proto) {
    case CONF_PROTO_IMAP: return "* BYE [UNAVAILABLE] Service temporarily unavailable, try again later\r\n";
    case CONF_PROTO_POP3: return "-ERR [SYS/TEMP] Service temporarily unavailable, try again later\r\n";
    case CONF_PROTO_SMTP: return "421 4.3.0 Service temporarily unavailable, try again later\r\n";
    default:
        return "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
               "Connection: close\r\n\r\nBad Gateway\n";
    }
}

const char *st_busy_reply(enum conf_proto proto)
{
    switch (proto) {
    case CONF_PROTO_IMAP: return "* BYE [UNAVAILABLE] Too many connections, try again later\r\n";
    case CONF_PROTO_POP3: return "-ERR [SYS/TEMP] Too many connections, try again later\r\n";
    case CONF_PROTO_SMTP: return "421 4.7.0 Too many connections, try again later\r\n";
    default:
        return "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 10\r\nContent-Type: text/plain\r\n"
               "Content-Length: 20\r\nConnection: close\r\n\r\nToo many connections";
    }
}
