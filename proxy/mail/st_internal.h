/* Shared between the STARTTLS engine (st_engine.c) and its protocol files (st_imap.c,
 * st_pop3.c, st_smtp.c). Nothing else includes this. */
#ifndef MAILSNID_ST_INTERNAL_H
#define MAILSNID_ST_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy/mail/starttls.h"

/* What a client command is, as far as the plaintext phase cares. */
enum st_kind {
    ST_KIND_HARMLESS,   /* forwarded; its response is relayed (and edited) */
    ST_KIND_CAPA,       /* harmless, and its response lists capabilities */
    ST_KIND_STARTTLS,   /* answered by the proxy (refused once TLS is up) */
    ST_KIND_LOGIN,      /* credentials or mail: refused before TLS when required */
    ST_KIND_OTHER,      /* anything else: refused when required, else the session goes blind */
    ST_KIND_BAD_STARTTLS, /* STARTTLS with arguments: refused, the session stays as it is */
    ST_KIND_GREETING,   /* not a command: the greeting the session is waiting for */
    ST_KIND_REFUSED,    /* not sent on: the proxy's refusal, waiting for the replies ahead */
};

/* Commands forwarded but not yet answered (and refusals behind them), oldest first: a client
 * may pipeline a few. */
#define ST_PIPELINE_MAX 16
/* Commands a client may send before TLS: a real client needs a handful; a client that keeps a
 * plaintext session busy without ever upgrading or logging in is shown the door. */
#define ST_PRETLS_COMMANDS_MAX 64

struct st_session {
    enum conf_proto proto;
    const struct st_ops *ops;
    enum st_mode mode;
    bool blind;
    bool starttls_asked;
    bool quit_asked;       /* the client sent QUIT / LOGOUT */
    unsigned commands;     /* client commands seen so far */
    uint8_t pending[ST_PIPELINE_MAX];
    unsigned n_pending, head;
    /* Inside a multi-line response to the oldest pending command. */
    bool in_response;
    unsigned response_lines;
    bool response_has_starttls;
    /* The text of queued refusals, oldest first from replies_off; each ST_KIND_REFUSED entry
     * of pending[] owns the next reply_len[slot] bytes. Freed whenever it empties. */
    char *replies;
    size_t replies_len, replies_off, replies_cap;
    uint32_t reply_len[ST_PIPELINE_MAX];
    char *reply;           /* the answer to STARTTLS (IMAP: with the command's tag) */
    /* SMTP: the previous EHLO line, held until the next one shows whether it must become the
     * last (a dropped STARTTLS or AUTH line was the final one). Freed when the response ends. */
    char *held;
    size_t held_len, held_cap;
};

struct st_ops {
    /* LINE is one command without its line ending. */
    enum st_kind (*classify)(struct st_session *s, const char *line, size_t len);
    /* Writes to OUT the refusal sent instead of forwarding a command (required mode, STARTTLS
     * with arguments, STARTTLS once TLS is up). Returns 0 or negative (sink failed). */
    int (*refuse)(const struct st_session *s, enum st_kind kind, const char *line, size_t len,
                  const struct st_sink *out);
    /* Relays one backend line (LINE includes its ending) for a response to a command of KIND;
     * sets *DONE when the line completes that response. Returns 0 or negative (sink failed). */
    int (*backend_line)(struct st_session *s, enum st_kind kind, const char *line, size_t len,
                        const struct st_sink *sink, bool *done);
    /* Sets s->reply from the STARTTLS command LINE; 0 or -ENOMEM. */
    int (*starttls_reply)(struct st_session *s, const char *line, size_t len);
    const char *line_too_long;
    const char *too_many_commands;
};

extern const struct st_ops st_imap_ops, st_pop3_ops, st_smtp_ops;

/* The session's stance on capabilities. */
static inline bool st_tls_active(const struct st_session *s)
{
    /* TLS is up: STARTTLS is neither offered nor accepted. */
    return s->mode == ST_AFTER_STARTTLS || s->mode == ST_IMPLICIT;
}

static inline bool st_login_hidden(const struct st_session *s)
{
    /* Plaintext on a required listener: no login mechanism is offered (a client that sees
     * none does not send its password in clear only to be refused). */
    return s->mode == ST_REQUIRED;
}

/* Helpers for the protocol files. */
bool st_word_is(const char *word, size_t len, const char *upper);
/* Does WORD start with PREFIX (upper case), ignoring case? */
bool st_word_starts(const char *word, size_t len, const char *upper);
/* First word of LINE (up to a space or the end): sets *WORD and *WLEN, returns the rest's start. */
const char *st_first_word(const char *line, size_t len, const char **word, size_t *wlen);
/* Length of LINE without its CRLF / LF. */
size_t st_strip_eol(const char *line, size_t len);
/* Does the space-separated token list LIST (len bytes) contain TOKEN, ignoring case? */
bool st_has_token(const char *list, size_t len, const char *token);
/* Sends TEXT (a C string) to the sink's client side. */
int st_say(const struct st_sink *sink, const char *text);
/* SMTP's held line: keep a copy of LINE; 0 or -ENOMEM. */
int st_hold(struct st_session *s, const char *line, size_t len);
/* Drops the held line's buffer (the response is over). */
void st_hold_release(struct st_session *s);
/* Sets s->reply to PREFIX + TEXT; 0 or -ENOMEM. */
int st_set_reply(struct st_session *s, const char *prefix, size_t plen, const char *text);

#endif
