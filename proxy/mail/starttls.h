/* starttls: the plaintext phase of a STARTTLS listener (IMAP, POP3, SMTP), as a pure engine
 * over bytes — no sockets, so it is unit-tested by feeding every input split at every offset.
 *
 * The engine reads complete CRLF lines from each side. Client lines are classified: harmless
 * commands (CAPABILITY/CAPA/EHLO/NOOP/…) are forwarded; the STARTTLS command is answered by the
 * proxy; with starttls = "required" everything else is refused in the protocol's own words; with
 * "optional", the first other command is forwarded and the session goes blind (plain relay, as
 * on port 25 between MTAs that never upgrade). Backend lines are relayed with STARTTLS/STLS
 * added to the capabilities they advertise (and, when TLS is required, the login mechanisms
 * removed). A refusal waits behind the responses to commands sent before it, so that replies
 * come in the order of the commands. Lines are bounded (ST_LINE_MAX); a longer one is refused,
 * never buffered.
 *
 * Once TLS is up (after STARTTLS, or on an implicit-TLS listener) the same engine keeps the
 * backend's own STARTTLS/STLS out of the capabilities and refuses the command, until the client
 * goes blind (logs in). */
#ifndef MAILSNID_STARTTLS_H
#define MAILSNID_STARTTLS_H

#include <stdbool.h>
#include <stddef.h>

#include "conf/conf.h"

#define ST_LINE_MAX 8192          /* client command line, CRLF included */
#define ST_BACKEND_LINE_MAX 16384 /* backend response line, CRLF included */

struct st_session;

/* Where the engine's output goes. Both return 0, or negative to stop (the engine returns
 * ST_CLOSE then). */
struct st_sink {
    void *ctx;
    int (*to_client)(void *ctx, const char *data, size_t len);
    int (*to_backend)(void *ctx, const char *data, size_t len);
};

enum st_event {
    ST_MORE,        /* all complete lines handled; feed more bytes */
    ST_STARTTLS,    /* the client asked for TLS; bytes after that line must be discarded */
    ST_BLIND,       /* the client went blind: its bytes from here on were forwarded unread,
                     * and later ones would be too; once st_refusals_queued() is false the
                     * session can be freed and the relay carry bytes unchanged */
    ST_CLOSE,       /* a final reply was sent to the client; close after flushing */
};

enum st_mode {
    ST_OPTIONAL,       /* plaintext, starttls = "optional" */
    ST_REQUIRED,       /* plaintext, starttls = "required": no login offered or accepted */
    ST_AFTER_STARTTLS, /* TLS up via STARTTLS: a fresh backend session, greeting swallowed */
    ST_IMPLICIT,       /* implicit-TLS listener: the backend's greeting is relayed (edited) */
};

struct st_session *st_new(enum conf_proto proto, enum st_mode mode);
/* Sends what the engine holds back (an SMTP EHLO line waiting to learn whether it is the last
 * one); call before st_free() when the session goes blind. */
int st_flush(struct st_session *s, const struct st_sink *sink);
void st_free(struct st_session *s);

/* Handles the complete lines at the start of DATA. *CONSUMED is set to the bytes used; what is
 * left is an incomplete line (or, after ST_STARTTLS, bytes for the caller to discard). */
enum st_event st_client_input(struct st_session *s, const char *data, size_t len,
                              size_t *consumed, const struct st_sink *sink);
enum st_event st_backend_input(struct st_session *s, const char *data, size_t len,
                               size_t *consumed, const struct st_sink *sink);

/* True once the client has sent STARTTLS: whatever else it sends before TLS is dropped. */
bool st_starttls_asked(const struct st_session *s);
/* After ST_STARTTLS: true once every earlier command's response has been relayed, so the
 * proxy's reply to STARTTLS comes in order. */
bool st_starttls_ready(const struct st_session *s);
/* The proxy's positive answer to STARTTLS (IMAP uses the command's tag). */
const char *st_starttls_reply(const struct st_session *s);
/* True while a command (or the greeting) still waits for the backend's response. */
bool st_awaiting_response(const struct st_session *s);
/* True while a refusal waits for the responses to commands sent before it. */
bool st_refusals_queued(const struct st_session *s);
/* True when the client went blind: its commands are no longer inspected. */
bool st_is_blind(const struct st_session *s);
/* True once the client sent its own QUIT / LOGOUT: the backend closing is the normal end. */
bool st_client_quit(const struct st_session *s);

/* After STARTTLS the proxy opens a fresh backend session; its greeting must be swallowed
 * (the client already had one). Returns the greeting's length when DATA holds all of it,
 * 0 when more bytes are needed, -1 when the backend refused service (BYE, -ERR, 4xx/5xx) or
 * the greeting is longer than ST_BACKEND_LINE_MAX. */
long st_greeting_length(enum conf_proto proto, const char *data, size_t len);

/* The text a client gets when no backend answers (SPEC.md: IMAP BYE, POP3 -ERR, SMTP 421,
 * HTTP 502). */
const char *st_unavailable_reply(enum conf_proto proto);
/* The "too many connections, try later" answer (a connection limit was hit). */
const char *st_busy_reply(enum conf_proto proto);

#endif
