/* buf: fixed-size I/O buffers from a per-thread free list.
 *
 * A read takes up to 64 KB, and one buffer holds the four full TLS records (16 KB of plaintext
 * plus 22 bytes each) that 64 KB of plaintext becomes: on bulk transfers each direction costs one
 * read and one write system call per 64 KB, which is where a TLS proxy's time goes on loopback
 * (measured: 70 % of it in the kernel with 16 KB buffers). Small writes stay small records.
 * Connections hold buffers only while bytes are in flight: an idle connection holds none.
 * Ownership: whoever called buf_get() until it hands the buffer to buf_send() (then the write
 * request owns it until its callback) or calls buf_put(). */
#ifndef MAILSNID_BUF_H
#define MAILSNID_BUF_H

#include <stdint.h>
#include <uv.h>

#define BUF_READ_SIZE (64 * 1024)
#define BUF_CAP (BUF_READ_SIZE + 2048)

struct buf {
    uv_write_t req;         /* used while the buffer is being written by libuv */
    void *owner;            /* the connection, while in flight */
    uint32_t off, len;      /* unread bytes are data[off, len) */
    struct buf *next;       /* free-list link */
    char data[BUF_CAP];
};

struct buf *buf_get(void);
void buf_put(struct buf *b);
static inline uint32_t buf_unread(const struct buf *b) { return b->len - b->off; }
static inline uint32_t buf_room(const struct buf *b) { return BUF_CAP - b->len; }
/* Frees this thread's cached buffers (at worker exit, so leak checkers stay quiet). */
void buf_pool_drain(void);

#endif
