/* POP3 before TLS (RFC 1939, RFC 2595 §4 for STLS): the CAPA response is the one place
 * capabilities are listed; STLS is added to it. */
#include <stdio.h>
#include <string.h>

#include "proxy/st_internal.h"

static enum st_kind pop3_classify(struct st_session *s, const char *line, size_t len)
{
    (void)s;
    const char *cmd;
    size_t clen;
    const char *args = st_first_word(line, len, &cmd, &clen);
    if (st_word_is(cmd, clen, "STLS"))
        return args == line + len ? ST_KIND_STARTTLS : ST_KIND_BAD_STARTTLS;
    if (st_word_is(cmd, clen, "CAPA"))
        return ST_KIND_CAPA;
    if (st_word_is(cmd, clen, "NOOP") || st_word_is(cmd, clen, "QUIT"))
        return ST_KIND_HARMLESS;
    if (st_word_is(cmd, clen, "USER") || st_word_is(cmd, clen, "PASS") ||
        st_word_is(cmd, clen, "APOP") || st_word_is(cmd, clen, "AUTH"))
        return ST_KIND_LOGIN;
    return ST_KIND_OTHER;
}

static size_t pop3_refuse(const struct st_session *s, enum st_kind kind, const char *line,
                          size_t len, char *out, size_t cap)
{
    (void)s;
    (void)line;
    (void)len;
    const char *text = kind == ST_KIND_BAD_STARTTLS ? "-ERR STLS takes no arguments\r\n"
                       : kind == ST_KIND_STARTTLS   ? "-ERR TLS is already active\r\n"
                       : kind == ST_KIND_LOGIN ? "-ERR [AUTH] TLS is required: use STLS first\r\n"
                                               : "-ERR TLS is required: use STLS first\r\n";
    size_t n = strlen(text);
    if (n > cap)
        n = cap;
    memcpy(out, text, n);
    return n;
}

static int pop3_backend_line(struct st_session *s, enum st_kind kind, const char *line, size_t len,
                             const struct st_sink *sink, bool *done)
{
    size_t bare = st_strip_eol(line, len);
    if (kind != ST_KIND_CAPA || s->response_lines == 0) {
        /* A single-line status, or the status line that opens a CAPA list. */
        *done = kind != ST_KIND_CAPA || !(bare >= 3 && memcmp(line, "+OK", 3) == 0);
        return sink->to_client(sink->ctx, line, len);
    }
    if (bare == 1 && line[0] == '.') {
        *done = true;
        if (!s->after_tls && !s->response_has_starttls &&
            sink->to_client(sink->ctx, "STLS\r\n", 6) < 0)
            return -1;
        return sink->to_client(sink->ctx, line, len);
    }
    *done = false;
    const char *word;
    size_t wlen;
    st_first_word(line, bare, &word, &wlen);
    if (st_word_is(word, wlen, "STLS")) {
        if (s->after_tls)
            return 0; /* TLS is up: not offered any more */
        s->response_has_starttls = true;
    }
    return sink->to_client(sink->ctx, line, len);
}

static void pop3_starttls_reply(struct st_session *s)
{
    snprintf(s->reply, sizeof s->reply, "+OK Begin TLS negotiation\r\n");
}

const struct st_ops st_pop3_ops = {
    .classify = pop3_classify,
    .refuse = pop3_refuse,
    .backend_line = pop3_backend_line,
    .starttls_reply = pop3_starttls_reply,
    .line_too_long = "-ERR Command line too long\r\n",
    .too_many_commands = "-ERR Too many commands\r\n",
};
