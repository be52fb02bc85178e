/* Unit tests for proxy/runtime/routes.c: the name rules (exact, then one-label wildcard, by protocol),
 * ownership of the routes taken out of the conf, and a 100,000-name map. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../conf/conf.h"
#include "proxy/runtime/routes.h"
#include "check.h"

static char dir[PATH_MAX];

static struct conf *load(const char *routes_text)
{
    char path[PATH_MAX + 32], *err = NULL;
    struct conf *c = NULL;
    FILE *f;

    snprintf(path, sizeof path, "%s/routes.cfg", dir);
    f = fopen(path, "w");
    if (!f)
        exit(2);
    fprintf(f, "tls = { default_cert = \"/c.pem\"; default_key = \"/k.pem\"; };\n"
               "listeners = ( { name = \"a\"; listen = \"0.0.0.0:993\"; protocol = \"imap\"; "
               "backend = \"127.0.0.1:143\"; } );\n%s", routes_text);
    fclose(f);
    if (conf_load(path, &c, &err) != 0) {
        fprintf(stderr, "config: %s", err ? err : "?\n");
        exit(2);
    }
    unlink(path);
    return c;
}

static const char *backend_of(const struct routes *r, const char *name, enum conf_proto p)
{
    const struct conf_route *route = routes_lookup(r, name, p);
    return route ? route->backends[p][0].text : NULL;
}

static void test_name_rules(void)
{
    struct conf *c = load(
        "routes = (\n"
        "  { names = [ \"mail.alpha.test\", \"Webmail.Alpha.Test.\" ]; imap = \"10.0.0.1:143\"; },\n"
        "  { names = [ \"*.alpha.test\" ]; imap = \"10.0.0.2:143\"; smtp = \"10.0.0.2:25\"; },\n"
        "  { names = [ \"*.beta.test\", \"beta.test\" ]; http = \"10.0.0.3:80\"; }\n"
        ");\n");
    struct routes *r = routes_new(c);

    CHECK(r != NULL);
    CHECK(c->routes == NULL && c->n_routes == 0);     /* taken out of the conf */
    CHECK(routes_count(r) == 3);
    conf_free(c);                                      /* the snapshot outlives its conf */

    CHECK_STR(backend_of(r, "mail.alpha.test", CONF_PROTO_IMAP), "10.0.0.1:143");
    CHECK_STR(backend_of(r, "webmail.alpha.test", CONF_PROTO_IMAP), "10.0.0.1:143");
    CHECK_STR(backend_of(r, "other.alpha.test", CONF_PROTO_IMAP), "10.0.0.2:143");
    /* The exact route has no SMTP backend: the wildcard's applies. */
    CHECK_STR(backend_of(r, "mail.alpha.test", CONF_PROTO_SMTP), "10.0.0.2:25");
    CHECK(backend_of(r, "mail.alpha.test", CONF_PROTO_POP3) == NULL);
    /* One label only, never the bare domain through the wildcard. */
    CHECK(backend_of(r, "a.b.alpha.test", CONF_PROTO_IMAP) == NULL);
    CHECK(backend_of(r, "alpha.test", CONF_PROTO_IMAP) == NULL);
    CHECK_STR(backend_of(r, "beta.test", CONF_PROTO_HTTP), "10.0.0.3:80");
    CHECK_STR(backend_of(r, "www.beta.test", CONF_PROTO_HTTP), "10.0.0.3:80");
    CHECK(backend_of(r, ".beta.test", CONF_PROTO_HTTP) == NULL);
    CHECK(backend_of(r, "beta", CONF_PROTO_HTTP) == NULL);
    CHECK(backend_of(r, "test.", CONF_PROTO_HTTP) == NULL);
    CHECK(backend_of(r, "", CONF_PROTO_HTTP) == NULL);
    CHECK(backend_of(r, NULL, CONF_PROTO_HTTP) == NULL);
    CHECK(backend_of(NULL, "beta.test", CONF_PROTO_HTTP) == NULL);
    CHECK(backend_of(r, "mail.alpha.tes", CONF_PROTO_IMAP) == NULL);
    routes_unref(r);
}

static void test_no_routes(void)
{
    struct conf *c = load("");
    struct routes *r = routes_new(c);
    CHECK(r && routes_count(r) == 0);
    CHECK(backend_of(r, "mail.alpha.test", CONF_PROTO_IMAP) == NULL);
    routes_unref(r);
    conf_free(c);
}

/* A shared host's map: every name finds its own route, and nothing else matches. */
static void test_many(void)
{
    enum { N = 100000 };
    size_t cap = (size_t)N * 140 + 64, len = 0;
    char *text = malloc(cap), name[64], want[32];

    len += (size_t)snprintf(text + len, cap - len, "routes = (\n");
    for (unsigned i = 0; i < N; i++)
        len += (size_t)snprintf(text + len, cap - len,
                                "{ names = [ \"mail.d%u.example\", \"*.w%u.example\" ]; "
                                "imap = \"10.%u.%u.%u:143\"; }%s\n", i, i, i >> 16, (i >> 8) & 255,
                                i & 255, i + 1 < N ? "," : "");
    snprintf(text + len, cap - len, ");\n");
    struct conf *c = load(text);
    free(text);
    struct routes *r = routes_new(c);
    conf_free(c);
    CHECK(r && routes_count(r) == N);

    unsigned wrong = 0;
    for (unsigned i = 0; i < N; i++) {
        snprintf(want, sizeof want, "10.%u.%u.%u:143", i >> 16, (i >> 8) & 255, i & 255);
        snprintf(name, sizeof name, "mail.d%u.example", i);
        const char *got = backend_of(r, name, CONF_PROTO_IMAP);
        wrong += !got || strcmp(got, want) != 0;
        snprintf(name, sizeof name, "x%u.w%u.example", i, i);
        got = backend_of(r, name, CONF_PROTO_IMAP);
        wrong += !got || strcmp(got, want) != 0;
        snprintf(name, sizeof name, "mail.d%u.example", i + N);
        wrong += backend_of(r, name, CONF_PROTO_IMAP) != NULL;
        snprintf(name, sizeof name, "w%u.example", i);
        wrong += backend_of(r, name, CONF_PROTO_IMAP) != NULL;
    }
    CHECK(wrong == 0);
    routes_unref(r);
}

int main(void)
{
    char tmpl[] = "/tmp/test_routes_XXXXXX";
    if (!mkdtemp(tmpl) || !realpath(tmpl, dir))
        return 2;
    test_name_rules();
    test_no_routes();
    test_many();
    rmdir(dir);
    return check_report("test_routes");
}
