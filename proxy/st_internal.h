/* Shared between the STARTTLS engine (st_engine.c) and its protocol files (st_imap.c,
 * st_pop3.c, st_smtp.c). Nothing else includes this. */
#ifndef MAILSNID_ST_INTERNAL_H
#define MAILSNID_ST_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy/starttls.h"

/* What a client command is, as far as the plaintext phase cares. */
enum st_kind {
    ST_KIND_HARMLESS,   /* forwarded; its response is relayed (and edited) */
    ST_KIND_CAPA,       /* harmless, and its response lists capabilities */
    ST_KIND_STARTTLS,   /* answered by the proxy (refused once TLS is up) */
    ST_KIND_LOGIN,      /* credentials or mail: refused before TLS when required */
    ST_KIND_OTHER,      /* anything else: refused when required, else the session goes blind */
    ST_KIND_BAD_STARTTLS, /* STARTTLS with arguments: refused, the session stays as it is */
    ST_KIND_GREETING,   /* not a command: the greeting the session is waiting for */
};

/* Commands forwarded but not yet answered, oldest first (a client may pipeline a few). */
#define ST_PIPELINE_MAX 16
/* Commands a client may send before TLS: a real client needs a handful; a client that keeps a
 * plaintext session busy without ever upgrading or logging in is shown the door. */
#define ST_PRETLS_COMMANDS_MAX 64

struct st_session {
    enum conf_proto proto;
    const struct st_ops *ops;
    bool required;
    bool after_tls;        /* TLS is up: drop STARTTLS from capabilities, refuse it */
    bool blind;
    bool starttls_asked;
    unsigned commands;     /* client commands seen so far */
    uint8_t pending[ST_PIPELINE_MAX];
    unsigned n_pending, head;
    /* Inside a multi-line response to the oldest pending command. */
    bool in_response;
    unsigned response_lines;
    bool response_has_starttls;
    char tag[64];          /* IMAP: tag of the STARTTLS command */
    char reply[96];        /* the answer to STARTTLS */
    /* SMTP after TLS: the previous EHLO line, held until the next one shows whether it must
     * become the last ("250 STARTTLS" as the final line is dropped). */
    unsigned held_len;
    char held[512];
};

struct st_ops {
    /* LINE is one command without its line ending. */
    enum st_kind (*classify)(struct st_session *s, const char *line, size_t len);
    /* The refusal sent instead of forwarding a command before TLS (required mode, or
     * STARTTLS with arguments). Written to OUT; returns the length. */
    size_t (*refuse)(const struct st_session *s, enum st_kind kind, const char *line, size_t len,
                     char *out, size_t cap);
    /* Relays one backend line (LINE includes its ending) for a response to a command of KIND;
     * sets *DONE when the line completes that response. Returns 0 or negative (sink failed). */
    int (*backend_line)(struct st_session *s, enum st_kind kind, const char *line, size_t len,
                        const struct st_sink *sink, bool *done);
    void (*starttls_reply)(struct st_session *s);
    const char *line_too_long;
    const char *too_many_commands;
};

extern const struct st_ops st_imap_ops, st_pop3_ops, st_smtp_ops;

/* Helpers for the protocol files. */
bool st_word_is(const char *word, size_t len, const char *upper);
/* First word of LINE (up to a space or the end): sets *WORD and *WLEN, returns the rest's start. */
const char *st_first_word(const char *line, size_t len, const char **word, size_t *wlen);
/* Length of LINE without its CRLF / LF. */
size_t st_strip_eol(const char *line, size_t len);
/* Does the space-separated token list LIST (len bytes) contain TOKEN, ignoring case? */
bool st_has_token(const char *list, size_t len, const char *token);

#endif
