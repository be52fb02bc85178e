/* acme_host.c: see acme_host.h. */
#include "proxy/runtime/acme_host.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "acme/acme.h"
#include "certstore/certstore.h"
#include "proxy/ops/log.h"
#include "proxy/runtime/reload.h"

struct acme_host {
    struct server *srv;
    struct acme *acme;
    uv_async_t issued;                    /* ACME threads → control loop */
    struct acme_hooks hooks;
    /* Domains with a new pair, from the ACME threads, until the control loop takes them. */
    pthread_mutex_t lock;
    char **domains;
    size_t n, cap;
};

static void on_issued(uv_async_t *a)
{
    struct acme_host *h = a->data;
    pthread_mutex_lock(&h->lock);
    char **domains = h->domains;
    size_t n = h->n;
    h->domains = NULL;
    h->n = h->cap = 0;
    pthread_mutex_unlock(&h->lock);
    if (n)
        reload_acme_pairs(h->srv, domains, n);
    else
        free(domains);
}

/* On an ACME thread: a copy of the name under the lock, then uv_async_send, the one libuv
 * call that is safe there (several sends before the loop looks make one callback). */
static void issued(void *arg, const char *domain)
{
    struct acme_host *h = arg;
    char *copy = strdup(domain);
    pthread_mutex_lock(&h->lock);
    if (copy && h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 16;
        char **d = realloc(h->domains, cap * sizeof *d);
        if (d) {
            h->domains = d;
            h->cap = cap;
        }
    }
    if (copy && h->n < h->cap) {
        h->domains[h->n++] = copy;
        copy = NULL;
    }
    pthread_mutex_unlock(&h->lock);
    if (copy) {
        free(copy);
        log_err("acme: %s: out of memory: its new certificate waits for the next reload", domain);
    }
    uv_async_send(&h->issued);
}

/* On an ACME thread: the published snapshot is safe to read from any thread. An exact pair at
 * least as new as the stored one is served already — ACME's own, or an operator's, which wins. */
static bool serving(void *arg, const char *name, time_t not_after)
{
    struct acme_host *h = arg;
    struct cs_store *store = cs_current_get(h->srv->certs);
    if (!store)
        return false;
    struct cs_match match;
    cs_store_lookup(store, name, strlen(name), time(NULL), &match);
    bool served = false;
    for (int k = 0; match.kind == CS_KIND_EXACT && k < CS_KEY_TYPES; k++)
        served = served || (match.pair[k] && cs_pair_not_after(match.pair[k]) >= not_after);
    cs_store_unref(store);
    return served;
}

int acme_host_start(struct server *srv)
{
    struct acme_host *h = calloc(1, sizeof *h);
    if (!h)
        return -1;
    h->srv = srv;
    h->hooks = (struct acme_hooks){ .issued = issued, .serving = serving, .arg = h, .log = log_msg };
    pthread_mutex_init(&h->lock, NULL);
    if (uv_async_init(srv->loop, &h->issued, on_issued) < 0) {
        pthread_mutex_destroy(&h->lock);
        free(h);
        return -1;
    }
    h->issued.data = h;
    srv->acme = h;
    h->acme = acme_start(srv->conf, &h->hooks);
    return 0;
}

void acme_host_configure(struct server *srv, const struct conf *conf)
{
    struct acme_host *h = srv->acme;
    if (h)
        h->acme = acme_configure(h->acme, conf, &h->hooks);
}

static void on_closed(uv_handle_t *handle)
{
    struct acme_host *h = handle->data;
    for (size_t i = 0; i < h->n; i++)
        free(h->domains[i]);
    free(h->domains);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

void acme_host_stop(struct server *srv)
{
    struct acme_host *h = srv->acme;
    if (!h)
        return;
    srv->acme = NULL;
    /* Joins the threads, which abort a transfer in progress at once. */
    acme_stop(h->acme);
    h->acme = NULL;
    uv_close((uv_handle_t *)&h->issued, on_closed);
}
