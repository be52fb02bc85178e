/* Counters are plain atomics with relaxed ordering: each is independent, and a scrape that
 * sees one a moment before another is fine. Per-backend error counts live in a small table
 * keyed by the backend's text, guarded by a mutex because errors are rare. */
#include "acme/acme.h"
#include "proxy/ops/metrics.h"

#include "proxy/runtime/generation.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "proxy/conn/conn.h"
#include "proxy/runtime/generation.h"

#define RELAXED memory_order_relaxed

static atomic_ullong handshakes[OUT_NOMEM + 1];
static atomic_ullong handshakes_ok;
static atomic_ullong handshakes_resumed; /* of handshakes_ok: a session resumed from a ticket */
static atomic_ullong carried[2]; /* sessions by record layer: [0] OpenSSL, [1] tls13/ */
static atomic_ullong sni_kind[4];
static atomic_ullong starttls_upgrades;
static atomic_ullong proxy_refused;
static atomic_ullong bytes_up, bytes_down;
static atomic_ullong reloads_ok, reloads_failed;
static atomic_llong last_reload_time;
static atomic_ullong generation = 1; /* the configuration in force: 1 at start, +1 per reload */

#define MAX_BACKENDS 256
static pthread_mutex_t backend_lock = PTHREAD_MUTEX_INITIALIZER;
static struct { char addr[64]; unsigned long long errors; } backend_errors[MAX_BACKENDS];
static size_t n_backend_errors;

void metrics_conn_closed(const struct conn *c)
{
    atomic_fetch_add_explicit(&bytes_up, c->bytes_up, RELAXED);
    atomic_fetch_add_explicit(&bytes_down, c->bytes_down, RELAXED);
    if (c->outcome == OUT_HANDSHAKE_FAILED || c->outcome == OUT_HANDSHAKE_TIMEOUT)
        atomic_fetch_add_explicit(&handshakes[c->outcome], 1, RELAXED);
}

void metrics_session_started(const struct conn *c)
{
    if (!tls_in_use(c))
        return;
    atomic_fetch_add_explicit(&handshakes_ok, 1, RELAXED);
    if (c->tls_resumed)
        atomic_fetch_add_explicit(&handshakes_resumed, 1, RELAXED);
    const struct cs_choice *choice = tls_choice(c);
    if (choice)
        atomic_fetch_add_explicit(&sni_kind[choice->kind], 1, RELAXED);
}

void metrics_tls_carried(const struct conn *c, bool own)
{
    (void)c;
    atomic_fetch_add_explicit(&carried[own], 1, RELAXED);
}

void metrics_backend_error(const struct conf_addr *backend)
{
    pthread_mutex_lock(&backend_lock);
    size_t i = 0;
    while (i < n_backend_errors && strcmp(backend_errors[i].addr, backend->text) != 0)
        i++;
    if (i == n_backend_errors && n_backend_errors < MAX_BACKENDS) {
        snprintf(backend_errors[i].addr, sizeof backend_errors[i].addr, "%s", backend->text);
        n_backend_errors++;
    }
    if (i < n_backend_errors)
        backend_errors[i].errors++;
    pthread_mutex_unlock(&backend_lock);
}

void metrics_starttls(const struct conn *c)
{
    (void)c;
    atomic_fetch_add_explicit(&starttls_upgrades, 1, RELAXED);
}

void metrics_proxy_refused(const struct conn *c)
{
    (void)c;
    atomic_fetch_add_explicit(&proxy_refused, 1, RELAXED);
}

void metrics_reload(bool ok)
{
    atomic_fetch_add_explicit(ok ? &reloads_ok : &reloads_failed, 1, RELAXED);
    if (ok) {
        atomic_store_explicit(&last_reload_time, (long long)time(NULL), RELAXED);
        atomic_fetch_add_explicit(&generation, 1, RELAXED);
    }
}

struct expiry_ctx {
    FILE *out;
    time_t now;
};

static void print_expiry(const struct cs_pair *pair, void *arg)
{
    struct expiry_ctx *ctx = arg;
    fputs("mailsnid_certificate_expiry_seconds{cert=\"", ctx->out);
    /* Label values escape backslash, quote and newline (Prometheus text format). */
    for (const char *p = cs_pair_cert_path(pair); *p; p++) {
        if (*p == '\\' || *p == '"')
            fputc('\\', ctx->out);
        if (*p == '\n')
            fputs("\\n", ctx->out);
        else
            fputc(*p, ctx->out);
    }
    fprintf(ctx->out, "\",key=\"%s\"} %lld\n", cs_key_type_name(cs_pair_key_type(pair)),
            (long long)(cs_pair_not_after(pair) - ctx->now));
}

static unsigned long long get(atomic_ullong *v)
{
    return atomic_load_explicit(v, RELAXED);
}

void metrics_render(const struct server *srv, FILE *out)
{
    /* The control thread replaces srv->gen, and this runs on it: no reference needed. */
    const struct generation *gen = srv->gen;
    fprintf(out, "# HELP mailsnid_connections_open Connections open now.\n"
                 "# TYPE mailsnid_connections_open gauge\n");
    for (size_t i = 0; i < gen->n_listeners; i++)
        fprintf(out, "mailsnid_connections_open{listener=\"%s\"} %u\n",
                gen->listeners[i].conf->name, atomic_load(&gen->listeners[i].slot->count->open));
    fprintf(out, "# HELP mailsnid_connections_total Connections accepted.\n"
                 "# TYPE mailsnid_connections_total counter\n");
    for (size_t i = 0; i < gen->n_listeners; i++)
        fprintf(out, "mailsnid_connections_total{listener=\"%s\"} %llu\n", gen->listeners[i].conf->name,
                (unsigned long long)atomic_load(&gen->listeners[i].slot->count->total));
    fprintf(out, "# HELP mailsnid_generation_connections Connections open, by the configuration "
                 "generation they were accepted under.\n"
                 "# TYPE mailsnid_generation_connections gauge\n");
    pthread_mutex_lock((pthread_mutex_t *)&srv->gen_lock);
    for (const struct generation *g = srv->live; g; g = g->next)
        fprintf(out, "mailsnid_generation_connections{generation=\"%llu\"} %u\n", g->id,
                atomic_load((atomic_uint *)&g->conns));
    pthread_mutex_unlock((pthread_mutex_t *)&srv->gen_lock);
    fprintf(out, "# HELP mailsnid_handshakes_total TLS handshakes by outcome.\n"
                 "# TYPE mailsnid_handshakes_total counter\n"
                 "mailsnid_handshakes_total{outcome=\"ok\"} %llu\n"
                 "mailsnid_handshakes_total{outcome=\"failed\"} %llu\n"
                 "mailsnid_handshakes_total{outcome=\"timeout\"} %llu\n",
            get(&handshakes_ok), get(&handshakes[OUT_HANDSHAKE_FAILED]),
            get(&handshakes[OUT_HANDSHAKE_TIMEOUT]));
    fprintf(out, "# HELP mailsnid_handshakes_resumed_total Of the handshakes counted ok, those that "
                 "resumed a session from a ticket (a fall after a ticket-key change means the keys "
                 "differ between instances).\n"
                 "# TYPE mailsnid_handshakes_resumed_total counter\n"
                 "mailsnid_handshakes_resumed_total %llu\n",
            get(&handshakes_resumed));
    fprintf(out, "# HELP mailsnid_tls_sessions_total TLS sessions relayed, by the record layer that "
                 "carried them after the handshake (own: tls13/, OpenSSL's SSL object freed).\n"
                 "# TYPE mailsnid_tls_sessions_total counter\n"
                 "mailsnid_tls_sessions_total{record=\"own\"} %llu\n"
                 "mailsnid_tls_sessions_total{record=\"openssl\"} %llu\n",
            get(&carried[1]), get(&carried[0]));
    static const char *const kinds[] = { "none", "exact", "wildcard", "default" };
    fprintf(out, "# HELP mailsnid_sni_selections_total Certificates chosen, by kind of match.\n"
                 "# TYPE mailsnid_sni_selections_total counter\n");
    for (int k = 0; k < 4; k++)
        fprintf(out, "mailsnid_sni_selections_total{kind=\"%s\"} %llu\n", kinds[k], get(&sni_kind[k]));
    fprintf(out, "# TYPE mailsnid_starttls_upgrades_total counter\nmailsnid_starttls_upgrades_total %llu\n",
            get(&starttls_upgrades));
    fprintf(out, "# TYPE mailsnid_proxy_headers_refused_total counter\nmailsnid_proxy_headers_refused_total %llu\n",
            get(&proxy_refused));
    fprintf(out, "# TYPE mailsnid_bytes_total counter\n"
                 "mailsnid_bytes_total{direction=\"up\"} %llu\nmailsnid_bytes_total{direction=\"down\"} %llu\n",
            get(&bytes_up), get(&bytes_down));
    fprintf(out, "# TYPE mailsnid_backend_connect_errors_total counter\n");
    pthread_mutex_lock(&backend_lock);
    for (size_t i = 0; i < n_backend_errors; i++)
        fprintf(out, "mailsnid_backend_connect_errors_total{backend=\"%s\"} %llu\n",
                backend_errors[i].addr, backend_errors[i].errors);
    pthread_mutex_unlock(&backend_lock);
    fprintf(out, "# TYPE mailsnid_reloads_total counter\n"
                 "mailsnid_reloads_total{result=\"ok\"} %llu\nmailsnid_reloads_total{result=\"failed\"} %llu\n"
                 "# TYPE mailsnid_last_reload_timestamp_seconds gauge\n"
                 "mailsnid_last_reload_timestamp_seconds %lld\n"
                 "# HELP mailsnid_config_generation Configurations loaded: 1 at start, +1 per successful reload.\n"
                 "# TYPE mailsnid_config_generation gauge\nmailsnid_config_generation %llu\n",
            get(&reloads_ok), get(&reloads_failed),
            (long long)atomic_load_explicit(&last_reload_time, RELAXED), get(&generation));
    acme_metrics_render(out);
    fprintf(out, "# HELP mailsnid_certificate_expiry_seconds Seconds until the certificate's notAfter "
                 "(negative: expired).\n# TYPE mailsnid_certificate_expiry_seconds gauge\n");
    struct cs_store *store = cs_current_get(srv->certs);
    struct expiry_ctx ctx = { out, time(NULL) };
    cs_store_foreach_pair(store, print_expiry, &ctx);
    cs_store_unref(store);
}
