/* conf/listener.c: the "listeners" list, each listener's keys and the checks between listeners
 * (unique names, addresses that can all be bound at once). */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "conf/internal.h"

/* Long enough for IMAP IDLE (clients re-issue it every 29 minutes, RFC 2177), shorter for
 * protocols whose clients never sit quietly for long. */
static const unsigned idle_default_ms[CONF_PROTO_COUNT] = {
    [CONF_PROTO_IMAP] = 30 * 60 * 1000,
    [CONF_PROTO_POP3] = 10 * 60 * 1000,
    [CONF_PROTO_SMTP] = 5 * 60 * 1000,
    [CONF_PROTO_HTTP] = 2 * 60 * 1000,
};

static void read_cidrs(struct conf_ctx *ctx, const config_setting_t *s, struct conf_listener *l)
{
    char q[CONF_QUOTE_MAX];
    size_t n;

    if (!conf_is_seq(ctx, s, "a list of addresses or CIDR blocks"))
        return;
    n = (size_t)config_setting_length(s);
    if (n == 0) {
        conf_error(ctx, s, "must not be empty");
        return;
    }
    l->trusted = conf_calloc(ctx, n, sizeof *l->trusted);
    if (!l->trusted)
        return;
    l->n_trusted = n;
    for (size_t i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        const char *v = conf_elem_str(ctx, e), *why;
        if (v && conf_cidr_parse(v, &l->trusted[i], &why) < 0)
            conf_error(ctx, e, "%s: %s", conf_quote(q, sizeof q, v), why);
    }
}

/* Listener names appear in log lines and metric labels: no spaces, quotes or commas. */
static bool valid_listener_name(const char *v)
{
    size_t n = strlen(v);

    if (n > 64)
        return false;
    for (; *v; v++)
        if (!((*v >= 'a' && *v <= 'z') || (*v >= 'A' && *v <= 'Z') || (*v >= '0' && *v <= '9') ||
              *v == '-' || *v == '_' || *v == '.'))
            return false;
    return true;
}

static void listener_name(struct conf_ctx *ctx, struct conf *conf, size_t i,
                          const config_setting_t *g)
{
    const config_setting_t *s = config_setting_get_member(g, "name");
    struct conf_listener *l = &conf->listeners[i];
    char q[CONF_QUOTE_MAX];
    const char *v;
    int rc = conf_read_str(ctx, g, "name", &v);

    if (rc == 0)
        conf_missing(ctx, g, "name", NULL);
    if (rc <= 0)
        return;
    if (!valid_listener_name(v)) {
        conf_error(ctx, s, "%s: use up to 64 letters, digits, '-', '_' or '.'",
                   conf_quote(q, sizeof q, v));
        return;
    }
    for (size_t j = 0; j < i; j++) {
        if (conf->listeners[j].name && strcmp(conf->listeners[j].name, v) == 0) {
            conf_error(ctx, s, "duplicate listener name %s (first at line %d)",
                       conf_quote(q, sizeof q, v), conf->listeners[j].line);
            break;
        }
    }
    l->name = conf_dup(ctx, v);
}

static void listener_listen(struct conf_ctx *ctx, struct conf *conf, size_t i,
                            const config_setting_t *g)
{
    const config_setting_t *s = config_setting_get_member(g, "listen");
    struct conf_listener *l = &conf->listeners[i];
    char q[CONF_QUOTE_MAX];
    const char *v;
    int rc = conf_read_str(ctx, g, "listen", &v);

    if (rc == 0)
        conf_missing(ctx, g, "listen", NULL);
    if (rc <= 0 || !conf_addr_at(ctx, s, v, true, &l->listen))
        return;
    for (size_t j = 0; j < i; j++) {
        const struct conf_listener *o = &conf->listeners[j];
        if (o->listen.len && conf_addr_clash(&l->listen, &o->listen)) {
            conf_error(ctx, s, "%s clashes with %s of the listener at line %d",
                       conf_quote(q, sizeof q, v), o->listen.text, o->line);
            break;
        }
    }
}

static const char *const listener_keys[] = {
    "name", "listen", "protocol", "tls", "starttls", "backend", "proxy_protocol",
    "proxy_protocol_in", "trusted", "handshake_timeout", "connect_timeout", "idle_timeout",
    "max_connections", NULL
};
static const char *const tls_mode_names[] = { "implicit", "starttls", "none", NULL };
static const char *const starttls_names[] = { "optional", "required", NULL };

static void parse_listener(struct conf_ctx *ctx, struct conf *conf, size_t i,
                           const config_setting_t *g)
{
    struct conf_listener *l = &conf->listeners[i];
    const config_setting_t *trusted;
    int e, rc, tls_rc;
    bool have_proto = false;

    l->line = (int)conf_line(g);
    l->handshake_timeout_ms = 10 * 1000;
    l->connect_timeout_ms = 5 * 1000;
    if (!conf_is_group(ctx, g))
        return;
    conf_check_keys(ctx, g, listener_keys);
    listener_name(ctx, conf, i, g);
    listener_listen(ctx, conf, i, g);

    rc = conf_read_enum(ctx, g, "protocol", conf_proto_names, &e);
    if (rc == 0)
        conf_missing(ctx, g, "protocol", NULL);
    if (rc > 0) {
        l->proto = (enum conf_proto)e;
        l->idle_timeout_ms = idle_default_ms[e];
        have_proto = true;
    }
    tls_rc = conf_read_enum(ctx, g, "tls", tls_mode_names, &e);
    if (tls_rc > 0)
        l->tls = (enum conf_tls_mode)e;
    if (tls_rc > 0 && l->tls == CONF_TLS_STARTTLS && have_proto && l->proto == CONF_PROTO_HTTP)
        conf_error(ctx, config_setting_get_member(g, "tls"),
                   "HTTP has no STARTTLS: use tls = \"implicit\"");
    if (tls_rc > 0 && l->tls == CONF_TLS_NONE && have_proto && l->proto != CONF_PROTO_HTTP)
        conf_error(ctx, config_setting_get_member(g, "tls"),
                   "tls = \"none\" is only for protocol = \"http\" (the plain HTTP listener)");
    if (conf_read_enum(ctx, g, "starttls", starttls_names, &e) > 0) {
        l->starttls = (enum conf_starttls)e;
        if (tls_rc >= 0 && l->tls != CONF_TLS_STARTTLS)
            conf_error(ctx, config_setting_get_member(g, "starttls"),
                       "only meaningful with tls = \"starttls\"");
    }

    /* A plain HTTP listener without a backend redirects to https:// what it does not answer. */
    if (conf_read_addrs(ctx, g, "backend", &l->backends, &l->n_backends) == 0 &&
        !(tls_rc > 0 && l->tls == CONF_TLS_NONE))
        conf_missing(ctx, g, "backend", NULL);
    if (conf_read_enum(ctx, g, "proxy_protocol", conf_pp_names, &e) > 0)
        l->proxy_protocol = (enum conf_pp)e;

    conf_read_bool(ctx, g, "proxy_protocol_in", &l->proxy_protocol_in);
    trusted = config_setting_get_member(g, "trusted");
    if (trusted)
        read_cidrs(ctx, trusted, l);
    else if (l->proxy_protocol_in)
        /* Accepting a PROXY header from anyone would let any client forge its source address. */
        conf_missing(ctx, g, "trusted", " (proxy_protocol_in = true needs the load balancers' addresses)");

    conf_read_ms(ctx, g, "handshake_timeout", &l->handshake_timeout_ms);
    conf_read_ms(ctx, g, "connect_timeout", &l->connect_timeout_ms);
    conf_read_ms(ctx, g, "idle_timeout", &l->idle_timeout_ms);
    conf_read_uint(ctx, g, "max_connections", UINT_MAX, &l->max_connections);
}

void conf_parse_listeners(struct conf_ctx *ctx, struct conf *conf, const config_setting_t *root)
{
    const config_setting_t *s = config_setting_get_member(root, "listeners");
    size_t n;

    if (!s) {
        conf_missing(ctx, root, "listeners", NULL);
        return;
    }
    n = config_setting_is_aggregate(s) ? (size_t)config_setting_length(s) : 0;
    if (!config_setting_is_list(s) && !(config_setting_is_array(s) && n == 0)) {
        conf_error(ctx, s, "expected a list ( { ... }, ... )");
        return;
    }
    if (n == 0) {
        conf_error(ctx, s, "at least one listener is needed");
        return;
    }
    conf->listeners = conf_calloc(ctx, n, sizeof *conf->listeners);
    if (!conf->listeners)
        return;
    conf->n_listeners = n;
    for (size_t i = 0; i < n; i++)
        parse_listener(ctx, conf, i, config_setting_get_elem(s, (unsigned)i));
}

/* ---- connection loops ----
 * A backend may be another of mailsnid's own listeners (an implicit-TLS listener in front of a
 * STARTTLS one, as in the example config), but never a chain that comes back: every connection
 * would connect again until the process runs out of descriptors. Listeners are few, so the graph
 * (listener -> listeners its backends and routes reach) is walked directly. */

static long listener_at(const struct conf *conf, const struct conf_addr *a)
{
    for (size_t k = 0; a->len && k < conf->n_listeners; k++)
        if (conf->listeners[k].listen.len && conf_addr_reaches(a, &conf->listeners[k].listen))
            return (long)k;
    return -1;
}

static bool reaches(const struct conf *conf, size_t from, size_t to, bool *seen);

static bool any_reaches(const struct conf *conf, const struct conf_addr *addrs, size_t n, size_t to,
                        bool *seen)
{
    for (size_t j = 0; addrs && j < n; j++) {
        long k = listener_at(conf, &addrs[j]);
        if (k >= 0 && reaches(conf, (size_t)k, to, seen))
            return true;
    }
    return false;
}

/* Does a connection arriving at listener FROM end up at listener TO? */
static bool reaches(const struct conf *conf, size_t from, size_t to, bool *seen)
{
    const struct conf_listener *l = &conf->listeners[from];

    if (from == to)
        return true;
    if (seen[from])
        return false;
    seen[from] = true;
    if (any_reaches(conf, l->backends, l->n_backends, to, seen))
        return true;
    for (size_t r = 0; r < conf->n_routes; r++)
        if (any_reaches(conf, conf->routes[r].backends[l->proto], conf->routes[r].n_backends[l->proto],
                        to, seen))
            return true;
    return false;
}

/* The backend setting S (one address or a list) holding N addresses, used by the listeners
 * whose protocol is PROTO (a route), or by listener SELF only. */
static void check_loops(struct conf_ctx *ctx, const struct conf *conf, const config_setting_t *s,
                        const struct conf_addr *addrs, size_t n, long self, int proto)
{
    bool *seen = conf_calloc(ctx, conf->n_listeners ? conf->n_listeners : 1, sizeof *seen);

    for (size_t j = 0; seen && s && addrs && j < n; j++) {
        const config_setting_t *e = config_setting_type(s) == CONFIG_TYPE_STRING
                                        ? s : config_setting_get_elem(s, (unsigned)j);
        long k = listener_at(conf, &addrs[j]);
        if (k < 0 || !e)
            continue;
        for (size_t i = 0; i < conf->n_listeners; i++) {
            if (self >= 0 ? (long)i != self : (int)conf->listeners[i].proto != proto)
                continue;
            memset(seen, 0, conf->n_listeners * sizeof *seen);
            if (!reaches(conf, (size_t)k, i, seen))
                continue;
            if ((long)i == k)
                conf_error(ctx, e, "%s is the address of listener %s itself (line %d): "
                           "connections would loop", addrs[j].text, conf->listeners[i].name,
                           conf->listeners[i].line);
            else
                conf_error(ctx, e, "%s is listener %s (line %d), which leads back to listener %s: "
                           "connections would loop", addrs[j].text, conf->listeners[k].name,
                           conf->listeners[k].line, conf->listeners[i].name);
            break;
        }
    }
    free(seen);
}

void conf_check_backend_loops(struct conf_ctx *ctx, const struct conf *conf,
                              const config_setting_t *root)
{
    const config_setting_t *ls = config_setting_get_member(root, "listeners");
    const config_setting_t *rs = config_setting_get_member(root, "routes");

    for (size_t i = 0; ls && i < conf->n_listeners; i++) {
        const config_setting_t *g = config_setting_get_elem(ls, (unsigned)i);
        if (g && config_setting_is_group(g) && conf->listeners[i].name)
            check_loops(ctx, conf, config_setting_get_member(g, "backend"),
                        conf->listeners[i].backends, conf->listeners[i].n_backends, (long)i, 0);
    }
    for (size_t r = 0; rs && r < conf->n_routes; r++) {
        const config_setting_t *g = config_setting_get_elem(rs, (unsigned)r);
        for (int p = 0; g && config_setting_is_group(g) && p < CONF_PROTO_COUNT; p++)
            check_loops(ctx, conf, config_setting_get_member(g, conf_proto_names[p]),
                        conf->routes[r].backends[p], conf->routes[r].n_backends[p], -1, p);
    }
}
