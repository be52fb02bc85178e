/* server: the process-wide runtime — configuration in force, certificate store, per-listener
 * TLS contexts, the worker threads and the control loop (signals, drain).
 *
 * Threads: the control thread owns struct server and runs its own loop (signals, drain timer).
 * Each worker thread owns one struct worker: its uv loop, its SO_REUSEPORT listening sockets
 * and every connection it accepted. Workers share only read-only data (generations) and
 * thread-safe objects (cs_current, atomics). */
#ifndef MAILSNID_SERVER_H
#define MAILSNID_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "conf/conf.h"
#include "certstore/certstore.h"

struct conn;
struct generation;
struct listener_rt;
struct listen_slot;

/* One listening handle of a worker: the worker's socket of one slot, accepting for the listener
 * of the worker's generation that has that address. Freed in its close callback. */
struct worker_listener {
    uv_tcp_t handle;
    struct worker *worker;
    struct listen_slot *slot;
    struct listener_rt *rt;           /* in worker->gen */
    struct worker_listener *next;
};

struct worker {
    struct server *server;
    unsigned index;
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t wakeup;                /* control → worker: a new generation, drain or stop */
    struct generation *gen;           /* adopted: the one new connections are accepted under */
    struct worker_listener *listeners;
    uv_idle_t drain_idle;             /* drain: one more non-blocking pass over the sockets, */
    uv_check_t drain_check;           /* then stop accepting (so the accept queues are served) */
    unsigned drain_passes;
    struct conn *conns;               /* every open connection, for drain and forced close */
    unsigned n_conns;
    bool draining, stopping;
    bool gone;                        /* wakeup closed: the control thread must not send to it */
};

struct server {
    struct conf *conf;                 /* the current generation's (control thread only) */
    struct generation *gen;            /* current; replaced under gen_lock by the control thread */
    pthread_mutex_t gen_lock;          /* gen, and the list of live generations */
    struct generation *live;           /* every generation not yet freed, newest first */
    struct cs_current *certs;
    struct worker *workers;
    unsigned n_workers;
    atomic_uint open_total;            /* all connections, for the global max_connections */
    uv_loop_t *loop;                   /* the control loop (main thread) */
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t drain_timer;
    atomic_uint workers_running;
    uv_mutex_t wake_lock;              /* orders wake_workers() against a worker closing its wakeup */
    uv_async_t worker_exited;
    atomic_bool unhealthy;             /* a drain began: health checks fail (drain_grace first) */
    atomic_bool draining;              /* stop accepting */
    uv_timer_t grace_timer;            /* drain_grace: accepting goes on until it fires */
    atomic_bool stopping;              /* close everything now */
    struct admin *admin;               /* admin endpoint, when configured */
    struct reload *reload;             /* reload machinery (control thread) */
    struct watch *watch;               /* file watcher (control thread) */
    uv_signal_t sig_usr2;
    const char *exe;                   /* the binary's path at start, run again by SIGUSR2 */
    char **argv;                       /* with these arguments */
    struct upgrade *upgrade;           /* a SIGUSR2 upgrade and its new process (until it exits) */
    bool retired;                      /* handed over to a new process: serving old sessions */
    bool retired_term;                 /* ... and a SIGTERM came since */
    struct acme_host *acme;            /* the ACME client (control thread) */
};

/* Builds everything the config asks for and binds the listening sockets; nothing runs yet.
 * Takes over CONF (freed by server_free) and STORE. On failure returns -errno/-EINVAL with a
 * message already logged. */
int server_init(struct server *srv, struct conf *conf, struct cs_store *store);
/* Runs workers and the control loop until drained; returns the exit status. */
int server_run(struct server *srv);
void server_free(struct server *srv);
/* Stops accepting, fails health checks, lets connections finish up to drain_timeout. */
void server_begin_drain(struct server *srv);
/* After a SIGUSR2 upgrade: stops accepting (the new process has the sockets), closes the admin
 * endpoint and serves the open connections until they end, or until hard_stop_after. */
void server_retire(struct server *srv);

/* Control thread: makes GEN (its slots attached) the current generation and tells the workers.
 * Takes over the caller's reference. */
void server_publish(struct server *srv, struct generation *gen);
/* The current generation, as a new reference (any thread). */
struct generation *server_generation_get(struct server *srv);
/* Called by gen_unref for a generation about to be freed. */
void server_forget_generation(struct server *srv, struct generation *gen);

#endif
