/* generation: one configuration in force — the parsed conf, each listener's settings and TLS
 * context, the routes — built whole, published at once, and shared read-only by the workers and
 * by every connection accepted under it.
 *
 * A reload never changes a generation: it builds the next one (conf, routes and TLS contexts on
 * the thread pool; sockets on the control thread), publishes it, and wakes the workers, which
 * adopt it on their own loops. Each connection holds a reference to the generation it was
 * accepted under, so it keeps its listener settings, backends and route until it ends; a
 * generation is freed when the server has moved on and its last connection is gone. Reload never
 * walks the connections.
 *
 * Listening addresses outlive generations: a struct listen_slot is one address with one
 * SO_REUSEPORT socket per worker (and the address's counters). The next generation takes over
 * the slot of every address it still has (same socket: no connect is refused during a reload);
 * an address it no longer has is closed by each worker when it adopts the new generation, and
 * its slot is freed with the last generation that had it. The counters live one level further
 * out (struct listen_count), shared by every slot of the address: a listener removed by one
 * reload and added again by the next, while sessions of the first still run, gets a new slot
 * (new sockets) but finds those sessions counted, so its max_connections holds. */
#ifndef MAILSNID_GENERATION_H
#define MAILSNID_GENERATION_H

#include <stdatomic.h>
#include <stdbool.h>
#include <openssl/ssl.h>

#include "conf/conf.h"
#include "certstore/certstore.h"

struct server;
struct routes;
struct http_setup;

struct listen_slot {
    struct conf_addr addr;
    atomic_uint refs;                 /* generations that have this address */
    unsigned n_fds;
    int *fds;                         /* SO_REUSEPORT sockets: one per worker when bound here, as
                                         many as the old process had when inherited (SIGUSR2);
                                         worker w serves fds[i] for i % workers == w */
    bool *handed;                     /* fds[i] belongs to a worker's handle (it closes it) */
    struct listen_count *count;       /* a reference */
};

/* An address's connections, whichever slot accepted them; kept while a slot of it lives. */
struct listen_count {
    struct conf_addr addr;
    unsigned refs;                    /* slots of this address; under the registry's lock */
    atomic_uint open;                 /* connections open now (max_connections), all workers */
    atomic_ullong total;
    struct listen_count *next;        /* the registry's list */
};

/* One listener as one generation configures it. */
struct listener_rt {
    const struct conf_listener *conf; /* points into the generation's conf */
    SSL_CTX *ssl_ctx;
    struct listen_slot *slot;         /* a reference */
};

struct generation {
    atomic_uint refs;                 /* the server while current, each worker that adopted it,
                                         each connection accepted under it */
    unsigned long long id;            /* 1 at start, +1 per successful reload */
    struct conf *conf;                /* owned */
    struct listener_rt *listeners;
    size_t n_listeners;
    struct routes *routes;            /* owned (a reference) */
    struct http_setup *setup;         /* owned: client setup over conf's domains */
    atomic_uint conns;                /* connections open under it, for /metrics */
    struct server *srv;
    struct generation *prev, *next;   /* the server's live generations (srv->gen_lock) */
};

/* Builds a generation from CONF (taken over) and ROUTES (taken over), with a TLS context per
 * listener over CERTS. Safe on any thread. On failure returns NULL and replaces *ERR with a heap
 * "FILE:LINE: reason\n" text; CONF and ROUTES are freed. */
struct generation *gen_new(struct conf *conf, struct routes *routes, struct cs_current *certs,
                           char **err);
/* Control thread: gives each listener of GEN the slot of the same address in CURRENT (NULL at
 * start), or binds a new one (N_WORKERS sockets). On failure (a port taken, say) returns
 * negative and replaces *ERR; GEN is then still unpublished and can be dropped with gen_unref. */
int gen_attach_slots(struct generation *gen, const struct generation *current, unsigned n_workers,
                     char **err);
void gen_ref(struct generation *gen);
void gen_unref(struct generation *gen);

/* The slot of ADDR in GEN, or NULL. */
struct listen_slot *gen_find_slot(const struct generation *gen, const struct conf_addr *addr);

#endif
