/* listener: the listening sockets of each worker. */
#ifndef MAILSNID_LISTENER_H
#define MAILSNID_LISTENER_H

#include <stddef.h>

#include "conf/conf.h"
#include "proxy/server.h"

/* Creates, binds and listens a socket for L (SO_REUSEPORT). Returns the fd or -errno. */
int listener_bind(const struct conf_listener *l);
/* Makes FD the worker's listener number INDEX and starts accepting on it. */
int listener_start(struct worker *w, size_t index, int fd);

#endif
