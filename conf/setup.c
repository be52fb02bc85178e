/* conf/setup.c: the client-setup blocks — "autoconfig" (what Thunderbird's autoconfig and
 * Outlook's Autodiscover announce) and "mta_sts" (the RFC 8461 policy) — served for every
 * listed domain. Host templates are checked here by expanding them for a sample domain, so a
 * template that would give an invalid host name never reaches a client. */
#include <stdlib.h>
#include <string.h>

#include "conf/internal.h"

/* RFC 8461 §3.2: max_age is at most 31557600 seconds (about one year). */
#define STS_MAX_AGE_MAX 31557600u
#define STS_MAX_AGE_DEFAULT 604800u
#define DISPLAY_NAME_MAX 200

/* A name no real domain will clash with, long enough to catch a template whose labels would
 * be too long for most domains anyway. */
#define SAMPLE_DOMAIN "sample-customer-domain.example"

/* Checks a host template (at most one "*." in front when WILDCARD) and returns it lower-cased,
 * without a trailing dot, or NULL (reported). */
static char *read_host_template(struct conf_ctx *ctx, const config_setting_t *s, const char *v,
                                bool wildcard)
{
    char q[CONF_QUOTE_MAX], sample[1024];
    size_t n = 0;

    for (const char *p = v; *p; p++) {
        if (*p == '%' && p[1] != 'd') {
            conf_error(ctx, s, "%s: only %%d (the domain) may follow %% in a host name",
                       conf_quote(q, sizeof q, v));
            return NULL;
        }
        const char *piece = *p == '%' ? SAMPLE_DOMAIN : (char[]){ *p, 0 };
        size_t len = strlen(piece);
        if (n + len >= sizeof sample) {
            conf_error(ctx, s, "%s: too long for a host name", conf_quote(q, sizeof q, v));
            return NULL;
        }
        memcpy(sample + n, piece, len);
        n += len;
        if (*p == '%')
            p++;
    }
    sample[n] = 0;
    const char *why = conf_hostname_normalise(sample);
    if (!why && !wildcard && sample[0] == '*')
        why = "a wildcard is not a host a client can connect to";
    if (why) {
        conf_error(ctx, s, "%s: %s", conf_quote(q, sizeof q, v), why);
        return NULL;
    }
    char *t = conf_dup(ctx, v);
    if (!t)
        return NULL;
    size_t len = strlen(t);
    if (len > 1 && t[len - 1] == '.')
        t[len - 1] = 0;
    for (char *p = t; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    return t;
}

static const char *const server_keys[] = { "host", "port", "socket", NULL };
static const char *const socket_names[] = { "SSL", "STARTTLS", NULL };

/* Ports by protocol (imap, pop3, smtp) and socket (SSL, STARTTLS): the IANA ones, and
 * submission (587) for SMTP with STARTTLS. */
static const unsigned default_port[3][2] = { { 993, 143 }, { 995, 110 }, { 465, 587 } };

static void read_server(struct conf_ctx *ctx, const config_setting_t *parent, const char *key,
                        int proto, struct conf_setup_server *srv)
{
    const config_setting_t *g = config_setting_get_member(parent, key);
    const char *v;
    int e;

    if (!g || !conf_is_group(ctx, g))
        return;
    conf_check_keys(ctx, g, server_keys);
    if (conf_read_enum(ctx, g, "socket", socket_names, &e) > 0)
        srv->socket = (enum conf_socket)e;
    srv->port = default_port[proto][srv->socket];
    if (conf_read_uint(ctx, g, "port", 65535, &srv->port) > 0 && srv->port == 0)
        conf_error(ctx, config_setting_get_member(g, "port"), "must be 1 to 65535");
    int rc = conf_read_str(ctx, g, "host", &v);
    if (rc == 0)
        conf_missing(ctx, g, "host", NULL);
    if (rc > 0)
        srv->host = read_host_template(ctx, config_setting_get_member(g, "host"), v, false);
}

/* Shown by mail clients as the account's provider: any text but control characters, with
 * "%d" for the domain and "%%" for a percent sign. */
static void read_display_name(struct conf_ctx *ctx, const config_setting_t *g, struct conf *conf)
{
    const config_setting_t *s = config_setting_get_member(g, "display_name");
    char q[CONF_QUOTE_MAX];
    const char *v;

    if (conf_read_str(ctx, g, "display_name", &v) <= 0)
        return;
    if (!*v || strlen(v) > DISPLAY_NAME_MAX) {
        conf_error(ctx, s, "must be 1 to %d bytes", DISPLAY_NAME_MAX);
        return;
    }
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        if (*p < 0x20 || *p == 0x7f) {
            conf_error(ctx, s, "%s: control characters are not allowed", conf_quote(q, sizeof q, v));
            return;
        }
        if (*p == '%' && p[1] != 'd' && p[1] != '%') {
            conf_error(ctx, s, "%s: write %%d for the domain and %%%% for a percent sign",
                       conf_quote(q, sizeof q, v));
            return;
        }
        if (*p == '%')
            p++;
    }
    conf->autoconfig.display_name = conf_dup(ctx, v);
}

static const char *const autoconfig_keys[] = { "display_name", "imap", "pop3", "smtp", NULL };

static void parse_autoconfig(struct conf_ctx *ctx, struct conf *conf, const config_setting_t *g)
{
    if (!conf_is_group(ctx, g))
        return;
    conf_check_keys(ctx, g, autoconfig_keys);
    read_display_name(ctx, g, conf);
    read_server(ctx, g, "imap", 0, &conf->autoconfig.imap);
    read_server(ctx, g, "pop3", 1, &conf->autoconfig.pop3);
    read_server(ctx, g, "smtp", 2, &conf->autoconfig.smtp);
    /* A mail client needs a way in and a way out. */
    if (!config_setting_get_member(g, "smtp"))
        conf_missing(ctx, g, "smtp", NULL);
    if (!config_setting_get_member(g, "imap") && !config_setting_get_member(g, "pop3"))
        conf_error(ctx, g, "autoconfig needs \"imap\" or \"pop3\" (or both)");
    conf->has_autoconfig = true;
}

static const char *const sts_keys[] = { "mode", "mx", "max_age", NULL };
static const char *const sts_mode_names[] = { "enforce", "testing", "none", NULL };

static void parse_mta_sts(struct conf_ctx *ctx, struct conf *conf, const config_setting_t *g)
{
    const config_setting_t *mx;
    int e, rc;

    if (!conf_is_group(ctx, g))
        return;
    conf_check_keys(ctx, g, sts_keys);
    rc = conf_read_enum(ctx, g, "mode", sts_mode_names, &e);
    if (rc == 0)
        conf_missing(ctx, g, "mode", NULL);
    if (rc > 0)
        conf->mta_sts.mode = (enum conf_sts_mode)e;
    conf->mta_sts.max_age = STS_MAX_AGE_DEFAULT;
    if (conf_read_uint(ctx, g, "max_age", STS_MAX_AGE_MAX, &conf->mta_sts.max_age) < 0)
        return;
    mx = config_setting_get_member(g, "mx");
    if (!mx) {
        /* RFC 8461 §3.2: only a policy of mode "none" may name no MX. */
        if (rc > 0 && conf->mta_sts.mode != CONF_STS_NONE)
            conf_missing(ctx, g, "mx", " (mode enforce and testing name the MX hosts)");
    } else if (conf_is_seq(ctx, mx, "a list of MX host names (\"mail.%d\", \"*.%d\")")) {
        size_t n = (size_t)config_setting_length(mx);
        if (n == 0) {
            conf_error(ctx, mx, "must not be empty");
            return;
        }
        if (!(conf->mta_sts.mx = conf_calloc(ctx, n, sizeof *conf->mta_sts.mx)))
            return;
        conf->mta_sts.n_mx = n;
        for (size_t i = 0; i < n; i++) {
            const config_setting_t *el = config_setting_get_elem(mx, (unsigned)i);
            const char *v = conf_elem_str(ctx, el);
            if (v)
                conf->mta_sts.mx[i] = read_host_template(ctx, el, v, true);
        }
    }
    conf->has_mta_sts = true;
}

void conf_parse_setup(struct conf_ctx *ctx, struct conf *conf, const config_setting_t *root)
{
    const config_setting_t *g = config_setting_get_member(root, "autoconfig");
    if (g)
        parse_autoconfig(ctx, conf, g);
    g = config_setting_get_member(root, "mta_sts");
    if (g)
        parse_mta_sts(ctx, conf, g);
}

void conf_setup_free(struct conf *conf)
{
    free(conf->autoconfig.display_name);
    free(conf->autoconfig.imap.host);
    free(conf->autoconfig.pop3.host);
    free(conf->autoconfig.smtp.host);
    for (size_t i = 0; conf->mta_sts.mx && i < conf->mta_sts.n_mx; i++)
        free(conf->mta_sts.mx[i]);
    free(conf->mta_sts.mx);
}
