/* tls13/frames: counts the TLS records in a byte stream, however it is cut into writes.
 *
 * OpenSSL 3.0 has no call that tells a record's sequence number, and the record layer must start
 * where OpenSSL left off: the server has already written records under its application traffic
 * key (its session tickets, at least) when the session is handed over. The proxy counts the
 * records OpenSSL writes from the moment that key is in use (tls_offload.c); the count is the
 * next write sequence number. Pure. */
#ifndef MAILSNID_TLS13_FRAMES_H
#define MAILSNID_TLS13_FRAMES_H

#include <stddef.h>
#include <stdint.h>

struct tls13_frames {
    uint64_t records;   /* whole records seen */
    uint32_t left;      /* body bytes still to come of the current record */
    uint8_t have;       /* header bytes seen of the next record (0..4) */
    uint8_t len_hi;     /* the header's length, high byte, once seen */
};

/* Feeds N bytes of the stream. */
void tls13_frames_feed(struct tls13_frames *f, const uint8_t *p, size_t n);

/* True when the stream is at a record boundary (no record begun and unfinished). */
static inline int tls13_frames_at_boundary(const struct tls13_frames *f)
{
    return f->left == 0 && f->have == 0;
}

#endif
