/* metrics: process-wide counters, updated lock-free from every worker, rendered in the
 * Prometheus text format by the admin endpoint. */
#ifndef MAILSNID_METRICS_H
#define MAILSNID_METRICS_H

#include <stdbool.h>
#include <stdio.h>

struct conn;
struct conf_addr;
struct server;

void metrics_conn_closed(const struct conn *c);
void metrics_session_started(const struct conn *c);   /* backend connected, relay begins */
void metrics_backend_error(const struct conf_addr *backend);
void metrics_starttls(const struct conn *c);
/* A TLS session's relay began, carried by tls13/ (OWN) or by OpenSSL. */
void metrics_tls_carried(const struct conn *c, bool own);
void metrics_proxy_refused(const struct conn *c);
void metrics_reload(bool ok);

/* Writes every metric to OUT (a memstream or file). */
void metrics_render(const struct server *srv, FILE *out);

#endif
