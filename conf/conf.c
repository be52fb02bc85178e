/* conf/conf.c: the config schema (SPEC.md, "Config"), walked once into struct conf.
 *
 * The walk does not stop at the first problem: every reader reports into ctx and the walk goes
 * on, so `mailsnid -t` shows an operator all of a config's mistakes in one run. A half-built
 * struct conf is freed by conf_free(), which therefore accepts any partially filled object. */
#include <errno.h>
#include <limits.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf/internal.h"

const char *const conf_proto_names[] = { "imap", "pop3", "smtp", "http", NULL };
const char *const conf_pp_names[] = { "none", "v1", "v2", NULL };

/* More threads than this is a typo, not a machine. */
#define MAX_WORKERS 1024

const char *conf_proto_name(enum conf_proto proto)
{
    return (unsigned)proto < CONF_PROTO_COUNT ? conf_proto_names[proto] : "unknown";
}

/* A route's claim on a name, kept until every route is read so duplicates can be found. */
struct name_ref {
    const char *name;
    const config_setting_t *s;
    size_t order;
};

struct name_refs {
    struct name_ref *v;
    size_t n, cap;
};

static void add_ref(struct conf_ctx *ctx, struct name_refs *refs, const char *name,
                    const config_setting_t *s)
{
    if (refs->n == refs->cap) {
        size_t cap = refs->cap ? refs->cap * 2 : 16;
        struct name_ref *p = realloc(refs->v, cap * sizeof *p);
        if (!p) {
            conf_oom(ctx);
            return;
        }
        refs->v = p;
        refs->cap = cap;
    }
    refs->v[refs->n] = (struct name_ref){ name, s, refs->n };
    refs->n++;
}

static const char *const route_keys[] = { "names", "imap", "pop3", "smtp", "http", "proxy_protocol", NULL };

static void parse_route(struct conf_ctx *ctx, struct conf_route *r, const config_setting_t *g,
                        struct name_refs *refs)
{
    const config_setting_t *names;
    int e, n_proto = 0;

    r->line = (int)conf_line(g);
    if (!conf_is_group(ctx, g))
        return;
    conf_check_keys(ctx, g, route_keys);
    names = config_setting_get_member(g, "names");
    if (names) {
        conf_read_names(ctx, names, &r->names, &r->n_names);
        for (size_t i = 0; r->names && i < r->n_names; i++)
            if (r->names[i])
                add_ref(ctx, refs, r->names[i], config_setting_get_elem(names, (unsigned)i));
    } else {
        conf_missing(ctx, g, "names", NULL);
    }
    for (int p = 0; p < CONF_PROTO_COUNT; p++)
        if (conf_read_addrs(ctx, g, conf_proto_names[p], &r->backends[p], &r->n_backends[p]) != 0)
            n_proto++;
    if (n_proto == 0)
        conf_error(ctx, g, "a route needs at least one of \"imap\", \"pop3\", \"smtp\", \"http\"");
    if (conf_read_enum(ctx, g, "proxy_protocol", conf_pp_names, &e) > 0) {
        r->has_proxy_protocol = true;
        r->proxy_protocol = (enum conf_pp)e;
    }
}

static int cmp_ref(const void *a, const void *b)
{
    const struct name_ref *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->order > y->order) - (x->order < y->order);
}

/* Each name of REFS after the first of its kind is an error ("... is already VERB at line N");
 * frees REFS. */
static void report_duplicates(struct conf_ctx *ctx, struct name_refs *refs, const char *verb)
{
    char q[CONF_QUOTE_MAX];

    if (refs->n > 1)
        qsort(refs->v, refs->n, sizeof *refs->v, cmp_ref);
    for (size_t i = 1, first = 0; i < refs->n; i++) {
        if (strcmp(refs->v[first].name, refs->v[i].name) != 0)
            first = i;
        else
            conf_error(ctx, refs->v[i].s, "%s is already %s at line %u",
                       conf_quote(q, sizeof q, refs->v[i].name), verb, conf_line(refs->v[first].s));
    }
    free(refs->v);
    refs->v = NULL;
    refs->n = 0;
}

static void parse_routes(struct conf_ctx *ctx, struct conf *conf, const config_setting_t *root)
{
    const config_setting_t *s = config_setting_get_member(root, "routes");
    struct name_refs refs = { 0 };
    size_t n;

    if (!s)
        return;
    n = config_setting_is_aggregate(s) ? (size_t)config_setting_length(s) : 0;
    if (!config_setting_is_list(s) && !(config_setting_is_array(s) && n == 0)) {
        conf_error(ctx, s, "expected a list ( { names = [ ... ]; ... }, ... )");
        return;
    }
    if (n == 0)
        return;
    conf->routes = conf_calloc(ctx, n, sizeof *conf->routes);
    if (!conf->routes)
        return;
    conf->n_routes = n;
    for (size_t i = 0; i < n; i++)
        parse_route(ctx, &conf->routes[i], config_setting_get_elem(s, (unsigned)i), &refs);

    /* One name, one route: two would make the backend depend on the order of the file. */
    report_duplicates(ctx, &refs, "routed");
}

/* The customer domains of a shared host (written by its control panel, often @included): a
 * plain list of names that ACME and client setup act on. */
static void parse_domains(struct conf_ctx *ctx, struct conf *conf, const config_setting_t *root)
{
    const config_setting_t *s = config_setting_get_member(root, "domains");
    struct name_refs refs = { 0 };
    char q[CONF_QUOTE_MAX];

    /* An empty list is a host with no customers yet, not a mistake. */
    if (!s || (config_setting_is_aggregate(s) && config_setting_length(s) == 0))
        return;
    conf_read_names(ctx, s, &conf->domains, &conf->n_domains);
    for (size_t i = 0; conf->domains && i < conf->n_domains; i++) {
        const char *d = conf->domains[i];
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        if (!d)
            continue;
        if (d[0] == '*')
            conf_error(ctx, e, "%s: a domain, not a wildcard", conf_quote(q, sizeof q, d));
        else
            add_ref(ctx, &refs, d, e);
    }
    report_duplicates(ctx, &refs, "listed");
}

static const char *const cert_keys[] = { "cert", "key", "names", NULL };

static void parse_certs(struct conf_ctx *ctx, struct conf *conf, const config_setting_t *root)
{
    const config_setting_t *s = config_setting_get_member(root, "certificates");
    size_t n;

    if (!s)
        return;
    n = config_setting_is_aggregate(s) ? (size_t)config_setting_length(s) : 0;
    if (!config_setting_is_list(s) && !(config_setting_is_array(s) && n == 0)) {
        conf_error(ctx, s, "expected a list ( { cert = ...; key = ...; }, ... )");
        return;
    }
    if (n == 0)
        return;
    conf->certs = conf_calloc(ctx, n, sizeof *conf->certs);
    if (!conf->certs)
        return;
    conf->n_certs = n;
    for (size_t i = 0; i < n; i++) {
        const config_setting_t *g = config_setting_get_elem(s, (unsigned)i), *names;
        struct conf_cert *c = &conf->certs[i];
        c->line = (int)conf_line(g);
        if (!conf_is_group(ctx, g))
            continue;
        conf_check_keys(ctx, g, cert_keys);
        if (conf_read_path(ctx, g, "cert", &c->cert) == 0)
            conf_missing(ctx, g, "cert", NULL);
        if (conf_read_path(ctx, g, "key", &c->key) == 0)
            conf_missing(ctx, g, "key", NULL);
        names = config_setting_get_member(g, "names");
        if (names)
            conf_read_names(ctx, names, &c->names, &c->n_names);
    }
}

static void parse_cert_dirs(struct conf_ctx *ctx, struct conf *conf, const config_setting_t *root)
{
    const config_setting_t *s = config_setting_get_member(root, "cert_dirs");
    size_t n;

    if (!s || !conf_is_seq(ctx, s, "a list of directories"))
        return;
    n = (size_t)config_setting_length(s);
    if (n == 0)
        return;
    conf->cert_dirs = conf_calloc(ctx, n, sizeof *conf->cert_dirs);
    if (!conf->cert_dirs)
        return;
    conf->n_cert_dirs = n;
    for (size_t i = 0; i < n; i++) {
        const char *v = conf_elem_str(ctx, config_setting_get_elem(s, (unsigned)i));
        if (v)
            conf->cert_dirs[i] = conf_resolve(ctx, v);
    }
}

static const char *const tls_keys[] = {
    "default_cert", "default_key", "min_version", "ciphers", "ciphersuites", "ticket_keys", "offload",
    NULL
};
static const char *const tls_version_names[] = { "TLSv1.2", "TLSv1.3", NULL };

static void parse_tls(struct conf_ctx *ctx, struct conf *conf, const config_setting_t *root)
{
    const config_setting_t *g = config_setting_get_member(root, "tls");
    const char *v;
    int e;

    conf->tls.min_version = TLS1_2_VERSION;
    conf->tls.offload = true;
    if (!g) {
        conf_missing(ctx, root, "tls", NULL);
        return;
    }
    if (!conf_is_group(ctx, g))
        return;
    conf_check_keys(ctx, g, tls_keys);
    if (conf_read_path(ctx, g, "default_cert", &conf->tls.default_cert) == 0)
        conf_missing(ctx, g, "default_cert", NULL);
    if (conf_read_path(ctx, g, "default_key", &conf->tls.default_key) == 0)
        conf_missing(ctx, g, "default_key", NULL);
    if (conf_read_enum(ctx, g, "min_version", tls_version_names, &e) > 0)
        conf->tls.min_version = e == 0 ? TLS1_2_VERSION : TLS1_3_VERSION;
    if (conf_read_str(ctx, g, "ciphers", &v) > 0)
        conf->tls.ciphers = conf_dup(ctx, v);
    if (conf_read_str(ctx, g, "ciphersuites", &v) > 0)
        conf->tls.ciphersuites = conf_dup(ctx, v);
    conf_read_path(ctx, g, "ticket_keys", &conf->tls.ticket_keys);
    conf_read_bool(ctx, g, "offload", &conf->tls.offload);
}

static const char *const log_keys[] = { "level", "target", NULL };
static const char *const level_names[] = { "err", "warning", "notice", "info", "debug", NULL };
static const enum conf_log_level level_values[] = {
    CONF_LOG_ERR, CONF_LOG_WARNING, CONF_LOG_NOTICE, CONF_LOG_INFO, CONF_LOG_DEBUG
};
static const char *const target_names[] = { "stderr", "syslog", NULL };

static void parse_log(struct conf_ctx *ctx, struct conf *conf, const config_setting_t *root)
{
    const config_setting_t *g = config_setting_get_member(root, "log");
    int e;

    conf->log_level = CONF_LOG_INFO;
    conf->log_target = CONF_LOG_STDERR;
    if (!g || !conf_is_group(ctx, g))
        return;
    conf_check_keys(ctx, g, log_keys);
    if (conf_read_enum(ctx, g, "level", level_names, &e) > 0)
        conf->log_level = level_values[e];
    if (conf_read_enum(ctx, g, "target", target_names, &e) > 0)
        conf->log_target = (enum conf_log_target)e;
}

static void parse_admin(struct conf_ctx *ctx, struct conf *conf, const config_setting_t *root)
{
    const config_setting_t *s = config_setting_get_member(root, "admin");
    const char *v;

    if (conf_read_str(ctx, root, "admin", &v) <= 0 || !conf_addr_at(ctx, s, v, true, &conf->admin))
        return;
    conf->has_admin = true;
    for (size_t i = 0; i < conf->n_listeners; i++) {
        const struct conf_listener *l = &conf->listeners[i];
        if (l->listen.len && conf_addr_clash(&conf->admin, &l->listen)) {
            conf_error(ctx, s, "%s clashes with %s of the listener at line %d", conf->admin.text,
                       l->listen.text, l->line);
            break;
        }
    }
}

static const char *const top_keys[] = {
    "workers", "user", "group", "log", "admin", "drain_timeout", "drain_grace", "hard_stop_after",
    "pid_file",
    "max_connections",
    "max_connections_per_client", "tls",
    "certificates", "cert_dirs", "listeners", "routes", "domains", "autoconfig", "mta_sts",
    "acme", NULL
};

static void parse_root(struct conf_ctx *ctx, struct conf *conf, const config_setting_t *root)
{
    const char *v;

    conf_check_keys(ctx, root, top_keys);
    conf_read_uint(ctx, root, "workers", MAX_WORKERS, &conf->workers);
    if (conf_read_str(ctx, root, "user", &v) > 0)
        conf->user = conf_dup(ctx, v);
    if (conf_read_str(ctx, root, "group", &v) > 0)
        conf->group = conf_dup(ctx, v);
    parse_log(ctx, conf, root);
    conf->drain_timeout_s = 30;
    conf_read_uint(ctx, root, "drain_timeout", CONF_MAX_SECONDS, &conf->drain_timeout_s);
    conf_read_uint(ctx, root, "hard_stop_after", CONF_MAX_SECONDS, &conf->hard_stop_after_s);
    /* 0 (the default) is today's drain: stop accepting at once. */
    const config_setting_t *grace = config_setting_get_member(root, "drain_grace");
    if (grace && !((config_setting_type(grace) == CONFIG_TYPE_INT && config_setting_get_int(grace) == 0) ||
                   (config_setting_type(grace) == CONFIG_TYPE_FLOAT && config_setting_get_float(grace) == 0.0)))
        conf_read_ms(ctx, root, "drain_grace", &conf->drain_grace_ms);
    conf_read_path(ctx, root, "pid_file", &conf->pid_file);
    conf_read_uint(ctx, root, "max_connections", UINT_MAX, &conf->max_connections);
    conf_read_uint(ctx, root, "max_connections_per_client", UINT_MAX,
                   &conf->max_connections_per_client);
    parse_tls(ctx, conf, root);
    parse_certs(ctx, conf, root);
    parse_cert_dirs(ctx, conf, root);
    conf_parse_listeners(ctx, conf, root);
    parse_admin(ctx, conf, root);
    parse_routes(ctx, conf, root);
    parse_domains(ctx, conf, root);
    conf_parse_setup(ctx, conf, root);
    conf_parse_acme(ctx, conf, root);
    /* Loops are a property of a config that is otherwise whole. */
    if (!ctx->n_msgs && !ctx->oom)
        conf_check_backend_loops(ctx, conf, root);
}

int conf_load(const char *path, struct conf **out, char **errors)
{
    struct conf_ctx ctx = { .path = path ? path : "(null)" };
    struct conf *conf = NULL;
    config_t cfg;
    bool have_cfg = false;
    char *text;
    int rc;

    if (out)
        *out = NULL;
    if (errors)
        *errors = NULL;
    if (!path || !out) {
        conf_error_at(&ctx, NULL, 0, "cannot read: %s", strerror(EINVAL));
        rc = -EINVAL;
        goto fail;
    }
    rc = conf_source_check(&ctx);
    if (rc < 0)
        goto fail;

    config_init(&cfg);
    have_cfg = true;
    /* @include paths then mean the same as every other path in the file: relative to it. */
    config_set_include_dir(&cfg, ctx.dir);
    if (!config_read_file(&cfg, path)) {
        const char *why = config_error_text(&cfg) ? config_error_text(&cfg) : "syntax error";
        if (config_error_type(&cfg) == CONFIG_ERR_FILE_IO) {
            conf_error_at(&ctx, NULL, 0, "cannot read: %s", why);
            rc = -EIO;
        } else {
            int line = config_error_line(&cfg);
            conf_error_at(&ctx, config_error_file(&cfg), line > 0 ? (unsigned)line : 1, "%s", why);
            rc = -EINVAL;
        }
        goto fail;
    }

    conf = calloc(1, sizeof *conf);
    if (!conf || !(conf->path = strdup(path))) {
        conf_oom(&ctx);
        goto fail;
    }
    parse_root(&ctx, conf, config_root_setting(&cfg));
    if (ctx.oom || ctx.n_msgs)
        goto fail;
    conf->includes = ctx.includes;
    conf->n_includes = ctx.n_includes;
    ctx.includes = NULL;
    ctx.n_includes = 0;

    config_destroy(&cfg);
    free(ctx.dir);
    *out = conf;
    return 0;

fail:
    if (have_cfg)
        config_destroy(&cfg);
    conf_free(conf);
    free(ctx.dir);
    for (size_t i = 0; i < ctx.n_includes; i++)
        free(ctx.includes[i]);
    free(ctx.includes);
    text = conf_errors_take(&ctx);
    conf_errors_free(&ctx);
    if (ctx.oom) {
        rc = -ENOMEM;
        free(text);
        if (asprintf(&text, "%s: out of memory\n", ctx.path) < 0)
            text = NULL;
    } else if (rc == 0) {
        rc = -EINVAL;
    }
    if (errors)
        *errors = text;
    else
        free(text);
    return rc;
}

static void free_strv(char **v, size_t n)
{
    if (!v)
        return;
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void conf_free(struct conf *conf)
{
    if (!conf)
        return;
    free(conf->path);
    free(conf->user);
    free(conf->group);
    free(conf->tls.default_cert);
    free(conf->tls.default_key);
    free(conf->tls.ciphers);
    free(conf->tls.ciphersuites);
    free(conf->tls.ticket_keys);
    for (size_t i = 0; i < conf->n_certs; i++) {
        free(conf->certs[i].cert);
        free(conf->certs[i].key);
        free_strv(conf->certs[i].names, conf->certs[i].n_names);
    }
    free(conf->certs);
    free_strv(conf->cert_dirs, conf->n_cert_dirs);
    for (size_t i = 0; i < conf->n_listeners; i++) {
        free(conf->listeners[i].name);
        free(conf->listeners[i].backends);
        free(conf->listeners[i].trusted);
    }
    free(conf->listeners);
    conf_routes_free(conf->routes, conf->n_routes);
    free_strv(conf->domains, conf->n_domains);
    conf_setup_free(conf);
    conf_acme_free(&conf->acme);
    free_strv(conf->includes, conf->n_includes);
    free(conf->pid_file);
    free(conf);
}

void conf_routes_free(struct conf_route *routes, size_t n)
{
    for (size_t i = 0; routes && i < n; i++) {
        free_strv(routes[i].names, routes[i].n_names);
        for (int p = 0; p < CONF_PROTO_COUNT; p++)
            free(routes[i].backends[p]);
    }
    free(routes);
}
