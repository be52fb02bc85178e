/* backend: the plaintext server that sits behind every proxy in the benchmarks.
 *
 * One process, one thread, one epoll loop, any number of listeners, each with its own mode:
 *   echo    write back what arrives (handshake, resume and latency scenarios)
 *   sink    read and discard (bulk-up)
 *   source  write endless data (bulk-down)
 *   imap    send an IMAP greeting on connect, then echo (idle scenarios, STARTTLS included)
 * It must cost the shared load core little and hold thousands of idle connections, so a
 * connection owns no buffer unless the peer stops reading an echo; everything is read into one
 * static buffer.
 *
 * Usage: backend [--echo ADDR] [--sink ADDR] [--source ADDR] [--imap ADDR] ...
 * Prints "ready" on stdout once every listener is bound; exits 0 on SIGTERM/SIGINT. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum mode { MODE_ECHO, MODE_SINK, MODE_SOURCE, MODE_IMAP };

static const char *const mode_names[] = { "echo", "sink", "source", "imap" };
static const char greeting[] = "* OK [CAPABILITY IMAP4rev1] ready\r\n";

/* One per listener and one per connection; epoll's data.ptr points at it.
 * Ownership: all sit on the `all` list; conn_close() unlinks and frees one, and exit frees the
 * rest, so a sanitizer build exits clean (tests may run this backend under ASan). */
struct conn {
    struct conn *prev, *next;
    int fd;
    enum mode mode;
    int listening;
    /* Bytes of an echo that the peer has not accepted yet: while set we stop reading, so a
     * client that does not read cannot make us buffer without bound. */
    char *pending;
    size_t pending_len, pending_off;
};

static volatile sig_atomic_t stop;
static int epfd;
static struct conn *all;
/* 64 KB: large enough that a bulk stream costs few syscalls, small enough to stay in cache. */
static char iobuf[65536];

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static int parse_addr(const char *text, struct sockaddr_in *sa)
{
    char host[64];
    const char *colon = strrchr(text, ':');
    if (!colon || (size_t)(colon - text) >= sizeof host)
        return -1;
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)atoi(colon + 1));
    return inet_pton(AF_INET, host[0] ? host : "0.0.0.0", &sa->sin_addr) == 1 ? 0 : -1;
}

static struct conn *conn_new(int fd)
{
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->fd = fd;
    c->next = all;
    if (all)
        all->prev = c;
    all = c;
    return c;
}

static void conn_close(struct conn *c)
{
    close(c->fd);   /* also removes it from the epoll set */
    if (c->prev)
        c->prev->next = c->next;
    else
        all = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c->pending);
    free(c);
}

static void set_events(struct conn *c, uint32_t events)
{
    struct epoll_event ev = { .events = events, .data.ptr = c };
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Writes BUF; what the socket will not take now is kept and reading pauses until it drains.
 * Returns -1 when the connection is gone. */
static int echo_write(struct conn *c, const char *buf, size_t len)
{
    ssize_t n = write(c->fd, buf, len);
    if (n < 0) {
        if (errno != EAGAIN)
            return -1;
        n = 0;
    }
    if ((size_t)n == len)
        return 0;
    c->pending_len = len - (size_t)n;
    c->pending_off = 0;
    c->pending = malloc(c->pending_len);
    if (!c->pending)
        return -1;
    memcpy(c->pending, buf + n, c->pending_len);
    set_events(c, EPOLLOUT);
    return 0;
}

static void on_accept(struct conn *l)
{
    for (;;) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;   /* EAGAIN, or EMFILE: the run's report shows the failures client-side */
        /* Small echoes (latency scenario) must not wait for Nagle. */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = conn_new(fd);
        if (!c) {
            close(fd);
            continue;
        }
        c->mode = l->mode;
        struct epoll_event ev = { .events = c->mode == MODE_SOURCE ? EPOLLOUT | EPOLLIN : EPOLLIN,
                                  .data.ptr = c };
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            conn_close(c);
            continue;
        }
        if (c->mode == MODE_IMAP && echo_write(c, greeting, sizeof greeting - 1) < 0)
            conn_close(c);
    }
}

static void on_event(struct conn *c, uint32_t events)
{
    if (c->pending) {
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        ssize_t n = write(c->fd, c->pending + c->pending_off, c->pending_len - c->pending_off);
        if (n < 0 && errno != EAGAIN)
            goto gone;
        if (n > 0)
            c->pending_off += (size_t)n;
        if (c->pending_off == c->pending_len) {
            free(c->pending);
            c->pending = NULL;
            set_events(c, EPOLLIN);
        }
        return;
    }
    if (c->mode == MODE_SOURCE && (events & EPOLLOUT)) {
        /* A few writes per wake-up, then back to the loop so other connections get a turn. */
        for (int i = 0; i < 16; i++) {
            ssize_t n = write(c->fd, iobuf, sizeof iobuf);
            if (n < 0) {
                if (errno == EAGAIN)
                    break;
                goto gone;
            }
        }
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        for (int i = 0; i < 16; i++) {
            ssize_t n = read(c->fd, iobuf, sizeof iobuf);
            if (n == 0)
                goto gone;
            if (n < 0) {
                if (errno == EAGAIN)
                    break;
                goto gone;
            }
            if ((c->mode == MODE_ECHO || c->mode == MODE_IMAP)) {
                if (echo_write(c, iobuf, (size_t)n) < 0)
                    goto gone;
                if (c->pending)
                    break;
            }
        }
    }
    return;
gone:
    conn_close(c);
}

static int add_listener(const char *addr, enum mode mode)
{
    struct sockaddr_in sa;
    if (parse_addr(addr, &sa) < 0) {
        fprintf(stderr, "backend: bad address %s\n", addr);
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 4096) < 0) {
        fprintf(stderr, "backend: %s: %s\n", addr, strerror(errno));
        close(fd);
        return -1;
    }
    struct conn *l = conn_new(fd);
    if (!l) {
        close(fd);
        return -1;
    }
    l->mode = mode;
    l->listening = 1;
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = l };
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: backend [--echo ADDR] [--sink ADDR] [--source ADDR] [--imap ADDR] ...\n"
               "  Plain-TCP benchmark backend; ADDR is IPv4 host:port. One thread, epoll.\n"
               "  echo: echo back; sink: read and discard; source: write endless data;\n"
               "  imap: send \"* OK [CAPABILITY IMAP4rev1] ready\" then echo.\n"
               "  Prints \"ready\" when listening; SIGTERM/SIGINT exit.\n");
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = { .sa_handler = on_signal };
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    memset(iobuf, 'x', sizeof iobuf);
    epfd = epoll_create1(EPOLL_CLOEXEC);

    int n_listeners = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
        int m = -1;
        for (int k = 0; k < 4; k++)
            if (argv[i][0] == '-' && argv[i][1] == '-' && !strcmp(argv[i] + 2, mode_names[k]))
                m = k;
        if (m < 0 || i + 1 >= argc) {
            usage(stderr);
            return 2;
        }
        if (add_listener(argv[++i], (enum mode)m) < 0)
            return 1;
        n_listeners++;
    }
    if (!n_listeners) {
        usage(stderr);
        return 2;
    }
    printf("ready\n");
    fflush(stdout);

    struct epoll_event evs[256];
    while (!stop) {
        int n = epoll_wait(epfd, evs, 256, 1000);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->listening)
                on_accept(c);
            else
                on_event(c, evs[i].events);
        }
    }
    while (all)
        conn_close(all);
    close(epfd);
    return 0;
}
