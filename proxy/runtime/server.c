/* The runtime: per-listener TLS contexts and sockets built at start, one event loop per worker
 * thread, and the control loop on the main thread for signals, reload and drain. */
#include "proxy/runtime/server.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proxy/ops/admin.h"
#include "proxy/conn/buf.h"
#include "proxy/conn/climit.h"
#include "proxy/conn/conn.h"
#include "proxy/runtime/generation.h"
#include "proxy/runtime/listener.h"
#include "proxy/ops/log.h"
#include "proxy/ops/metrics.h"
#include "proxy/runtime/notify.h"
#include "proxy/runtime/privs.h"
#include "proxy/runtime/acme_host.h"
#include "proxy/runtime/reload.h"
#include "proxy/runtime/routes.h"
#include "proxy/tls/tickets.h"
#include "proxy/tls/tls.h"
#include "proxy/runtime/upgrade.h"
#include "proxy/runtime/watch.h"

static unsigned worker_count(const struct conf *conf)
{
    if (conf->workers)
        return conf->workers;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

int server_init(struct server *srv, struct conf *conf, struct cs_store *store)
{
    memset(srv, 0, sizeof *srv);
    uv_mutex_init(&srv->wake_lock);
    pthread_mutex_init(&srv->gen_lock, NULL);
    srv->conf = conf;
    srv->certs = cs_current_new(store);
    srv->n_workers = worker_count(conf);
    srv->workers = calloc(srv->n_workers, sizeof *srv->workers);
    if (!srv->certs || !srv->workers) {
        conf_free(conf);
        srv->conf = NULL;
        log_err("out of memory");
        return -ENOMEM;
    }
    climit_setup(conf->max_connections_per_client);
    if (conf->tls.ticket_keys) {
        char *err = NULL;
        struct tickets *t = tickets_load(conf->tls.ticket_keys, &err);
        if (!t) {
            log_lines(CONF_LOG_ERR, err);
            free(err);
            conf_free(conf);
            srv->conf = NULL;
            return -EINVAL;
        }
        tickets_set_current(t);
    }
    char *err = NULL;
    struct routes *routes = routes_new(conf);
    /* gen_new frees CONF on failure. */
    struct generation *gen = routes ? gen_new(conf, routes, srv->certs, &err) : NULL;
    if (!routes) {
        conf_free(conf);
        err = strdup("out of memory\n");
    }
    if (gen && gen_attach_slots(gen, NULL, srv->n_workers, &err) < 0) {
        gen_unref(gen);
        gen = NULL;
    }
    if (!gen) {
        srv->conf = NULL;
        log_lines(CONF_LOG_ERR, err);
        free(err);
        return -EINVAL;
    }
    gen->id = 1;
    server_publish(srv, gen);
    return 0;
}

/* ---- generations ---- */

static void wake_workers(struct server *srv);

void server_publish(struct server *srv, struct generation *gen)
{
    gen->srv = srv;
    pthread_mutex_lock(&srv->gen_lock);
    struct generation *old = srv->gen;
    srv->gen = gen;
    gen->next = srv->live;
    if (srv->live)
        srv->live->prev = gen;
    srv->live = gen;
    pthread_mutex_unlock(&srv->gen_lock);
    srv->conf = gen->conf;
    log_setup(gen->conf->log_level, gen->conf->log_target);
    climit_setup(gen->conf->max_connections_per_client);
    gen_unref(old);
    if (atomic_load(&srv->workers_running))
        wake_workers(srv);
}

struct generation *server_generation_get(struct server *srv)
{
    pthread_mutex_lock(&srv->gen_lock);
    struct generation *g = srv->gen;
    gen_ref(g);
    pthread_mutex_unlock(&srv->gen_lock);
    return g;
}

void server_forget_generation(struct server *srv, struct generation *gen)
{
    pthread_mutex_lock(&srv->gen_lock);
    if (gen->prev)
        gen->prev->next = gen->next;
    else if (srv->live == gen)
        srv->live = gen->next;
    if (gen->next)
        gen->next->prev = gen->prev;
    pthread_mutex_unlock(&srv->gen_lock);
}

/* ---- workers ---- */

static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Closes every handle of the worker's loop, its wakeup included: marked gone first, under the
 * lock the control thread holds while sending, so no uv_async_send can hit a closed handle. */
static void worker_stop_listening(struct worker *w)
{
    for (struct worker_listener *wl = w->listeners; wl; wl = wl->next)
        listener_stop(wl);
}

static void worker_close_all(struct worker *w)
{
    uv_mutex_lock(&w->server->wake_lock);
    w->gone = true;
    uv_mutex_unlock(&w->server->wake_lock);
    /* Listening handles first, through their own close callback (it frees them). */
    worker_stop_listening(w);
    uv_walk(&w->loop, close_walk, NULL);
}

/* Takes the server's current generation if it is newer than the worker's: accepting sockets of
 * addresses it keeps now serve its listeners, sockets of addresses it dropped close, and those of
 * new addresses open. Connections already accepted keep their own generation. */
static void worker_adopt(struct worker *w)
{
    struct generation *g = server_generation_get(w->server);
    if (g == w->gen) {
        gen_unref(g);
        return;
    }
    for (struct worker_listener *wl = w->listeners; wl; wl = wl->next) {
        wl->rt = NULL;
        for (size_t i = 0; i < g->n_listeners; i++)
            if (g->listeners[i].slot == wl->slot)
                wl->rt = &g->listeners[i];
        if (!wl->rt)
            listener_stop(wl);
    }
    for (size_t i = 0; i < g->n_listeners; i++) {
        struct listen_slot *slot = g->listeners[i].slot;
        bool have = false;
        for (struct worker_listener *wl = w->listeners; wl && !have; wl = wl->next)
            have = wl->slot == slot && wl->rt;
        for (unsigned k = w->index; !have && k < slot->n_fds; k += w->server->n_workers) {
            if (slot->fds[k] < 0 || slot->handed[k])
                continue;
            slot->handed[k] = true; /* the handle owns it now */
            int r = listener_start(w, slot, &g->listeners[i], slot->fds[k]);
            if (r < 0)
                log_err("worker %u: listener %s: %s", w->index, g->listeners[i].conf->name,
                        uv_strerror(r));
        }
    }
    struct generation *old = w->gen;
    w->gen = g;
    gen_unref(old);
}

static void on_drain_idle(uv_idle_t *h)
{
    (void)h;
}

static void on_drain_check(uv_check_t *h)
{
    struct worker *w = h->data;
    /* The first check follows the poll that delivered the wakeup; the second follows one more
     * poll, made non-blocking by the idle handle, that saw every socket afresh. */
    if (w->drain_passes++ == 0)
        return;
    uv_idle_stop(&w->drain_idle);
    uv_check_stop(&w->drain_check);
    worker_stop_listening(w);
    if (w->n_conns == 0)
        worker_close_all(w);
}

/* Runs on the worker's loop whenever the control thread (or a closing connection during a
 * drain) wants it to look at the server's state. */
static void on_worker_wakeup(uv_async_t *a)
{
    struct worker *w = a->data;
    struct server *srv = w->server;
    if (atomic_load(&srv->stopping) && !w->stopping) {
        w->stopping = true;
        conn_close_all(w, OUT_DRAIN);
    }
    if (atomic_load(&srv->draining) && !w->draining && !w->stopping) {
        /* Connections already in the accept queues were promised service: the idle handle makes
         * the next poll non-blocking, libuv accepts everything pending in it, and the check
         * handle, which runs after the polls, closes the sockets after one full extra pass. */
        w->draining = true;
        uv_idle_start(&w->drain_idle, on_drain_idle);
        uv_check_start(&w->drain_check, on_drain_check);
        return;
    }
    if (!w->draining && !w->stopping)
        worker_adopt(w);
    if ((w->stopping || (w->draining && !uv_is_active((uv_handle_t *)&w->drain_check))) &&
        w->n_conns == 0)
        worker_close_all(w);
}

static void worker_main(void *arg)
{
    struct worker *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
    worker_close_all(w);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&w->loop) != 0)
        log_err("worker %u: loop closed with handles still open", w->index);
    buf_pool_drain();
    /* Under the lock: the control thread closes worker_exited once it sees the count at zero,
     * so the last send must happen before it can look. */
    uv_mutex_lock(&w->server->wake_lock);
    atomic_fetch_sub(&w->server->workers_running, 1);
    uv_async_send(&w->server->worker_exited);
    uv_mutex_unlock(&w->server->wake_lock);
}

static int worker_init(struct server *srv, unsigned index)
{
    struct worker *w = &srv->workers[index];
    w->server = srv;
    w->index = index;
    if (uv_loop_init(&w->loop) < 0)
        return -ENOMEM;
    w->loop.data = w;
    uv_async_init(&w->loop, &w->wakeup, on_worker_wakeup);
    uv_idle_init(&w->loop, &w->drain_idle);
    uv_check_init(&w->loop, &w->drain_check);
    w->wakeup.data = w->drain_idle.data = w->drain_check.data = w;
    worker_adopt(w);
    return 0;
}

static void wake_workers(struct server *srv)
{
    uv_mutex_lock(&srv->wake_lock);
    for (unsigned i = 0; i < srv->n_workers; i++)
        if (!srv->workers[i].gone)
            uv_async_send(&srv->workers[i].wakeup);
    uv_mutex_unlock(&srv->wake_lock);
}

/* ---- control loop ---- */

static void stop_control(struct server *srv)
{
    uv_close((uv_handle_t *)&srv->sig_term, NULL);
    uv_close((uv_handle_t *)&srv->sig_int, NULL);
    uv_close((uv_handle_t *)&srv->sig_hup, NULL);
    uv_close((uv_handle_t *)&srv->sig_usr2, NULL);
    /* Closing the handles restores the default dispositions; a signal in the last moments of
     * the exit must not kill the process with a status that says it crashed. */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGUSR2, SIG_IGN);
    uv_close((uv_handle_t *)&srv->drain_timer, NULL);
    uv_close((uv_handle_t *)&srv->grace_timer, NULL);
    uv_close((uv_handle_t *)&srv->worker_exited, NULL);
    admin_stop(srv);
    acme_host_stop(srv);
    reload_stop(srv);
    watch_stop(srv);
    upgrade_stop(srv);
    upgrade_remove_pid_file(srv->conf->pid_file);
}

static void on_worker_exited(uv_async_t *a)
{
    struct server *srv = a->data;
    uv_mutex_lock(&srv->wake_lock);
    bool all_gone = atomic_load(&srv->workers_running) == 0;
    uv_mutex_unlock(&srv->wake_lock);
    if (all_gone)
        stop_control(srv);
}

static void force_stop(struct server *srv)
{
    atomic_store(&srv->stopping, true);
    wake_workers(srv);
}

static void on_drain_timeout(uv_timer_t *t)
{
    struct server *srv = t->data;
    log_notice("drain timeout: closing the connections still open");
    force_stop(srv);
}

static void stop_accepting(struct server *srv)
{
    atomic_store(&srv->draining, true);
    unsigned open = atomic_load(&srv->open_total);
    log_notice("draining: no new connections; %u open, waiting up to %u s", open,
               srv->conf->drain_timeout_s);
    uv_timer_start(&srv->drain_timer, on_drain_timeout, (uint64_t)srv->conf->drain_timeout_s * 1000, 0);
    wake_workers(srv);
}

static void on_grace_over(uv_timer_t *t)
{
    stop_accepting(t->data);
}

/* Behind a load balancer the health check must fail before accepting stops: the balancer sends
 * connections until its next check notices, and those must still be served (drain_grace). */
void server_begin_drain(struct server *srv)
{
    if (atomic_load(&srv->unhealthy))
        return;
    atomic_store(&srv->unhealthy, true);
    notify_stopping();
    watch_stop(srv);
    upgrade_abandon(srv, "the process is stopping");
    unsigned grace = srv->conf->drain_grace_ms;
    if (!grace) {
        stop_accepting(srv);
        return;
    }
    log_notice("draining: /healthz answers 503; accepting for %u.%03u s more", grace / 1000,
               grace % 1000);
    uv_timer_start(&srv->grace_timer, on_grace_over, grace, 0);
}

static void on_stop_signal(uv_signal_t *s, int signum)
{
    struct server *srv = s->data;
    if (srv->retired && !srv->retired_term) {
        /* Retired after an upgrade, serving its old sessions with no deadline (or
         * hard_stop_after): a stop gives them drain_timeout, as a drain would. */
        srv->retired_term = true;
        log_notice("signal %d: retired after an upgrade; open connections get up to %u s", signum,
                   srv->conf->drain_timeout_s);
        uv_timer_start(&srv->drain_timer, on_drain_timeout, (uint64_t)srv->conf->drain_timeout_s * 1000, 0);
        return;
    }
    if (atomic_load(&srv->unhealthy)) {
        log_notice("signal %d again: exiting now", signum);
        force_stop(srv);
        return;
    }
    server_begin_drain(srv);
}

static void on_hup(uv_signal_t *s, int signum)
{
    (void)signum;
    reload_request(s->data, "SIGHUP");
}

static void on_usr2(uv_signal_t *s, int signum)
{
    (void)signum;
    upgrade_begin(s->data);
}

void server_retire(struct server *srv)
{
    if (atomic_load(&srv->draining))
        return;
    srv->retired = true;
    atomic_store(&srv->unhealthy, true);
    atomic_store(&srv->draining, true);
    admin_stop(srv);
    /* The new process orders from now on; it shares the storage, so nothing is lost. */
    acme_host_stop(srv);
    watch_stop(srv);
    unsigned limit = srv->conf->hard_stop_after_s;
    if (limit)
        uv_timer_start(&srv->drain_timer, on_drain_timeout, (uint64_t)limit * 1000, 0);
    wake_workers(srv);
}

int server_run(struct server *srv)
{
    srv->loop = uv_default_loop();
    signal(SIGPIPE, SIG_IGN);
    uv_signal_init(srv->loop, &srv->sig_term);
    uv_signal_init(srv->loop, &srv->sig_int);
    uv_signal_init(srv->loop, &srv->sig_hup);
    uv_signal_init(srv->loop, &srv->sig_usr2);
    uv_timer_init(srv->loop, &srv->drain_timer);
    uv_timer_init(srv->loop, &srv->grace_timer);
    uv_async_init(srv->loop, &srv->worker_exited, on_worker_exited);
    srv->sig_term.data = srv->sig_int.data = srv->sig_hup.data = srv->sig_usr2.data =
        srv->drain_timer.data = srv->grace_timer.data = srv->worker_exited.data = srv;
    uv_signal_start(&srv->sig_term, on_stop_signal, SIGTERM);
    uv_signal_start(&srv->sig_int, on_stop_signal, SIGINT);
    uv_signal_start(&srv->sig_hup, on_hup, SIGHUP);
    uv_signal_start(&srv->sig_usr2, on_usr2, SIGUSR2);

    /* Everything that needs root — listening sockets, the admin socket, the keys, the
     * watches — is in place; workers start only once the switch to `user` has succeeded. */
    int admin_rc = admin_start(srv);
    /* What an old process handed over (SIGUSR2) and no listener took: a listener removed. */
    upgrade_close_unclaimed();
    if (admin_rc < 0 || reload_start(srv) < 0 || watch_start(srv) < 0 ||
        privs_drop(srv->conf) < 0 || acme_host_start(srv) < 0) {
        stop_control(srv);
        uv_run(srv->loop, UV_RUN_DEFAULT);
        return 1;
    }
    for (unsigned i = 0; i < srv->n_workers; i++) {
        if (worker_init(srv, i) < 0) {
            log_err("cannot start worker %u", i);
            return 1;
        }
    }
    atomic_store(&srv->workers_running, srv->n_workers);
    for (unsigned i = 0; i < srv->n_workers; i++)
        uv_thread_create(&srv->workers[i].thread, worker_main, &srv->workers[i]);
    /* The pid file first: whoever hears that this process is ready (systemd, the old process
     * of an upgrade, a script reading the log) finds it naming this process. */
    upgrade_write_pid_file(srv->conf->pid_file);
    log_notice("mailsnid running: %zu listeners, %u workers", srv->gen->n_listeners, srv->n_workers);
    notify_ready();
    upgrade_report_ready();

    uv_run(srv->loop, UV_RUN_DEFAULT);
    for (unsigned i = 0; i < srv->n_workers; i++)
        uv_thread_join(&srv->workers[i].thread);
    log_notice("mailsnid stopped");
    return 0;
}

void server_free(struct server *srv)
{
    if (srv->loop) {
        uv_run(srv->loop, UV_RUN_NOWAIT);
        uv_loop_close(srv->loop);
    }
    for (unsigned i = 0; srv->workers && i < srv->n_workers; i++)
        gen_unref(srv->workers[i].gen);
    free(srv->workers);
    /* Every connection is gone: the current generation is the last one, and takes the sockets
     * no worker adopted with it. */
    struct generation *g = srv->gen;
    srv->gen = NULL;
    gen_unref(g);
    tickets_shutdown();
    climit_shutdown();
    if (srv->certs)
        cs_current_free(srv->certs);
    pthread_mutex_destroy(&srv->gen_lock);
    uv_mutex_destroy(&srv->wake_lock);
    memset(srv, 0, sizeof *srv);
}
