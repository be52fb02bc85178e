/* climit: connections per client address (config max_connections_per_client), across workers.
 * IPv4 addresses count one by one; IPv6 by /64, the smallest block one subscriber gets. */
#ifndef MAILSNID_CLIMIT_H
#define MAILSNID_CLIMIT_H

#include <stdbool.h>
#include <sys/socket.h>

/* MAX = 0 turns the limit off (acquire always succeeds, nothing is tracked). A reload may
 * change MAX at any time: connections counted before stay counted until released. */
void climit_setup(unsigned max);
/* Counts one more connection from ADDR: 1 counted (release it later), 0 allowed without
 * counting (no limit now), -1 refused (ADDR is at the cap; nothing counted). */
int climit_acquire(const struct sockaddr *addr);
/* Releases a connection that climit_acquire counted. */
void climit_release(const struct sockaddr *addr);
void climit_shutdown(void);

#endif
