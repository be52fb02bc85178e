/* tls_flood: a hostile TLS 1.3 client for the memory tests (tests/integration/
 * test_hardening_memory.py). Python's ssl module can send neither KeyUpdate messages nor a
 * record per byte fast enough, so this does it with OpenSSL directly.
 *
 *   tls_flood keyupdate HOST PORT SECONDS   KeyUpdate(update_requested), paced after SIGUSR1
 *   tls_flood tiny HOST PORT SECONDS        bulk until SIGUSR1, then a TLS record per byte
 *
 * SECONDS is an upper bound: SIGTERM ends the flood sooner, the same way (the count printed).
 *
 * It never reads after the handshake (its receive buffer is made small), so whatever the server
 * answers piles up on the server's side. Messages are paced (a few every millisecond). Prints
 * how many messages it sent. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <openssl/ssl.h>

static volatile sig_atomic_t kernel_full, told_to_stop;

static void on_usr1(int sig)
{
    (void)sig;
    kernel_full = 1;
}

static void on_term(int sig)
{
    (void)sig;
    told_to_stop = 1;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 5 || (strcmp(argv[1], "keyupdate") && strcmp(argv[1], "tiny"))) {
        fprintf(stderr, "usage: tls_flood keyupdate|tiny HOST PORT SECONDS\n");
        return 2;
    }
    bool keyupdate = strcmp(argv[1], "keyupdate") == 0;
    useconds_t pace_us = keyupdate ? 200 : 20;

    double end = now() + atof(argv[4]);

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    /* A small receive buffer and segment size (the proxy sizes its send buffer from the MSS):
     * what the server sends and we do not read stays on the server's side, not in kernels. */
    int small = 4096, one = 1, mss = 536;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    setsockopt(fd, IPPROTO_TCP, TCP_MAXSEG, &mss, sizeof mss);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[3])) };
    if (inet_pton(AF_INET, argv[2], &sa.sin_addr) != 1 ||
        connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        perror("connect");
        return 1;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, "mail.alpha.test");
    if (SSL_connect(ssl) != 1) {
        fprintf(stderr, "handshake failed\n");
        return 1;
    }
    /* From here a write that blocks gives up after a moment and is retried until the end. */
    struct timeval tv = { 0, 200000 };
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    /* SIGUSR1 says the kernel's buffers on the server's side are full (the test watches them):
     * from there on what the server reads, or answers, stays with the server. */
    signal(SIGUSR1, on_usr1);
    signal(SIGPIPE, SIG_IGN); /* the server may end the session: say how far it got */
    signal(SIGTERM, on_term);
    if (!keyupdate) {
        /* Bulk first, slowly, towards a backend that reads nothing. */
        static char bulk[8192];
        while (!kernel_full && !told_to_stop && now() < end) {
            if (SSL_write(ssl, bulk, sizeof bulk) <= 0)
                return 1;
            usleep(40000);
        }
    }
    unsigned long sent = 0;
    bool pending = false;
    while (!told_to_stop && now() < end) {
        int r;
        if (keyupdate) {
            if (!pending && !SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED))
                break;
            r = SSL_do_handshake(ssl);
        } else {
            r = SSL_write(ssl, "x", 1);
        }
        if (r > 0) {
            sent++;
            pending = false;
            /* Paced, so that the server reads each message on its own: that is when a queue of
             * buffers, one per read, costs the most. KeyUpdates go as fast as they can until
             * SIGUSR1, to fill the kernel's buffers towards us with their answers. */
            if (kernel_full)
                usleep(pace_us);
            continue;
        }
        int e = SSL_get_error(ssl, r);
        bool again = e == SSL_ERROR_WANT_WRITE ||
                     (e == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EINTR));
        if (!again)
            break;    /* the server ended the session (a reset, a closed socket) */
        pending = true; /* the same message, retried */
    }
    printf("%lu\n", sent);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    return 0;
}
