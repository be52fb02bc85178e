/* acme_host: the ACME client (acme/) as the server runs it: started after the switch to `user`
 * (storage must belong to the serving user), given each new generation's configuration, and
 * stopped with the control loop. Its news — a pair stored — becomes a reload on the control
 * loop, so issued pairs enter the running store through the same atomic snapshot swap as every
 * other change. */
#ifndef MAILSNID_ACME_HOST_H
#define MAILSNID_ACME_HOST_H

#include "proxy/server.h"

/* Control thread. */
int acme_host_start(struct server *srv);
void acme_host_configure(struct server *srv, const struct conf *conf);
void acme_host_stop(struct server *srv);

#endif
