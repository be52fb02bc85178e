#include "proxy/runtime/generation.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proxy/http/http_setup.h"
#include "proxy/runtime/listener.h"
#include "proxy/ops/log.h"
#include "proxy/runtime/routes.h"
#include "proxy/runtime/server.h"
#include "proxy/tls/tls.h"
#include "proxy/runtime/upgrade.h"

/* Replaces *ERR with a formatted line (callers may pass in an earlier message). */
__attribute__((format(printf, 2, 3)))
static void set_err(char **err, const char *fmt, ...)
{
    va_list ap;
    char *msg = NULL;
    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0)
        msg = NULL;
    va_end(ap);
    free(*err);
    *err = msg;
}

static bool same_addr(const struct conf_addr *a, const struct conf_addr *b)
{
    return a->len == b->len && memcmp(&a->ss, &b->ss, a->len) == 0;
}

/* The registry of listen_counts: few entries (one per address in use), looked up only when a
 * reload binds a new address or a slot is freed. */
static pthread_mutex_t counts_lock = PTHREAD_MUTEX_INITIALIZER;
static struct listen_count *counts;

static struct listen_count *count_get(const struct conf_addr *addr)
{
    pthread_mutex_lock(&counts_lock);
    struct listen_count *c = counts;
    while (c && !same_addr(&c->addr, addr))
        c = c->next;
    if (!c && (c = calloc(1, sizeof *c))) {
        c->addr = *addr;
        atomic_init(&c->open, 0);
        atomic_init(&c->total, 0);
        c->next = counts;
        counts = c;
    }
    if (c)
        c->refs++;
    pthread_mutex_unlock(&counts_lock);
    return c;
}

static void count_put(struct listen_count *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&counts_lock);
    if (--c->refs == 0) {
        struct listen_count **p = &counts;
        while (*p != c)
            p = &(*p)->next;
        *p = c->next;
        free(c);
    }
    pthread_mutex_unlock(&counts_lock);
}

static void slot_unref(struct listen_slot *s)
{
    if (!s || atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    count_put(s->count);
    for (unsigned i = 0; i < s->n_fds; i++)
        if (s->fds[i] >= 0 && !s->handed[i])
            close(s->fds[i]);
    free(s->fds);
    free(s->handed);
    free(s);
}

static void gen_free(struct generation *g)
{
    for (size_t i = 0; g->listeners && i < g->n_listeners; i++) {
        SSL_CTX_free(g->listeners[i].ssl_ctx);
        slot_unref(g->listeners[i].slot);
    }
    free(g->listeners);
    routes_unref(g->routes);
    http_setup_free(g->setup);
    conf_free(g->conf);
    free(g);
}

struct generation *gen_new(struct conf *conf, struct routes *routes, struct cs_current *certs,
                           char **err)
{
    struct generation *g = calloc(1, sizeof *g);
    if (!g || !(g->listeners = calloc(conf->n_listeners ? conf->n_listeners : 1, sizeof *g->listeners))) {
        free(g);
        routes_unref(routes);
        conf_free(conf);
        set_err(err, "out of memory\n");
        return NULL;
    }
    atomic_init(&g->refs, 1);
    g->conf = conf;
    g->routes = routes;
    g->n_listeners = conf->n_listeners;
    if (!(g->setup = http_setup_new(conf))) {
        set_err(err, "out of memory\n");
        gen_free(g);
        return NULL;
    }
    for (size_t i = 0; i < conf->n_listeners; i++) {
        const struct conf_listener *l = &conf->listeners[i];
        const char *why = NULL;
        g->listeners[i].conf = l;
        if (l->tls == CONF_TLS_NONE)
            continue; /* plain HTTP: no TLS context */
        g->listeners[i].ssl_ctx = tls_ctx_new(conf, l, certs, &why);
        if (!g->listeners[i].ssl_ctx) {
            set_err(err, "%s:%d: listener %s: %s\n", conf->path, l->line, l->name, why);
            gen_free(g);
            return NULL;
        }
    }
    return g;
}

struct listen_slot *gen_find_slot(const struct generation *gen, const struct conf_addr *addr)
{
    for (size_t i = 0; gen && i < gen->n_listeners; i++)
        if (gen->listeners[i].slot && same_addr(&gen->listeners[i].slot->addr, addr))
            return gen->listeners[i].slot;
    return NULL;
}

static unsigned addr_port(const struct conf_addr *a)
{
    if (a->ss.ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
    if (a->ss.ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
    return 0;
}

/* The listener of GEN whose socket is on ADDR's port at another address ("0.0.0.0:993" and
 * "127.0.0.1:993"): the kernel refuses the new one while this process still holds the old. */
static const struct conf_listener *own_listener_on_port(const struct generation *gen,
                                                        const struct conf_addr *addr)
{
    for (size_t i = 0; gen && i < gen->n_listeners; i++)
        if (gen->listeners[i].slot && addr_port(&gen->listeners[i].slot->addr) == addr_port(addr))
            return gen->listeners[i].conf;
    return NULL;
}

static struct listen_slot *slot_new(const struct conf_addr *addr, unsigned n_fds)
{
    struct listen_slot *s = calloc(1, sizeof *s);
    if (!s || !(s->fds = malloc(n_fds * sizeof *s->fds)) ||
        !(s->handed = calloc(n_fds, sizeof *s->handed)) || !(s->count = count_get(addr))) {
        if (s) {
            free(s->fds);
            free(s->handed);
        }
        free(s);
        return NULL;
    }
    atomic_init(&s->refs, 1);
    s->addr = *addr;
    for (unsigned i = 0; i < n_fds; i++)
        s->fds[i] = -1;
    s->n_fds = n_fds;
    return s;
}

static struct listen_slot *slot_bind(const struct conf *conf, const struct conf_listener *l,
                                     const struct generation *current, unsigned n_workers,
                                     char **err)
{
    int rc = 0, inherited[UPGRADE_MAX_FDS];
    unsigned n_inherited = upgrade_take_fds(&l->listen.ss, inherited, UPGRADE_MAX_FDS);
    struct listen_slot *s = slot_new(&l->listen, n_inherited > n_workers ? n_inherited : n_workers);
    if (!s) {
        for (unsigned i = 0; i < n_inherited; i++)
            close(inherited[i]);
        set_err(err, "out of memory\n");
        return NULL;
    }
    if (n_inherited) {
        /* The old process's sockets, accept queues and all: nothing queued is lost. More
         * workers than the old process had get sockets of their own in the same group. */
        memcpy(s->fds, inherited, n_inherited * sizeof *inherited);
        for (unsigned w = n_inherited; w < n_workers; w++) {
            int fd = listener_bind(l);
            if (fd < 0) {
                log_warning("%s:%d: listener %s: worker %u gets no socket of its own on %s: %s",
                            conf->path, l->line, l->name, w, l->listen.text, strerror(-fd));
                break;
            }
            s->fds[w] = fd;
        }
        return s;
    }
    if (listener_check_free(l) == -EADDRINUSE) {
        const struct conf_listener *own = own_listener_on_port(current, &l->listen);
        if (own)
            set_err(err, "%s:%d: listener %s: cannot listen on %s while this process listens on "
                    "%s (listener %s) on the same port: remove or move that one in a reload of "
                    "its own, then add this one\n", conf->path, l->line, l->name, l->listen.text,
                    own->listen.text, own->name);
        else
            set_err(err, "%s:%d: listener %s: cannot listen on %s: another process listens there "
                    "(a second mailsnid? SIGUSR2 upgrades a running one)\n", conf->path, l->line,
                    l->name, l->listen.text);
        slot_unref(s);
        return NULL;
    }
    for (unsigned w = 0; w < n_workers && rc >= 0; w++) {
        rc = listener_bind(l);
        if (rc >= 0)
            s->fds[w] = rc;
    }
    if (rc < 0) {
        set_err(err, "%s:%d: listener %s: cannot listen on %s: %s\n", conf->path, l->line,
                l->name, l->listen.text, strerror(-rc));
        slot_unref(s);
        return NULL;
    }
    return s;
}

int gen_attach_slots(struct generation *gen, const struct generation *current, unsigned n_workers,
                     char **err)
{
    for (size_t i = 0; i < gen->n_listeners; i++) {
        struct listener_rt *rt = &gen->listeners[i];
        struct listen_slot *s = gen_find_slot(current, &rt->conf->listen);
        if (s) {
            atomic_fetch_add(&s->refs, 1);
        } else if (!(s = slot_bind(gen->conf, rt->conf, current, n_workers, err))) {
            return -EADDRINUSE;
        }
        rt->slot = s;
    }
    return 0;
}

void gen_ref(struct generation *g)
{
    atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
}

void gen_unref(struct generation *g)
{
    if (!g || atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (g->srv)
        server_forget_generation(g->srv, g);
    gen_free(g);
}
