/* sched.c: the ACME threads. They keep, for each listed domain, when it is next due: now when no
 * certificate is stored, at its renewal time when one is (ARI's window when the directory offers
 * it, else renew_before_days before expiry, else two thirds into its lifetime), or after a
 * back-off when the last attempt failed (backoff_min doubling up to backoff_max, or longer when
 * the CA said Retry-After). New orders draw from a token bucket of pace_orders per pace_window
 * (kept in storage, shared by the instances that share it),
 * so 100,000 domains onboard at the CA's rate instead of tripping it; a 429 pauses every order.
 *
 * ORDER_THREADS threads take due domains, each its own (a domain is never in two orders at
 * once), each with its own connection to the CA: an order spends most of its time waiting for
 * the CA, so a few in flight multiply the pace while none of it touches an event loop. The lock
 * guards the domain table, the budget and the hand-over of new settings; an order runs outside
 * it. New settings are taken only when no order is in flight, so an order's settings and domain
 * entry stay put under it. A domain is ordered under its lock in storage, so instances sharing
 * it order it once.
 *
 * Finding a due domain is a scan from where the last one was found (round robin), so a start
 * with 100,000 domains to look at costs one pass, not one pass per domain. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "acme/internal.h"

#define ORDER_THREADS 4                   /* orders in flight at most (per process) */
#define ACME_NICE 10
#define LOCK_STALE 600                    /* seconds: an order never takes this long */
#define LOCK_BUSY_RETRY 3                 /* seconds before looking again at a locked domain */

static atomic_ullong orders_ok, orders_failed, renewals;

struct dom {
    char *name;
    time_t next;                          /* due at */
    unsigned failures;
    time_t not_after;                     /* of the stored certificate as last seen; 0 = none */
    bool seen;                            /* storage looked at once */
    bool busy;                            /* a thread is on it */
};

struct worker {
    struct acme *m;
    pthread_t thread;
    bool started;
    struct acme_client *client;           /* this thread's connection and account */
    unsigned client_ca;                   /* the m->ca_gen it was made for */
};

struct acme {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    volatile bool stop;
    struct acme_hooks hooks;
    /* Handed over by acme_configure, taken by a thread when no order runs. */
    struct acme_settings *next_settings;
    char **next_domains;
    size_t n_next_domains;
    /* Under lock. */
    struct acme_settings *s;
    unsigned ca_gen;                      /* bumped when the CA or storage changes */
    struct dom *doms;
    size_t n_doms, cursor, n_busy;
    struct acme_bucket bucket;        /* the budget as last read from storage, or our own */
    bool pace_own;                    /* storage's budget unusable: counting on our own */
    time_t paused_until;
    struct worker workers[ORDER_THREADS];
};

static void settings_free(struct acme_settings *s)
{
    if (!s)
        return;
    free(s->directory);
    free(s->contact);
    free(s->storage);
    free(s->ca_file);
    for (size_t i = 0; i < s->n_names; i++)
        free(s->names[i]);
    free(s->names);
    free(s);
}

static struct acme_settings *settings_copy(const struct conf_acme *a)
{
    struct acme_settings *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->directory = strdup(a->directory);
    s->contact = a->contact ? strdup(a->contact) : NULL;
    s->storage = strdup(a->storage);
    s->ca_file = a->ca_file ? strdup(a->ca_file) : NULL;
    memcpy(s->challenges, a->challenges, sizeof s->challenges);
    s->n_challenges = a->n_challenges;
    s->names = calloc(a->n_names, sizeof *s->names);
    s->n_names = s->names ? a->n_names : 0;
    bool ok = s->directory && s->storage && s->names && (!a->contact || s->contact) &&
              (!a->ca_file || s->ca_file);
    for (size_t i = 0; ok && i < a->n_names; i++)
        ok = (s->names[i] = strdup(a->names[i])) != NULL;
    s->key_type = a->key_type;
    s->pace_orders = a->pace_orders;
    s->pace_window_s = a->pace_window_s;
    s->renew_before_days = a->renew_before_days;
    s->backoff_min_s = a->backoff_min_s;
    s->backoff_max_s = a->backoff_max_s;
    s->order_timeout_s = a->order_timeout_s;
    if (!ok) {
        settings_free(s);
        return NULL;
    }
    return s;
}

static bool same_ca(const struct acme_settings *a, const struct acme_settings *b)
{
    return strcmp(a->directory, b->directory) == 0 && strcmp(a->storage, b->storage) == 0 &&
           !a->ca_file == !b->ca_file && (!a->ca_file || strcmp(a->ca_file, b->ca_file) == 0) &&
           !a->contact == !b->contact && (!a->contact || strcmp(a->contact, b->contact) == 0);
}

static int cmp_dom(const void *a, const void *b)
{
    return strcmp(((const struct dom *)a)->name, ((const struct dom *)b)->name);
}

/* Takes new settings and domains (under lock): a domain still listed keeps its state. */
static void adopt(struct acme *m)
{
    struct acme_settings *ns = m->next_settings;
    char **names = m->next_domains;
    size_t n = m->n_next_domains;
    m->next_settings = NULL;
    m->next_domains = NULL;
    struct dom *doms = calloc(n ? n : 1, sizeof *doms);
    if (!doms) {
        for (size_t i = 0; i < n; i++)
            free(names[i]);
        free(names);
        settings_free(ns);
        return;
    }
    time_t now = time(NULL);
    for (size_t i = 0; i < n; i++) {
        struct dom key = { .name = names[i] };
        struct dom *old = m->doms ? bsearch(&key, m->doms, m->n_doms, sizeof *m->doms, cmp_dom) : NULL;
        doms[i] = old ? *old : (struct dom){ .next = now };
        doms[i].name = names[i];
    }
    free(names);
    for (size_t i = 0; i < m->n_doms; i++)
        free(m->doms[i].name);
    free(m->doms);
    m->doms = doms;
    m->n_doms = n;
    m->cursor = 0;
    qsort(m->doms, n, sizeof *m->doms, cmp_dom);
    /* No order is in flight: the clients may be pointed at the new settings, or made anew by
     * their threads when the CA changed. */
    if (!m->s || !same_ca(m->s, ns)) {
        m->ca_gen++;
    } else {
        for (size_t i = 0; i < ORDER_THREADS; i++)
            if (m->workers[i].client)
                acme_client_settings(m->workers[i].client, ns);
    }
    if (!m->s || m->s->pace_orders != ns->pace_orders)
        m->bucket = (struct acme_bucket){ .tokens = ns->pace_orders, .at = now };
    settings_free(m->s);
    m->s = ns;
    /* Back-off and names may have changed: look at every domain again. */
    for (size_t i = 0; i < m->n_doms; i++)
        if (m->doms[i].next > now + (time_t)ns->backoff_max_s)
            m->doms[i].next = now;
}

/* A new order from the budget: the one in storage, which every instance sharing it draws from
 * (they share the account, and the CA's limit is the account's). Its last state read is kept
 * here too, so that when the storage cannot be used this process goes on from there on its own
 * (the order that follows will say why the storage fails) rather than from a full budget. */
static bool take_token(struct acme *m, time_t now, time_t *when)
{
    pthread_mutex_lock(&m->lock);
    struct acme_bucket state = m->bucket;
    pthread_mutex_unlock(&m->lock);
    int shared = acme_pace_take_shared(m->s->storage, m->s->pace_orders, m->s->pace_window_s, now,
                                       &state, when);
    pthread_mutex_lock(&m->lock);
    bool ok;
    if (shared >= 0) {
        m->bucket = state;
        if (m->pace_own)
            m->hooks.log(CONF_LOG_NOTICE, "acme: the order budget in %s is shared again",
                         m->s->storage);
        m->pace_own = false;
        ok = shared == 1;
    } else {
        if (!m->pace_own)
            m->hooks.log(CONF_LOG_WARNING, "acme: the order budget in %s cannot be used (%s): "
                         "this instance counts its own until it can", m->s->storage,
                         strerror(-shared));
        m->pace_own = true;
        ok = acme_bucket_take(&m->bucket, m->s->pace_orders, m->s->pace_window_s, now, when);
    }
    pthread_mutex_unlock(&m->lock);
    return ok;
}

static time_t paused_until(struct acme *m)
{
    pthread_mutex_lock(&m->lock);
    time_t t = m->paused_until;
    pthread_mutex_unlock(&m->lock);
    return t;
}

static void pause_all(struct acme *m, time_t until)
{
    pthread_mutex_lock(&m->lock);
    if (until > m->paused_until)
        m->paused_until = until;
    pthread_mutex_unlock(&m->lock);
}

/* When the stored certificate X of DOMAIN is due for renewal, or (ARI) when to ask the CA
 * again, whichever comes first. */
static time_t due_at(struct acme *m, struct acme_client *client, const char *domain, X509 *x)
{
    time_t nb = 0, na = 0;
    struct tm tm;
    if (ASN1_TIME_to_tm(X509_get0_notBefore(x), &tm))
        nb = timegm(&tm);
    if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm))
        na = timegm(&tm);
    if (m->s->renew_before_days)
        return na - (time_t)m->s->renew_before_days * 86400;
    time_t lifetime = nb + (na - nb) * 2 / 3;
    char *id = acme_ari_cert_id(x);
    time_t start, end;
    long retry_after;
    int rc = id ? acme_client_ari(client, id, &start, &end, &retry_after) : -ENOENT;
    free(id);
    if (rc == -ENOENT)                    /* a CA without ARI (or a certificate without AKI) */
        return lifetime;
    /* The window may move (a CA about to revoke moves it into the past): ask again when the CA
     * says, and when it could not be asked, within hours rather than at two thirds. */
    time_t recheck = time(NULL) + (time_t)acme_ari_recheck_s(retry_after);
    if (rc < 0)
        return lifetime < recheck ? lifetime : recheck;
    /* RFC 9773 4.2 asks for a random point in the window, to spread renewals. One fixed by the
     * domain's name spreads them as well and stays put when asked again, so every instance
     * sharing the storage agrees on it. */
    unsigned long h = 5381;
    for (const char *p = domain; *p; p++)
        h = h * 33 + (unsigned char)*p;
    time_t point = start + (end > start ? (time_t)(h % (unsigned long)(end - start)) : 0);
    return point < recheck ? point : recheck;
}

static time_t cert_not_after(X509 *x)
{
    struct tm tm;
    return ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) ? timegm(&tm) : 0;
}

/* Does X name every name the patterns give DOMAIN? (A name added to acme.names by reload means
 * a new order now, not at the next renewal.) */
static bool covers_names(struct acme *m, const char *domain, X509 *x)
{
    char name[512];
    for (size_t i = 0; i < m->s->n_names; i++)
        if (conf_acme_name(m->s->names[i], domain, name, sizeof name) > 0 &&
            X509_check_host(x, name, strlen(name), X509_CHECK_FLAG_NO_WILDCARDS, NULL) != 1)
            return false;
    return true;
}

/* Looks at DOMAIN's stored certificate: a new one (another instance's, or ours) means a
 * snapshot rebuild; returns the renewal time (1 when it lacks a wanted name), or 0 when there
 * is none. */
/* At the first look at DOMAIN, whose stored pair is valid until NA: does this process already
 * serve it? Its certificates were built at start or reload; an instance sharing the storage may
 * have stored the pair since. */
static bool first_look_serving(struct acme *m, const char *domain, time_t na)
{
    char name[512];
    if (!m->hooks.serving || m->s->n_names == 0 ||
        conf_acme_name(m->s->names[0], domain, name, sizeof name) <= 0)
        return true;
    return m->hooks.serving(m->hooks.arg, name, na);
}

static time_t check_stored(struct acme *m, struct acme_client *client, struct dom *d, X509 **cert)
{
    X509 *x = acme_stored_cert(m->s->storage, d->name);
    time_t na = x ? cert_not_after(x) : 0;
    if (na && (d->seen ? na != d->not_after : !first_look_serving(m, d->name, na)))
        m->hooks.issued(m->hooks.arg, d->name);
    d->seen = true;
    d->not_after = na;
    time_t due = !x ? 0 : covers_names(m, d->name, x) ? due_at(m, client, d->name, x) : 1;
    if (cert)
        *cert = x;
    else
        X509_free(x);
    return due;
}

static void make_names(struct acme *m, const char *domain, char ***out, size_t *n)
{
    char buf[512];
    *out = calloc(m->s->n_names, sizeof **out);
    *n = 0;
    for (size_t i = 0; *out && i < m->s->n_names; i++)
        if (conf_acme_name(m->s->names[i], domain, buf, sizeof buf) > 0 &&
            ((*out)[*n] = strdup(buf)))
            (*n)++;
}

/* An attempt for D failed with ERROR: logged, shown by --certs, counted, and D waits its
 * back-off (every domain waits when the CA said 429). */
static void failed(struct acme *m, struct dom *d, time_t now, const char *error, long retry_after,
                   bool rate_limited)
{
    atomic_fetch_add(&orders_failed, 1);
    char line[700];
    snprintf(line, sizeof line, "failing: %s", error);
    acme_status_write(m->s->storage, d->name, line);
    unsigned long wait = acme_backoff_s(d->failures, m->s->backoff_min_s, m->s->backoff_max_s,
                                        retry_after);
    if (rate_limited)
        pause_all(m, now + (time_t)wait);
    d->failures++;
    d->next = time(NULL) + (time_t)wait;
    m->hooks.log(CONF_LOG_WARNING, "acme: %s: order failed (attempt %u, next in %lu s): %s",
                 d->name, d->failures, wait, error);
}

/* One due domain, on an order thread, outside the lock: the domain entry is this thread's
 * until it returns. */
static void process(struct acme *m, struct acme_client *client, struct dom *d, time_t now)
{
    X509 *cert = NULL;
    time_t due = check_stored(m, client, d, NULL);
    if (due && due > now) {
        d->next = due;
        d->failures = 0;
        return;
    }
    time_t paused = paused_until(m);
    if (now < paused) {
        d->next = paused;
        return;
    }
    int lock = acme_lock(m->s->storage, d->name, LOCK_STALE), rc = lock;
    if (rc == -EBUSY) {
        acme_status_write(m->s->storage, d->name, "pending: another instance orders it");
        d->next = now + LOCK_BUSY_RETRY;
        return;
    }
    if (rc < 0) {
        /* Storage that cannot be written (full, read-only): a failed attempt like any other. */
        char error[600];
        snprintf(error, sizeof error, "cannot lock in %s: %s", m->s->storage, strerror(-rc));
        failed(m, d, now, error, -1, false);
        return;
    }
    /* Under the lock, look again: another instance may have just finished. */
    due = check_stored(m, client, d, &cert);
    time_t when;
    if (due && due > now) {
        d->next = due;
    } else if (!take_token(m, now, &when)) {
        d->next = when;
    } else {
        bool renewal = cert != NULL && due != 1;   /* 1: the names changed: a new certificate */
        char **names, *replaces = renewal ? acme_ari_cert_id(cert) : NULL;
        size_t n_names;
        struct acme_result res;
        make_names(m, d->name, &names, &n_names);
        /* A domain that failed before stays "failing: <why>" in --certs while it is tried
         * again: an operator looking at a domain that keeps failing sees why, whenever. */
        if (d->failures == 0)
            acme_status_write(m->s->storage, d->name, "pending");
        m->hooks.log(CONF_LOG_INFO, "acme: %s: ordering a certificate for %zu names%s", d->name,
                     n_names, renewal ? " (renewal)" : "");
        acme_client_order(client, d->name, names, n_names, replaces, &res);
        for (size_t i = 0; i < n_names; i++)
            free(names[i]);
        free(names);
        free(replaces);
        if (res.ok) {
            atomic_fetch_add(&orders_ok, 1);
            if (renewal)
                atomic_fetch_add(&renewals, 1);
            acme_status_write(m->s->storage, d->name, "valid");
            m->hooks.log(CONF_LOG_NOTICE, "acme: %s: certificate issued%s (after %lu badNonce "
                         "retries in all)", d->name, renewal ? " (renewal)" : "",
                         acme_client_nonce_retries(client));
            d->failures = 0;
            d->seen = false;              /* the hook below covers it */
            due = check_stored(m, client, d, NULL);
            d->next = due > now ? due : now + m->s->backoff_min_s;
            m->hooks.issued(m->hooks.arg, d->name);
        } else if (!m->stop) {
            failed(m, d, now, res.error, res.retry_after, res.rate_limited);
        }
    }
    X509_free(cert);
    acme_unlock(m->s->storage, d->name, lock);
}

/* Under lock: a due domain no thread is on, round robin from the last one taken; NULL when none
 * is due, with *WAKE set to when the soonest one will be. */
static struct dom *pick(struct acme *m, time_t now, time_t *wake)
{
    time_t soonest = now + 3600;
    for (size_t k = 0; k < m->n_doms; k++) {
        size_t i = (m->cursor + k) % m->n_doms;
        struct dom *d = &m->doms[i];
        if (d->busy)
            continue;
        if (d->next <= now) {
            m->cursor = i + 1;
            return d;
        }
        if (d->next < soonest)
            soonest = d->next;
    }
    *wake = soonest;
    return NULL;
}

static void wait_until(struct acme *m, time_t t)
{
    struct timespec ts = { t, 0 };
    pthread_cond_timedwait(&m->cond, &m->lock, &ts);
}

static void *run(void *arg)
{
    struct worker *w = arg;
    struct acme *m = w->m;
    pthread_setname_np(pthread_self(), "mailsnid-acme");   /* top -H, and bench/acme */
    /* The CPU an order needs (a key, signatures, TLS to the CA) can wait; a handshake on the
     * same core cannot: nice 10 gives the workers about nine tenths of a contended core. */
    setpriority(PRIO_PROCESS, (id_t)gettid(), ACME_NICE);
    pthread_mutex_lock(&m->lock);
    for (;;) {
        if (m->stop)
            break;
        if (m->next_settings) {
            if (m->n_busy) {              /* taken when the orders in flight are done */
                pthread_cond_wait(&m->cond, &m->lock);
                continue;
            }
            adopt(m);
        }
        if (!m->s) {
            pthread_cond_wait(&m->cond, &m->lock);
            continue;
        }
        if (w->client && w->client_ca != m->ca_gen) {
            acme_client_free(w->client);
            w->client = NULL;
        }
        if (!w->client) {
            if (!(w->client = acme_client_new(m->s, &m->stop, m->hooks.log))) {
                m->hooks.log(CONF_LOG_ERR, "acme: cannot set up the HTTPS client");
                wait_until(m, time(NULL) + 60);
                continue;
            }
            w->client_ca = m->ca_gen;
        }
        time_t now = time(NULL), wake;
        struct dom *d = pick(m, now, &wake);
        if (!d) {
            wait_until(m, wake);
            continue;
        }
        d->busy = true;
        m->n_busy++;
        pthread_mutex_unlock(&m->lock);
        process(m, w->client, d, now);
        pthread_mutex_lock(&m->lock);
        d->busy = false;
        m->n_busy--;
        /* The others may be waiting for new settings, or for a time this order moved. */
        pthread_cond_broadcast(&m->cond);
    }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

static int hand_over(struct acme *m, const struct conf *conf)
{
    struct acme_settings *s = settings_copy(&conf->acme);
    char **names = calloc(conf->n_domains ? conf->n_domains : 1, sizeof *names);
    bool ok = s && names;
    for (size_t i = 0; ok && i < conf->n_domains; i++)
        ok = (names[i] = strdup(conf->domains[i])) != NULL;
    if (!ok) {
        for (size_t i = 0; names && i < conf->n_domains; i++)
            free(names[i]);
        free(names);
        settings_free(s);
        return -ENOMEM;
    }
    pthread_mutex_lock(&m->lock);
    settings_free(m->next_settings);
    for (size_t i = 0; m->next_domains && i < m->n_next_domains; i++)
        free(m->next_domains[i]);
    free(m->next_domains);
    m->next_settings = s;
    m->next_domains = names;
    m->n_next_domains = conf->n_domains;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    return 0;
}

struct acme *acme_start(const struct conf *conf, const struct acme_hooks *hooks)
{
    if (!conf->acme.enabled)
        return NULL;
    struct acme *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->hooks = *hooks;
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->cond, NULL);
    bool ok = hand_over(m, conf) == 0;
    for (size_t i = 0; ok && i < ORDER_THREADS; i++) {
        m->workers[i].m = m;
        ok = pthread_create(&m->workers[i].thread, NULL, run, &m->workers[i]) == 0;
        m->workers[i].started = ok;
    }
    if (!ok) {
        hooks->log(CONF_LOG_ERR, "acme: cannot start its threads");
        acme_stop(m);
        return NULL;
    }
    return m;
}

struct acme *acme_configure(struct acme *acme, const struct conf *conf, const struct acme_hooks *hooks)
{
    if (!conf->acme.enabled) {
        acme_stop(acme);
        return NULL;
    }
    if (!acme)
        return acme_start(conf, hooks);
    if (hand_over(acme, conf) < 0)
        hooks->log(CONF_LOG_ERR, "acme: out of memory: the previous domains stay in force");
    return acme;
}

void acme_stop(struct acme *acme)
{
    if (!acme)
        return;
    pthread_mutex_lock(&acme->lock);
    acme->stop = true;
    pthread_cond_broadcast(&acme->cond);
    pthread_mutex_unlock(&acme->lock);
    for (size_t i = 0; i < ORDER_THREADS; i++) {
        if (acme->workers[i].started)
            pthread_join(acme->workers[i].thread, NULL);
        acme_client_free(acme->workers[i].client);
    }
    settings_free(acme->s);
    settings_free(acme->next_settings);
    for (size_t i = 0; acme->next_domains && i < acme->n_next_domains; i++)
        free(acme->next_domains[i]);
    free(acme->next_domains);
    for (size_t i = 0; i < acme->n_doms; i++)
        free(acme->doms[i].name);
    free(acme->doms);
    pthread_cond_destroy(&acme->cond);
    pthread_mutex_destroy(&acme->lock);
    free(acme);
}

void acme_metrics_render(FILE *out)
{
    fprintf(out, "# HELP mailsnid_acme_orders_total ACME orders by result.\n"
                 "# TYPE mailsnid_acme_orders_total counter\n"
                 "mailsnid_acme_orders_total{result=\"ok\"} %llu\n"
                 "mailsnid_acme_orders_total{result=\"failed\"} %llu\n"
                 "# HELP mailsnid_acme_renewals_total ACME certificates renewed.\n"
                 "# TYPE mailsnid_acme_renewals_total counter\n"
                 "mailsnid_acme_renewals_total %llu\n",
            (unsigned long long)atomic_load(&orders_ok), (unsigned long long)atomic_load(&orders_failed),
            (unsigned long long)atomic_load(&renewals));
}

void acme_status_print(const struct conf *conf, FILE *out)
{
    if (!conf->acme.enabled)
        return;
    char path[4200], line[600], name[512], date[32];
    for (size_t i = 0; i < conf->n_domains; i++) {
        const char *d = conf->domains[i];
        X509 *x = acme_stored_cert(conf->acme.storage, d);
        snprintf(path, sizeof path, "%s/status/%s", conf->acme.storage, d);
        FILE *f = fopen(path, "r");
        line[0] = '\0';
        if (f) {
            if (!fgets(line, sizeof line, f))
                line[0] = '\0';
            fclose(f);
        }
        line[strcspn(line, "\n")] = '\0';
        const char *state = line;
        if (x && strncmp(line, "failing", 7) != 0) {
            time_t na = cert_not_after(x);
            struct tm tm;
            gmtime_r(&na, &tm);
            strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S", &tm);
            snprintf(line, sizeof line, "valid until %s", date);
        } else if (!line[0] || strcmp(line, "valid") == 0) {
            state = "pending";
        }
        for (size_t j = 0; j < conf->acme.n_names; j++)
            if (conf_acme_name(conf->acme.names[j], d, name, sizeof name) > 0)
                fprintf(out, "%s acme %s\n", name, state);
        X509_free(x);
    }
}
