/* acme_host: the ACME client (acme/) as the server runs it: started after the switch to `user`
 * (storage must belong to the serving user), given each new generation's configuration, and
 * stopped with the control loop. Its news — a pair stored for a domain — reaches the control
 * loop, which puts the pair in service through an update of the running snapshot
 * (reload_acme_pairs): the same atomic snapshot swap as every other change. */
#ifndef MAILSNID_ACME_HOST_H
#define MAILSNID_ACME_HOST_H

#include "proxy/runtime/server.h"

/* Control thread. */
int acme_host_start(struct server *srv);
void acme_host_configure(struct server *srv, const struct conf *conf);
void acme_host_stop(struct server *srv);

#endif
