/* notify: systemd's readiness protocol (sd_notify) without libsystemd: one datagram per state
 * change to $NOTIFY_SOCKET. Does nothing when the variable is not set. */
#ifndef MAILSNID_NOTIFY_H
#define MAILSNID_NOTIFY_H

void notify_ready(void);
void notify_reloading(void);
void notify_stopping(void);
/* The service's main process is now PID (a SIGUSR2 upgrade handed over). */
void notify_mainpid(int pid);

#endif
