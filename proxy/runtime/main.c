/* mailsnid: command line, and the order of start-up (config, certificates, sockets, run). */
#include <getopt.h>
#include <libconfig.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/crypto.h>
#include <uv.h>

#ifdef MAILSNID_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif

#include "acme/acme.h"
#include "certstore/certstore.h"
#include "conf/conf.h"
#include "proxy/ops/log.h"
#include "proxy/runtime/server.h"
#include "proxy/tls/ssl_wipe.h"
#include "proxy/tls/tickets.h"
#include "proxy/tls/tls.h"
#include "proxy/runtime/upgrade.h"

#define MAILSNID_VERSION "0.1.0"

#ifdef MAILSNID_JEMALLOC
/* jemalloc reads this at start (MALLOC_CONF in the environment still overrides it).
 * background_thread: returning freed pages to the kernel happens on jemalloc's own thread, not
 * inside a worker's malloc/free on the hot path. The decay times keep pages released after a
 * burst (a reload of 100,000 certificates frees hundreds of megabytes) without giving back pages
 * that the next second's handshakes would take again. Measured and left at the defaults:
 * narenas, tcache_max and percpu arenas made no difference to RSS per idle connection (16.5 to
 * 16.9 KB at 4,000 held), which OpenSSL's SSL object bounds — see bench/RESULTS.md. */
const char *malloc_conf = "background_thread:true,dirty_decay_ms:5000,muzzy_decay_ms:5000";
#endif

static void usage(FILE *out)
{
    fprintf(out, "usage: mailsnid -c FILE          run in the foreground\n"
                 "       mailsnid -t -c FILE       check the config and every certificate, then exit\n"
                 "       mailsnid --certs -c FILE  print the SNI map\n"
                 "       mailsnid -V               print versions\n");
}

static void print_versions(void)
{
    printf("mailsnid %s\n", MAILSNID_VERSION);
    printf("OpenSSL %s\n", OpenSSL_version(OPENSSL_FULL_VERSION_STRING));
    printf("libuv %s\n", uv_version_string());
    printf("libconfig %d.%d.%d\n", LIBCONFIG_VER_MAJOR, LIBCONFIG_VER_MINOR, LIBCONFIG_VER_REVISION);
#ifdef MAILSNID_JEMALLOC
    const char *v = NULL;
    size_t len = sizeof v;
    if (mallctl("version", &v, &len, NULL, 0) == 0)
        printf("jemalloc %s\n", v);
#else
    printf("jemalloc not linked (sanitizer build, libc malloc)\n");
#endif
}

/* Loads the config and builds the certificate store, printing what is wrong.
 * Returns 0, or 1 when the config or a required pair is unusable. */
static int load_all(const char *path, struct conf **conf, struct cs_store **store, bool to_stderr)
{
    char *errors = NULL, *warnings = NULL;
    if (conf_load(path, conf, &errors) < 0) {
        if (to_stderr)
            fputs(errors ? errors : "config: unknown error\n", stderr);
        else
            log_lines(CONF_LOG_ERR, errors);
        free(errors);
        return 1;
    }
    if ((*conf)->tls.ticket_keys) {
        /* Checked here so that -t catches a bad key file; the server loads it again. */
        struct tickets *t = tickets_load((*conf)->tls.ticket_keys, &errors);
        if (!t) {
            if (to_stderr)
                fputs(errors ? errors : "ticket keys: unknown error\n", stderr);
            else
                log_lines(CONF_LOG_ERR, errors);
            free(errors);
            conf_free(*conf);
            *conf = NULL;
            return 1;
        }
        tickets_free(t);
    }
    int r = cs_store_build(*conf, NULL, store, &errors, &warnings);
    if (to_stderr) {
        if (warnings)
            fputs(warnings, stderr);
        if (errors)
            fputs(errors, stderr);
    } else {
        log_lines(CONF_LOG_WARNING, warnings);
        log_lines(CONF_LOG_ERR, errors);
    }
    free(errors);
    free(warnings);
    if (r < 0) {
        conf_free(*conf);
        *conf = NULL;
        return 1;
    }
    return 0;
}

static int check_config(const char *path)
{
    struct conf *conf;
    struct cs_store *store;
    if (load_all(path, &conf, &store, true))
        return 1;
    struct cs_stats st;
    cs_store_stats(store, &st);
    printf("%s: OK: %zu listeners, %zu certificate pairs (%zu exact names, %zu wildcard names, "
           "%zu skipped), %zu routes, %zu domains\n", path, conf->n_listeners, st.pairs,
           st.exact_names, st.wildcard_names, st.skipped, conf->n_routes, conf->n_domains);
    cs_store_unref(store);
    conf_free(conf);
    return 0;
}

static int print_certs(const char *path)
{
    struct conf *conf;
    struct cs_store *store;
    if (load_all(path, &conf, &store, true))
        return 1;
    cs_store_print(store, stdout);
    acme_status_print(conf, stdout);
    cs_store_unref(store);
    conf_free(conf);
    return 0;
}

static int run(const char *path, char **argv)
{
    /* Until the control loop handles it, a SIGHUP (a certbot hook during a long start) must
     * not kill the process: the certificates are being read anyway. */
    signal(SIGHUP, SIG_IGN);
    signal(SIGUSR2, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    /* The path now, not at SIGUSR2 time: by then a package upgrade has replaced the file, which
     * is the point, and /proc/self/exe would name the deleted old one. */
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = '\0';
    upgrade_inherit_init();
    struct conf *conf;
    struct cs_store *store;
    if (load_all(path, &conf, &store, false))
        return 1;
    log_setup(conf->log_level, conf->log_target);
    if (tls_global_init() < 0)
        return 1;
    struct server srv;
    int status = 1;
    /* The server owns CONF from here: it is the first configuration generation. */
    if (server_init(&srv, conf, store) == 0) {
        srv.exe = exe[0] ? exe : argv[0];
        srv.argv = argv;
        status = server_run(&srv);
    }
    server_free(&srv);
    tls_global_free();
    return status;
}

int main(int argc, char **argv)
{
    /* Before anything makes OpenSSL allocate: freed SSL objects are zeroed (ssl_wipe.c). */
    if (!ssl_wipe_install())
        fprintf(stderr, "mailsnid: warning: OpenSSL allocated before mailsnid could give it its "
                        "allocator: freed SSL objects keep their secrets\n");
    enum { MODE_RUN, MODE_TEST, MODE_CERTS, MODE_VERSION } mode = MODE_RUN;
    const char *path = NULL;
    static const struct option longopts[] = {
        { "config", required_argument, NULL, 'c' }, { "test", no_argument, NULL, 't' },
        { "certs", no_argument, NULL, 'C' },        { "version", no_argument, NULL, 'V' },
        { "help", no_argument, NULL, 'h' },         { NULL, 0, NULL, 0 },
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "c:tVh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c': path = optarg; break;
        case 't': mode = MODE_TEST; break;
        case 'C': mode = MODE_CERTS; break;
        case 'V': mode = MODE_VERSION; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (mode == MODE_VERSION) {
        print_versions();
        return 0;
    }
    if (!path || optind != argc) {
        usage(stderr);
        return 2;
    }
    switch (mode) {
    case MODE_TEST: return check_config(path);
    case MODE_CERTS: return print_certs(path);
    default: return run(path, argv);
    }
}
