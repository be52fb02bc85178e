/* loadgen: TLS load generator for comparing mailsnid with its peers.
 *
 * One thread, one epoll loop, non-blocking OpenSSL over plain sockets. The benchmark pins it to
 * one core and the proxy to the other, and divides what this program counts by the proxy's CPU
 * time; so this program only has to be correct and cheap per operation, not saturate the proxy.
 * Modes (see usage()): handshake, resume, bulk-up, bulk-down, latency, idle. Results are one JSON
 * line on stdout; idle mode prints an extra {"event":"ready",...} line once every connection is
 * up, so a script can measure the proxy while they are held. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

enum mode { M_HANDSHAKE, M_RESUME, M_BULK_UP, M_BULK_DOWN, M_LATENCY, M_IDLE };
static const char *const mode_names[] = { "handshake", "resume", "bulk-up", "bulk-down", "latency", "idle" };

enum state {
    S_OFF,            /* slot unused */
    S_CONNECTING,
    S_PLAIN_GREETING, /* --imap-starttls: "* OK" in plaintext */
    S_PLAIN_STARTTLS, /* sending "a STARTTLS" */
    S_PLAIN_OK,       /* waiting for "a OK" */
    S_HANDSHAKE,
    S_GREETING,       /* --greeting: "* OK" over TLS */
    S_MSG_W,          /* application check: write the message */
    S_MSG_R,          /* ... and read the reply */
    S_SHUTDOWN,       /* close_notify sent; reading until the server closes */
    S_HOLD,           /* idle: established, held */
    S_BULK,
    S_LAT_IDLE,       /* latency: waiting for the next scheduled request */
    S_LAT_W,
    S_LAT_R,
};

enum err_kind { E_CONNECT, E_HANDSHAKE, E_IO, E_TIMEOUT, E_EOF, E_COUNT };
static const char *const err_names[] = { "connect", "handshake", "io", "timeout", "eof" };

struct opts {
    enum mode mode;
    struct sockaddr_in addr;
    const char *target;
    const char *sni;
    int conns;
    double duration;
    int msg;             /* bytes echoed after the handshake (0 = none) */
    double rate;         /* latency: requests per second, all connections together */
    int size;            /* latency: request size; bulk: bytes per write */
    int direct;          /* latency: plain TCP, no TLS */
    int starttls;        /* idle: IMAP STARTTLS before the handshake */
    int greeting;        /* idle: read an IMAP greeting after the handshake */
    int ramp;            /* idle: connection setups in flight at once */
    double hold;         /* idle: give up holding after this many seconds */
    const char *ciphersuites;
    const char *groups;
};

/* One slot per concurrent connection; a slot is reused for the next connection in the
 * handshake modes so that concurrency stays constant. Owned by the global array. */
struct conn {
    int fd;
    SSL *ssl;
    enum state state;
    uint32_t events;        /* what epoll currently watches */
    uint32_t want;          /* what the last would-block asked for */
    double deadline;        /* the current phase fails after this (0 = none) */
    SSL_SESSION *sess;      /* resume: the newest ticket this slot received */
    size_t done;            /* bytes of the current message written or read */
    int shut_sent;
    char line[512];         /* IMAP responses, line by line */
    size_t line_len;
    double t_sent;          /* latency: when the request went out */
    int owed;               /* latency: sends that were due while a request was in flight */
};

static struct opts o = {
    .sni = "mail.bench.test", .conns = 0, .duration = 10, .rate = 2000, .size = 0,
    .ramp = 100, .hold = 600, .ciphersuites = "TLS_AES_128_GCM_SHA256", .groups = "X25519",
};
static struct conn *conns;
static int epfd, timer_fd;
static SSL_CTX *ctx;
static volatile sig_atomic_t got_signal;
static double t_start, t_end, t_data;
static int sess_idx;

/* Counters for the result line. */
static long n_ok, n_resumed, n_err[E_COUNT], n_late, n_dropped, n_established, n_launched;
static unsigned long long bytes;
static uint32_t *lat;                 /* latency samples, nanoseconds */
static size_t n_lat, cap_lat;
static char first_error[200];
static char neg_version[32], neg_cipher[64], neg_group[32], neg_key[32];

static char payload[65536];
static char scratch[65536];
static const char starttls_cmd[] = "a STARTTLS\r\n";
static const char noop_cmd[] = "b NOOP\r\n";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void on_signal(int sig)
{
    (void)sig;
    got_signal = 1;
}

static void note_error(const char *fmt, ...)
{
    if (first_error[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(first_error, sizeof first_error, fmt, ap);
    va_end(ap);
}

static void set_events(struct conn *c, uint32_t ev)
{
    if (ev == c->events)
        return;
    struct epoll_event e = { .events = ev, .data.ptr = c };
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &e);
    c->events = ev;
}

static void conn_close(struct conn *c)
{
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    /* A stale error left in the thread's queue would make the next SSL_get_error() lie. */
    ERR_clear_error();
    c->state = S_OFF;
    c->events = 0;
}

/* The connection failed in phase KIND. The main loop refills the slot (never from here: a
 * refused connect would recurse). */
static void conn_fail(struct conn *c, enum err_kind kind, const char *why)
{
    n_err[kind]++;
    note_error("%s: %s", err_names[kind], why);
    conn_close(c);
}

static const char *ssl_why(int ret, int err)
{
    static char buf[160];
    unsigned long e = ERR_peek_last_error();
    if (e) {
        ERR_error_string_n(e, buf, sizeof buf);
        ERR_clear_error();
        return buf;
    }
    if (err == SSL_ERROR_SYSCALL)
        return ret == 0 ? "unexpected EOF" : strerror(errno);
    if (err == SSL_ERROR_ZERO_RETURN)
        return "close_notify";
    snprintf(buf, sizeof buf, "SSL error %d", err);
    return buf;
}

/* I/O over TLS or plain TCP. Returns bytes (>0), 0 when it would block (c->want says on what),
 * -1 on EOF or error (*WHY explains). */
static int c_io(struct conn *c, int writing, void *buf, size_t len, const char **why)
{
    if (c->ssl && c->state != S_PLAIN_GREETING && c->state != S_PLAIN_STARTTLS && c->state != S_PLAIN_OK) {
        int n = writing ? SSL_write(c->ssl, buf, (int)len) : SSL_read(c->ssl, buf, (int)len);
        if (n > 0)
            return n;
        int err = SSL_get_error(c->ssl, n);
        if (err == SSL_ERROR_WANT_READ) {
            c->want = EPOLLIN;
            return 0;
        }
        if (err == SSL_ERROR_WANT_WRITE) {
            c->want = EPOLLOUT;
            return 0;
        }
        *why = ssl_why(n, err);
        return -1;
    }
    ssize_t n = writing ? write(c->fd, buf, len) : read(c->fd, buf, len);
    if (n > 0)
        return (int)n;
    if (n < 0 && errno == EAGAIN) {
        c->want = writing ? EPOLLOUT : EPOLLIN;
        return 0;
    }
    *why = n == 0 ? "unexpected EOF" : strerror(errno);
    return -1;
}

/* Reads IMAP lines until one starts with PREFIX (1), would block (0) or fails (-1). A tagged
 * line with the same tag but another status is a failure. */
static int read_line(struct conn *c, const char *prefix, const char **why)
{
    for (;;) {
        char *nl;
        while ((nl = memchr(c->line, '\n', c->line_len))) {
            size_t l = (size_t)(nl - c->line) + 1;
            int match = l >= strlen(prefix) && !memcmp(c->line, prefix, strlen(prefix));
            int same_tag = c->line[0] != '*' && l > 2 && c->line[0] == prefix[0] && c->line[1] == ' ';
            memmove(c->line, c->line + l, c->line_len - l);
            c->line_len -= l;
            if (match)
                return 1;
            if (same_tag) {
                *why = "tagged reply is not OK";
                return -1;
            }
        }
        if (c->line_len == sizeof c->line)
            c->line_len = 0;   /* an over-long line cannot be the one we wait for */
        int n = c_io(c, 0, c->line + c->line_len, sizeof c->line - c->line_len, why);
        if (n <= 0)
            return n;
        c->line_len += (size_t)n;
    }
}

static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    struct conn *c = SSL_get_ex_data(ssl, sess_idx);
    if (c->sess)
        SSL_SESSION_free(c->sess);
    c->sess = sess;
    return 1;   /* we keep the reference */
}

static void record_negotiated(struct conn *c)
{
    if (neg_version[0] || !c->ssl)
        return;
    snprintf(neg_version, sizeof neg_version, "%s", SSL_get_version(c->ssl));
    snprintf(neg_cipher, sizeof neg_cipher, "%s", SSL_get_cipher_name(c->ssl));
    int nid = SSL_get_negotiated_group(c->ssl);
    snprintf(neg_group, sizeof neg_group, "%s", nid ? OBJ_nid2sn(nid & ~TLSEXT_nid_unknown) : "?");
    X509 *cert = SSL_get0_peer_certificate(c->ssl);
    EVP_PKEY *pk = cert ? X509_get0_pubkey(cert) : NULL;
    if (pk) {
        char grp[32] = "";
        size_t gl;
        if (!EVP_PKEY_get_group_name(pk, grp, sizeof grp, &gl))
            snprintf(grp, sizeof grp, "%d", EVP_PKEY_get_bits(pk));
        snprintf(neg_key, sizeof neg_key, "%s %s", OBJ_nid2sn(EVP_PKEY_get_base_id(pk)), grp);
    }
}

static void lat_record(double seconds)
{
    if (n_lat == cap_lat) {
        cap_lat = cap_lat ? cap_lat * 2 : 65536;
        lat = realloc(lat, cap_lat * sizeof *lat);
        if (!lat) {
            fprintf(stderr, "loadgen: out of memory\n");
            exit(1);
        }
    }
    double ns = seconds * 1e9;
    lat[n_lat++] = ns > 4e9 ? 4000000000u : (uint32_t)ns;
}

/* The connection passed its checks: handshake done (and greeting, message, when asked). */
static void conn_established(struct conn *c, double now)
{
    c->deadline = 0;
    switch (o.mode) {
    case M_HANDSHAKE:
    case M_RESUME:
        n_ok++;
        if (c->ssl && SSL_session_reused(c->ssl))
            n_resumed++;
        c->state = S_SHUTDOWN;
        c->shut_sent = 0;
        c->deadline = now + 5;
        break;
    case M_IDLE:
        n_established++;
        c->state = S_HOLD;
        break;
    case M_BULK_UP:
    case M_BULK_DOWN:
        n_ok++;
        if (!t_data)
            t_data = now;
        c->state = S_BULK;
        break;
    case M_LATENCY:
        n_ok++;
        c->state = S_LAT_IDLE;
        break;
    }
}

/* After the handshake (or the plaintext connect in --direct): the optional application checks. */
static void after_handshake(struct conn *c, double now)
{
    c->done = 0;
    if (o.greeting)
        c->state = S_GREETING;
    else if (o.msg > 0 || o.starttls)
        c->state = S_MSG_W;
    else
        conn_established(c, now);
}

/* Runs C's state machine until it has to wait; then sets the epoll events it waits for. */
static void advance(struct conn *c)
{
    const char *why = "?";
    int r;
    for (;;) {
        double now;
        switch (c->state) {
        case S_OFF:
            return;
        case S_CONNECTING: {
            int err = 0;
            socklen_t el = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
            if (err) {
                conn_fail(c, E_CONNECT, strerror(err));
                return;
            }
            if (o.starttls) {
                c->state = S_PLAIN_GREETING;
            } else if (c->ssl) {
                c->state = S_HANDSHAKE;
            } else {
                after_handshake(c, now_s());
            }
            continue;
        }
        case S_PLAIN_GREETING:
            r = read_line(c, "* OK", &why);
            if (r <= 0)
                goto wait_or_fail;
            c->state = S_PLAIN_STARTTLS;
            c->done = 0;
            continue;
        case S_PLAIN_STARTTLS:
            r = c_io(c, 1, (char *)starttls_cmd + c->done, sizeof starttls_cmd - 1 - c->done, &why);
            if (r <= 0)
                goto wait_or_fail;
            c->done += (size_t)r;
            if (c->done == sizeof starttls_cmd - 1)
                c->state = S_PLAIN_OK;
            continue;
        case S_PLAIN_OK:
            r = read_line(c, "a OK", &why);
            if (r <= 0)
                goto wait_or_fail;
            if (c->line_len) {
                r = -1;
                why = "bytes after the STARTTLS reply";
                goto wait_or_fail;
            }
            c->state = S_HANDSHAKE;
            continue;
        case S_HANDSHAKE: {
            int n = SSL_connect(c->ssl);
            if (n == 1) {
                record_negotiated(c);
                after_handshake(c, now_s());
                continue;
            }
            int err = SSL_get_error(c->ssl, n);
            if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
                c->want = err == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT;
                set_events(c, c->want);
                return;
            }
            conn_fail(c, E_HANDSHAKE, ssl_why(n, err));
            return;
        }
        case S_GREETING:
            r = read_line(c, "* OK", &why);
            if (r <= 0)
                goto wait_or_fail;
            c->state = S_MSG_W;
            c->done = 0;
            continue;
        case S_MSG_W: {
            /* IMAP flows check the path with a NOOP (the imap backend echoes it); others echo
             * --msg bytes. */
            int imap = o.greeting || o.starttls;
            const char *m = imap ? noop_cmd : payload;
            size_t len = imap ? sizeof noop_cmd - 1 : (size_t)o.msg;
            r = c_io(c, 1, (char *)m + c->done, len - c->done, &why);
            if (r <= 0)
                goto wait_or_fail;
            c->done += (size_t)r;
            if (c->done == len) {
                c->state = S_MSG_R;
                c->done = 0;
            }
            continue;
        }
        case S_MSG_R:
            if (o.greeting || o.starttls) {
                r = read_line(c, "b ", &why);
                if (r <= 0)
                    goto wait_or_fail;
            } else {
                r = c_io(c, 0, scratch, (size_t)o.msg - c->done, &why);
                if (r <= 0)
                    goto wait_or_fail;
                c->done += (size_t)r;
                if (c->done < (size_t)o.msg)
                    continue;
            }
            conn_established(c, now_s());
            continue;
        case S_SHUTDOWN:
            if (!c->shut_sent) {
                int n = SSL_shutdown(c->ssl);
                if (n < 0) {
                    int err = SSL_get_error(c->ssl, n);
                    if (err == SSL_ERROR_WANT_WRITE) {
                        set_events(c, EPOLLOUT);
                        return;
                    }
                    ERR_clear_error();
                }
                c->shut_sent = 1;
            }
            /* Reading to the end also takes in the server's session tickets, so neither side is
             * left with unread data (which would turn the close into a reset). */
            r = c_io(c, 0, scratch, sizeof scratch, &why);
            if (r > 0)
                continue;
            if (r == 0) {
                set_events(c, c->want);
                return;
            }
            conn_close(c);
            return;
        case S_HOLD:
            r = c_io(c, 0, scratch, sizeof scratch, &why);
            if (r > 0)
                continue;
            if (r == 0) {
                set_events(c, c->want);
                return;
            }
            n_dropped++;
            note_error("dropped while held: %s", why);
            conn_close(c);
            return;
        case S_BULK:
            r = c_io(c, o.mode == M_BULK_UP, o.mode == M_BULK_UP ? payload : scratch,
                     o.mode == M_BULK_UP ? (size_t)o.size : sizeof scratch, &why);
            if (r > 0) {
                bytes += (unsigned long long)r;
                /* Let other connections and the clock have their turn now and then. */
                if ((bytes & ((1u << 20) - 1)) < (unsigned)r)
                    return;
                continue;
            }
            goto wait_or_fail;
        case S_LAT_IDLE:
            if (c->owed > 0) {
                c->owed--;
                n_late++;
                c->state = S_LAT_W;
                c->done = 0;
                c->t_sent = now_s();
                continue;
            }
            /* Nothing is expected; read only to take in session tickets and notice a close. */
            r = c_io(c, 0, scratch, sizeof scratch, &why);
            if (r > 0) {
                conn_fail(c, E_IO, "unexpected data");
                return;
            }
            goto wait_or_fail;
        case S_LAT_W:
            r = c_io(c, 1, payload + c->done, (size_t)o.size - c->done, &why);
            if (r <= 0)
                goto wait_or_fail;
            c->done += (size_t)r;
            if (c->done == (size_t)o.size) {
                c->state = S_LAT_R;
                c->done = 0;
                c->deadline = c->t_sent + 5;
            }
            continue;
        case S_LAT_R:
            r = c_io(c, 0, scratch, (size_t)o.size - c->done, &why);
            if (r <= 0)
                goto wait_or_fail;
            c->done += (size_t)r;
            if (c->done < (size_t)o.size)
                continue;
            now = now_s();
            if (now < t_end)
                lat_record(now - c->t_sent);
            c->deadline = 0;
            c->state = S_LAT_IDLE;
            continue;
        }
    }
wait_or_fail:
    if (r == 0) {
        set_events(c, c->want);
        return;
    }
    if (c->state == S_HOLD || c->state == S_LAT_IDLE)
        conn_fail(c, E_EOF, why);
    else if (c->state == S_BULK)
        conn_fail(c, E_IO, why);
    else
        conn_fail(c, c->state < S_HANDSHAKE ? E_CONNECT : E_IO, why);
}

static void conn_start(struct conn *c)
{
    n_launched++;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        n_err[E_CONNECT]++;
        note_error("connect: socket: %s", strerror(errno));
        c->state = S_OFF;
        return;
    }
    /* Handshake flights and 64-byte requests must leave at once, not after Nagle's wait. */
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->line_len = 0;
    c->done = 0;
    c->owed = 0;
    c->events = EPOLLOUT;
    c->state = S_CONNECTING;
    c->deadline = now_s() + 10;
    struct epoll_event e = { .events = EPOLLOUT, .data.ptr = c };
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &e);
    if (!o.direct) {
        c->ssl = SSL_new(ctx);
        SSL_set_fd(c->ssl, c->fd);
        SSL_set_tlsext_host_name(c->ssl, o.sni);
        SSL_set_ex_data(c->ssl, sess_idx, c);
        if (o.mode == M_RESUME && c->sess)
            SSL_set_session(c->ssl, c->sess);
    }
    if (connect(c->fd, (struct sockaddr *)&o.addr, sizeof o.addr) < 0 && errno != EINPROGRESS)
        conn_fail(c, E_CONNECT, strerror(errno));
}

/* Latency: the timer ticks at the request rate and hands each tick to the next connection in
 * turn. A connection still waiting for its previous reply owes the request and sends it as soon
 * as the reply is in (counted as "late": at a moderate rate there should be none). */
static void on_tick(void)
{
    static long k;
    uint64_t expirations;
    if (read(timer_fd, &expirations, sizeof expirations) != sizeof expirations)
        return;
    double now = now_s();
    if (now >= t_end)
        return;
    while (expirations--) {
        struct conn *c = &conns[k++ % o.conns];
        if (c->state == S_LAT_IDLE) {
            c->state = S_LAT_W;
            c->done = 0;
            c->t_sent = now;
            advance(c);
        } else if (c->state == S_LAT_W || c->state == S_LAT_R) {
            c->owed++;
        }
    }
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(double p)
{
    if (!n_lat)
        return 0;
    /* Nearest rank: the smallest sample with at least p of all samples at or below it. */
    double rank = p * (double)n_lat;
    size_t i = (size_t)rank;
    if ((double)i < rank)
        i++;
    i = i ? i - 1 : 0;
    if (i >= n_lat)
        i = n_lat - 1;
    return lat[i] / 1e3;
}

static void print_results(double elapsed)
{
    printf("{\"mode\":\"%s\",\"target\":\"%s\",\"conns\":%d,\"seconds\":%.3f", mode_names[o.mode],
           o.target, o.conns, elapsed);
    switch (o.mode) {
    case M_HANDSHAKE:
    case M_RESUME:
        printf(",\"ok\":%ld,\"resumed\":%ld,\"full\":%ld,\"per_sec\":%.1f", n_ok, n_resumed,
               n_ok - n_resumed, (double)n_ok / elapsed);
        break;
    case M_BULK_UP:
    case M_BULK_DOWN: {
        double win = t_data ? elapsed - (t_data - t_start) : elapsed;
        printf(",\"ok\":%ld,\"bytes\":%llu,\"bytes_per_sec\":%.0f", n_ok, bytes,
               win > 0 ? (double)bytes / win : 0);
        break;
    }
    case M_LATENCY: {
        qsort(lat, n_lat, sizeof *lat, cmp_u32);
        double sum = 0;
        for (size_t i = 0; i < n_lat; i++)
            sum += lat[i];
        printf(",\"direct\":%s,\"rate\":%.0f,\"size\":%d,\"requests\":%zu,\"late\":%ld,"
               "\"mean_us\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f",
               o.direct ? "true" : "false", o.rate, o.size, n_lat, n_late,
               n_lat ? sum / (double)n_lat / 1e3 : 0, pct(0.5), pct(0.99), pct(0.999),
               n_lat ? lat[n_lat - 1] / 1e3 : 0);
        break;
    }
    case M_IDLE:
        printf(",\"starttls\":%s,\"established\":%ld,\"dropped\":%ld", o.starttls ? "true" : "false",
               n_established, n_dropped);
        break;
    }
    long failed = 0;
    for (int i = 0; i < E_COUNT; i++)
        failed += n_err[i];
    printf(",\"failed\":%ld,\"errors\":{", failed);
    for (int i = 0; i < E_COUNT; i++)
        printf("%s\"%s\":%ld", i ? "," : "", err_names[i], n_err[i]);
    printf("},\"tls\":{\"version\":\"%s\",\"cipher\":\"%s\",\"group\":\"%s\",\"server_key\":\"%s\"}",
           neg_version, neg_cipher, neg_group, neg_key);
    printf(",\"first_error\":\"");
    for (const char *p = first_error; *p; p++)
        if (*p != '"' && *p != '\\' && (unsigned char)*p >= 0x20)
            putchar(*p);
    printf("\"}\n");
    fflush(stdout);
}

static void usage(FILE *f)
{
    fprintf(f,
        "usage: loadgen MODE --connect HOST:PORT [options]\n"
        "MODE:\n"
        "  handshake   full TLS 1.3 handshakes: connect, handshake, [echo --msg], close_notify, close\n"
        "  resume      the same, resuming each slot's newest session ticket (counts SSL_session_reused)\n"
        "  bulk-up     write to a sink backend as fast as possible (bytes/s)\n"
        "  bulk-down   read from a source backend as fast as possible (bytes/s)\n"
        "  latency     --size-byte request/response to an echo backend at --rate; p50/p99/p999\n"
        "  idle        open --conns connections, print {\"event\":\"ready\"}, hold them until\n"
        "              SIGINT/SIGTERM or --hold seconds; expects the backend's IMAP mode\n"
        "options:\n"
        "  --connect HOST:PORT   target (IPv4)\n"
        "  --sni NAME            SNI (default mail.bench.test)\n"
        "  --conns N             concurrent connections (handshake/resume 32, bulk 2, latency 8, idle 1000)\n"
        "  --duration S          seconds to run (default 10; not idle)\n"
        "  --msg N               handshake/resume: echo N bytes after the handshake (default 0)\n"
        "  --rate R              latency: requests per second in total (default 2000)\n"
        "  --size N              latency: request bytes (default 64); bulk: bytes per write (16384)\n"
        "  --direct              latency: plain TCP, no TLS (to the backend, for the baseline)\n"
        "  --greeting            idle: read the IMAP greeting after the handshake, then NOOP\n"
        "  --imap-starttls       idle: greeting, a STARTTLS, a OK in plaintext, handshake, NOOP\n"
        "  --ramp N              idle: connection setups in flight at once (default 100)\n"
        "  --hold S              idle: stop holding after S seconds (default 600)\n"
        "  --ciphersuites LIST   TLS 1.3 suites offered (default TLS_AES_128_GCM_SHA256)\n"
        "  --groups LIST         key-exchange groups offered (default X25519)\n"
        "Output: one JSON line of results on stdout (idle: a ready line first). Exit 0 when at\n"
        "least one operation succeeded.\n");
}

static int parse_args(int argc, char **argv)
{
    if (argc < 2)
        return -1;
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        exit(0);
    }
    int m = -1;
    for (int k = 0; k < 6; k++)
        if (!strcmp(argv[1], mode_names[k]))
            m = k;
    if (m < 0)
        return -1;
    o.mode = (enum mode)m;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "--direct")) {
            o.direct = 1;
        } else if (!strcmp(a, "--imap-starttls")) {
            o.starttls = 1;
        } else if (!strcmp(a, "--greeting")) {
            o.greeting = 1;
        } else if (!v) {
            return -1;
        } else {
            i++;
            if (!strcmp(a, "--connect"))
                o.target = v;
            else if (!strcmp(a, "--sni"))
                o.sni = v;
            else if (!strcmp(a, "--conns"))
                o.conns = atoi(v);
            else if (!strcmp(a, "--duration"))
                o.duration = atof(v);
            else if (!strcmp(a, "--msg"))
                o.msg = atoi(v);
            else if (!strcmp(a, "--rate"))
                o.rate = atof(v);
            else if (!strcmp(a, "--size"))
                o.size = atoi(v);
            else if (!strcmp(a, "--ramp"))
                o.ramp = atoi(v);
            else if (!strcmp(a, "--hold"))
                o.hold = atof(v);
            else if (!strcmp(a, "--ciphersuites"))
                o.ciphersuites = v;
            else if (!strcmp(a, "--groups"))
                o.groups = v;
            else
                return -1;
        }
    }
    if (!o.target)
        return -1;
    char host[64];
    const char *colon = strrchr(o.target, ':');
    if (!colon || (size_t)(colon - o.target) >= sizeof host)
        return -1;
    memcpy(host, o.target, (size_t)(colon - o.target));
    host[colon - o.target] = '\0';
    o.addr.sin_family = AF_INET;
    o.addr.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &o.addr.sin_addr) != 1)
        return -1;
    if (!o.conns)
        o.conns = o.mode == M_IDLE ? 1000 : o.mode == M_LATENCY ? 8 : o.mode <= M_RESUME ? 32 : 2;
    if (!o.size)
        o.size = o.mode == M_LATENCY ? 64 : 16384;
    if (o.conns < 1 || o.msg < 0 || o.msg > (int)sizeof payload || o.size < 1 ||
        o.size > (int)sizeof payload || o.rate <= 0 || o.ramp < 1 || o.duration <= 0)
        return -1;
    if (o.direct && o.mode != M_LATENCY)
        return -1;
    if (o.mode == M_IDLE && !o.starttls && !o.greeting && !o.msg)
        o.greeting = 1;   /* idle needs proof that the backend side is connected too */
    return 0;
}

static SSL_CTX *make_ctx(void)
{
    SSL_CTX *c = SSL_CTX_new(TLS_client_method());
    if (!c)
        return NULL;
    SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION);
    /* The benchmark measures the proxy, so the client offers exactly one suite and one group:
     * every peer then does the same cryptographic work. */
    if (!SSL_CTX_set_ciphersuites(c, o.ciphersuites) || !SSL_CTX_set1_groups_list(c, o.groups)) {
        fprintf(stderr, "loadgen: bad --ciphersuites or --groups\n");
        exit(2);
    }
    /* No chain verification: the certificate is self-signed and the client's CPU is scarce.
     * The CertificateVerify signature is still checked, as TLS 1.3 requires. */
    SSL_CTX_set_verify(c, SSL_VERIFY_NONE, NULL);
    if (o.mode == M_RESUME) {
        SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(c, new_session_cb);
    } else {
        SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
    }
    /* Thousands of held connections would otherwise keep ~34 KB of buffers each here. */
    if (o.mode == M_IDLE)
        SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS);
    return c;
}

int main(int argc, char **argv)
{
    if (parse_args(argc, argv) < 0) {
        usage(stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = { .sa_handler = on_signal };
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    /* Idle mode holds thousands of sockets: take every descriptor the hard limit allows. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    memset(payload, 'x', sizeof payload);
    if (!o.direct && !(ctx = make_ctx())) {
        fprintf(stderr, "loadgen: SSL_CTX_new failed\n");
        return 1;
    }
    sess_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    conns = calloc((size_t)o.conns, sizeof *conns);
    if (!conns)
        return 1;
    for (int i = 0; i < o.conns; i++)
        conns[i].fd = -1;

    t_start = now_s();
    t_end = o.mode == M_IDLE ? t_start + o.hold : t_start + o.duration;
    if (o.mode == M_LATENCY) {
        timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        long long period_ns = (long long)(1e9 / o.rate);
        struct itimerspec its = {
            .it_value = { 0, 100000000 },   /* first tick after 100 ms: connections are up */
            .it_interval = { (time_t)(period_ns / 1000000000), (long)(period_ns % 1000000000) },
        };
        timerfd_settime(timer_fd, 0, &its, NULL);
        struct epoll_event e = { .events = EPOLLIN, .data.ptr = NULL };
        epoll_ctl(epfd, EPOLL_CTL_ADD, timer_fd, &e);
    }
    int launch = o.mode == M_IDLE ? (o.ramp < o.conns ? o.ramp : o.conns) : o.conns;
    for (int i = 0; i < launch; i++) {
        conn_start(&conns[i]);
        advance(&conns[i]);
    }

    int ready_printed = 0;
    double last_scan = t_start, t_ready = 0;
    struct epoll_event evs[512];
    for (;;) {
        double now = now_s();
        if (got_signal || now >= t_end)
            break;
        int timeout = (int)((t_end - now) * 1000) + 1;
        if (timeout > 100)
            timeout = 100;
        int n = epoll_wait(epfd, evs, 512, timeout);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c)
                on_tick();
            else
                advance(c);
        }
        now = now_s();
        if (now - last_scan >= 0.05) {
            last_scan = now;
            for (int i = 0; i < o.conns; i++) {
                struct conn *c = &conns[i];
                if (c->state != S_OFF && c->deadline && now > c->deadline) {
                    if (c->state == S_SHUTDOWN) {
                        /* The check already passed; a slow close only costs this slot time. */
                        conn_close(c);
                    } else {
                        conn_fail(c, E_TIMEOUT, "phase timed out");
                    }
                }
            }
        }
        if (o.mode != M_IDLE) {
            /* Keep the concurrency constant: every closed slot gets a new connection. */
            for (int i = 0; i < o.conns && now < t_end && !got_signal; i++) {
                if (conns[i].state == S_OFF) {
                    conn_start(&conns[i]);
                    advance(&conns[i]);
                }
            }
        } else {
            /* Each slot is used once, in order; at most --ramp setups are in flight. */
            long failed = n_err[E_CONNECT] + n_err[E_HANDSHAKE] + n_err[E_IO] + n_err[E_TIMEOUT];
            while (n_launched < o.conns && n_launched - n_established - failed < o.ramp) {
                struct conn *c = &conns[n_launched];
                conn_start(c);
                advance(c);
                failed = n_err[E_CONNECT] + n_err[E_HANDSHAKE] + n_err[E_IO] + n_err[E_TIMEOUT];
            }
            if (!ready_printed && n_established + failed >= o.conns) {
                ready_printed = 1;
                t_ready = now_s();
                printf("{\"event\":\"ready\",\"established\":%ld,\"failed\":%ld,\"seconds\":%.3f}\n",
                       n_established, failed, t_ready - t_start);
                fflush(stdout);
            }
        }
    }
    double elapsed = now_s() - t_start;
    if (o.mode == M_IDLE && t_ready)
        elapsed = t_ready - t_start;   /* for idle the interesting time is the setup */
    print_results(elapsed);
    return n_ok || n_established ? 0 : 1;
}
