/* admin: the operator's HTTP endpoint (config `admin`): GET /metrics (Prometheus text) and
 * GET /healthz (200, or 503 once a drain has begun). Runs on the control loop. */
#ifndef MAILSNID_ADMIN_H
#define MAILSNID_ADMIN_H

#include "proxy/runtime/server.h"

int admin_start(struct server *srv);
void admin_stop(struct server *srv);
/* A reload moves the endpoint from OLD's admin address to NEW's (or opens or closes it): the new
 * one is bound first, so a failure (logged) returns -1 and leaves the old one serving. */
int admin_replace(struct server *srv, const struct conf *old, const struct conf *new);
/* The endpoint's listening handle (NULL without one), for the upgrade hand-over. */
uv_tcp_t *admin_listener(struct server *srv);

#endif
