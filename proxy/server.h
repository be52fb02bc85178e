/* server: the process-wide runtime — configuration in force, certificate store, per-listener
 * TLS contexts, the worker threads and the control loop (signals, drain).
 *
 * Threads: the control thread owns struct server and runs its own loop (signals, drain timer).
 * Each worker thread owns one struct worker: its uv loop, its SO_REUSEPORT listening sockets
 * and every connection it accepted. Workers share only read-only data (struct listener_rt,
 * routes) and thread-safe objects (cs_current, atomics). */
#ifndef MAILSNID_SERVER_H
#define MAILSNID_SERVER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "conf/conf.h"
#include "certstore/certstore.h"

struct conn;
struct routes_current;

/* One configured listener, shared by all workers. */
struct listener_rt {
    const struct conf_listener *conf;
    SSL_CTX *ssl_ctx;
    atomic_uint open;                 /* connections open now, all workers */
    atomic_ullong total;
};

struct worker {
    struct server *server;
    unsigned index;
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t wakeup;                /* control → worker: drain or stop */
    uv_tcp_t *listeners;              /* one per listener_rt, same order */
    size_t n_listeners;
    struct conn *conns;               /* every open connection, for drain and forced close */
    unsigned n_conns;
    bool draining, stopping;
    bool gone;                        /* wakeup closed: the control thread must not send to it */
};

struct server {
    struct conf *conf;
    struct cs_current *certs;
    struct routes_current *routes;     /* per-name backends, replaced by reloads */
    struct listener_rt *listeners;
    size_t n_listeners;
    struct worker *workers;
    unsigned n_workers;
    int *fds;                          /* bound sockets: fds[worker * n_listeners + listener] */
    atomic_uint open_total;            /* all connections, for the global max_connections */
    uv_loop_t *loop;                   /* the control loop (main thread) */
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t drain_timer;
    atomic_uint workers_running;
    uv_mutex_t wake_lock;              /* orders wake_workers() against a worker closing its wakeup */
    uv_async_t worker_exited;
    atomic_bool draining;              /* stop accepting, health checks fail */
    atomic_bool stopping;              /* close everything now */
    struct admin *admin;               /* admin endpoint, when configured */
    struct reload *reload;             /* reload machinery (control thread) */
    struct watch *watch;               /* file watcher (control thread) */
};

/* Builds everything the config asks for and binds the listening sockets; nothing runs yet.
 * On failure returns -errno/-EINVAL with a message already logged. */
int server_init(struct server *srv, struct conf *conf, struct cs_store *store);
/* Runs workers and the control loop until drained; returns the exit status. */
int server_run(struct server *srv);
void server_free(struct server *srv);
/* Stops accepting, fails health checks, lets connections finish up to drain_timeout. */
void server_begin_drain(struct server *srv);

#endif
