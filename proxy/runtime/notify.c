/* The protocol is a line-based text datagram to an AF_UNIX socket whose path is in
 * NOTIFY_SOCKET ("@" at the start means the abstract namespace). Failures are ignored: the
 * service works the same without a listener, systemd only learns less. */
#include "proxy/runtime/notify.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static void notify_send(const char *msg)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return;
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    memcpy(sa.sun_path, path, strlen(path));
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = 0;
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    ssize_t ignored = sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa, len);
    (void)ignored;
    close(fd);
}

void notify_ready(void)
{
    notify_send("READY=1\nSTATUS=serving");
}

void notify_reloading(void)
{
    /* systemd 253+ wants the monotonic time with RELOADING=1; older ones ignore it. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char msg[96];
    snprintf(msg, sizeof msg, "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
    notify_send(msg);
}

void notify_stopping(void)
{
    notify_send("STOPPING=1\nSTATUS=draining");
}

void notify_mainpid(int pid)
{
    char msg[32];
    snprintf(msg, sizeof msg, "MAINPID=%d", pid);
    notify_send(msg);
}
