/* SMTP before TLS (RFC 5321, RFC 3207): the EHLO response lists the extensions; STARTTLS is
 * added to it. Pipelined commands are answered in order, one final reply line each. */
#include <stdio.h>
#include <string.h>

#include "proxy/st_internal.h"

static enum st_kind smtp_classify(struct st_session *s, const char *line, size_t len)
{
    (void)s;
    const char *verb;
    size_t vlen;
    const char *args = st_first_word(line, len, &verb, &vlen);
    if (st_word_is(verb, vlen, "STARTTLS")) {
        while (args < line + len && *args == ' ')
            args++;
        return args == line + len ? ST_KIND_STARTTLS : ST_KIND_BAD_STARTTLS;
    }
    if (st_word_is(verb, vlen, "EHLO"))
        return ST_KIND_CAPA;
    if (st_word_is(verb, vlen, "HELO") || st_word_is(verb, vlen, "NOOP") ||
        st_word_is(verb, vlen, "RSET") || st_word_is(verb, vlen, "HELP") ||
        st_word_is(verb, vlen, "QUIT"))
        return ST_KIND_HARMLESS;
    static const char *const mail[] = { "AUTH", "MAIL", "RCPT", "DATA", "BDAT", "VRFY", "EXPN", "ETRN" };
    for (size_t i = 0; i < sizeof mail / sizeof *mail; i++)
        if (st_word_is(verb, vlen, mail[i]))
            return ST_KIND_LOGIN;
    return ST_KIND_OTHER;
}

static size_t smtp_refuse(const struct st_session *s, enum st_kind kind, const char *line,
                          size_t len, char *out, size_t cap)
{
    (void)s;
    (void)line;
    (void)len;
    const char *text = kind == ST_KIND_BAD_STARTTLS
                           ? "501 5.5.4 Syntax error (no parameters allowed)\r\n"
                       : kind == ST_KIND_STARTTLS ? "554 5.5.1 Error: TLS already active\r\n"
                           : "530 5.7.0 Must issue a STARTTLS command first\r\n";
    size_t n = strlen(text);
    if (n > cap)
        n = cap;
    memcpy(out, text, n);
    return n;
}

/* An EHLO line after TLS: STARTTLS dropped. Each non-final line is held until the next one
 * arrives, so that when the dropped one was the last, the held line becomes "250 …". */
static int smtp_after_tls_line(struct st_session *s, const char *line, size_t len, size_t bare,
                               bool final, const struct st_sink *sink)
{
    bool starttls = false;
    if (bare > 4 && s->response_lines > 0) {
        const char *word;
        size_t wlen;
        st_first_word(line + 4, bare - 4, &word, &wlen);
        starttls = st_word_is(word, wlen, "STARTTLS");
    }
    if (starttls && !final)
        return 0;
    if (starttls && s->held_len) {
        s->held[3] = ' ';
        return st_flush(s, sink);
    }
    if (st_flush(s, sink) < 0)
        return -1;
    if (!final && len <= sizeof s->held) {
        memcpy(s->held, line, len);
        s->held_len = (unsigned)len;
        return 0;
    }
    return sink->to_client(sink->ctx, line, len);
}

static int smtp_backend_line(struct st_session *s, enum st_kind kind, const char *line, size_t len,
                             const struct st_sink *sink, bool *done)
{
    size_t bare = st_strip_eol(line, len);
    bool final = bare < 4 || line[3] != '-';
    *done = final;
    bool ehlo_ok = kind == ST_KIND_CAPA && bare >= 3 && memcmp(line, "250", 3) == 0;
    if (!ehlo_ok)
        return sink->to_client(sink->ctx, line, len);
    if (s->after_tls)
        return smtp_after_tls_line(s, line, len, bare, final, sink);
    const char *word;
    size_t wlen;
    if (bare > 4 && s->response_lines > 0) {
        st_first_word(line + 4, bare - 4, &word, &wlen);
        if (st_word_is(word, wlen, "STARTTLS"))
            s->response_has_starttls = true;
    }
    if (!final || s->response_has_starttls)
        return sink->to_client(sink->ctx, line, len);
    if (s->response_lines == 0) {
        /* "250 host" alone: it becomes "250-host" followed by our final line. */
        if (sink->to_client(sink->ctx, "250-", 4) < 0 ||
            sink->to_client(sink->ctx, line + 4, len > 4 ? len - 4 : 0) < 0)
            return -1;
        if (bare <= 4 && sink->to_client(sink->ctx, "\r\n", 2) < 0)
            return -1;
        return sink->to_client(sink->ctx, "250 STARTTLS\r\n", 14);
    }
    if (sink->to_client(sink->ctx, "250-STARTTLS\r\n", 14) < 0)
        return -1;
    return sink->to_client(sink->ctx, line, len);
}

static void smtp_starttls_reply(struct st_session *s)
{
    snprintf(s->reply, sizeof s->reply, "220 2.0.0 Ready to start TLS\r\n");
}

const struct st_ops st_smtp_ops = {
    .classify = smtp_classify,
    .refuse = smtp_refuse,
    .backend_line = smtp_backend_line,
    .starttls_reply = smtp_starttls_reply,
    .line_too_long = "500 5.5.2 Line too long\r\n421 4.7.0 Closing connection\r\n",
    .too_many_commands = "421 4.7.0 Too many commands, closing connection\r\n",
};
