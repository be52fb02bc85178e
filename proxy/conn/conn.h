/* conn: one client connection and its backend connection — the state machine and the single
 * teardown path every outcome goes through.
 *
 * The pieces of a connection's life live in their own files (tls.c: the SSL object and its BIO;
 * upstream.c: backend connect with failover and the PROXY header; relay.c: bytes both ways;
 * flow.c: what a connection may queue, and when each side is read; starttls.c: the plaintext
 * phase of STARTTLS listeners; proxyin.c: the PROXY header from a load balancer; http_conn.c:
 * the first request on HTTP listeners, answered or handed over). They share this struct;
 * nothing outside proxy/ sees it.
 *
 * Ownership: a conn is created by conn_accept() and freed by the close callback of its last
 * handle after conn_close(). Buffers it holds (cin, bin, cout) are returned in conn_close(). */
#ifndef MAILSNID_CONN_H
#define MAILSNID_CONN_H

#include <stdbool.h>
#include <stdint.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "proxy/conn/buf.h"
#include "proxy/runtime/generation.h"
#include "proxy/runtime/server.h"
#include "proxy/mail/starttls.h"

enum conn_state {
    CONN_PROXY_IN,      /* waiting for the load balancer's PROXY header */
    CONN_PRE_TLS,       /* STARTTLS listener: plaintext dialogue relayed line by line */
    CONN_HANDSHAKE,     /* TLS handshake with the client */
    CONN_HTTP,          /* HTTP listener: the first request read to decide who answers it */
    CONN_CONNECTING,    /* TLS up; connecting to the backend */
    CONN_GREETING,      /* after STARTTLS: swallowing the fresh backend session's greeting */
    CONN_RELAY,         /* bytes both ways */
    CONN_FLUSHING,      /* final reply queued: close once it is written */
    CONN_CLOSED,
};

/* Why a connection ended, for the log line and metrics. */
enum conn_outcome {
    OUT_OK, OUT_HANDSHAKE_FAILED, OUT_HANDSHAKE_TIMEOUT, OUT_BACKEND_DOWN, OUT_IDLE_TIMEOUT,
    OUT_CLIENT_ERROR, OUT_BACKEND_ERROR, OUT_PROXY_HEADER, OUT_PROTOCOL, OUT_LIMIT,
    OUT_DRAIN, OUT_CLIENT_TIMEOUT, OUT_NOMEM,
};

struct conn {
    struct worker *worker;
    struct generation *gen;            /* the configuration it was accepted under (a reference) */
    struct listener_rt *listener;      /* in gen */
    struct conn *prev, *next;          /* worker->conns */
    enum conn_state state;
    enum conn_outcome outcome;

    uv_tcp_t client;
    uv_tcp_t backend;
    uv_timer_t timer;
    uv_connect_t connect_req;
    uv_shutdown_t shutdown_req;        /* half-close towards the backend */
    unsigned open_handles;             /* handles not yet closed; conn freed at 0 */
    bool backend_open;                 /* backend handle initialised (needs closing) */
    bool backend_connected;
    bool connecting;                   /* a backend connect is in progress (the timer is its timeout) */
    bool connect_timed_out;
    bool want_connect;                 /* connect as soon as the old backend handle has closed */

    SSL *ssl;                          /* NULL until the TLS phase, and again once offloaded */
    struct tls_offload *offload;       /* TLS 1.3 carried by tls13/ after the handshake */
    struct tls_handover *handover;     /* during the handshake: what the offload will need */
    struct buf *cin;                   /* bytes read from the client, not yet consumed */
    struct buf *bin;                   /* STARTTLS/greeting phase: backend bytes not yet consumed */
    /* Bytes for the client (ciphertext once TLS is up) and for the backend, not yet submitted:
     * each stream's tail. While a stream has writes queued, small writes gather here instead of
     * taking a 66 KB buffer each (conn_send_buf). */
    struct buf *cout;
    struct buf *bout;

    /* Flow control (flow.c) and half-close. A side is read while its phase wants it (…_wanted)
     * and no queue it would feed is full (…_held); …_reading is libuv's actual state. */
    bool client_wanted, backend_wanted;
    bool client_held, backend_held;
    bool client_reading, backend_reading;
    unsigned client_bufs, backend_bufs;   /* buffers owned by write requests, per stream */
    uint64_t client_sent, backend_sent;   /* bytes ever handed to libuv, per stream */
    uint64_t client_seen, backend_seen;   /* of those, delivered when the timer last looked */
    bool client_eof;                   /* client's TCP stream ended */
    bool client_done;                  /* the client's end was passed on to the backend */
    bool backend_done;                 /* the backend's end was passed on to the client */

    /* Addresses: the real client (from a PROXY header when there is one) and where it connected. */
    struct sockaddr_storage peer, local;

    /* Backend choice. */
    const struct conf_addr *backends;
    size_t n_backends, backend_index;

    enum conf_pp proxy_protocol;
    unsigned connect_attempt_ms;

    bool limited;                      /* over a connection limit: answer "try later", then close */
    bool climit_held;                  /* counted in the per-client limit (released at close) */
    bool proxy_local;                  /* PROXY LOCAL: the balancer's own connection (its health
                                        * check), never counted as a client */

    struct http_session *http;         /* CONN_HTTP: its parser (http_conn.c) */
    struct buf *hin;                   /* TLS HTTP listener: the first request, decrypted to decide
                                          where it goes; relayed first when the backend gets it */
    struct st_session *st;             /* mail listeners, until the client goes blind */
    struct buf *pin;                   /* TLS up, before login: decrypted client bytes, a partial line */
    bool starttls_done;                /* TLS came from STARTTLS (swallow the next greeting) */
    bool tls_resumed;                  /* the handshake resumed a session from a ticket */

    uint64_t start_ms, last_active_ms;
    uint64_t bytes_up, bytes_down;     /* plaintext client→backend, backend→client */
    uint64_t discarded;                /* bytes pipelined behind STARTTLS, dropped */
    char error[96];                    /* detail for the log line */
};

/* Accepts one connection from SERVER_HANDLE (a listener of WORKER). */
void conn_accept(struct worker *worker, struct listener_rt *listener, uv_stream_t *server_handle);
/* The single teardown path: logs the connection once, releases everything. Idempotent. */
void conn_close(struct conn *c, enum conn_outcome outcome);
/* Sends a final reply to the client (over TLS when TLS is up; REPLY may be NULL to just let
 * what is queued, such as a TLS alert, reach the client), then closes. */
void conn_fail_with_reply(struct conn *c, enum conn_outcome outcome, const char *reply);
/* Forces every connection of the worker closed (second SIGTERM, drain timeout). */
void conn_close_all(struct worker *worker, enum conn_outcome outcome);

/* Timer (re)arming for the current state. */
void conn_arm_timer(struct conn *c, unsigned ms);

/* Client-side I/O shared by the phases. */
void conn_client_read_start(struct conn *c);
void conn_client_read_stop(struct conn *c);
void conn_backend_read_start(struct conn *c);
void conn_backend_read_stop(struct conn *c);
/* Queues LEN bytes of plaintext for the client: encrypted when TLS is up. */
int conn_send_client(struct conn *c, const char *data, size_t len);
/* Queues LEN bytes for the backend. */
int conn_send_backend(struct conn *c, const char *data, size_t len);
/* Queues a whole buffer for a stream (zero copy when nothing is waiting; copied into the
 * stream's tail when it is small and writes are queued); takes ownership. */
int conn_send_buf(struct conn *c, uv_stream_t *stream, struct buf *b);
/* Submits what is pending in c->cout / c->bout, or leaves it gathering behind queued writes
 * (it follows when they complete). */
int conn_flush_client(struct conn *c);
int conn_flush_backend(struct conn *c);
/* A write to the backend failed with ERR: "try later" for the client if the backend never
 * answered, else the session ends. Leaves C closed or flushing its last reply. */
void conn_backend_write_failed(struct conn *c, int err);
/* Submits c->bout even behind queued writes: before a shutdown, which must follow every byte. */
int conn_push_backend(struct conn *c);
/* Starts or stops reading each side as the phase wants it and the flow control allows. */
void conn_sync_reading(struct conn *c);
/* The client's tail with room for NEED bytes (what is gathered leaves first when it has less):
 * a TLS record is sealed straight into it. NULL when out of memory or the write failed (C is
 * then closed). */
struct buf *conn_client_room(struct conn *c, size_t need);
/* Bytes queued for the client (libuv's queue and the tail): what a close now would lose. */
size_t conn_client_pending(struct conn *c);
/* Starts the protocol session once the client is accepted (and its PROXY header read). */
void conn_start_session(struct conn *c);

/* Phase entry points, each in its own file. */
void tls_begin(struct conn *c);                   /* tls.c: start the handshake */
void tls_client_input(struct conn *c);            /* tls.c: feed c->cin to OpenSSL */
int tls_encrypt(struct conn *c, const char *data, size_t len); /* tls.c */
void tls_send_close_notify(struct conn *c);       /* tls.c */
/* tls.c: the session, whichever record layer carries it (OpenSSL, or tls13/ once offloaded). */
bool tls_in_use(const struct conn *c);            /* a TLS listener past its plaintext phase */
bool tls_is_up(const struct conn *c);             /* handshake complete */
const struct cs_choice *tls_choice(const struct conn *c); /* NULL before the ClientHello */
const char *tls_version_name(const struct conn *c);       /* "-" unless up */
const char *tls_cipher_name(const struct conn *c);        /* "-" unless up */
const char *tls_cert_path(const struct conn *c);          /* "-" unless up */
const char *tls_alpn_agreed(const struct conn *c);        /* NULL when none */
void upstream_connect(struct conn *c);            /* upstream.c */
void upstream_timeout(struct conn *c);            /* upstream.c: the connect timer fired */
void upstream_close(struct conn *c);              /* upstream.c: close the backend handle (if open) */
/* A handle of C has closed: returns true when that was the last one and C has been freed. */
bool conn_release_handle(struct conn *c);
void relay_start(struct conn *c);                 /* relay.c */
void relay_client_plaintext(struct conn *c, struct buf *b);  /* relay.c: client bytes for the backend */
void relay_client_eof(struct conn *c);            /* relay.c */
void relay_backend_read(struct conn *c, ssize_t nread, struct buf *b); /* relay.c */
void starttls_begin(struct conn *c);              /* starttls.c: backend connected (pre-TLS) */
void starttls_client_input(struct conn *c);       /* starttls.c */
void starttls_backend_input(struct conn *c);      /* starttls.c */
void starttls_backend_eof(struct conn *c);        /* starttls.c: the backend ended (pre-TLS) */
void greeting_backend_input(struct conn *c);      /* starttls.c: after STARTTLS, fresh backend */
void starttls_after_tls_client_input(struct conn *c, struct buf *b); /* starttls.c: decrypted bytes */
bool http_wanted(struct conn *c);                 /* http_conn.c: read the request first? */
void http_begin(struct conn *c);                  /* http_conn.c: read the first request */
void http_client_input(struct conn *c);           /* http_conn.c */
void http_timeout(struct conn *c);                /* http_conn.c: the timer fired in CONN_HTTP */
void http_free(struct conn *c);                   /* http_conn.c */
void proxyin_begin(struct conn *c);               /* proxyin.c: check the source, wait for the header */
void proxyin_client_input(struct conn *c);        /* proxyin.c */

/* flow.c: what one connection may hold in memory, and when each side is read. */
void flow_hold(struct conn *c);              /* a queue grew: stop reading what feeds a full one */
bool flow_release(struct conn *c);           /* a write completed: true when the client is free */
bool flow_writes_progressed(struct conn *c); /* the peers acknowledged bytes since the last call */
bool flow_client_gone(struct conn *c);       /* the client reset while we were not reading it */

/* The text a client gets when no backend answers, in the protocol's own words. */
const char *conn_unavailable_reply(const struct conn *c);

uint64_t conn_now_ms(const struct conn *c);

#endif
