/* conf: the libconfig file turned into plain C structs.
 *
 * Nothing of libconfig leaks past this header. Every value has been validated here, so the rest
 * of the program never re-checks a port, an address or a timeout. Ownership: conf_load() returns
 * one heap object; conf_free() releases it and everything it points to. */
#ifndef MAILSNID_CONF_H
#define MAILSNID_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

enum conf_proto { CONF_PROTO_IMAP, CONF_PROTO_POP3, CONF_PROTO_SMTP, CONF_PROTO_HTTP, CONF_PROTO_COUNT };
enum conf_tls_mode { CONF_TLS_IMPLICIT, CONF_TLS_STARTTLS, CONF_TLS_NONE }; /* none: plain HTTP only */
enum conf_starttls { CONF_STARTTLS_OPTIONAL, CONF_STARTTLS_REQUIRED };
enum conf_pp { CONF_PP_NONE, CONF_PP_V1, CONF_PP_V2 };
enum conf_log_target { CONF_LOG_STDERR, CONF_LOG_SYSLOG };
/* Same order and meaning as syslog priorities, so the logger can pass them straight on. */
enum conf_log_level { CONF_LOG_ERR = 3, CONF_LOG_WARNING = 4, CONF_LOG_NOTICE = 5, CONF_LOG_INFO = 6, CONF_LOG_DEBUG = 7 };

/* Client setup (autoconfig, Autodiscover): how a mail client reaches one protocol. */
enum conf_socket { CONF_SOCKET_SSL, CONF_SOCKET_STARTTLS };
struct conf_setup_server {
    char *host;                           /* template, "%d" = the domain; NULL = not announced */
    unsigned port;
    enum conf_socket socket;
};
enum conf_sts_mode { CONF_STS_ENFORCE, CONF_STS_TESTING, CONF_STS_NONE };

/* A parsed "host:port" ("1.2.3.4:993", "[::1]:993", "[::]:995"). */
struct conf_addr {
    struct sockaddr_storage ss;
    socklen_t len;
    char text[64];              /* as written in the config, for logs */
};

/* A parsed "10.0.0.0/8" or "::1" (no prefix = host). */
struct conf_cidr {
    struct sockaddr_storage net; /* AF_INET or AF_INET6, port unused */
    int prefix;
};

struct conf_listener {
    char *name;
    int line;                             /* where it was declared, for later messages */
    struct conf_addr listen;
    enum conf_proto proto;
    enum conf_tls_mode tls;
    enum conf_starttls starttls;          /* only meaningful with CONF_TLS_STARTTLS */
    struct conf_addr *backends;           /* tried in order; at least one, except that a plain
                                             HTTP listener (tls none) may have none */
    size_t n_backends;
    enum conf_pp proxy_protocol;          /* header we send to the backend */
    bool proxy_protocol_in;               /* header we accept from a load balancer */
    struct conf_cidr *trusted;            /* sources allowed to send that header */
    size_t n_trusted;
    unsigned handshake_timeout_ms;        /* default 10 s (also bounds the PROXY header wait) */
    unsigned connect_timeout_ms;          /* default 5 s */
    unsigned idle_timeout_ms;             /* default by protocol: IMAP 30 min, POP3 10 min, SMTP 5 min, HTTP 2 min */
    unsigned max_connections;             /* 0 = no per-listener limit */
};

struct conf_cert {
    char *cert;                           /* PEM chain path */
    char *key;                            /* PEM key path */
    char **names;                         /* NULL when the names come from the certificate */
    size_t n_names;
    int line;
};

/* A per-name backend override. backends[p] is NULL (n_backends[p] == 0) when the route does not
 * override protocol p. */
struct conf_route {
    char **names;                         /* lower-cased, trailing dot removed */
    size_t n_names;
    struct conf_addr *backends[CONF_PROTO_COUNT];
    size_t n_backends[CONF_PROTO_COUNT];
    bool has_proxy_protocol;              /* route sets its own proxy_protocol */
    enum conf_pp proxy_protocol;
    int line;
};

enum conf_acme_challenge { CONF_ACME_TLS_ALPN_01, CONF_ACME_HTTP_01, CONF_ACME_CHALLENGES };
enum conf_acme_key { CONF_ACME_KEY_ECDSA, CONF_ACME_KEY_RSA };

/* The acme = { } block (SPEC.md, "ACME"). enabled is false when the block is absent. */
struct conf_acme {
    bool enabled;
    char *directory;                      /* https:// URL of the CA's directory */
    char *contact;                        /* NULL = register without one */
    char *storage;                        /* absolute folder: account, challenges, certificates, locks */
    char *ca_file;                        /* NULL = the system's trust store */
    enum conf_acme_challenge challenges[CONF_ACME_CHALLENGES]; /* in order of preference */
    size_t n_challenges;
    char **names;                         /* patterns, lower-cased, each with one "%d" */
    size_t n_names;
    enum conf_acme_key key_type;          /* of the certificates' keys (the account is ES256) */
    unsigned pace_orders;                 /* at most this many new orders ... */
    unsigned pace_window_s;               /* ... per this many seconds (default 300 per 3 h) */
    unsigned renew_before_days;           /* 0 = ARI, else two thirds of the lifetime */
    unsigned backoff_min_s, backoff_max_s; /* a failing domain waits min, 2 min, ... up to max */
    unsigned order_timeout_s;             /* an order still pending after this is abandoned */
    int line;
};

struct conf {
    char *path;
    unsigned workers;                     /* 0 = one per CPU core */
    char *user, *group;                   /* NULL = keep running as we are */
    enum conf_log_level log_level;        /* default info */
    enum conf_log_target log_target;      /* default stderr */
    bool has_admin;
    struct conf_addr admin;
    unsigned drain_timeout_s;             /* default 30 */
    unsigned drain_grace_ms;              /* SIGTERM: keep accepting this long with /healthz 503 */
    unsigned hard_stop_after_s;           /* after a SIGUSR2 upgrade: 0 (default) = no limit */
    char *pid_file;                       /* NULL = none */
    unsigned max_connections;             /* global; default 0 = unlimited */
    unsigned max_connections_per_client;  /* per client address (IPv6: per /64); 0 = unlimited */

    struct {
        char *default_cert, *default_key; /* required */
        int min_version;                  /* TLS1_2_VERSION (default) or TLS1_3_VERSION */
        char *ciphers;                    /* NULL = our modern default */
        char *ciphersuites;               /* NULL = OpenSSL's TLS 1.3 default */
        char *ticket_keys;                /* NULL = none */
        bool offload;                     /* TLS 1.3 sessions leave OpenSSL after the handshake
                                           * for tls13/ (default true) */
    } tls;

    struct conf_cert *certs;
    size_t n_certs;
    char **cert_dirs;
    size_t n_cert_dirs;
    struct conf_listener *listeners;
    size_t n_listeners;
    struct conf_route *routes;            /* proxy/runtime/routes.c takes these out of the conf */
    size_t n_routes;
    char **domains;                       /* customer domains: lower-cased, no trailing dot, unique */
    size_t n_domains;
    /* Client setup for every listed domain, on protocol = "http" listeners. Templates hold "%d"
     * for the domain ("%%" for a percent sign in display_name); hosts are lower-cased and each
     * expands to a valid host name for any domain. */
    bool has_autoconfig;
    struct {
        char *display_name;               /* NULL = the domain itself */
        struct conf_setup_server imap, pop3, smtp; /* smtp and one of imap/pop3 are set */
    } autoconfig;
    bool has_mta_sts;
    struct {
        enum conf_sts_mode mode;
        char **mx;                        /* templates, "*." allowed; none only with mode none */
        size_t n_mx;
        unsigned max_age;                 /* seconds, at most 31557600 (RFC 8461) */
    } mta_sts;
    struct conf_acme acme;
    char **includes;                      /* files @included (absolute paths), for the watcher */
    size_t n_includes;
};

/* Reads and validates PATH. On success returns 0 and sets *out. On failure returns -EINVAL (or
 * -errno when the file cannot be read), sets *out = NULL and sets *errors to a heap string of one
 * or more "FILE:LINE: reason\n" lines (the caller frees it). Never exits, never prints. */
int conf_load(const char *path, struct conf **out, char **errors);
void conf_free(struct conf *conf);
/* Frees N routes (what conf_free does for the routes a conf still holds). */
void conf_routes_free(struct conf_route *routes, size_t n);

/* Parses "host:port" / "[v6]:port" into ADDR. Returns 0 or -EINVAL. Used by conf and tests. */
int conf_parse_addr(const char *text, struct conf_addr *addr);
/* Does ADDR (an AF_INET/AF_INET6 sockaddr) fall in CIDR? IPv4-mapped IPv6 addresses count as IPv4. */
bool conf_cidr_match(const struct conf_cidr *cidr, const struct sockaddr *addr);

const char *conf_proto_name(enum conf_proto proto);
const char *conf_acme_challenge_name(enum conf_acme_challenge c);

/* Writes PATTERN (an acme.names entry) with "%d" replaced by DOMAIN into OUT. Returns the length,
 * or -ENAMETOOLONG when it does not fit CAP. */
int conf_acme_name(const char *pattern, const char *domain, char *out, size_t cap);

#endif
