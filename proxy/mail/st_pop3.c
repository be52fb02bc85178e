/* POP3 before TLS (RFC 1939, RFC 2595 §4 for STLS): the CAPA response is the one place
 * capabilities are listed; STLS is added to it. */
#include <stdio.h>
#include <string.h>

#include "proxy/mail/st_internal.h"

static enum st_kind pop3_classify(struct st_session *s, const char *line, size_t len)
{
    const char *cmd;
    size_t clen;
    const char *args = st_first_word(line, len, &cmd, &clen);
    if (st_word_is(cmd, clen, "STLS"))
        return args == line + len ? ST_KIND_STARTTLS : ST_KIND_BAD_STARTTLS;
    if (st_word_is(cmd, clen, "CAPA"))
        return ST_KIND_CAPA;
    if (st_word_is(cmd, clen, "QUIT"))
        s->quit_asked = true;
    if (st_word_is(cmd, clen, "NOOP") || st_word_is(cmd, clen, "QUIT"))
        return ST_KIND_HARMLESS;
    if (st_word_is(cmd, clen, "USER") || st_word_is(cmd, clen, "PASS") ||
        st_word_is(cmd, clen, "APOP") || st_word_is(cmd, clen, "AUTH"))
        return ST_KIND_LOGIN;
    return ST_KIND_OTHER;
}

static int pop3_refuse(const struct st_session *s, enum st_kind kind, const char *line,
                       size_t len, const struct st_sink *out)
{
    (void)s;
    (void)line;
    (void)len;
    return st_say(out, kind == ST_KIND_BAD_STARTTLS ? "-ERR STLS takes no arguments\r\n"
                       : kind == ST_KIND_STARTTLS   ? "-ERR TLS is already active\r\n"
                       : kind == ST_KIND_LOGIN ? "-ERR [AUTH] TLS is required: use STLS first\r\n"
                                               : "-ERR TLS is required: use STLS first\r\n");
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
        if (!st_tls_active(s) && !s->response_has_starttls && st_say(sink, "STLS\r\n") < 0)
            return -1;
        return sink->to_client(sink->ctx, line, len);
    }
    *done = false;
    const char *word;
    size_t wlen;
    st_first_word(line, bare, &word, &wlen);
    if (st_word_is(word, wlen, "STLS")) {
        if (st_tls_active(s))
            return 0; /* TLS is up: not offered any more */
        s->response_has_starttls = true;
    }
    /* Required listener before TLS: no login offered (Dovecot's disable_plaintext_auth). */
    if (st_login_hidden(s) && (st_word_is(word, wlen, "USER") || st_word_is(word, wlen, "SASL")))
        return 0;
    return sink->to_client(sink->ctx, line, len);
}

static int pop3_starttls_reply(struct st_session *s, const char *line, size_t len)
{
    (void)line;
    (void)len;
    return st_set_reply(s, "", 0, "+OK Begin TLS negotiation\r\n");
}

const struct st_ops st_pop3_ops = {
    .classify = pop3_classify,
    .refuse = pop3_refuse,
    .backend_line = pop3_backend_line,
    .starttls_reply = pop3_starttls_reply,
    .line_too_long = "-ERR Command line too long\r\n",
    .too_many_commands = "-ERR Too many commands\r\n",
};
