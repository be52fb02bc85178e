/* conf/acme.c: the acme = { } block (SPEC.md, "ACME"): where the CA is, where its results are
 * kept, which names each listed domain gets, and how fast orders may go. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf/internal.h"

static const char *const challenge_names[] = { "tls-alpn-01", "http-01", NULL };
static const char *const key_names[] = { "ecdsa", "rsa", NULL };
static const char *const acme_keys[] = {
    "directory", "contact", "storage", "ca_file", "challenges", "names", "key_type",
    "pace_orders", "pace_window", "renew_before_days", "backoff_min", "backoff_max",
    "order_timeout", NULL
};

/* Let's Encrypt's default limit on new orders: 300 per account per 3 hours. */
#define PACE_ORDERS 300
#define PACE_WINDOW (3 * 3600)
/* How long one order may wait for the CA to decide (authorizations pending, the order
 * processing): Let's Encrypt takes seconds; a CA that takes longer is asked again after the
 * back-off, with a new order. At most 300 s: a domain's lock in storage is taken over as stale
 * after 600 s, and an order's requests (up to a minute each) must end well before that. */
#define ORDER_TIMEOUT 120
#define ORDER_TIMEOUT_MAX 300
/* Also Let's Encrypt's: at most 100 names per certificate. */
#define MAX_NAMES 100

const char *conf_acme_challenge_name(enum conf_acme_challenge c)
{
    return (unsigned)c < CONF_ACME_CHALLENGES ? challenge_names[c] : "unknown";
}

int conf_acme_name(const char *pattern, const char *domain, char *out, size_t cap)
{
    size_t n = 0, dl = strlen(domain);
    for (const char *p = pattern; *p; p++) {
        const char *add = p;
        size_t len = 1;
        if (p[0] == '%' && p[1] == 'd') {
            add = domain;
            len = dl;
            p++;
        }
        if (n + len >= cap)
            return -ENAMETOOLONG;
        memcpy(out + n, add, len);
        n += len;
    }
    if (n >= cap)
        return -ENAMETOOLONG;
    out[n] = '\0';
    return (int)n;
}

/* A pattern is a host name with "%d" standing for one or more whole labels at its end:
 * "mail.%d" or "%d" itself. Checked by filling in a sample domain. */
static void read_names(struct conf_ctx *ctx, struct conf_acme *a, const config_setting_t *s)
{
    char q[CONF_QUOTE_MAX], sample[512];

    if (!conf_is_seq(ctx, s, "a list of name patterns such as \"mail.%d\""))
        return;
    size_t n = (size_t)config_setting_length(s);
    if (n == 0 || n > MAX_NAMES) {
        conf_error(ctx, s, "must hold 1 to %d patterns", MAX_NAMES);
        return;
    }
    a->names = conf_calloc(ctx, n, sizeof *a->names);
    if (!a->names)
        return;
    a->n_names = n;
    for (size_t i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        const char *v = conf_elem_str(ctx, e), *d, *why = NULL;
        if (!v)
            continue;
        d = strstr(v, "%d");
        if (!d || strstr(d + 2, "%d") || strchr(d + 2, '%') || memchr(v, '%', (size_t)(d - v)) ||
            d[2] != '\0' || (d != v && d[-1] != '.'))
            why = "needs exactly one %d, at the end (\"mail.%d\")";
        else if (conf_acme_name(v, "example.com", sample, sizeof sample) < 0 ||
                 (why = conf_hostname_normalise(sample)) == NULL)
            why = sample[0] == '*' ? "wildcards need DNS-01, which mailsnid does not answer" : NULL;
        if (why) {
            conf_error(ctx, e, "%s: %s", conf_quote(q, sizeof q, v), why);
            continue;
        }
        char *p = conf_dup(ctx, v);
        if (!p)
            continue;
        for (char *c = p; *c; c++)
            if (*c >= 'A' && *c <= 'Z')
                *c = (char)(*c - 'A' + 'a');
        for (size_t j = 0; j < i; j++)
            if (a->names[j] && strcmp(a->names[j], p) == 0) {
                conf_error(ctx, e, "%s is already listed", conf_quote(q, sizeof q, v));
                free(p);
                p = NULL;
                break;
            }
        a->names[i] = p;
    }
}

static void read_challenges(struct conf_ctx *ctx, struct conf_acme *a, const config_setting_t *s)
{
    char q[CONF_QUOTE_MAX];

    if (!conf_is_seq(ctx, s, "a list such as [ \"tls-alpn-01\", \"http-01\" ]"))
        return;
    size_t n = (size_t)config_setting_length(s);
    if (n == 0) {
        conf_error(ctx, s, "must not be empty");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        const char *v = conf_elem_str(ctx, e);
        int k = 0;
        if (!v)
            continue;
        while (challenge_names[k] && strcmp(challenge_names[k], v) != 0)
            k++;
        if (!challenge_names[k]) {
            conf_error(ctx, e, "%s: expected \"tls-alpn-01\" or \"http-01\"",
                       conf_quote(q, sizeof q, v));
            continue;
        }
        bool dup = false;
        for (size_t j = 0; j < a->n_challenges; j++)
            dup = dup || a->challenges[j] == (enum conf_acme_challenge)k;
        if (dup) {
            conf_error(ctx, e, "%s is already listed", conf_quote(q, sizeof q, v));
            continue;
        }
        a->challenges[a->n_challenges++] = (enum conf_acme_challenge)k;
    }
}

void conf_parse_acme(struct conf_ctx *ctx, struct conf *conf, const config_setting_t *root)
{
    const config_setting_t *g = config_setting_get_member(root, "acme"), *s;
    struct conf_acme *a = &conf->acme;
    const char *v;
    int e;

    a->pace_orders = PACE_ORDERS;
    a->pace_window_s = PACE_WINDOW;
    a->backoff_min_s = 60;
    a->backoff_max_s = 86400;
    a->order_timeout_s = ORDER_TIMEOUT;
    if (!g || !conf_is_group(ctx, g))
        return;
    a->enabled = true;
    a->line = (int)conf_line(g);
    conf_check_keys(ctx, g, acme_keys);
    if (conf_read_str(ctx, g, "directory", &v) > 0) {
        if (strncmp(v, "https://", 8) != 0 || !v[8])
            conf_error(ctx, config_setting_get_member(g, "directory"),
                       "expected an https:// URL of the CA's directory");
        else
            a->directory = conf_dup(ctx, v);
    } else if (!config_setting_get_member(g, "directory")) {
        conf_missing(ctx, g, "directory", NULL);
    }
    if (conf_read_str(ctx, g, "contact", &v) > 0)
        a->contact = conf_dup(ctx, v);
    if (conf_read_path(ctx, g, "storage", &a->storage) == 0)
        conf_missing(ctx, g, "storage", NULL);
    conf_read_path(ctx, g, "ca_file", &a->ca_file);
    if ((s = config_setting_get_member(g, "challenges")))
        read_challenges(ctx, a, s);
    else {
        a->challenges[0] = CONF_ACME_TLS_ALPN_01;
        a->challenges[1] = CONF_ACME_HTTP_01;
        a->n_challenges = 2;
    }
    if ((s = config_setting_get_member(g, "names")))
        read_names(ctx, a, s);
    else
        conf_missing(ctx, g, "names", " (such as [ \"mail.%d\", \"webmail.%d\" ])");
    if (conf_read_enum(ctx, g, "key_type", key_names, &e) > 0)
        a->key_type = (enum conf_acme_key)e;
    if (conf_read_uint(ctx, g, "pace_orders", 1000000, &a->pace_orders) > 0 && a->pace_orders == 0)
        conf_error(ctx, config_setting_get_member(g, "pace_orders"), "must be at least 1");
    if (conf_read_uint(ctx, g, "pace_window", CONF_MAX_SECONDS, &a->pace_window_s) > 0 &&
        a->pace_window_s == 0)
        conf_error(ctx, config_setting_get_member(g, "pace_window"), "must be at least 1 second");
    conf_read_uint(ctx, g, "renew_before_days", 3650, &a->renew_before_days);
    if (conf_read_uint(ctx, g, "backoff_min", CONF_MAX_SECONDS, &a->backoff_min_s) > 0 &&
        a->backoff_min_s == 0)
        conf_error(ctx, config_setting_get_member(g, "backoff_min"), "must be at least 1 second");
    conf_read_uint(ctx, g, "backoff_max", CONF_MAX_SECONDS, &a->backoff_max_s);
    if (conf_read_uint(ctx, g, "order_timeout", ORDER_TIMEOUT_MAX, &a->order_timeout_s) > 0 &&
        a->order_timeout_s == 0)
        conf_error(ctx, config_setting_get_member(g, "order_timeout"), "must be at least 1 second");
    if (a->backoff_max_s < a->backoff_min_s)
        conf_error(ctx, g, "backoff_max (%u) is less than backoff_min (%u)", a->backoff_max_s,
                   a->backoff_min_s);
}

void conf_acme_free(struct conf_acme *a)
{
    free(a->directory);
    free(a->contact);
    free(a->storage);
    free(a->ca_file);
    for (size_t i = 0; a->names && i < a->n_names; i++)
        free(a->names[i]);
    free(a->names);
}
