/* Shared between the files of conf/ only; nothing here is part of the public conf.h API.
 *
 * conf.c walks the schema (listener.c the listeners), value.c reads typed values and collects
 * errors, addr.c parses addresses and CIDRs, hostname.c normalises domain names, source.c reads
 * the file and keeps libconfig's lexer away from inputs that would make it exit, print or block. */
#ifndef MAILSNID_CONF_INTERNAL_H
#define MAILSNID_CONF_INTERNAL_H

#include <libconfig.h>
#include <stdbool.h>
#include <stddef.h>

#include "conf/conf.h"

/* Seconds values are later turned into milliseconds in an unsigned. */
#define CONF_MAX_SECONDS 4294967u

/* One conf_load() call. Errors accumulate here so one run reports every problem. */
struct conf_ctx {
    const char *path;           /* the config file as the caller named it */
    char *dir;                  /* its directory, absolute: relative paths and @include resolve here */
    struct conf_msg *msgs;      /* what went wrong, in the order it was found */
    size_t n_msgs, cap_msgs;
    bool oom;                   /* an allocation failed: the result is -ENOMEM whatever else */
    char **includes;            /* every file @included, absolute (handed to the conf) */
    size_t n_includes;
};

/* value.c: error reporting. LINE 0 leaves the line out, for messages about the whole file. */
void conf_error_at(struct conf_ctx *ctx, const char *file, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* "FILE:LINE: KEYPATH: message" where FILE and LINE are S's and KEYPATH is e.g. listeners[1].listen. */
void conf_error(struct conf_ctx *ctx, const config_setting_t *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void conf_oom(struct conf_ctx *ctx);
/* The messages as "FILE:LINE: reason\n" lines in file and line order, as one heap string (NULL
 * when there are none or memory ran out). conf_errors_free() releases the messages. */
char *conf_errors_take(struct conf_ctx *ctx);
void conf_errors_free(struct conf_ctx *ctx);
/* Prints S quoted, escaped and shortened into BUF, for messages that must stay one line. */
const char *conf_quote(char *buf, size_t size, const char *s);
#define CONF_QUOTE_MAX 80

/* value.c: typed readers. Each looks KEY up in group G and returns 1 with *out set when it is
 * present and valid, 0 when it is absent (the caller keeps its default), -1 when it is present
 * but wrong (already reported). */
int conf_read_str(struct conf_ctx *ctx, const config_setting_t *g, const char *key, const char **out);
int conf_read_uint(struct conf_ctx *ctx, const config_setting_t *g, const char *key, unsigned max,
                   unsigned *out);
int conf_read_bool(struct conf_ctx *ctx, const config_setting_t *g, const char *key, bool *out);
/* NAMES is NULL-terminated; *out is the index of the match. */
int conf_read_enum(struct conf_ctx *ctx, const config_setting_t *g, const char *key,
                   const char *const *names, int *out);
/* Seconds, integer or fractional, > 0, stored as milliseconds. */
int conf_read_ms(struct conf_ctx *ctx, const config_setting_t *g, const char *key, unsigned *out);
/* A file path, resolved against ctx->dir when relative; *out is heap. */
int conf_read_path(struct conf_ctx *ctx, const config_setting_t *g, const char *key, char **out);
char *conf_resolve(struct conf_ctx *ctx, const char *path);
/* A non-empty string element of a list or array, or NULL (reported). */
const char *conf_elem_str(struct conf_ctx *ctx, const config_setting_t *s);
/* Is S a list or an array (reported if not)? For keys that take several strings. */
bool conf_is_seq(struct conf_ctx *ctx, const config_setting_t *s, const char *what);
bool conf_is_group(struct conf_ctx *ctx, const config_setting_t *s);
/* KEY is one destination address or a list or array of them (tried in order); *out is heap. */
int conf_read_addrs(struct conf_ctx *ctx, const config_setting_t *g, const char *key,
                    struct conf_addr **out, size_t *n_out);
/* Parses TEXT, the value of S, into A; BIND allows 0.0.0.0 and [::]. */
bool conf_addr_at(struct conf_ctx *ctx, const config_setting_t *s, const char *text, bool bind,
                  struct conf_addr *a);
/* A non-empty list or array of host names, normalised; an invalid one leaves its slot NULL. */
void conf_read_names(struct conf_ctx *ctx, const config_setting_t *s, char ***out, size_t *n_out);
/* strdup/calloc that record an allocation failure in ctx. */
char *conf_dup(struct conf_ctx *ctx, const char *s);
void *conf_calloc(struct conf_ctx *ctx, size_t n, size_t size);
/* Reports "missing required key" against G's own line. */
void conf_missing(struct conf_ctx *ctx, const config_setting_t *g, const char *key, const char *why);
/* Reports every member of group G whose name is not in ALLOWED (NULL-terminated). */
void conf_check_keys(struct conf_ctx *ctx, const config_setting_t *g, const char *const *allowed);
/* A libconfig line for messages: the root group has line 0, which no editor shows. */
unsigned conf_line(const config_setting_t *s);

/* conf.c: names indexed by the enums of conf.h, NULL-terminated. */
extern const char *const conf_proto_names[];
extern const char *const conf_pp_names[];

/* listener.c: the "listeners" list, with the checks between listeners. */
void conf_parse_listeners(struct conf_ctx *ctx, struct conf *conf, const config_setting_t *root);
/* After listeners and routes are read: refuses a backend that is one of mailsnid's own
 * listening addresses (a connection loop). */
void conf_check_backend_loops(struct conf_ctx *ctx, const struct conf *conf,
                              const config_setting_t *root);

/* acme.c: the acme = { } block; conf_acme_free releases what it holds (not A itself). */
void conf_parse_acme(struct conf_ctx *ctx, struct conf *conf, const config_setting_t *root);
void conf_acme_free(struct conf_acme *a);
/* setup.c: the client-setup blocks "autoconfig" and "mta_sts". */
void conf_parse_setup(struct conf_ctx *ctx, struct conf *conf, const config_setting_t *root);
void conf_setup_free(struct conf *conf);

/* addr.c */
int conf_addr_parse(const char *text, struct conf_addr *addr, const char **why);
int conf_cidr_parse(const char *text, struct conf_cidr *cidr, const char **why);
bool conf_addr_is_any(const struct conf_addr *addr);
/* Would binding both A and B fail (or split traffic) on Linux with a dual-stack [::]? */
bool conf_addr_clash(const struct conf_addr *a, const struct conf_addr *b);
/* Would a connection to BACKEND arrive at a socket bound to LISTEN? (Same port, and the same
 * address, or LISTEN a wildcard and BACKEND a loopback address.) */
bool conf_addr_reaches(const struct conf_addr *backend, const struct conf_addr *listen);

/* intlit.c: reports every integer literal in BUF (the text of FILE) that libconfig 1.5 would
 * silently wrap to 32 bits. */
void conf_check_int_literals(struct conf_ctx *ctx, const char *file, const char *buf, size_t len);

/* hostname.c: lower-cases NAME in place and drops one trailing dot; NULL when it is a valid host
 * name (optionally "*." + host name), else the reason it is not. */
const char *conf_hostname_normalise(char *name);

/* source.c: reads the main file and everything it @includes before libconfig does, and refuses
 * what would make libconfig's lexer exit, print or block. Returns 0, -errno for the main file
 * (reported as "FILE: cannot read: …"), or -EINVAL (reported with the @include's line). Sets
 * ctx->dir. */
int conf_source_check(struct conf_ctx *ctx);

#endif
