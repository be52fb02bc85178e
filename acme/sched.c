/* sched.c: the ACME thread. It keeps, for each listed domain, when it is next due: now when no
 * certificate is stored, at its renewal time when one is (ARI's window when the directory offers
 * it, else renew_before_days before expiry, else two thirds into its lifetime), or after a
 * back-off when the last attempt failed (backoff_min doubling up to backoff_max, or longer when
 * the CA said Retry-After). New orders draw from a token bucket of pace_orders per pace_window,
 * so 100,000 domains onboard at the CA's rate instead of tripping it; a 429 pauses every order.
 * Orders run one at a time: the CA is the bottleneck, and one thread keeps the event loops free.
 * A domain is ordered under its lock in storage, so instances sharing it order it once.
 *
 * Finding the next due domain is a scan of the array: one pass per order or wake-up, which for
 * 100,000 domains is well under a millisecond next to a round trip to the CA. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "acme/internal.h"

#define LOCK_STALE 600                    /* seconds: an order never takes this long */
#define LOCK_BUSY_RETRY 3                 /* seconds before looking again at a locked domain */

static atomic_ullong orders_ok, orders_failed, renewals;

struct dom {
    char *name;
    time_t next;                          /* due at */
    unsigned failures;
    time_t not_after;                     /* of the stored certificate as last seen; 0 = none */
    bool seen;                            /* storage looked at once */
};

struct acme {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    volatile bool stop;
    struct acme_hooks hooks;
    /* Handed over by acme_configure, taken by the thread (under lock). */
    struct acme_settings *next_settings;
    char **next_domains;
    size_t n_next_domains;
    /* The thread's own. */
    struct acme_settings *s;
    struct acme_client *client;
    struct dom *doms;
    size_t n_doms;
    double tokens;
    time_t tokens_at, paused_until;
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
    qsort(m->doms, n, sizeof *m->doms, cmp_dom);
    if (!m->s || !same_ca(m->s, ns)) {
        acme_client_free(m->client);
        m->client = NULL;
    } else if (m->client) {
        acme_client_settings(m->client, ns);
    }
    if (!m->s || m->s->pace_orders != ns->pace_orders) {
        m->tokens = ns->pace_orders;
        m->tokens_at = now;
    }
    settings_free(m->s);
    m->s = ns;
    /* Back-off and names may have changed: look at every domain again. */
    for (size_t i = 0; i < m->n_doms; i++)
        if (m->doms[i].next > now + (time_t)ns->backoff_max_s)
            m->doms[i].next = now;
}

static bool take_token(struct acme *m, time_t now, time_t *when)
{
    double rate = (double)m->s->pace_orders / m->s->pace_window_s;
    m->tokens += (double)(now - m->tokens_at) * rate;
    if (m->tokens > m->s->pace_orders)
        m->tokens = m->s->pace_orders;
    m->tokens_at = now;
    if (m->tokens >= 1) {
        m->tokens -= 1;
        return true;
    }
    *when = now + (time_t)((1 - m->tokens) / rate) + 1;
    return false;
}

/* When the stored certificate X of DOMAIN is due for renewal. */
static time_t due_at(struct acme *m, const char *domain, X509 *x)
{
    time_t nb = 0, na = 0;
    struct tm tm;
    if (ASN1_TIME_to_tm(X509_get0_notBefore(x), &tm))
        nb = timegm(&tm);
    if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm))
        na = timegm(&tm);
    if (m->s->renew_before_days)
        return na - (time_t)m->s->renew_before_days * 86400;
    if (m->client && acme_client_renewal_info(m->client)[0]) {
        char *id = acme_ari_cert_id(x);
        time_t start, end;
        int rc = id ? acme_client_ari(m->client, id, &start, &end) : -EINVAL;
        free(id);
        /* RFC 9773 4.2 asks for a random point in the window, to spread renewals. One fixed
         * by the domain's name spreads them as well and stays put when asked again, so every
         * instance sharing the storage agrees on it. */
        if (rc == 0) {
            unsigned long h = 5381;
            for (const char *p = domain; *p; p++)
                h = h * 33 + (unsigned char)*p;
            return start + (end > start ? (time_t)(h % (unsigned long)(end - start)) : 0);
        }
    }
    return nb + (na - nb) * 2 / 3;
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
static time_t check_stored(struct acme *m, struct dom *d, X509 **cert)
{
    X509 *x = acme_stored_cert(m->s->storage, d->name);
    time_t na = x ? cert_not_after(x) : 0;
    if (d->seen && na != d->not_after && na)
        m->hooks.issued(m->hooks.arg);
    d->seen = true;
    d->not_after = na;
    time_t due = !x ? 0 : covers_names(m, d->name, x) ? due_at(m, d->name, x) : 1;
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

static void process(struct acme *m, struct dom *d, time_t now)
{
    X509 *cert = NULL;
    time_t due = check_stored(m, d, NULL);
    if (due && due > now) {
        d->next = due;
        d->failures = 0;
        return;
    }
    if (now < m->paused_until) {
        d->next = m->paused_until;
        return;
    }
    int rc = acme_lock(m->s->storage, d->name, LOCK_STALE);
    if (rc == -EBUSY) {
        acme_status_write(m->s->storage, d->name, "pending: another instance orders it");
        d->next = now + LOCK_BUSY_RETRY;
        return;
    }
    if (rc < 0) {
        m->hooks.log(CONF_LOG_ERR, "acme: %s: cannot lock in %s: %s", d->name, m->s->storage, strerror(-rc));
        d->next = now + m->s->backoff_min_s;
        return;
    }
    /* Under the lock, look again: another instance may have just finished. */
    due = check_stored(m, d, &cert);
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
        acme_status_write(m->s->storage, d->name, "pending");
        m->hooks.log(CONF_LOG_INFO, "acme: %s: ordering a certificate for %zu names%s", d->name,
                     n_names, renewal ? " (renewal)" : "");
        acme_client_order(m->client, d->name, names, n_names, replaces, &res);
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
                         acme_client_nonce_retries(m->client));
            d->failures = 0;
            d->seen = false;              /* the rebuild below covers it */
            due = check_stored(m, d, NULL);
            d->next = due > now ? due : now + m->s->backoff_min_s;
            m->hooks.issued(m->hooks.arg);
        } else if (!m->stop) {
            atomic_fetch_add(&orders_failed, 1);
            char line[600];
            snprintf(line, sizeof line, "failing: %s", res.error);
            acme_status_write(m->s->storage, d->name, line);
            unsigned shift = d->failures < 20 ? d->failures : 20;
            unsigned long wait = (unsigned long)m->s->backoff_min_s << shift;
            if (wait > m->s->backoff_max_s)
                wait = m->s->backoff_max_s;
            if (res.retry_after > 0 && (unsigned long)res.retry_after > wait)
                wait = (unsigned long)res.retry_after;
            if (res.rate_limited)
                m->paused_until = now + (time_t)wait;
            d->failures++;
            d->next = time(NULL) + (time_t)wait;
            m->hooks.log(CONF_LOG_WARNING, "acme: %s: order failed (attempt %u, next in %lu s): %s",
                         d->name, d->failures, wait, res.error);
        }
    }
    X509_free(cert);
    acme_unlock(m->s->storage, d->name);
}

static void *run(void *arg)
{
    struct acme *m = arg;
    pthread_mutex_lock(&m->lock);
    for (;;) {
        if (m->stop)
            break;
        if (m->next_settings)
            adopt(m);
        if (!m->s) {
            pthread_cond_wait(&m->cond, &m->lock);
            continue;
        }
        if (!m->client && !(m->client = acme_client_new(m->s, &m->stop))) {
            m->hooks.log(CONF_LOG_ERR, "acme: cannot set up the HTTPS client");
            struct timespec ts = { time(NULL) + 60, 0 };
            pthread_cond_timedwait(&m->cond, &m->lock, &ts);
            continue;
        }
        time_t now = time(NULL);
        struct dom *d = NULL;
        for (size_t i = 0; i < m->n_doms; i++)
            if (!d || m->doms[i].next < d->next)
                d = &m->doms[i];
        if (!d || d->next > now) {
            struct timespec ts = { d ? d->next : now + 3600, 0 };
            pthread_cond_timedwait(&m->cond, &m->lock, &ts);
            continue;
        }
        /* The array is the thread's: the lock guards only the hand-over fields. */
        pthread_mutex_unlock(&m->lock);
        process(m, d, now);
        pthread_mutex_lock(&m->lock);
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
    pthread_cond_signal(&m->cond);
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
    if (hand_over(m, conf) < 0 || pthread_create(&m->thread, NULL, run, m) != 0) {
        hooks->log(CONF_LOG_ERR, "acme: cannot start its thread");
        m->thread = 0;
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
    pthread_cond_signal(&acme->cond);
    pthread_mutex_unlock(&acme->lock);
    if (acme->thread)
        pthread_join(acme->thread, NULL);
    acme_client_free(acme->client);
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
