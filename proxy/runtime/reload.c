/* One build at a time: a request that arrives while a build runs sets `again`, and the build
 * is repeated once it finishes, so a burst of signals costs at most two builds.
 *
 * A pair ACME stored goes live through a narrower build: the running snapshot with only that
 * domain's pair read again (cs_store_update_acme), no configuration, no other file, no new
 * generation. A reload costs O(every pair on disk) — 0.1 s at 10,000 — and would run back to
 * back while thousands of domains onboard; the update costs an index rebuild in memory. It takes
 * its turn in the same queue, so a reload and an update never build from the same snapshot and
 * undo each other; the domains that arrive meanwhile wait and go together in the next one.
 * Updates also keep a gap of UPDATE_GAP times the CPU time the last one took, so that while
 * thousands of domains onboard they take at most a hundredth of the core they share with the
 * workers, too little to show in the handshakes' p99 (at 10,000 pairs an update takes 10-40 ms
 * of CPU: a new pair waits a few seconds more, and the domains issued meanwhile go together).
 * CPU time, not wall time: on a busy core an update waits for the CPU longer than it uses it,
 * and bench/acme saw 0.27 s updates hold the last domains back for 27 s. The gap never exceeds
 * UPDATE_GAP_MAX_MS, so that at 100,000 pairs a new certificate is not held back longer either
 * (there an update may then take a few per cent of a core while onboarding). */
#include "proxy/runtime/reload.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proxy/runtime/acme_host.h"
#include "proxy/ops/admin.h"
#include "proxy/runtime/generation.h"
#include "proxy/ops/log.h"
#include "proxy/ops/metrics.h"
#include "proxy/runtime/notify.h"
#include "proxy/runtime/routes.h"
#include "proxy/tls/tickets.h"
#include "proxy/runtime/upgrade.h"
#include "proxy/runtime/watch.h"

#define UPDATE_GAP 99
#define UPDATE_GAP_MAX_MS 10000

struct reload {
    struct server *srv;
    uv_work_t work;
    bool running, again, stopping;
    bool updating;                        /* the build that runs is an ACME update */
    const char *why;
    /* ACME domains whose new pairs wait for the next update, and those the running one reads
     * from STORAGE. */
    char **waiting, **reading, *storage;
    size_t n_waiting, cap_waiting, n_reading;
    uv_timer_t gap;                       /* until the next update may start */
    uint64_t update_after;                /* loop time (ms) */
    /* Results of the build, handed from the pool thread to the control loop. */
    struct conf *conf;
    struct cs_store *store;
    struct tickets *tickets;
    struct generation *gen;
    char *errors, *warnings;
    double seconds;
    double cpu_seconds;                   /* of an update: what sets the gap after it */
};

int reload_start(struct server *srv)
{
    srv->reload = calloc(1, sizeof *srv->reload);
    if (!srv->reload)
        return -1;
    srv->reload->srv = srv;
    uv_timer_init(srv->loop, &srv->reload->gap);
    srv->reload->gap.data = srv->reload;
    return 0;
}

static void free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

static void on_gap_closed(uv_handle_t *handle)
{
    struct reload *r = handle->data;
    free_names(r->waiting, r->n_waiting);
    free_names(r->reading, r->n_reading);
    free(r->storage);
    free(r);
}

/* Detaches R from the server and frees it once its timer is closed. */
static void reload_free(struct reload *r)
{
    r->srv->reload = NULL;
    uv_close((uv_handle_t *)&r->gap, on_gap_closed);
}

void reload_stop(struct server *srv)
{
    if (!srv->reload)
        return;
    uv_timer_stop(&srv->reload->gap);
    if (srv->reload->running) {
        srv->reload->stopping = true; /* freed when the build returns */
        return;
    }
    reload_free(srv->reload);
}

static double clock_seconds(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double now_seconds(void)
{
    return clock_seconds(CLOCK_MONOTONIC);
}

/* On the thread pool: everything of the next generation but its sockets. */
static void build(uv_work_t *work)
{
    struct reload *r = work->data;
    double start = now_seconds();
    if (conf_load(r->srv->conf->path, &r->conf, &r->errors) == 0) {
        if (r->conf->tls.ticket_keys &&
            !(r->tickets = tickets_load(r->conf->tls.ticket_keys, &r->errors))) {
            r->seconds = now_seconds() - start;
            return;
        }
        struct cs_store *current = cs_current_get(r->srv->certs);
        if (cs_store_build(r->conf, current, &r->store, &r->errors, &r->warnings) < 0)
            r->store = NULL;
        cs_store_unref(current);
        /* 100,000 routes take a few tens of ms to index: here, not on the control loop. */
        struct routes *routes = r->store ? routes_new(r->conf) : NULL;
        if (r->store && !routes) {
            free(r->errors);
            r->errors = strdup("out of memory for the routes index\n");
        }
        if (routes) {
            r->gen = gen_new(r->conf, routes, r->srv->certs, &r->errors);
            r->conf = NULL; /* the generation has it (or freed it) */
        }
        if (!r->gen && r->store) {
            cs_store_unref(r->store);
            r->store = NULL;
        }
    }
    r->seconds = now_seconds() - start;
}

static bool same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* What lives in threads or in the process's identity cannot change by reload: say so instead of
 * silently ignoring it. */
static void warn_fixed_settings(const struct conf *old, const struct conf *new)
{
    if (old->workers != new->workers)
        log_warning("reload: workers = %u takes effect at the next restart or upgrade (SIGUSR2)",
                    new->workers);
    if (!same_str(old->user, new->user) || !same_str(old->group, new->group))
        log_warning("reload: user/group (%s/%s) take effect at the next restart or upgrade (SIGUSR2)",
                    new->user ? new->user : "-", new->group ? new->group : "-");
}

static void update_start(struct reload *r);

/* After a build: the process is stopping (R is freed), or a reload was asked for meanwhile, or
 * the ACME domains that waited go next. */
static void after_build(struct reload *r, bool was_reload)
{
    struct server *srv = r->srv;
    if (r->stopping) {
        reload_free(r);
        return;
    }
    if (r->again) {
        r->again = false;
        reload_request(srv, "queued request");
        return;
    }
    if (was_reload)
        notify_ready(); /* reload over, whether it worked or not: the service is serving */
    update_start(r);
}

static void finish(uv_work_t *work, int status)
{
    struct reload *r = work->data;
    struct server *srv = r->srv;
    r->running = false;
    if (status == 0 && !r->stopping && (atomic_load(&srv->unhealthy) || upgrade_pending(srv))) {
        /* A drain or an upgrade began while this build ran: it is not published. */
        log_notice("reload (%s) dropped: %s", r->why, atomic_load(&srv->unhealthy)
                   ? "this process is draining" : "an upgrade is running");
        r->again = false;
    } else if (status == 0 && !r->stopping) {
        log_lines(CONF_LOG_WARNING, r->warnings);
        /* New addresses are bound here, before anything changes: a port that is taken fails
         * the reload as a whole. */
        if (r->gen && (gen_attach_slots(r->gen, srv->gen, srv->n_workers, &r->errors) < 0 ||
                       admin_replace(srv, srv->conf, r->gen->conf) < 0)) {
            cs_store_unref(r->store);
            r->store = NULL;
        }
        if (!r->store) {
            log_lines(CONF_LOG_ERR, r->errors);
            log_err("reload (%s) failed: the running configuration keeps serving", r->why);
            metrics_reload(false);
        } else {
            struct cs_stats st;
            cs_store_stats(r->store, &st);
            warn_fixed_settings(srv->conf, r->gen->conf);
            cs_current_set(srv->certs, r->store);
            /* Listeners started without tls.ticket_keys keep OpenSSL's own keys until a
             * restart; with it, the new key set applies to the next ticket. */
            if (r->tickets || srv->conf->tls.ticket_keys) {
                tickets_set_current(r->tickets);
                r->tickets = NULL;
            }
            struct generation *gen = r->gen;
            r->gen = NULL;
            gen->id = srv->gen->id + 1;
            bool pid_moved = !same_str(srv->conf->pid_file, gen->conf->pid_file);
            if (pid_moved)
                upgrade_remove_pid_file(srv->conf->pid_file);
            server_publish(srv, gen);
            if (pid_moved)
                upgrade_write_pid_file(srv->conf->pid_file);
            acme_host_configure(srv, gen->conf);
            log_notice("reload (%s): generation %llu: %zu listeners, %zu pairs (+%zu added, %zu "
                       "changed, -%zu removed, %zu skipped), %zu routes, %zu domains in %.3f s",
                       r->why, gen->id, gen->n_listeners, st.pairs, st.pairs_added,
                       st.pairs_changed, st.pairs_removed, st.skipped, routes_count(gen->routes),
                       gen->conf->n_domains, r->seconds);
            metrics_reload(true);
            r->store = NULL;
        }
        /* After the swap, not before: walking 100,000 domain folders must not delay a
         * renewal going live. Folders may have come or gone. */
        watch_refresh(srv, srv->conf);
    }
    if (r->store)
        cs_store_unref(r->store);
    gen_unref(r->gen);
    r->gen = NULL;
    tickets_free(r->tickets);
    r->tickets = NULL;
    conf_free(r->conf);
    free(r->errors);
    free(r->warnings);
    r->conf = NULL;
    r->store = NULL;
    r->errors = r->warnings = NULL;
    after_build(r, true);
}

void reload_request(struct server *srv, const char *why)
{
    struct reload *r = srv->reload;
    if (!r || r->stopping)
        return;
    /* A process on its way out binds nothing new: no worker would serve it. And while a new
     * binary starts, it reads the config on disk itself; a reload here could bind an address
     * the new process then finds taken. */
    if (atomic_load(&srv->unhealthy) || upgrade_pending(srv)) {
        log_notice("reload (%s) ignored: %s", why,
                   atomic_load(&srv->unhealthy) ? "this process is draining"
                                                : "an upgrade is starting the new binary, which reads the config itself");
        return;
    }
    if (r->running) {
        r->again = true;
        return;
    }
    /* The reload reads every pair ACME stored so far. */
    free_names(r->waiting, r->n_waiting);
    r->waiting = NULL;
    r->n_waiting = r->cap_waiting = 0;
    r->why = why;
    r->running = true;
    notify_reloading();
    r->work.data = r;
    if (uv_queue_work(srv->loop, &r->work, build, finish) < 0) {
        r->running = false;
        log_err("reload (%s): cannot start", why);
    }
}

/* ---- ACME updates ---- */

/* On the thread pool. */
static void update_build(uv_work_t *work)
{
    struct reload *r = work->data;
    double start = now_seconds(), cpu_start = clock_seconds(CLOCK_THREAD_CPUTIME_ID);
    struct cs_store *current = cs_current_get(r->srv->certs);
    if (cs_store_update_acme(current, r->storage, r->reading, r->n_reading, &r->store,
                             &r->errors, &r->warnings) < 0)
        r->store = NULL;
    cs_store_unref(current);
    r->seconds = now_seconds() - start;
    r->cpu_seconds = clock_seconds(CLOCK_THREAD_CPUTIME_ID) - cpu_start;
}

static void update_finish(uv_work_t *work, int status)
{
    struct reload *r = work->data;
    struct server *srv = r->srv;
    r->running = r->updating = false;
    double gap_ms = r->cpu_seconds * 1000 * UPDATE_GAP;
    r->update_after = uv_now(srv->loop) + (uint64_t)(gap_ms < UPDATE_GAP_MAX_MS ? gap_ms
                                                                             : UPDATE_GAP_MAX_MS);
    if (status == 0 && !r->stopping && r->store &&
        !atomic_load(&srv->unhealthy) && !upgrade_pending(srv)) {
        struct cs_stats st;
        cs_store_stats(r->store, &st);
        log_lines(CONF_LOG_WARNING, r->warnings);
        cs_current_set(srv->certs, r->store);
        r->store = NULL;
        char who[300];
        if (r->n_reading == 1)
            snprintf(who, sizeof who, "%s", r->reading[0]);
        else
            snprintf(who, sizeof who, "%s and %zu more", r->reading[0], r->n_reading - 1);
        log_notice("acme: certificates of %s in service: %zu pairs (+%zu added, %zu changed, "
                   "-%zu removed) in %.3f s (%.3f s CPU)", who, st.pairs, st.pairs_added,
                   st.pairs_changed, st.pairs_removed, r->seconds, r->cpu_seconds);
    } else if (status == 0 && !r->stopping && !r->store) {
        log_lines(CONF_LOG_ERR, r->errors);
        log_err("acme: the new certificates of %s%s wait for the next reload", r->reading[0],
                r->n_reading > 1 ? " and others" : "");
    }
    /* A draining or upgrading process drops them: the next process reads the storage. */
    cs_store_unref(r->store);
    r->store = NULL;
    free(r->errors);
    free(r->warnings);
    r->errors = r->warnings = NULL;
    free_names(r->reading, r->n_reading);
    r->reading = NULL;
    r->n_reading = 0;
    free(r->storage);
    r->storage = NULL;
    after_build(r, false);
}

static void on_gap(uv_timer_t *t)
{
    update_start(t->data);
}

/* Starts an update for the waiting domains, when there are some, nothing else runs and the
 * gap after the last one is over (else when it is). */
static void update_start(struct reload *r)
{
    struct server *srv = r->srv;
    if (r->running || r->stopping || !r->n_waiting)
        return;
    uint64_t now = uv_now(srv->loop);
    if (now < r->update_after) {
        if (!uv_is_active((uv_handle_t *)&r->gap))
            uv_timer_start(&r->gap, on_gap, r->update_after - now, 0);
        return;
    }
    if (atomic_load(&srv->unhealthy) || upgrade_pending(srv) || !srv->conf->acme.enabled ||
        !srv->conf->acme.storage || !(r->storage = strdup(srv->conf->acme.storage))) {
        free_names(r->waiting, r->n_waiting);
        r->waiting = NULL;
        r->n_waiting = r->cap_waiting = 0;
        return;
    }
    r->reading = r->waiting;
    r->n_reading = r->n_waiting;
    r->waiting = NULL;
    r->n_waiting = r->cap_waiting = 0;
    r->running = r->updating = true;
    r->work.data = r;
    if (uv_queue_work(srv->loop, &r->work, update_build, update_finish) < 0) {
        r->running = r->updating = false;
        log_err("acme: cannot start putting new certificates in service");
        free_names(r->reading, r->n_reading);
        r->reading = NULL;
        r->n_reading = 0;
        free(r->storage);
        r->storage = NULL;
    }
}

void reload_acme_pairs(struct server *srv, char **domains, size_t n)
{
    struct reload *r = srv->reload;
    size_t taken = 0;
    if (r && !r->stopping) {
        if (r->n_waiting + n > r->cap_waiting) {
            size_t cap = r->cap_waiting ? r->cap_waiting : 16;
            while (cap < r->n_waiting + n)
                cap *= 2;
            char **w = realloc(r->waiting, cap * sizeof *w);
            if (w) {
                r->waiting = w;
                r->cap_waiting = cap;
            }
        }
        if (r->n_waiting + n <= r->cap_waiting) {
            memcpy(r->waiting + r->n_waiting, domains, n * sizeof *domains);
            r->n_waiting += n;
            taken = n;
        } else {
            log_err("acme: out of memory: new certificates wait for the next reload");
        }
    }
    for (size_t i = taken; i < n; i++)
        free(domains[i]);
    free(domains);
    if (r)
        update_start(r);
}

bool reload_running(const struct server *srv)
{
    /* An ACME update binds nothing and is dropped when an upgrade begins: it does not count. */
    return srv->reload && srv->reload->running && !srv->reload->updating;
}
