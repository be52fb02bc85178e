/* libFuzzer target for conf_load(): whatever the bytes, it must return, not crash, not leak, and
 * keep its contract (a config XOR an error text of "FILE…\n" lines). conf_load reads files, so
 * each input is written to one file in a private directory; relative @include and paths then
 * resolve inside that directory.
 *
 * libconfig 1.5 leaks a lexer string on some malformed inputs: run with
 * LSAN_OPTIONS=suppressions=tests/fuzz/lsan.supp and ASAN_OPTIONS=fast_unwind_on_malloc=0 (the
 * library has no frame pointers, so the suppressed frame is only seen by the slow unwinder). */
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf/conf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[] = "/tmp/fuzz_conf_XXXXXX";
static char path[PATH_MAX];

static void cleanup(void)
{
    unlink(path);
    rmdir(dir);
}

static void setup(void)
{
    if (!mkdtemp(dir))
        abort();
    snprintf(path, sizeof path, "%s/mailsnid.cfg", dir);
    atexit(cleanup);
}

static void write_input(const uint8_t *data, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

    if (fd < 0)
        abort();
    while (size > 0) {
        ssize_t n = write(fd, data, size);
        if (n <= 0)
            abort();
        data += n;
        size -= (size_t)n;
    }
    close(fd);
}

/* What the rest of mailsnid relies on without re-checking. */
static void check_conf(const struct conf *c)
{
    if (c->n_listeners == 0 || !c->tls.default_cert || !c->tls.default_key)
        abort();
    for (size_t i = 0; i < c->n_listeners; i++) {
        const struct conf_listener *l = &c->listeners[i];
        if (!l->name || l->listen.len == 0 || l->n_backends == 0 || l->idle_timeout_ms == 0 ||
            l->handshake_timeout_ms == 0 || l->connect_timeout_ms == 0)
            abort();
        if (l->proxy_protocol_in && l->n_trusted == 0)
            abort();
        for (size_t j = 0; j < l->n_backends; j++)
            if (l->backends[j].len == 0)
                abort();
    }
    for (size_t i = 0; i < c->n_routes; i++)
        for (size_t j = 0; j < c->routes[i].n_names; j++)
            if (!c->routes[i].names[j] || !c->routes[i].names[j][0])
                abort();
    for (size_t i = 0; i < c->n_certs; i++)
        if (!c->certs[i].cert || !c->certs[i].key)
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct conf *c = NULL;
    char *err = NULL;
    int rc;

    if (!path[0])
        setup();
    write_input(data, size);
    rc = conf_load(path, &c, &err);
    if (rc == 0) {
        if (!c || err)
            abort();
        check_conf(c);
    } else {
        size_t n = err ? strlen(err) : 0;
        /* Every message names a file in our directory: the input or something it @included. */
        if (c || rc > 0 || n == 0 || err[n - 1] != '\n' || strncmp(err, dir, strlen(dir)) != 0)
            abort();
    }
    conf_free(c);
    free(err);
    return 0;
}
