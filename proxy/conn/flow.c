/* Flow control: what one connection may hold in memory, and when each side is read.
 *
 * Bytes are not memory: a one-byte write that has to wait costs a whole 66 KB buffer. So a
 * stream's queue is bounded in buffers as well as in bytes (and small writes gather in the
 * stream's tail, see conn_send_buf), and a side is not read while a queue it feeds is full:
 *   - the client, while the backend's queue or its own is full: its input becomes backend
 *     bytes, and also client bytes of our own making (TLS handshake and KeyUpdate answers, the
 *     STARTTLS engine's replies);
 *   - the backend, while the client's queue is full.
 * Reading resumes once the queues are down to the low mark, and only when a write completes, so
 * that the phase can be handed the input it left waiting. The rule lives where reading starts and
 * stops (conn_sync_reading), not in one phase: it holds before TLS, in the handshake, in the
 * filter after STARTTLS and in the relay alike.
 *
 * Per connection that bounds the queues to FLOW_HIGH_BUFS + 1 buffers a stream, plus one input
 * buffer a side and the partial line after STARTTLS: about 1 MB, whatever the peers do. */
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "proxy/conn/conn.h"

#define FLOW_HIGH_BYTES (256 * 1024)
#define FLOW_HIGH_BUFS 4
#define FLOW_LOW_BYTES (64 * 1024)
#define FLOW_LOW_BUFS 2

struct level {
    size_t bytes;
    unsigned bufs;
};

static struct level level_of(struct conn *c, bool client)
{
    uv_stream_t *s = client ? (uv_stream_t *)&c->client : (uv_stream_t *)&c->backend;
    struct buf *tail = client ? c->cout : c->bout;
    struct level l = { uv_stream_get_write_queue_size(s),
                       client ? c->client_bufs : c->backend_bufs };
    if (tail) {
        l.bytes += buf_unread(tail);
        l.bufs++;
    }
    return l;
}

static bool full(struct level l)
{
    return l.bufs > FLOW_HIGH_BUFS || l.bytes > FLOW_HIGH_BYTES;
}

static bool drained(struct level l)
{
    return l.bufs <= FLOW_LOW_BUFS && l.bytes <= FLOW_LOW_BYTES;
}

void flow_hold(struct conn *c)
{
    if (c->state == CONN_CLOSED)
        return;
    struct level cl = level_of(c, true), bk = level_of(c, false);
    if (full(cl) || full(bk))
        c->client_held = true;
    if (full(cl))
        c->backend_held = true;
    conn_sync_reading(c);
}

bool flow_release(struct conn *c)
{
    if (c->state == CONN_CLOSED)
        return false;
    struct level cl = level_of(c, true), bk = level_of(c, false);
    bool was_held = c->client_held;
    if (full(cl) || full(bk))
        c->client_held = true;
    else if (drained(cl) && drained(bk))
        c->client_held = false;
    if (full(cl))
        c->backend_held = true;
    else if (drained(cl))
        c->backend_held = false;
    conn_sync_reading(c);
    return was_held && !c->client_held;
}

/* Whether S's peer acknowledged bytes since the last look and still has bytes to take: a slow
 * reader at work. Acknowledged is handed to libuv, minus what waits in libuv's queue and in the
 * kernel's send queue: measured at the peer, not at our queue, because the kernel takes more from
 * a full queue only once half its buffer is free, which a slow reader may take minutes to do.
 * Bytes all taken by now are not counted: their write completed (on_write noted it) or they
 * followed a read that was activity already, so a quiet session's last answer does not push its
 * idle timeout back. */
static bool progressed(uint64_t sent, uv_stream_t *s, uint64_t *seen)
{
    uv_os_fd_t fd;
    int unacked = 0;
    if (uv_fileno((uv_handle_t *)s, &fd) == 0 && ioctl(fd, SIOCOUTQ, &unacked) < 0)
        unacked = 0;
    uint64_t delivered = sent - uv_stream_get_write_queue_size(s) - (uint64_t)unacked;
    if (delivered == *seen)
        return false;
    *seen = delivered;
    return delivered < sent;
}

bool flow_writes_progressed(struct conn *c)
{
    bool a = progressed(c->client_sent, (uv_stream_t *)&c->client, &c->client_seen);
    bool b = progressed(c->backend_sent, (uv_stream_t *)&c->backend, &c->backend_seen);
    return a || b;
}

/* A client we are not reading (it half-closed, or its input is held) cannot tell us it reset:
 * nothing polls its socket. The kernel knows; ask it. */
bool flow_client_gone(struct conn *c)
{
    uv_os_fd_t fd;
    if (c->client_reading || uv_fileno((uv_handle_t *)&c->client, &fd) < 0)
        return false;
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    return getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 && ti.tcpi_state == TCP_CLOSE;
}
