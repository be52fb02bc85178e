/* upgrade: replacing the running binary without refusing a connect (SIGUSR2, as nginx).
 *
 * The old process starts the executable at the path it was started from, with the same
 * arguments, and hands it every listening socket and the admin socket as inherited descriptors
 * (libuv's uv_spawn maps them to fixed numbers; MAILSNID_INHERIT names them). Sockets, not
 * addresses: the new process accepts from the very same queues, so nothing queued while the two
 * overlap is reset. The new process matches each inherited socket to its listeners by the
 * address the socket is bound to (getsockname), builds everything else from the config on disk,
 * and writes "READY" to a pipe (MAILSNID_READY_FD) once its workers accept. Only then does the
 * old one tell systemd the new main PID, stop accepting and close its admin socket, and serve
 * its open sessions until they end (or until hard_stop_after). If the new process exits or stays
 * silent first, the old one kills it and keeps serving, and logs why. */
#ifndef MAILSNID_UPGRADE_H
#define MAILSNID_UPGRADE_H

#include <stdbool.h>
#include <sys/socket.h>

struct server;

#define UPGRADE_MAX_FDS 1024

/* The old process, control thread: starts the new one (refused, with a log line, while another
 * upgrade or a drain runs). */
void upgrade_begin(struct server *srv);
/* This process stops: a new process not yet ready is stopped too; handles are closed. */
void upgrade_stop(struct server *srv);
/* True while a new process is starting (SIGUSR2 sent, READY not yet seen). */
bool upgrade_pending(const struct server *srv);
/* Stops a new process that is not ready yet (a drain began), with WHY in the log. */
void upgrade_abandon(struct server *srv, const char *why);

/* The new process. Reads MAILSNID_INHERIT / MAILSNID_INHERIT_ADMIN / MAILSNID_READY_FD once (at
 * start, before anything is bound) and removes them from the environment. */
void upgrade_inherit_init(void);
/* Takes the inherited listening sockets bound to ADDR (at most MAX) into FDS; returns how many. */
unsigned upgrade_take_fds(const struct sockaddr_storage *addr, int *fds, unsigned max);
/* The inherited admin socket if it is bound to ADDR, else -1. */
int upgrade_take_admin_fd(const struct sockaddr_storage *addr);
/* Closes inherited sockets no listener took (a listener the new config no longer has). */
void upgrade_close_unclaimed(void);
/* Tells the old process that this one accepts. */
void upgrade_report_ready(void);
/* True when this process was started by an upgrade. */
bool upgrade_is_successor(void);

/* pid_file: written (atomically) by the process that serves; removed at exit if it still names
 * this process. */
void upgrade_write_pid_file(const char *path);
void upgrade_remove_pid_file(const char *path);

#endif
