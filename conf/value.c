/* conf/value.c: typed reads of libconfig settings, and the error list they report into.
 *
 * Every reader reports its own errors with the setting's file and line, so the schema walk in
 * conf.c reads like the SPEC and never formats a message about types. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf/internal.h"

void conf_oom(struct conf_ctx *ctx)
{
    ctx->oom = true;
}

/* One reported problem. Kept apart until the end so the list can be put in file order: the walk
 * visits the schema in its own order, an operator reads the file top to bottom. */
struct conf_msg {
    char *text;                 /* "FILE:LINE: reason", no newline */
    size_t file_len;            /* FILE's length at the start of text */
    size_t file_rank;           /* files in order of their first message */
    unsigned line;
    size_t seq;
};

static void add_msg(struct conf_ctx *ctx, const char *file, unsigned line, const char *prefix,
                    const char *fmt, va_list ap)
{
    char msg[512];
    struct conf_msg *m;
    size_t flen = strlen(file), rank = ctx->n_msgs;

    if (ctx->oom)
        return;
    if (ctx->n_msgs == ctx->cap_msgs) {
        size_t cap = ctx->cap_msgs ? ctx->cap_msgs * 2 : 16;
        struct conf_msg *p = realloc(ctx->msgs, cap * sizeof *p);
        if (!p) {
            conf_oom(ctx);
            return;
        }
        ctx->msgs = p;
        ctx->cap_msgs = cap;
    }
    for (size_t i = 0; i < ctx->n_msgs; i++) {
        const struct conf_msg *o = &ctx->msgs[i];
        if (o->file_len == flen && memcmp(o->text, file, flen) == 0) {
            rank = o->file_rank;
            break;
        }
    }
    /* A truncated message is still a useful message; the bound keeps one line one line. */
    vsnprintf(msg, sizeof msg, fmt, ap);
    m = &ctx->msgs[ctx->n_msgs];
    if (asprintf(&m->text, "%s%s", prefix, msg) < 0) {
        conf_oom(ctx);
        return;
    }
    m->file_len = flen;
    m->file_rank = rank;
    m->line = line;
    m->seq = ctx->n_msgs++;
}

static int cmp_msg(const void *a, const void *b)
{
    const struct conf_msg *x = a, *y = b;

    if (x->file_rank != y->file_rank)
        return x->file_rank < y->file_rank ? -1 : 1;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    return (x->seq > y->seq) - (x->seq < y->seq);
}

char *conf_errors_take(struct conf_ctx *ctx)
{
    size_t len = 0, o = 0;
    char *out;

    if (ctx->n_msgs == 0 || ctx->oom)
        return NULL;
    qsort(ctx->msgs, ctx->n_msgs, sizeof *ctx->msgs, cmp_msg);
    for (size_t i = 0; i < ctx->n_msgs; i++)
        len += strlen(ctx->msgs[i].text) + 1;
    out = malloc(len + 1);
    if (!out) {
        conf_oom(ctx);
        return NULL;
    }
    for (size_t i = 0; i < ctx->n_msgs; i++) {
        size_t n = strlen(ctx->msgs[i].text);
        memcpy(out + o, ctx->msgs[i].text, n);
        o += n;
        out[o++] = '\n';
    }
    out[o] = '\0';
    return out;
}

void conf_errors_free(struct conf_ctx *ctx)
{
    for (size_t i = 0; i < ctx->n_msgs; i++)
        free(ctx->msgs[i].text);
    free(ctx->msgs);
    ctx->msgs = NULL;
    ctx->n_msgs = ctx->cap_msgs = 0;
}

/* Settings from an @included file carry the name as written in the @include, which libconfig
 * resolved against ctx->dir; show the resolved path so the operator can open it. */
static void format_file(const struct conf_ctx *ctx, const char *file, char *buf, size_t size)
{
    if (!file || !*file)
        file = ctx->path;
    if (file[0] != '/' && strcmp(file, ctx->path) != 0 && ctx->dir)
        snprintf(buf, size, "%s/%s", ctx->dir, file);
    else
        snprintf(buf, size, "%s", file);
}

void conf_error_at(struct conf_ctx *ctx, const char *file, unsigned line, const char *fmt, ...)
{
    char name[4096], prefix[4200];
    va_list ap;

    format_file(ctx, file, name, sizeof name);
    /* Line 0: a message about the file as a whole ("cannot read"). */
    if (line)
        snprintf(prefix, sizeof prefix, "%s:%u: ", name, line);
    else
        snprintf(prefix, sizeof prefix, "%s: ", name);
    va_start(ap, fmt);
    add_msg(ctx, name, line, prefix, fmt, ap);
    va_end(ap);
}

unsigned conf_line(const config_setting_t *s)
{
    unsigned line = s ? config_setting_source_line(s) : 0;
    return line ? line : 1;
}

/* listeners[1].backend[0]: the way an operator would point at a setting. Schema depth is at most
 * four, so a short fixed chain is plenty; anything deeper is shown from the top it has. */
static void setting_path(const config_setting_t *s, char *buf, size_t size)
{
    const config_setting_t *chain[8];
    int n = 0;
    size_t len = 0;

    buf[0] = '\0';
    for (; s && !config_setting_is_root(s) && n < 8; s = config_setting_parent(s))
        chain[n++] = s;
    while (n-- > 0 && len < size) {
        const config_setting_t *c = chain[n];
        int w;
        if (config_setting_name(c))
            w = snprintf(buf + len, size - len, "%s%s", len ? "." : "", config_setting_name(c));
        else
            w = snprintf(buf + len, size - len, "[%d]", config_setting_index(c));
        if (w < 0)
            break;
        len += (size_t)w;
    }
}

void conf_error(struct conf_ctx *ctx, const config_setting_t *s, const char *fmt, ...)
{
    char name[4096], key[256], prefix[4400];
    va_list ap;

    format_file(ctx, s ? config_setting_source_file(s) : NULL, name, sizeof name);
    setting_path(s, key, sizeof key);
    snprintf(prefix, sizeof prefix, "%s:%u: %s%s", name, conf_line(s), key, key[0] ? ": " : "");
    va_start(ap, fmt);
    add_msg(ctx, name, conf_line(s), prefix, fmt, ap);
    va_end(ap);
}

const char *conf_quote(char *buf, size_t size, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;

    if (size < 8) {
        if (size)
            buf[0] = '\0';
        return buf;
    }
    buf[o++] = '"';
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        /* Room for the widest escape, the ellipsis and the closing quote. */
        if (o + 4 + 3 + 2 > size) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
            buf[o++] = '\\';
            if (c == '"' || c == '\\') {
                buf[o++] = (char)c;
            } else {
                buf[o++] = 'x';
                buf[o++] = hex[c >> 4];
                buf[o++] = hex[c & 15];
            }
        } else {
            buf[o++] = (char)c;
        }
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

void conf_missing(struct conf_ctx *ctx, const config_setting_t *g, const char *key, const char *why)
{
    conf_error(ctx, g, "missing required key \"%s\"%s", key, why ? why : "");
}

void conf_check_keys(struct conf_ctx *ctx, const config_setting_t *g, const char *const *allowed)
{
    int n = config_setting_length(g);

    for (int i = 0; i < n; i++) {
        const config_setting_t *m = config_setting_get_elem(g, (unsigned)i);
        const char *name = m ? config_setting_name(m) : NULL;
        const char *const *a;
        if (!name)
            continue;
        for (a = allowed; *a && strcmp(*a, name) != 0; a++)
            ;
        if (!*a)
            conf_error(ctx, m, "unknown key");
    }
}

bool conf_is_group(struct conf_ctx *ctx, const config_setting_t *s)
{
    if (config_setting_is_group(s))
        return true;
    conf_error(ctx, s, "expected a group { ... }");
    return false;
}

bool conf_is_seq(struct conf_ctx *ctx, const config_setting_t *s, const char *what)
{
    if (config_setting_is_list(s) || config_setting_is_array(s))
        return true;
    conf_error(ctx, s, "expected %s", what);
    return false;
}

static const char *str_value(struct conf_ctx *ctx, const config_setting_t *s)
{
    const char *v;

    if (config_setting_type(s) != CONFIG_TYPE_STRING) {
        conf_error(ctx, s, "expected a string");
        return NULL;
    }
    v = config_setting_get_string(s);
    if (!v || !*v) {
        conf_error(ctx, s, "must not be empty");
        return NULL;
    }
    return v;
}

const char *conf_elem_str(struct conf_ctx *ctx, const config_setting_t *s)
{
    return str_value(ctx, s);
}

int conf_read_str(struct conf_ctx *ctx, const config_setting_t *g, const char *key, const char **out)
{
    const config_setting_t *s = config_setting_get_member(g, key);
    const char *v;

    if (!s)
        return 0;
    v = str_value(ctx, s);
    if (!v)
        return -1;
    *out = v;
    return 1;
}

static bool int_value(const config_setting_t *s, long long *v)
{
    switch (config_setting_type(s)) {
    case CONFIG_TYPE_INT:
        *v = config_setting_get_int(s);
        return true;
    case CONFIG_TYPE_INT64:
        *v = config_setting_get_int64(s);
        return true;
    default:
        return false;
    }
}

int conf_read_uint(struct conf_ctx *ctx, const config_setting_t *g, const char *key, unsigned max,
                   unsigned *out)
{
    const config_setting_t *s = config_setting_get_member(g, key);
    long long v;

    if (!s)
        return 0;
    if (!int_value(s, &v)) {
        conf_error(ctx, s, "expected an integer");
        return -1;
    }
    if (v < 0 || (unsigned long long)v > max) {
        conf_error(ctx, s, "must be from 0 to %u, not %lld", max, v);
        return -1;
    }
    *out = (unsigned)v;
    return 1;
}

int conf_read_bool(struct conf_ctx *ctx, const config_setting_t *g, const char *key, bool *out)
{
    const config_setting_t *s = config_setting_get_member(g, key);

    if (!s)
        return 0;
    if (config_setting_type(s) != CONFIG_TYPE_BOOL) {
        conf_error(ctx, s, "expected true or false");
        return -1;
    }
    *out = config_setting_get_bool(s) != 0;
    return 1;
}

int conf_read_enum(struct conf_ctx *ctx, const config_setting_t *g, const char *key,
                   const char *const *names, int *out)
{
    const config_setting_t *s = config_setting_get_member(g, key);
    const char *v;
    char list[160], q[CONF_QUOTE_MAX];
    size_t len = 0;

    if (!s)
        return 0;
    if (config_setting_type(s) == CONFIG_TYPE_STRING && (v = config_setting_get_string(s))) {
        for (int i = 0; names[i]; i++) {
            if (strcmp(names[i], v) == 0) {
                *out = i;
                return 1;
            }
        }
    } else {
        v = NULL;
    }
    list[0] = '\0';
    for (int i = 0; names[i] && len < sizeof list; i++) {
        int w = snprintf(list + len, sizeof list - len, "%s\"%s\"", i ? ", " : "", names[i]);
        if (w < 0)
            break;
        len += (size_t)w;
    }
    if (v)
        conf_error(ctx, s, "%s is not one of %s", conf_quote(q, sizeof q, v), list);
    else
        conf_error(ctx, s, "expected a string, one of %s", list);
    return -1;
}

int conf_read_ms(struct conf_ctx *ctx, const config_setting_t *g, const char *key, unsigned *out)
{
    const config_setting_t *s = config_setting_get_member(g, key);
    long long iv;
    double v;

    if (!s)
        return 0;
    if (int_value(s, &iv)) {
        if (iv <= 0 || (unsigned long long)iv > CONF_MAX_SECONDS)
            goto range;
        *out = (unsigned)iv * 1000u;
        return 1;
    }
    if (config_setting_type(s) != CONFIG_TYPE_FLOAT) {
        conf_error(ctx, s, "expected a number of seconds");
        return -1;
    }
    v = config_setting_get_float(s);
    /* Written this way round so that NaN fails too. */
    if (!(v > 0.0 && v <= (double)CONF_MAX_SECONDS))
        goto range;
    if (v < 0.001) {
        conf_error(ctx, s, "must be at least 0.001 (1 ms)");
        return -1;
    }
    *out = (unsigned)(v * 1000.0 + 0.5);
    return 1;
range:
    conf_error(ctx, s, "must be more than 0 and at most %u seconds", CONF_MAX_SECONDS);
    return -1;
}

/* Relative paths in the config are taken from the config file's directory, not from the working
 * directory: the daemon is started from / by systemd but `mailsnid -t` from anywhere, and both
 * must read the same files. */
char *conf_resolve(struct conf_ctx *ctx, const char *path)
{
    char *out;

    if (path[0] == '/' || !ctx->dir)
        out = strdup(path);
    else if (asprintf(&out, "%s/%s", ctx->dir, path) < 0)
        out = NULL;
    if (!out)
        conf_oom(ctx);
    return out;
}

int conf_read_path(struct conf_ctx *ctx, const config_setting_t *g, const char *key, char **out)
{
    const char *v;
    int rc = conf_read_str(ctx, g, key, &v);

    if (rc <= 0)
        return rc;
    *out = conf_resolve(ctx, v);
    return *out ? 1 : -1;
}

char *conf_dup(struct conf_ctx *ctx, const char *s)
{
    char *d = strdup(s);
    if (!d)
        conf_oom(ctx);
    return d;
}

void *conf_calloc(struct conf_ctx *ctx, size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p)
        conf_oom(ctx);
    return p;
}

bool conf_addr_at(struct conf_ctx *ctx, const config_setting_t *s, const char *text, bool bind,
                  struct conf_addr *a)
{
    char q[CONF_QUOTE_MAX];
    const char *why;

    if (conf_addr_parse(text, a, &why) < 0) {
        conf_error(ctx, s, "%s: %s", conf_quote(q, sizeof q, text), why);
        return false;
    }
    if (!bind && conf_addr_is_any(a)) {
        conf_error(ctx, s, "%s: 0.0.0.0 and [::] can be listened on, not connected to",
                   conf_quote(q, sizeof q, text));
        memset(a, 0, sizeof *a);
        return false;
    }
    return true;
}

int conf_read_addrs(struct conf_ctx *ctx, const config_setting_t *g, const char *key,
                    struct conf_addr **out, size_t *n_out)
{
    const config_setting_t *s = config_setting_get_member(g, key);
    bool single;
    size_t n;

    if (!s)
        return 0;
    single = config_setting_type(s) == CONFIG_TYPE_STRING;
    if (!single && !config_setting_is_list(s) && !config_setting_is_array(s)) {
        conf_error(ctx, s, "expected an address or a list of addresses");
        return -1;
    }
    n = single ? 1 : (size_t)config_setting_length(s);
    if (n == 0) {
        conf_error(ctx, s, "needs at least one address");
        return -1;
    }
    *out = conf_calloc(ctx, n, sizeof **out);
    if (!*out)
        return -1;
    *n_out = n;
    for (size_t i = 0; i < n; i++) {
        const config_setting_t *e = single ? s : config_setting_get_elem(s, (unsigned)i);
        const char *v = conf_elem_str(ctx, e);
        if (v)
            conf_addr_at(ctx, e, v, false, &(*out)[i]);
    }
    return 1;
}

void conf_read_names(struct conf_ctx *ctx, const config_setting_t *s, char ***out, size_t *n_out)
{
    char q[CONF_QUOTE_MAX];
    size_t n;

    if (!conf_is_seq(ctx, s, "a list of host names"))
        return;
    n = (size_t)config_setting_length(s);
    if (n == 0) {
        conf_error(ctx, s, "must not be empty");
        return;
    }
    *out = conf_calloc(ctx, n, sizeof **out);
    if (!*out)
        return;
    *n_out = n;
    for (size_t i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        const char *v = conf_elem_str(ctx, e), *why;
        char *name;
        if (!v || !(name = conf_dup(ctx, v)))
            continue;
        why = conf_hostname_normalise(name);
        if (why) {
            conf_error(ctx, e, "%s: %s", conf_quote(q, sizeof q, v), why);
            free(name);
            continue;
        }
        (*out)[i] = name;
    }
}
