/* The connection's skeleton: accept, the read and write plumbing shared by every phase, the
 * timer, and the one teardown path (conn_close) that logs the connection exactly once. */
#include "proxy/conn/conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/conn/climit.h"
#include "proxy/ops/log.h"
#include "proxy/ops/metrics.h"
#include "proxy/tls/tls.h"
#include "proxy/tls/ssl_wipe.h"
#include "proxy/tls/tls_offload.h"

#define FLUSH_REPLY_MS 5000
/* While a client is not read, the timer also looks this often whether it has reset. */
#define PROBE_MS 2000

static const char *const outcome_names[] = {
    [OUT_OK] = "ok", [OUT_HANDSHAKE_FAILED] = "handshake_failed",
    [OUT_HANDSHAKE_TIMEOUT] = "handshake_timeout", [OUT_BACKEND_DOWN] = "backend_down",
    [OUT_IDLE_TIMEOUT] = "idle_timeout", [OUT_CLIENT_ERROR] = "client_error",
    [OUT_BACKEND_ERROR] = "backend_error", [OUT_PROXY_HEADER] = "proxy_header_refused",
    [OUT_PROTOCOL] = "protocol_error", [OUT_LIMIT] = "limit", [OUT_DRAIN] = "drain",
    [OUT_CLIENT_TIMEOUT] = "client_timeout", [OUT_NOMEM] = "out_of_memory",
};

uint64_t conn_now_ms(const struct conn *c)
{
    return uv_now(&c->worker->loop);
}

static void format_addr(const struct sockaddr_storage *ss, char *out, size_t cap)
{
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        port = ntohs(in->sin_port);
        snprintf(out, cap, "%s:%u", host, port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        port = ntohs(in6->sin6_port);
        snprintf(out, cap, "[%s]:%u", host, port);
    } else {
        snprintf(out, cap, "-");
    }
}

static void log_connection(struct conn *c)
{
    if (!log_enabled(CONF_LOG_INFO))
        return;
    char client[64];
    format_addr(&c->peer, client, sizeof client);
    const struct cs_choice *choice = tls_choice(c);
    static const char *const kinds[] = { "none", "exact", "wildcard", "default" };
    /* The backend in use, or the last one tried; "-" when the session never got that far. */
    size_t last = c->backend_index < c->n_backends ? c->backend_index : c->n_backends - 1;
    const char *backend = c->n_backends ? c->backends[last].text : "-";
    log_info("conn listener=%s client=%s sni=%s cert=%s kind=%s tls=%s cipher=%s record=%s "
             "resumed=%s backend=%s up=%llu down=%llu%s%.0llu duration_ms=%llu outcome=%s%s%s%s",
             c->listener->conf->name, client,
             choice && choice->sni[0] ? choice->sni : "-",
             tls_cert_path(c),
             choice ? kinds[choice->kind] : "-",
             tls_version_name(c), tls_cipher_name(c),
             c->offload ? "own" : tls_is_up(c) ? "openssl" : "-",
             c->offload || tls_is_up(c) ? (c->tls_resumed ? "yes" : "no") : "-",
             backend,
             (unsigned long long)c->bytes_up, (unsigned long long)c->bytes_down,
             c->discarded ? " discarded=" : "", (unsigned long long)c->discarded,
             (unsigned long long)(conn_now_ms(c) - c->start_ms), outcome_names[c->outcome],
             c->error[0] ? " detail=\"" : "", c->error, c->error[0] ? "\"" : "");
}

static void conn_free(struct conn *c)
{
    struct worker *w = c->worker;
    /* Released here, not in conn_close(): conn_close() can run from deep inside a sink or an
     * OpenSSL call whose callers still hold c->bin, c->pin, c->st or c->ssl. */
    ssl_free_wiped(c->ssl);
    tls_offload_free(c);
    buf_put(c->cin);
    buf_put(c->bin);
    buf_put(c->cout);
    buf_put(c->bout);
    buf_put(c->pin);
    buf_put(c->hin);
    http_free(c);
    st_free(c->st);
    atomic_fetch_sub(&c->gen->conns, 1);
    gen_unref(c->gen);
    free(c);
    if (w->draining && w->n_conns == 0 && !w->gone)
        uv_async_send(&w->wakeup); /* same thread: the wakeup handler closes the loop */
}

bool conn_release_handle(struct conn *c)
{
    if (--c->open_handles)
        return false;
    conn_free(c);
    return true;
}

static void on_handle_closed(uv_handle_t *h)
{
    conn_release_handle(h->data);
}

static void close_handle(struct conn *c, uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, on_handle_closed);
    (void)c;
}

void conn_close(struct conn *c, enum conn_outcome outcome)
{
    if (c->state == CONN_CLOSED)
        return;
    if (c->state != CONN_FLUSHING || outcome != OUT_OK)
        c->outcome = outcome;
    c->state = CONN_CLOSED;
    log_connection(c);
    metrics_conn_closed(c);

    struct worker *w = c->worker;
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->n_conns--;
    atomic_fetch_sub(&c->listener->slot->count->open, 1);
    atomic_fetch_sub(&w->server->open_total, 1);
    if (c->climit_held)
        climit_release((struct sockaddr *)&c->peer);

    close_handle(c, (uv_handle_t *)&c->timer);
    close_handle(c, (uv_handle_t *)&c->client);
    upstream_close(c);
}

void conn_close_all(struct worker *w, enum conn_outcome outcome)
{
    while (w->conns)
        conn_close(w->conns, outcome);
}

/* ---- reading ---- */

/* Gives libuv room at the end of *SLOT, allocating the buffer when there is none and moving a
 * partial line to the front when the tail is short. */
static void alloc_into(struct buf **slot, uv_buf_t *out)
{
    struct buf *b = *slot;
    if (!b) {
        b = *slot = buf_get();
        if (!b) {
            *out = uv_buf_init(NULL, 0);
            return;
        }
    }
    if (b->off && buf_room(b) < 4096) {
        memmove(b->data, b->data + b->off, buf_unread(b));
        b->len -= b->off;
        b->off = 0;
    }
    uint32_t room = buf_room(b);
    if (b->len == 0 && room > BUF_READ_SIZE)
        room = BUF_READ_SIZE; /* whole records when it is encrypted: see buf.h */
    *out = uv_buf_init(b->data + b->len, room);
}

static void on_client_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    (void)suggested;
    struct conn *c = h->data;
    alloc_into(&c->cin, out);
}

static void on_backend_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    (void)suggested;
    struct conn *c = h->data;
    alloc_into(&c->bin, out);
}

/* How a client that went away (a reset, a failed write) ended. One that left before the session
 * carried a byte — a certificate monitor: the handshake, then close, often a reset because our
 * session ticket went unread — has lost nothing: a normal close, not an error of either side. */
static enum conn_outcome client_gone_outcome(const struct conn *c)
{
    return (tls_is_up(c) || c->client_eof) && c->bytes_up == 0 && c->bytes_down == 0 ?
               OUT_OK : OUT_CLIENT_ERROR;
}

static void drop_if_empty(struct buf **slot)
{
    if (*slot && buf_unread(*slot) == 0) {
        buf_put(*slot);
        *slot = NULL;
    }
}

static void dispatch_client_input(struct conn *c)
{
    switch (c->state) {
    case CONN_PROXY_IN:
        proxyin_client_input(c);
        break;
    case CONN_PRE_TLS:
        starttls_client_input(c);
        break;
    case CONN_HTTP:
        http_client_input(c);
        break;
    case CONN_HANDSHAKE:
    case CONN_RELAY:
        if (tls_in_use(c)) {
            tls_client_input(c);
        } else if (c->state == CONN_RELAY) {
            if (c->cin && buf_unread(c->cin)) {
                struct buf *b = c->cin;
                c->cin = NULL;
                relay_client_plaintext(c, b);
            }
            if (c->client_eof && c->state != CONN_CLOSED)
                relay_client_eof(c);
        }
        break;
    default:
        /* Flushing a final reply or waiting for the backend: input is not wanted now. */
        break;
    }
}

static void on_client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *ub)
{
    (void)ub;
    struct conn *c = s->data;
    if (nread > 0) {
        c->cin->len += (uint32_t)nread;
        c->last_active_ms = conn_now_ms(c);
        if (c->state == CONN_FLUSHING)
            c->cin->off = c->cin->len; /* a final reply is on its way: input is not wanted */
        else
            dispatch_client_input(c); /* other states keep what they cannot use yet in c->cin */
    } else if (nread == UV_EOF) {
        c->client_eof = true;
        conn_client_read_stop(c);
        if (c->state == CONN_PROXY_IN || c->state == CONN_FLUSHING) {
            conn_close(c, c->state == CONN_PROXY_IN ? OUT_PROXY_HEADER : OUT_OK);
            return;
        }
        dispatch_client_input(c);
    } else if (nread < 0) {
        snprintf(c->error, sizeof c->error, "client read: %s", uv_strerror((int)nread));
        conn_close(c, client_gone_outcome(c));
        return;
    }
    if (c->state != CONN_CLOSED)
        drop_if_empty(&c->cin);
}

/* The backend ended before the client got a word of the session on the current layer: no
 * greeting (mail), no status line (HTTP), or after STARTTLS not the fresh session's greeting.
 * For the client that is a backend that did not answer — a daemon being stopped still completes
 * connects from its listen queue and then resets them — so it hears the protocol's unavailable
 * reply instead of a bare close. */
static bool backend_never_answered(const struct conn *c)
{
    if (c->client_done)
        return false; /* the client left first (a certificate monitor): the backend only followed */
    if (c->state == CONN_GREETING)
        return true;
    return (c->state == CONN_PRE_TLS || c->state == CONN_RELAY) && c->bytes_down == 0;
}

static void on_backend_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *ub)
{
    (void)ub;
    struct conn *c = s->data;
    if (nread > 0) {
        c->bin->len += (uint32_t)nread;
        c->last_active_ms = conn_now_ms(c);
    }
    if (nread == 0) {
        drop_if_empty(&c->bin);
        return;
    }
    if (nread < 0 && backend_never_answered(c)) {
        snprintf(c->error, sizeof c->error, "backend %s before answering",
                 nread == UV_EOF ? "closed" : uv_strerror((int)nread));
        conn_fail_with_reply(c, OUT_BACKEND_DOWN, conn_unavailable_reply(c));
        return;
    }
    if (nread < 0 && nread != UV_EOF) {
        snprintf(c->error, sizeof c->error, "backend read: %s", uv_strerror((int)nread));
        conn_close(c, OUT_BACKEND_ERROR);
        return;
    }
    switch (c->state) {
    case CONN_PRE_TLS:
        if (nread == UV_EOF) {
            starttls_backend_eof(c);
            return;
        }
        starttls_backend_input(c);
        break;
    case CONN_GREETING:
        if (nread == UV_EOF) {
            conn_fail_with_reply(c, OUT_BACKEND_DOWN, conn_unavailable_reply(c));
            return;
        }
        greeting_backend_input(c);
        break;
    case CONN_RELAY: {
        if (c->st && nread > 0) {
            /* After STARTTLS, until the client goes blind: capabilities still edited. */
            starttls_backend_input(c);
            break;
        }
        struct buf *b = NULL;
        if (nread > 0) {
            b = c->bin;
            c->bin = NULL;
        }
        relay_backend_read(c, nread, b);
        break;
    }
    default:
        if (c->bin)
            c->bin->off = c->bin->len;
        break;
    }
    if (c->state != CONN_CLOSED)
        drop_if_empty(&c->bin);
}

void conn_sync_reading(struct conn *c)
{
    bool client = c->client_wanted && !c->client_held && !c->client_eof && c->state != CONN_CLOSED;
    if (client && !c->client_reading) {
        if (uv_read_start((uv_stream_t *)&c->client, on_client_alloc, on_client_read) == 0)
            c->client_reading = true;
    } else if (!client && c->client_reading) {
        uv_read_stop((uv_stream_t *)&c->client);
        c->client_reading = false;
        /* Unread, the client could reset unseen: the timer looks now and then (on_timer). */
        if ((c->state == CONN_PRE_TLS || c->state == CONN_RELAY) && !c->connecting &&
            uv_timer_get_due_in(&c->timer) > PROBE_MS)
            conn_arm_timer(c, PROBE_MS);
    }
    bool backend = c->backend_wanted && !c->backend_held && c->backend_connected &&
                   !c->backend_done && c->state != CONN_CLOSED;
    if (backend && !c->backend_reading) {
        if (uv_read_start((uv_stream_t *)&c->backend, on_backend_alloc, on_backend_read) == 0)
            c->backend_reading = true;
    } else if (!backend && c->backend_reading) {
        uv_read_stop((uv_stream_t *)&c->backend);
        c->backend_reading = false;
    }
}

void conn_client_read_start(struct conn *c)
{
    c->client_wanted = true;
    conn_sync_reading(c);
}

void conn_client_read_stop(struct conn *c)
{
    c->client_wanted = false;
    conn_sync_reading(c);
}

void conn_backend_read_start(struct conn *c)
{
    c->backend_wanted = true;
    conn_sync_reading(c);
}

void conn_backend_read_stop(struct conn *c)
{
    c->backend_wanted = false;
    conn_sync_reading(c);
}

/* ---- writing ---- */

/* A tail with less room than this is submitted even behind queued writes: gathering more into
 * it would save little, and OpenSSL's records and append() need the space. */
#define TAIL_MIN_ROOM 4096

static bool is_client(struct conn *c, uv_stream_t *s)
{
    return s == (uv_stream_t *)&c->client;
}

static struct buf **tail_of(struct conn *c, uv_stream_t *s)
{
    return is_client(c, s) ? &c->cout : &c->bout;
}

size_t conn_client_pending(struct conn *c)
{
    return uv_stream_get_write_queue_size((uv_stream_t *)&c->client) +
           (c->cout ? buf_unread(c->cout) : 0);
}

static int flush_side(struct conn *c, uv_tcp_t *stream, bool force, const char *side,
                      enum conn_outcome outcome);

/* A backend being stopped completes connects from its queue and then resets them: a write can
 * meet that before a read does. A backend that never answered gets the client the protocol's
 * "try later", as on the read side; one that had answered ends the session. */
void conn_backend_write_failed(struct conn *c, int err)
{
    snprintf(c->error, sizeof c->error, "backend write: %s", uv_strerror(err));
    if (backend_never_answered(c))
        conn_fail_with_reply(c, OUT_BACKEND_DOWN, conn_unavailable_reply(c));
    else
        conn_close(c, OUT_BACKEND_ERROR);
}

static void on_write(uv_write_t *req, int status)
{
    struct buf *b = (struct buf *)req;
    struct conn *c = b->owner;
    uv_tcp_t *stream = (uv_tcp_t *)req->handle; /* req is the buffer: read it before it goes */
    bool to_client = stream == &c->client;
    buf_put(b);
    if (to_client)
        c->client_bufs--;
    else
        c->backend_bufs--;
    if (c->state == CONN_CLOSED)
        return; /* cancelled by the teardown */
    if (!to_client && uv_is_closing((uv_handle_t *)&c->backend)) {
        /* The pre-STARTTLS backend session being closed: its writes do not matter, but a client
         * held for its full queue may be read again. */
        flow_release(c);
        return;
    }
    if (status < 0 && !to_client) {
        conn_backend_write_failed(c, status);
        return;
    }
    if (status < 0) {
        snprintf(c->error, sizeof c->error, "client write: %s", uv_strerror(status));
        conn_close(c, client_gone_outcome(c));
        return;
    }
    if (to_client)
        c->last_active_ms = conn_now_ms(c); /* a client that takes what we send is not idle */
    /* What gathered behind the queue follows it now. */
    if (flush_side(c, stream, false, to_client ? "client" : "backend",
                   to_client ? OUT_CLIENT_ERROR : OUT_BACKEND_ERROR) < 0)
        return;
    if (c->state == CONN_FLUSHING) {
        if (conn_client_pending(c) == 0)
            conn_close(c, c->outcome);
        return;
    }
    /* Ciphertext left in c->cin, or plaintext inside OpenSSL, when reading paused. */
    if (flow_release(c) && c->state == CONN_RELAY && tls_in_use(c))
        tls_client_input(c);
}

/* Hands B to libuv: tried at once (most writes complete there, with no request queued); what
 * the socket does not take goes to libuv's queue with the buffer as the request. */
static int submit(struct conn *c, uv_stream_t *s, struct buf *b)
{
    bool client = is_client(c, s);
    uint32_t len = buf_unread(b);
    if (uv_stream_get_write_queue_size(s) == 0) {
        uv_buf_t ub = uv_buf_init(b->data + b->off, len);
        int n = uv_try_write(s, &ub, 1);
        if (n > 0)
            b->off += (uint32_t)n;
        else if (n != UV_EAGAIN && n != UV_ENOSYS) {
            buf_put(b);
            return n;
        }
        if (buf_unread(b) == 0) {
            buf_put(b);
            *(client ? &c->client_sent : &c->backend_sent) += len;
            return 0;
        }
    }
    b->owner = c;
    uv_buf_t ub = uv_buf_init(b->data + b->off, buf_unread(b));
    int r = uv_write(&b->req, s, &ub, 1, on_write);
    if (r < 0) {
        buf_put(b);
        return r;
    }
    *(client ? &c->client_sent : &c->backend_sent) += len;
    *(client ? &c->client_bufs : &c->backend_bufs) += 1;
    return 0;
}

/* Submits S's tail, unless writes are queued on S and the tail still has room: then it keeps
 * gathering, and follows the queue from on_write. */
static int flush_tail(struct conn *c, uv_stream_t *s, bool force)
{
    struct buf **tail = tail_of(c, s);
    struct buf *b = *tail;
    if (!b)
        return 0;
    if (!force && uv_stream_get_write_queue_size(s) > 0 && buf_room(b) >= TAIL_MIN_ROOM)
        return 0;
    *tail = NULL;
    if (buf_unread(b) == 0) {
        buf_put(b);
        return 0;
    }
    return submit(c, s, b);
}

int conn_send_buf(struct conn *c, uv_stream_t *s, struct buf *b)
{
    if (buf_unread(b) == 0) {
        buf_put(b);
        return 0;
    }
    struct buf **tail = tail_of(c, s);
    if (*tail && buf_room(*tail) >= buf_unread(b)) {
        /* Behind what is already gathered, in order, without a buffer of its own. */
        memcpy((*tail)->data + (*tail)->len, b->data + b->off, buf_unread(b));
        (*tail)->len += buf_unread(b);
        buf_put(b);
    } else {
        if (*tail) {
            struct buf *t = *tail;
            *tail = NULL;
            int r = submit(c, s, t);
            if (r < 0) {
                buf_put(b);
                return r;
            }
        }
        *tail = b;
    }
    int r = flush_tail(c, s, false);
    if (r == 0)
        flow_hold(c);
    return r;
}

static int append(struct buf **slot, const char *data, size_t len,
                  int (*flush)(struct conn *), struct conn *c)
{
    while (len) {
        if (!*slot && !(*slot = buf_get()))
            return -ENOMEM;
        uint32_t room = buf_room(*slot);
        if (room == 0) {
            int r = flush(c);
            if (r < 0)
                return r;
            continue;
        }
        uint32_t n = len < room ? (uint32_t)len : room;
        memcpy((*slot)->data + (*slot)->len, data, n);
        (*slot)->len += n;
        data += n;
        len -= n;
    }
    return 0;
}

/* Submits (or leaves gathering) STREAM's tail; a failure ends the connection with OUTCOME. */
static int flush_side(struct conn *c, uv_tcp_t *stream, bool force, const char *side,
                      enum conn_outcome outcome)
{
    int r = flush_tail(c, (uv_stream_t *)stream, force);
    if (r < 0 && stream == &c->backend) {
        conn_backend_write_failed(c, r);
        return r;
    }
    if (r < 0) {
        snprintf(c->error, sizeof c->error, "%s write: %s", side, uv_strerror(r));
        conn_close(c, stream == &c->client && outcome == OUT_CLIENT_ERROR ?
                          client_gone_outcome(c) : outcome);
        return r;
    }
    flow_hold(c);
    return 0;
}

int conn_flush_client(struct conn *c)
{
    return flush_side(c, &c->client, false, "client", OUT_CLIENT_ERROR);
}

int conn_flush_backend(struct conn *c)
{
    return flush_side(c, &c->backend, false, "backend", OUT_BACKEND_ERROR);
}

int conn_push_backend(struct conn *c)
{
    return flush_side(c, &c->backend, true, "backend", OUT_BACKEND_ERROR);
}

int conn_send_client(struct conn *c, const char *data, size_t len)
{
    if (tls_is_up(c))
        return tls_encrypt(c, data, len);
    return append(&c->cout, data, len, conn_flush_client, c);
}

struct buf *conn_client_room(struct conn *c, size_t need)
{
    if (c->cout && buf_room(c->cout) < need &&
        flush_side(c, &c->client, true, "client", OUT_CLIENT_ERROR) < 0)
        return NULL;
    if (!c->cout)
        c->cout = buf_get();
    return c->cout;
}

int conn_send_backend(struct conn *c, const char *data, size_t len)
{
    return append(&c->bout, data, len, conn_flush_backend, c);
}

/* How long FLUSHING waits for a client that takes nothing. The rest of a session (the backend
 * said its last word: RETR then QUIT, LOGOUT, an HTTP/1.0 body) is the client's data: it may
 * take as long as the idle timeout allows, as long as it keeps taking. A reply after a failure
 * is short and gets a short wait: a client that never reads must not hold the connection. */
static unsigned flush_limit_ms(const struct conn *c)
{
    unsigned idle = c->listener->conf->idle_timeout_ms;
    return c->outcome == OUT_OK && idle > FLUSH_REPLY_MS ? idle : FLUSH_REPLY_MS;
}

void conn_fail_with_reply(struct conn *c, enum conn_outcome outcome, const char *reply)
{
    if (c->state == CONN_CLOSED || c->state == CONN_FLUSHING)
        return;
    c->outcome = outcome;
    conn_client_read_stop(c);
    conn_backend_read_stop(c);
    if (reply && conn_send_client(c, reply, strlen(reply)) < 0) {
        conn_close(c, outcome);
        return;
    }
    if (tls_is_up(c))
        tls_send_close_notify(c);
    if (c->state == CONN_CLOSED || conn_flush_client(c) < 0)
        return;
    c->state = CONN_FLUSHING;
    c->last_active_ms = conn_now_ms(c);
    conn_arm_timer(c, flush_limit_ms(c));
    if (conn_client_pending(c) == 0)
        conn_close(c, outcome);
}

const char *conn_unavailable_reply(const struct conn *c)
{
    return st_unavailable_reply(c->listener->conf->proto);
}

/* ---- timer ---- */

static void on_timer(uv_timer_t *t)
{
    struct conn *c = t->data;
    if (c->connecting) {
        upstream_timeout(c);
        return;
    }
    switch (c->state) {
    case CONN_PROXY_IN:
        snprintf(c->error, sizeof c->error, "no PROXY header in time");
        conn_close(c, OUT_PROXY_HEADER);
        return;
    case CONN_HANDSHAKE:
        conn_close(c, OUT_HANDSHAKE_TIMEOUT);
        return;
    case CONN_HTTP:
        http_timeout(c);
        return;
    case CONN_GREETING:
        snprintf(c->error, sizeof c->error, "no greeting from the backend after STARTTLS");
        conn_fail_with_reply(c, OUT_BACKEND_DOWN, conn_unavailable_reply(c));
        return;
    default:
        break;
    }
    if (flow_client_gone(c)) {
        snprintf(c->error, sizeof c->error, "client reset the connection");
        conn_close(c, OUT_CLIENT_ERROR);
        return;
    }
    /* Writes that move count as activity: a client downloading slowly is not idle. */
    if (flow_writes_progressed(c))
        c->last_active_ms = conn_now_ms(c);
    uint64_t limit = c->state == CONN_FLUSHING ? flush_limit_ms(c)
                                               : c->listener->conf->idle_timeout_ms;
    uint64_t quiet = conn_now_ms(c) - c->last_active_ms;
    if (quiet >= limit) {
        if (c->state != CONN_FLUSHING) {
            conn_close(c, OUT_IDLE_TIMEOUT);
        } else if (c->outcome == OUT_OK) {
            snprintf(c->error, sizeof c->error, "client stopped reading: %zu bytes not delivered",
                     conn_client_pending(c));
            conn_close(c, OUT_CLIENT_TIMEOUT);
        } else {
            conn_close(c, c->outcome);
        }
        return;
    }
    /* Activity does not touch the timer (that would cost a heap update per read); the timer
     * finds out here and sleeps for what is left. */
    uint64_t next = limit - quiet;
    if (!c->client_reading && next > PROBE_MS)
        next = PROBE_MS;
    conn_arm_timer(c, (unsigned)next);
}

void conn_arm_timer(struct conn *c, unsigned ms)
{
    uv_timer_start(&c->timer, on_timer, ms, 0);
}

/* ---- accept ---- */

void conn_start_session(struct conn *c)
{
    const struct conf_listener *l = c->listener->conf;
    /* Counted only now: behind a load balancer the client's address comes from the PROXY
     * header. */
    if (!c->limited && !c->proxy_local) {
        int counted = climit_acquire((struct sockaddr *)&c->peer);
        c->climit_held = counted > 0;
        if (counted < 0) {
            c->limited = true;
            snprintf(c->error, sizeof c->error, "max_connections_per_client reached");
        }
    }
    if (l->tls == CONF_TLS_IMPLICIT) {
        /* Mail behind implicit TLS: the backend's own STARTTLS is edited out until login. */
        if (l->proto != CONF_PROTO_HTTP && !(c->st = st_new(l->proto, ST_IMPLICIT))) {
            conn_close(c, OUT_NOMEM);
            return;
        }
        /* Over a limit, the handshake still runs so that the refusal can be said in the
         * protocol's words (tls.c answers instead of connecting a backend). */
        tls_begin(c);
        return;
    }
    if (c->limited) {
        log_notice("listener %s: %s", l->name, c->error);
        conn_fail_with_reply(c, OUT_LIMIT, st_busy_reply(l->proto));
        return;
    }
    if (l->tls == CONF_TLS_NONE) {
        http_begin(c);
        return;
    }
    c->state = CONN_PRE_TLS;
    c->st = st_new(l->proto, l->starttls == CONF_STARTTLS_REQUIRED ? ST_REQUIRED : ST_OPTIONAL);
    if (!c->st) {
        conn_close(c, OUT_NOMEM);
        return;
    }
    conn_arm_timer(c, l->idle_timeout_ms);
    upstream_connect(c);
}

static bool over_limit(struct worker *w, struct listener_rt *l)
{
    unsigned global = w->gen->conf->max_connections;
    unsigned local = l->conf->max_connections;
    /* The counts already include the connection being accepted. */
    return (global && atomic_load(&w->server->open_total) > global) ||
           (local && atomic_load(&l->slot->count->open) > local);
}

void conn_accept(struct worker *w, struct listener_rt *l, uv_stream_t *server_handle)
{
    struct conn *c = calloc(1, sizeof *c);
    if (!c) {
        log_err("accept on %s: out of memory", l->conf->name);
        return;
    }
    c->worker = w;
    c->gen = w->gen;
    gen_ref(c->gen);
    atomic_fetch_add(&c->gen->conns, 1);
    c->listener = l;
    c->state = CONN_PROXY_IN;
    c->start_ms = c->last_active_ms = uv_now(&w->loop);
    uv_tcp_init(&w->loop, &c->client);
    uv_timer_init(&w->loop, &c->timer);
    c->client.data = c->timer.data = c->backend.data = c;
    c->open_handles = 2;

    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->n_conns++;
    atomic_fetch_add(&l->slot->count->open, 1);
    atomic_fetch_add(&l->slot->count->total, 1);
    atomic_fetch_add(&w->server->open_total, 1);

    int r = uv_accept(server_handle, (uv_stream_t *)&c->client);
    if (r < 0) {
        snprintf(c->error, sizeof c->error, "accept: %s", uv_strerror(r));
        conn_close(c, OUT_CLIENT_ERROR);
        return;
    }
    int len = sizeof c->peer;
    /* A client reset while queued (a balancer's TCP check) has no address left: that is the
     * client leaving, not an untrusted PROXY source. */
    r = uv_tcp_getpeername(&c->client, (struct sockaddr *)&c->peer, &len);
    if (r < 0) {
        snprintf(c->error, sizeof c->error, "gone before accept: %s", uv_strerror(r));
        conn_close(c, OUT_CLIENT_ERROR);
        return;
    }
    len = sizeof c->local;
    uv_tcp_getsockname(&c->client, (struct sockaddr *)&c->local, &len);
    uv_tcp_nodelay(&c->client, 1);

    if (over_limit(w, l)) {
        c->limited = true;
        snprintf(c->error, sizeof c->error, "max_connections reached");
    }
    if (l->conf->proxy_protocol_in) {
        proxyin_begin(c);
        return;
    }
    conn_start_session(c);
}
