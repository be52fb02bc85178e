/* libFuzzer target for the STARTTLS engine: the input is split into a client stream and a
 * backend stream (first byte picks the protocol — low bits — and the mode — top two bits:
 * optional, after STARTTLS, required, implicit — the second byte the split point), fed in
 * chunks the way the connection code feeds them. Checks: the engine never consumes more than
 * it was given, never emits a line longer than the limit plus what it adds, and never forwards
 * a byte to the backend after answering STARTTLS, and that a required session never
 * forwards a login. The session carries on after the client goes blind, as the connection
 * code does while earlier responses are still due. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/mail/starttls.h"

struct sink_state {
    size_t to_backend;
    size_t to_client;
    enum conf_proto proto;
    bool login_seen; /* a login command reached the backend */
};

static int sink_client(void *ctx, const char *d, size_t n)
{
    (void)d;
    ((struct sink_state *)ctx)->to_client += n;
    return 0;
}

static bool starts_with(const char *d, size_t n, const char *word)
{
    size_t w = strlen(word);
    return n >= w && strncasecmp(d, word, w) == 0;
}

static int sink_backend(void *ctx, const char *d, size_t n)
{
    struct sink_state *st = ctx;
    /* Lines reach the sink one at a time until the client goes blind (never when required). */
    if (st->proto == CONF_PROTO_IMAP) {
        const char *sp = memchr(d, ' ', n);
        if (sp && (starts_with(sp + 1, n - (size_t)(sp + 1 - d), "LOGIN ") ||
                   starts_with(sp + 1, n - (size_t)(sp + 1 - d), "AUTHENTICATE ")))
            st->login_seen = true;
    } else if (starts_with(d, n, "AUTH ") || starts_with(d, n, "USER ") ||
               starts_with(d, n, "PASS ") || starts_with(d, n, "MAIL ")) {
        st->login_seen = true;
    }
    st->to_backend += n;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    static const enum conf_proto protos[] = { CONF_PROTO_IMAP, CONF_PROTO_POP3, CONF_PROTO_SMTP };
    static const enum st_mode modes[] = { ST_OPTIONAL, ST_AFTER_STARTTLS, ST_REQUIRED, ST_IMPLICIT };
    enum conf_proto proto = protos[(data[0] & 0x3f) % 3];
    enum st_mode mode = modes[data[0] >> 6];
    size_t split = 2 + (data[1] * (size - 2)) / 256;
    const char *backend = (const char *)data + 2, *client = (const char *)data + split;
    size_t blen = split - 2, clen = size - split;

    struct st_session *s = st_new(proto, mode);
    struct sink_state st = { 0, 0, proto, false };
    struct st_sink sink = { &st, sink_client, sink_backend };
    /* Each side: bytes [off, avail) have arrived and not been consumed. Alternate a piece of
     * backend and a piece of client, up to 7 bytes at a time. */
    size_t boff = 0, bavail = 0, coff = 0, cavail = 0, used;
    while (bavail < blen || cavail < clen) {
        bavail = bavail + 7 < blen ? bavail + 7 : blen;
        if (st_backend_input(s, backend + boff, bavail - boff, &used, &sink) == ST_CLOSE)
            break;
        if (used > bavail - boff)
            abort();
        boff += used;
        cavail = cavail + 7 < clen ? cavail + 7 : clen;
        size_t before = st.to_backend;
        bool asked = st_starttls_asked(s);
        enum st_event ev = st_client_input(s, client + coff, cavail - coff, &used, &sink);
        if (used > cavail - coff)
            abort();
        if (asked && st.to_backend != before)
            abort(); /* something after STARTTLS reached the backend */
        coff += used;
        if (mode == ST_REQUIRED && st.login_seen)
            abort(); /* a login passed a required listener before TLS */
        if (ev == ST_CLOSE)
            break;
    }
    st_free(s);
    return 0;
}
