/* IMAP before TLS (RFC 9051 / 3501 §6.2.1): tagged commands, capabilities in the greeting's
 * [CAPABILITY …] code, in untagged CAPABILITY responses and in tagged OK codes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/mail/st_internal.h"

static bool has_literal(const char *line, size_t len)
{
    /* "{5}" or "{5+}" at the end announces literal bytes after the line: those are data,
     * not commands, so such a command is never treated as harmless. */
    return len >= 3 && line[len - 1] == '}' && memchr(line, '{', len);
}

static enum st_kind imap_classify(struct st_session *s, const char *line, size_t len)
{
    const char *tag, *cmd;
    size_t tlen, clen;
    const char *rest = st_first_word(line, len, &tag, &tlen);
    /* A tag may be as long as the line allows (RFC 9051 sets no limit of its own). */
    if (tlen == 0 || rest == line + len || tag[0] == '*' || tag[0] == '+')
        return ST_KIND_OTHER;
    const char *args = st_first_word(rest, (size_t)(line + len - rest), &cmd, &clen);
    bool login = st_word_is(cmd, clen, "LOGIN") || st_word_is(cmd, clen, "AUTHENTICATE");
    if (has_literal(line, len))
        return login ? ST_KIND_LOGIN : ST_KIND_OTHER;
    if (st_word_is(cmd, clen, "STARTTLS"))
        return args != line + len ? ST_KIND_BAD_STARTTLS : ST_KIND_STARTTLS;
    if (st_word_is(cmd, clen, "CAPABILITY"))
        return ST_KIND_CAPA;
    if (st_word_is(cmd, clen, "LOGOUT"))
        s->quit_asked = true;
    if (st_word_is(cmd, clen, "NOOP") || st_word_is(cmd, clen, "LOGOUT") || st_word_is(cmd, clen, "ID"))
        return ST_KIND_HARMLESS;
    return login ? ST_KIND_LOGIN : ST_KIND_OTHER;
}

static int imap_refuse(const struct st_session *s, enum st_kind kind, const char *line,
                       size_t len, const struct st_sink *out)
{
    (void)s;
    const char *tag;
    size_t tlen;
    st_first_word(line, len, &tag, &tlen);
    if (tlen == 0) {
        tag = "*";
        tlen = 1;
    }
    const char *text = kind == ST_KIND_BAD_STARTTLS ? " BAD STARTTLS takes no arguments\r\n"
                       : kind == ST_KIND_STARTTLS   ? " BAD TLS is already active\r\n"
                                                   : " NO [PRIVACYREQUIRED] TLS is required: use STARTTLS first\r\n";
    if (out->to_client(out->ctx, tag, tlen) < 0)
        return -1;
    return st_say(out, text);
}

/* Relays LINE with the capability list [START, END) edited for the session: before TLS
 * STARTTLS is added, and on a required listener the AUTH= mechanisms are dropped and
 * LOGINDISABLED added (what Dovecot's disable_plaintext_auth shows); once TLS is up the
 * backend's own STARTTLS is dropped. The line is rebuilt whole and sent in one piece (once TLS
 * is up, each piece would be a record of its own). */
static int edit_capabilities(const struct st_session *s, const char *line, size_t len,
                             size_t start, size_t end, const struct st_sink *sink)
{
    char *out = malloc(len + sizeof " STARTTLS LOGINDISABLED");
    if (!out)
        return -1;
    memcpy(out, line, start);
    size_t n = start;
    bool space = !(start && line[start - 1] == ' '); /* "* CAPABILITY" vs "[CAPABILITY " */
    bool has_starttls = false, has_logindisabled = false;
    size_t i = start;
    while (i < end) {
        while (i < end && line[i] == ' ')
            i++;
        size_t t = i;
        while (i < end && line[i] != ' ')
            i++;
        const char *tok = line + t;
        size_t tl = i - t;
        if (tl == 0)
            continue;
        if (st_word_is(tok, tl, "STARTTLS")) {
            if (st_tls_active(s))
                continue;
            has_starttls = true;
        }
        if (st_login_hidden(s) && st_word_starts(tok, tl, "AUTH="))
            continue;
        if (st_word_is(tok, tl, "LOGINDISABLED"))
            has_logindisabled = true;
        if (space)
            out[n++] = ' ';
        memcpy(out + n, tok, tl);
        n += tl;
        space = true;
    }
    if (!st_tls_active(s) && !has_starttls) {
        n += (size_t)sprintf(out + n, space ? " STARTTLS" : "STARTTLS");
        space = true;
    }
    if (st_login_hidden(s) && !has_logindisabled)
        n += (size_t)sprintf(out + n, space ? " LOGINDISABLED" : "LOGINDISABLED");
    memcpy(out + n, line + end, len - end);
    n += len - end;
    int r = sink->to_client(sink->ctx, out, n);
    free(out);
    return r;
}

/* Finds "[CAPABILITY …]" in a status response; returns false when there is none. */
static bool find_capability_code(const char *line, size_t len, size_t *start, size_t *end)
{
    static const char key[] = "[CAPABILITY ";
    size_t klen = sizeof key - 1;
    for (size_t i = 0; i + klen <= len; i++) {
        if (line[i] == '[' && st_word_is(line + i, klen - 1, "[CAPABILITY") && line[i + klen - 1] == ' ') {
            const char *close = memchr(line + i, ']', len - i);
            if (!close)
                return false;
            *start = i + klen;
            *end = (size_t)(close - line);
            return true;
        }
    }
    return false;
}

static int imap_backend_line(struct st_session *s, enum st_kind kind, const char *line, size_t len,
                             const struct st_sink *sink, bool *done)
{
    size_t bare = st_strip_eol(line, len);
    size_t start, end;
    bool untagged = bare >= 2 && line[0] == '*' && line[1] == ' ';
    bool continuation = bare >= 1 && line[0] == '+';
    *done = kind == ST_KIND_GREETING || (!untagged && !continuation);
    if (untagged && bare >= 12 && st_word_is(line + 2, 10, "CAPABILITY") &&
        (bare == 12 || line[12] == ' '))
        return edit_capabilities(s, line, len, 12, bare, sink);
    if (find_capability_code(line, bare, &start, &end))
        return edit_capabilities(s, line, len, start, end, sink);
    return sink->to_client(sink->ctx, line, len);
}

static int imap_starttls_reply(struct st_session *s, const char *line, size_t len)
{
    const char *tag;
    size_t tlen;
    st_first_word(line, len, &tag, &tlen);
    return st_set_reply(s, tag, tlen, " OK Begin TLS negotiation now\r\n");
}

const struct st_ops st_imap_ops = {
    .classify = imap_classify,
    .refuse = imap_refuse,
    .backend_line = imap_backend_line,
    .starttls_reply = imap_starttls_reply,
    .line_too_long = "* BYE Command line too long\r\n",
    .too_many_commands = "* BYE Too many commands\r\n",
};
