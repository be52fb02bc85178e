/* listener: the listening sockets of each worker. */
#ifndef MAILSNID_LISTENER_H
#define MAILSNID_LISTENER_H

#include <stddef.h>

#include "conf/conf.h"
#include "proxy/runtime/generation.h"
#include "proxy/runtime/server.h"

/* Is L's address free? Every worker's socket carries SO_REUSEPORT, and so would another
 * mailsnid's: the kernel would let a second process bind the same address and quietly take a
 * share of the clients. A bind without SO_REUSEPORT fails (EADDRINUSE) while anything listens
 * there, so it is tried first and closed again. Returns 0 or -errno. */
int listener_check_free(const struct conf_listener *l);
/* Creates, binds and listens a socket for L (SO_REUSEPORT). Returns the fd or -errno. */
int listener_bind(const struct conf_listener *l);
/* Starts accepting on FD (SLOT's socket for worker W, taken over) for listener RT. */
int listener_start(struct worker *w, struct listen_slot *slot, struct listener_rt *rt, int fd);
/* Stops accepting: unlinks WL from its worker and closes it (freed in the close callback). */
void listener_stop(struct worker_listener *wl);

#endif
