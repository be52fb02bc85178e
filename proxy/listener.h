/* listener: the listening sockets of each worker. */
#ifndef MAILSNID_LISTENER_H
#define MAILSNID_LISTENER_H

#include <stddef.h>

#include "conf/conf.h"
#include "proxy/server.h"

/* Is L's address free? Every worker's socket carries SO_REUSEPORT, and so would another
 * mailsnid's: the kernel would let a second process bind the same address and quietly take a
 * share of the clients. A bind without SO_REUSEPORT fails (EADDRINUSE) while anything listens
 * there, so it is tried first and closed again. Returns 0 or -errno. */
int listener_check_free(const struct conf_listener *l);
/* Creates, binds and listens a socket for L (SO_REUSEPORT). Returns the fd or -errno. */
int listener_bind(const struct conf_listener *l);
/* Makes FD the worker's listener number INDEX and starts accepting on it. */
int listener_start(struct worker *w, size_t index, int fd);

#endif
