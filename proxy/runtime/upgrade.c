#include "proxy/runtime/upgrade.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proxy/ops/admin.h"
#include "proxy/runtime/generation.h"
#include "proxy/ops/log.h"
#include "proxy/runtime/notify.h"
#include "proxy/runtime/reload.h"
#include "proxy/runtime/server.h"

/* Loading 100,000 certificates takes ~12 s on a small machine; a new process silent for this
 * long is stuck, and the old one goes on serving without it. */
#define UPGRADE_READY_TIMEOUT_MS (180 * 1000)

#define ENV_INHERIT "MAILSNID_INHERIT"
#define ENV_INHERIT_ADMIN "MAILSNID_INHERIT_ADMIN"
#define ENV_READY_FD "MAILSNID_READY_FD"

extern char **environ;

/* ---- the old process ---- */

/* Lives until its last handle is closed; the process handle stays open until the new process
 * exits (so that it is reaped) or this process stops. */
struct upgrade {
    struct server *srv;
    uv_process_t process;
    uv_pipe_t ready;
    uv_timer_t timer;
    unsigned open_handles;
    bool process_open;
    bool waiting;                     /* the new process has not said READY (pipe + timer open) */
    bool ready_seen;                  /* it took over */
    bool abandoned;                   /* we stopped it: its exit is no news */
    char line[16];
    size_t len;
};

static void on_upgrade_handle_closed(uv_handle_t *h)
{
    struct upgrade *up = h->data;
    if (--up->open_handles)
        return;
    if (up->srv->upgrade == up)
        up->srv->upgrade = NULL;
    free(up);
}

/* The wait for READY is over, one way or the other. */
static void stop_waiting(struct upgrade *up)
{
    if (!up->waiting)
        return;
    up->waiting = false;
    uv_close((uv_handle_t *)&up->ready, on_upgrade_handle_closed);
    uv_close((uv_handle_t *)&up->timer, on_upgrade_handle_closed);
}

static void close_process(struct upgrade *up)
{
    if (!up->process_open)
        return;
    up->process_open = false;
    uv_close((uv_handle_t *)&up->process, on_upgrade_handle_closed);
}

bool upgrade_pending(const struct server *srv)
{
    return srv->upgrade && srv->upgrade->waiting;
}

void upgrade_abandon(struct server *srv, const char *why)
{
    struct upgrade *up = srv->upgrade;
    if (!up || !up->waiting)
        return;
    log_notice("upgrade abandoned (%s): stopping the new process (pid %d)", why, up->process.pid);
    up->abandoned = true;
    uv_process_kill(&up->process, SIGTERM);
    stop_waiting(up);
}

static void on_exit_cb(uv_process_t *p, int64_t status, int signum)
{
    struct upgrade *up = p->data;
    struct server *srv = up->srv;
    if (up->ready_seen)
        log_err("the new process (pid %d) that took over exited (status %lld, signal %d): this "
                "process no longer accepts; restart the service", p->pid, (long long)status, signum);
    else if (!up->abandoned)
        log_err("upgrade failed: the new process (pid %d) exited (status %lld, signal %d) before "
                "it was ready; this process keeps serving", p->pid, (long long)status, signum);
    if (!up->ready_seen && srv->conf)
        upgrade_write_pid_file(srv->conf->pid_file); /* it may have written its own */
    stop_waiting(up);
    close_process(up);
}

static void on_ready_timeout(uv_timer_t *t)
{
    struct upgrade *up = t->data;
    log_err("upgrade failed: the new process (pid %d) was not ready after %d s: stopping it; this "
            "process keeps serving", up->process.pid, UPGRADE_READY_TIMEOUT_MS / 1000);
    up->abandoned = true;
    uv_process_kill(&up->process, SIGKILL);
    stop_waiting(up);
}

static void on_ready_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct upgrade *up = h->data;
    *buf = uv_buf_init(up->line + up->len, (unsigned)(sizeof up->line - 1 - up->len));
}

static void on_ready_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    (void)buf;
    struct upgrade *up = s->data;
    if (n < 0) {
        /* The new process closed the pipe without a word: its exit status says why. */
        uv_read_stop(s);
        return;
    }
    up->len += (size_t)n;
    up->line[up->len] = '\0';
    if (!strstr(up->line, "READY\n")) {
        if (up->len + 1 >= sizeof up->line)
            uv_read_stop(s);
        return;
    }
    struct server *srv = up->srv;
    int pid = up->process.pid;
    up->ready_seen = true;
    stop_waiting(up);
    log_notice("upgrade: the new process (pid %d) accepts; this one stops accepting and serves its "
               "%u open connections until they end%s", pid, atomic_load(&srv->open_total),
               srv->conf->hard_stop_after_s ? " or hard_stop_after" : "");
    notify_mainpid(pid);
    server_retire(srv);
}

/* Every listening socket of the current generation, in slot order. */
static size_t collect_fds(const struct server *srv, int *fds, size_t max)
{
    size_t n = 0;
    const struct generation *g = srv->gen;
    for (size_t i = 0; i < g->n_listeners; i++) {
        const struct listen_slot *s = g->listeners[i].slot;
        for (unsigned k = 0; k < s->n_fds && n < max; k++)
            if (s->fds[k] >= 0)
                fds[n++] = s->fds[k];
    }
    return n;
}

/* environ without our own variables, plus the three that describe this hand-over. */
static char **child_env(size_t first_fd, size_t n_fds, int admin_fd_child, int ready_fd_child)
{
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 4, sizeof *env);
    char *list = malloc(n_fds * 12 + sizeof ENV_INHERIT + 2);
    if (!env || !list) {
        free(env);
        free(list);
        return NULL;
    }
    size_t k = 0, len = (size_t)sprintf(list, "%s=", ENV_INHERIT);
    for (size_t i = 0; i < n_fds; i++)
        len += (size_t)sprintf(list + len, "%s%zu", i ? "," : "", first_fd + i);
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "MAILSNID_INHERIT", 16) != 0 &&
            strncmp(environ[i], ENV_READY_FD "=", sizeof ENV_READY_FD) != 0)
            env[k++] = environ[i];
    env[k++] = list;
    char *admin = NULL, *ready = NULL;
    if (admin_fd_child >= 0 && asprintf(&admin, "%s=%d", ENV_INHERIT_ADMIN, admin_fd_child) >= 0)
        env[k++] = admin;
    if (asprintf(&ready, "%s=%d", ENV_READY_FD, ready_fd_child) >= 0)
        env[k++] = ready;
    env[k] = NULL;
    return env;
}

static void free_child_env(char **env)
{
    if (!env)
        return;
    /* Only the last entries are ours (the others belong to environ). */
    for (size_t i = 0; env[i]; i++)
        if (strncmp(env[i], "MAILSNID_INHERIT", 16) == 0 ||
            strncmp(env[i], ENV_READY_FD "=", sizeof ENV_READY_FD) == 0)
            free(env[i]);
    free(env);
}

void upgrade_begin(struct server *srv)
{
    if (upgrade_pending(srv)) {
        log_warning("SIGUSR2: an upgrade is already running (new process pid %d): ignored",
                    srv->upgrade->process.pid);
        return;
    }
    if (atomic_load(&srv->unhealthy)) {
        log_warning("SIGUSR2 while draining: ignored");
        return;
    }
    if (reload_running(srv)) {
        log_warning("SIGUSR2 while a reload runs: ignored; send it again in a moment");
        return;
    }
    static int fds[UPGRADE_MAX_FDS];
    size_t n_fds = collect_fds(srv, fds, UPGRADE_MAX_FDS);
    if (n_fds == UPGRADE_MAX_FDS)
        log_warning("upgrade: more than %d listening sockets: the new process binds the rest "
                    "itself", UPGRADE_MAX_FDS);
    int admin_fd = -1;
    if (srv->admin)
        uv_fileno((uv_handle_t *)admin_listener(srv), &admin_fd);

    struct upgrade *up = calloc(1, sizeof *up);
    size_t n_stdio = 3 + n_fds + (admin_fd >= 0) + 1;
    uv_stdio_container_t *stdio = calloc(n_stdio, sizeof *stdio);
    char **env = NULL;
    if (!up || !stdio) {
        log_err("upgrade: out of memory");
        free(up);
        free(stdio);
        return;
    }
    up->srv = srv;
    uv_pipe_init(srv->loop, &up->ready, 0);
    uv_timer_init(srv->loop, &up->timer);
    up->ready.data = up->timer.data = up->process.data = up;
    up->open_handles = 2;
    up->waiting = true;
    for (int i = 0; i < 3; i++) {
        stdio[i].flags = UV_INHERIT_FD;
        stdio[i].data.fd = i;
    }
    for (size_t i = 0; i < n_fds; i++) {
        stdio[3 + i].flags = UV_INHERIT_FD;
        stdio[3 + i].data.fd = fds[i];
    }
    size_t next = 3 + n_fds;
    int admin_child = -1;
    if (admin_fd >= 0) {
        admin_child = (int)next;
        stdio[next].flags = UV_INHERIT_FD;
        stdio[next++].data.fd = admin_fd;
    }
    stdio[next].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[next].data.stream = (uv_stream_t *)&up->ready;
    env = child_env(3, n_fds, admin_child, (int)next);

    uv_process_options_t opt = {
        .exit_cb = on_exit_cb, .file = srv->exe, .args = srv->argv, .env = env,
        .stdio_count = (int)n_stdio, .stdio = stdio,
    };
    int r = env ? uv_spawn(srv->loop, &up->process, &opt) : UV_ENOMEM;
    free_child_env(env);
    free(stdio);
    if (r < 0) {
        log_err("upgrade failed: cannot start %s: %s; this process keeps serving", srv->exe,
                uv_strerror(r));
        stop_waiting(up);
        return;
    }
    up->open_handles++;
    up->process_open = true;
    srv->upgrade = up;
    uv_read_start((uv_stream_t *)&up->ready, on_ready_alloc, on_ready_read);
    uv_timer_start(&up->timer, on_ready_timeout, UPGRADE_READY_TIMEOUT_MS, 0);
    log_notice("upgrade: started %s (pid %d) with %zu listening sockets; serving until it is ready",
               srv->exe, up->process.pid, n_fds);
}

void upgrade_stop(struct server *srv)
{
    struct upgrade *up = srv->upgrade;
    if (!up)
        return;
    upgrade_abandon(srv, "this process exits");
    /* A new process that took over goes on without us; one we stopped is reaped by init. */
    close_process(up);
}

/* ---- the new process ---- */

struct inherited {
    int fd;
    struct sockaddr_storage addr;
};

static struct inherited *inherited;
static size_t n_inherited;
static int admin_inherited = -1;
static struct sockaddr_storage admin_addr;
static int ready_fd = -1;
static bool successor;

static int fd_from(const char *s)
{
    char *end;
    long v = strtol(s, &end, 10);
    return end != s && v >= 3 && v < 1 << 20 ? (int)v : -1;
}

/* A listening TCP socket we were handed: it is kept (close-on-exec again), anything else
 * refused. */
static bool adopt_fd(int fd, struct sockaddr_storage *addr)
{
    struct stat st;
    socklen_t len = sizeof *addr;
    int type = 0, listening = 0;
    socklen_t ilen = sizeof type, llen = sizeof listening;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode) ||
        getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &ilen) < 0 || type != SOCK_STREAM ||
        getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &llen) < 0 || !listening ||
        getsockname(fd, (struct sockaddr *)addr, &len) < 0)
        return false;
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    return true;
}

void upgrade_inherit_init(void)
{
    const char *list = getenv(ENV_INHERIT), *admin = getenv(ENV_INHERIT_ADMIN),
               *ready = getenv(ENV_READY_FD);
    if (ready && (ready_fd = fd_from(ready)) >= 0) {
        successor = true;
        fcntl(ready_fd, F_SETFD, FD_CLOEXEC);
    }
    if (list && *list) {
        size_t n = 1;
        for (const char *p = list; *p; p++)
            n += *p == ',';
        inherited = calloc(n, sizeof *inherited);
        for (const char *p = list; inherited && p && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL) {
            int fd = fd_from(p);
            if (adopt_fd(fd, &inherited[n_inherited].addr))
                inherited[n_inherited++].fd = fd;
        }
    }
    if (admin && !adopt_fd(admin_inherited = fd_from(admin), &admin_addr))
        admin_inherited = -1;
    unsetenv(ENV_INHERIT);
    unsetenv(ENV_INHERIT_ADMIN);
    unsetenv(ENV_READY_FD);
}

static bool same_sockaddr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
    }
    return false;
}

unsigned upgrade_take_fds(const struct sockaddr_storage *addr, int *fds, unsigned max)
{
    unsigned n = 0;
    for (size_t i = 0; i < n_inherited && n < max; i++) {
        if (inherited[i].fd >= 0 && same_sockaddr(&inherited[i].addr, addr)) {
            fds[n++] = inherited[i].fd;
            inherited[i].fd = -1;
        }
    }
    return n;
}

int upgrade_take_admin_fd(const struct sockaddr_storage *addr)
{
    int fd = admin_inherited;
    if (fd < 0 || !same_sockaddr(&admin_addr, addr))
        return -1;
    admin_inherited = -1;
    return fd;
}

void upgrade_close_unclaimed(void)
{
    for (size_t i = 0; i < n_inherited; i++)
        if (inherited[i].fd >= 0)
            close(inherited[i].fd);
    free(inherited);
    inherited = NULL;
    n_inherited = 0;
    if (admin_inherited >= 0)
        close(admin_inherited);
    admin_inherited = -1;
}

void upgrade_report_ready(void)
{
    if (ready_fd < 0)
        return;
    ssize_t ignored = write(ready_fd, "READY\n", 6);
    (void)ignored;
    close(ready_fd);
    ready_fd = -1;
}

bool upgrade_is_successor(void)
{
    return successor;
}

/* ---- pid file ---- */

void upgrade_write_pid_file(const char *path)
{
    if (!path)
        return;
    char tmp[4096], text[32];
    int n = snprintf(text, sizeof text, "%d\n", (int)getpid());
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.%d.tmp", path, (int)getpid()) >= sizeof tmp)
        return;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, text, (size_t)n) != n || close(fd) < 0 || rename(tmp, path) < 0) {
        log_warning("pid_file %s: %s", path, strerror(errno));
        if (fd >= 0)
            unlink(tmp);
    }
}

void upgrade_remove_pid_file(const char *path)
{
    if (!path)
        return;
    char text[32] = "";
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    bool ours = fgets(text, sizeof text, f) && atoi(text) == (int)getpid();
    fclose(f);
    if (ours)
        unlink(path);
}
