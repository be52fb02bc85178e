/* SMTP before TLS (RFC 5321, RFC 3207): the EHLO response lists the extensions; STARTTLS is
 * added to it. Pipelined commands are answered in order, one final reply line each. */
#include <stdio.h>
#include <string.h>

#include "proxy/mail/st_internal.h"

static enum st_kind smtp_classify(struct st_session *s, const char *line, size_t len)
{
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
    if (st_word_is(verb, vlen, "QUIT"))
        s->quit_asked = true;
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

static int smtp_refuse(const struct st_session *s, enum st_kind kind, const char *line,
                       size_t len, const struct st_sink *out)
{
    (void)s;
    (void)line;
    (void)len;
    return st_say(out, kind == ST_KIND_BAD_STARTTLS
                           ? "501 5.5.4 Syntax error (no parameters allowed)\r\n"
                       : kind == ST_KIND_STARTTLS ? "554 5.5.1 Error: TLS already active\r\n"
                           : "530 5.7.0 Must issue a STARTTLS command first\r\n");
}

/* Does this EHLO keyword line leave the response? Once TLS is up the backend's STARTTLS does;
 * before TLS on a required listener AUTH does (also the old "AUTH=" form), as Postfix's
 * smtpd_tls_auth_only would have it. Notes a STARTTLS the backend already offers. */
static bool ehlo_drops(struct st_session *s, const char *line, size_t bare)
{
    if (bare <= 4 || s->response_lines == 0)
        return false; /* the first line is the server's name, not a keyword */
    const char *word;
    size_t wlen;
    st_first_word(line + 4, bare - 4, &word, &wlen);
    if (st_word_is(word, wlen, "STARTTLS")) {
        if (st_tls_active(s))
            return true;
        s->response_has_starttls = true;
    }
    return st_login_hidden(s) && (st_word_is(word, wlen, "AUTH") || st_word_starts(word, wlen, "AUTH="));
}

/* The last line of an EHLO response: STARTTLS added before TLS when the backend did not offer
 * it, and when the backend's last line was dropped the held one ends the response instead. */
static int ehlo_final(struct st_session *s, const char *line, size_t len, size_t bare, bool drop,
                      const struct st_sink *sink)
{
    bool add = !st_tls_active(s) && !s->response_has_starttls;
    if (s->response_lines == 0) {
        if (!add)
            return sink->to_client(sink->ctx, line, len);
        /* "250 host" alone: it becomes "250-host" followed by our final line. */
        if (st_say(sink, "250-") < 0 ||
            (bare > 4 && sink->to_client(sink->ctx, line + 4, bare - 4) < 0) ||
            st_say(sink, "\r\n") < 0)
            return -1;
        return st_say(sink, "250 STARTTLS\r\n");
    }
    if (drop && !add && s->held_len)
        s->held[3] = ' ';
    if (st_flush(s, sink) < 0)
        return -1;
    if (drop)
        return add ? st_say(sink, "250 STARTTLS\r\n") : 0;
    if (add && st_say(sink, "250-STARTTLS\r\n") < 0)
        return -1;
    return sink->to_client(sink->ctx, line, len);
}

static int smtp_backend_line(struct st_session *s, enum st_kind kind, const char *line, size_t len,
                             const struct st_sink *sink, bool *done)
{
    size_t bare = st_strip_eol(line, len);
    bool final = bare < 4 || line[3] != '-';
    *done = final;
    bool ehlo_ok = kind == ST_KIND_CAPA && bare >= 3 && memcmp(line, "250", 3) == 0;
    if (!ehlo_ok) {
        /* Not an EHLO keyword line: whatever is held goes first, in order. */
        int r = st_flush(s, sink);
        if (final)
            st_hold_release(s);
        return r < 0 ? r : sink->to_client(sink->ctx, line, len);
    }
    bool drop = ehlo_drops(s, line, bare);
    if (final) {
        int r = ehlo_final(s, line, len, bare, drop, sink);
        st_hold_release(s);
        return r;
    }
    if (drop)
        return 0;
    /* Each kept line waits for the next, in case that one is the last and gets dropped. */
    if (st_flush(s, sink) < 0)
        return -1;
    return st_hold(s, line, len);
}

static int smtp_starttls_reply(struct st_session *s, const char *line, size_t len)
{
    (void)line;
    (void)len;
    return st_set_reply(s, "", 0, "220 2.0.0 Ready to start TLS\r\n");
}

const struct st_ops st_smtp_ops = {
    .classify = smtp_classify,
    .refuse = smtp_refuse,
    .backend_line = smtp_backend_line,
    .starttls_reply = smtp_starttls_reply,
    .line_too_long = "500 5.5.2 Line too long\r\n421 4.7.0 Closing connection\r\n",
    .too_many_commands = "421 4.7.0 Too many commands, closing connection\r\n",
};
