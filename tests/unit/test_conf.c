/* Unit tests for conf/: every config mistake must come back as the exact "FILE:LINE: reason" an
 * operator would read, and good configs must come back as the values the SPEC promises. Each
 * config is written to a file in a fresh directory under /tmp, because conf_load reads files and
 * resolves relative paths against the file's directory. */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../conf/conf.h"
#include "../../conf/internal.h"
#include "check.h"

/* libconfig 1.5 leaks a string token inside its lexer when a parse fails after it (the
 * "mail.x.org" = 1; case below). That is libconfig's, not ours: under ASan, suppress exactly that
 * frame, the same suppression as tests/fuzz/lsan.supp. libconfig is built without frame
 * pointers, so the frame is only seen with the slow unwinder. Both hooks are unused without a
 * sanitizer. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:libconfig_yylex\n";
}

const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "fast_unwind_on_malloc=0";
}

static char dir[PATH_MAX];      /* realpath of the temp directory */
static char cfg[PATH_MAX + 32]; /* dir/mailsnid.cfg */

static void write_file(const char *name, const char *text)
{
    char path[PATH_MAX + 64];
    FILE *f;

    snprintf(path, sizeof path, "%s/%s", dir, name);
    f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        perror(path);
        exit(2);
    }
}

static int load(const char *text, struct conf **c, char **err)
{
    write_file("mailsnid.cfg", text);
    return conf_load(cfg, c, err);
}

/* The whole error text must be exactly "cfg:WANT\n": the right file, the right line, the reason,
 * and no other complaint. */
#define EXPECT_ERR(text, ...) expect_err(__LINE__, text, __VA_ARGS__)
static void expect_err(int at, const char *text, const char *fmt, ...)
{
    struct conf *c = NULL;
    char *err = NULL, want[PATH_MAX + 2048], body[1536];
    va_list ap;
    int rc;

    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    snprintf(want, sizeof want, "%s:%s\n", cfg, body);
    rc = load(text, &c, &err);
    check_count++;
    if (rc != -EINVAL || c || !err || strcmp(err, want) != 0) {
        check_failures++;
        fprintf(stderr, "%s:%d: want rc=%d and\n    %s  got rc=%d and\n    %s", __FILE__, at, -EINVAL,
                want, rc, err ? err : "(null)\n");
    }
    free(err);
    conf_free(c);
}

/* For configs with several mistakes: one reported line must start with cfg:WANT. */
static bool has_line(const char *err, const char *fmt, ...)
{
    char body[1024], want[PATH_MAX + 1100];
    va_list ap;
    const char *p;
    size_t n;

    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    n = (size_t)snprintf(want, sizeof want, "%s:%s", cfg, body);
    for (p = err; p && *p; p = strchr(p, '\n') + 1) {
        if (strncmp(p, want, n) == 0)
            return true;
        if (!strchr(p, '\n'))
            break;
    }
    fprintf(stderr, "missing error line: %s\n", want);
    return false;
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; s && *s; s++)
        n += *s == '\n';
    return n;
}

#define TLS_OK "tls = { default_cert = \"/etc/c.pem\"; default_key = \"/etc/k.pem\"; };\n"
#define LST(name, listen) \
    "{ name = \"" name "\"; listen = \"" listen "\"; protocol = \"imap\"; backend = \"127.0.0.1:143\"; }"
#define L_OK "listeners = ( " LST("a", "0.0.0.0:993") " );\n"

static void test_syntax_and_files(void)
{
    struct conf *c = (struct conf *)&c;
    char *err = NULL, want[PATH_MAX + 128];
    int rc;

    EXPECT_ERR("workers = 1;\nuser = ;\n", "2: syntax error");
    EXPECT_ERR(TLS_OK L_OK "\"mail.x.org\" = 1;\n", "3: syntax error");

    rc = conf_load("/nonexistent/mailsnid.cfg", &c, &err);
    CHECK(rc == -ENOENT);
    CHECK(c == NULL);
    CHECK_STR(err, "/nonexistent/mailsnid.cfg: cannot read: No such file or directory\n");
    free(err);

    rc = conf_load(dir, &c, &err);
    snprintf(want, sizeof want, "%s: cannot read: Is a directory\n", dir);
    CHECK(rc == -EISDIR);
    CHECK_STR(err, want);
    free(err);

    rc = conf_load("/dev/null", &c, &err);
    CHECK(rc == -EINVAL);
    CHECK_STR(err, "/dev/null: cannot read: not a regular file\n");
    free(err);
}

static void test_unknown_keys(void)
{
    EXPECT_ERR(TLS_OK L_OK "colour = 1;\n", "3: colour: unknown key");
    EXPECT_ERR("tls = { default_cert = \"/c\"; default_key = \"/k\";\n  foo = 1; };\n" L_OK,
               "2: tls.foo: unknown key");
    EXPECT_ERR(TLS_OK "listeners = (\n { name = \"a\"; listen = \"0.0.0.0:993\"; protocol = \"imap\";\n"
               "   backend = \"127.0.0.1:143\"; bakend = \"x\"; }\n);\n",
               "4: listeners[0].bakend: unknown key");
    EXPECT_ERR(TLS_OK L_OK "log = { level = \"info\"; colour = true; };\n", "3: log.colour: unknown key");
    EXPECT_ERR(TLS_OK L_OK "routes = ( { names = [\"a.b\"]; imap = \"10.0.0.1:143\"; ftp = \"1.2.3.4:21\"; } );\n",
               "3: routes[0].ftp: unknown key");
    EXPECT_ERR(TLS_OK L_OK "certificates = ( { cert = \"a\"; key = \"b\"; chain = \"c\"; } );\n",
               "3: certificates[0].chain: unknown key");
}

static void test_types_and_enums(void)
{
    EXPECT_ERR(TLS_OK L_OK "workers = \"four\";\n", "3: workers: expected an integer");
    EXPECT_ERR(TLS_OK L_OK "workers = -1;\n", "3: workers: must be from 0 to 1024, not -1");
    EXPECT_ERR(TLS_OK L_OK "drain_timeout = 1.5;\n", "3: drain_timeout: expected an integer");
    EXPECT_ERR(TLS_OK L_OK "user = \"\";\n", "3: user: must not be empty");
    EXPECT_ERR(TLS_OK L_OK "log = {\n  level = \"loud\";\n};\n",
               "4: log.level: \"loud\" is not one of \"err\", \"warning\", \"notice\", \"info\", \"debug\"");
    EXPECT_ERR(TLS_OK L_OK "log = { target = 5; };\n",
               "3: log.target: expected a string, one of \"stderr\", \"syslog\"");
    EXPECT_ERR(TLS_OK L_OK "log = \"syslog\";\n", "3: log: expected a group { ... }");
    EXPECT_ERR("tls = { default_cert = \"/c\"; default_key = \"/k\"; min_version = \"TLSv1.1\"; };\n" L_OK,
               "1: tls.min_version: \"TLSv1.1\" is not one of \"TLSv1.2\", \"TLSv1.3\"");
    EXPECT_ERR("tls = { default_cert = \"/c\"; default_key = \"/k\";\n ciphers = \"\"; };\n" L_OK,
               "2: tls.ciphers: must not be empty");
    EXPECT_ERR(TLS_OK "listeners = ( { name = \"a\"; listen = \"0.0.0.0:21\"; protocol = \"ftp\"; "
               "backend = \"127.0.0.1:21\"; } );\n",
               "2: listeners[0].protocol: \"ftp\" is not one of \"imap\", \"pop3\", \"smtp\", \"http\"");
    EXPECT_ERR(TLS_OK "listeners = ( { name = \"a\"; listen = \"0.0.0.0:993\"; protocol = \"imap\";\n"
               "  backend = \"127.0.0.1:143\"; proxy_protocol = \"v3\"; } );\n",
               "3: listeners[0].proxy_protocol: \"v3\" is not one of \"none\", \"v1\", \"v2\"");
    EXPECT_ERR(TLS_OK "listeners = ( { name = \"a\"; listen = \"0.0.0.0:993\"; protocol = \"imap\";\n"
               "  backend = \"127.0.0.1:143\"; proxy_protocol_in = \"yes\"; } );\n",
               "3: listeners[0].proxy_protocol_in: expected true or false");
    EXPECT_ERR(TLS_OK "listeners = 5;\n", "2: listeners: expected a list ( { ... }, ... )");
    EXPECT_ERR(TLS_OK "listeners = ( { name = \"a b\"; listen = \"0.0.0.0:993\"; protocol = \"imap\"; "
               "backend = \"127.0.0.1:143\"; } );\n",
               "2: listeners[0].name: \"a b\": use up to 64 letters, digits, '-', '_' or '.'");
}

static void test_addresses(void)
{
    EXPECT_ERR(TLS_OK "listeners = ( " LST("a", "localhost:993") " );\n",
               "2: listeners[0].listen: \"localhost:993\": hostnames are not allowed, use a numeric "
               "IPv4 address or an [IPv6] address");
    EXPECT_ERR(TLS_OK "listeners = ( " LST("a", "0.0.0.0:0") " );\n",
               "2: listeners[0].listen: \"0.0.0.0:0\": port must be a number from 1 to 65535");
    EXPECT_ERR(TLS_OK "listeners = ( " LST("a", "[::]:65536") " );\n",
               "2: listeners[0].listen: \"[::]:65536\": port must be a number from 1 to 65535");
    EXPECT_ERR(TLS_OK "listeners = ( " LST("a", "::1:993") " );\n",
               "2: listeners[0].listen: \"::1:993\": IPv6 addresses need brackets, e.g. \"[::1]:993\"");
    EXPECT_ERR(TLS_OK "listeners = ( " LST("a", "10.0.0.1") " );\n",
               "2: listeners[0].listen: \"10.0.0.1\": missing port: expected \"IPv4:port\" or \"[IPv6]:port\"");
    EXPECT_ERR(TLS_OK "listeners = ( " LST("a", "10.0.0.300:1") " );\n",
               "2: listeners[0].listen: \"10.0.0.300:1\": invalid IPv4 address");
    EXPECT_ERR(TLS_OK "listeners = ( " LST("a", "[fe80::1%eth0]:1") " );\n",
               "2: listeners[0].listen: \"[fe80::1%%eth0]:1\": scoped IPv6 addresses (with %%) are not supported");
    EXPECT_ERR(TLS_OK "listeners = (\n  { name = \"a\"; listen = \"0.0.0.0:993\"; protocol = \"imap\";\n"
               "    backend = [ \"127.0.0.1:143\",\n                \"mail.local:143\" ]; }\n);\n",
               "5: listeners[0].backend[1]: \"mail.local:143\": hostnames are not allowed, use a "
               "numeric IPv4 address or an [IPv6] address");
    EXPECT_ERR(TLS_OK "listeners = ( { name = \"a\"; listen = \"0.0.0.0:993\"; protocol = \"imap\";\n"
               "  backend = []; } );\n",
               "3: listeners[0].backend: needs at least one address");
    EXPECT_ERR(TLS_OK "listeners = ( { name = \"a\"; listen = \"0.0.0.0:993\"; protocol = \"imap\";\n"
               "  backend = \"0.0.0.0:143\"; } );\n",
               "3: listeners[0].backend: \"0.0.0.0:143\": 0.0.0.0 and [::] can be listened on, not connected to");
    EXPECT_ERR(TLS_OK "listeners = ( { name = \"a\"; listen = \"0.0.0.0:993\"; protocol = \"imap\";\n"
               "  backend = 143; } );\n",
               "3: listeners[0].backend: expected an address or a list of addresses");
    EXPECT_ERR(TLS_OK L_OK "admin = \"localhost:9180\";\n",
               "3: admin: \"localhost:9180\": hostnames are not allowed, use a numeric IPv4 address "
               "or an [IPv6] address");
}

#define PP_IN(trusted) \
    TLS_OK "listeners = ( { name = \"a\"; listen = \"0.0.0.0:993\"; protocol = \"imap\";\n" \
    "  backend = \"127.0.0.1:143\"; proxy_protocol_in = true;\n  trusted = " trusted "; } );\n"

static void test_cidrs(void)
{
    EXPECT_ERR(PP_IN("[ \"10.0.0.0/33\" ]"), "4: listeners[0].trusted[0]: \"10.0.0.0/33\": prefix length must be from 0 to 32");
    EXPECT_ERR(PP_IN("[ \"10.0.0.0/8\", \"10.1.0.0/8\" ]"),
               "4: listeners[0].trusted[1]: \"10.1.0.0/8\": address has bits set beyond the prefix length");
    EXPECT_ERR(PP_IN("[ \"lb.local/8\" ]"),
               "4: listeners[0].trusted[0]: \"lb.local/8\": hostnames are not allowed, use a numeric "
               "IPv4 address or an [IPv6] address");
    EXPECT_ERR(PP_IN("[ \"2001:db8::/129\" ]"),
               "4: listeners[0].trusted[0]: \"2001:db8::/129\": prefix length must be from 0 to 128");
    EXPECT_ERR(PP_IN("[ ]"), "4: listeners[0].trusted: must not be empty");
    EXPECT_ERR(TLS_OK "listeners = (\n  { name = \"a\"; listen = \"0.0.0.0:993\"; protocol = \"imap\";\n"
               "    backend = \"127.0.0.1:143\"; proxy_protocol_in = true; }\n);\n",
               "3: listeners[0]: missing required key \"trusted\" (proxy_protocol_in = true needs the "
               "load balancers' addresses)");
}

static void test_between_listeners(void)
{
    EXPECT_ERR(TLS_OK "listeners = (\n  " LST("a", "0.0.0.0:993") ",\n  " LST("a", "0.0.0.0:995") "\n);\n",
               "4: listeners[1].name: duplicate listener name \"a\" (first at line 3)");
    EXPECT_ERR(TLS_OK "listeners = (\n  " LST("a", "0.0.0.0:993") ",\n  " LST("b", "127.0.0.1:993") "\n);\n",
               "4: listeners[1].listen: \"127.0.0.1:993\" clashes with 0.0.0.0:993 of the listener at line 3");
    EXPECT_ERR(TLS_OK "listeners = (\n  " LST("a", "[::]:993") ",\n  " LST("b", "0.0.0.0:993") "\n);\n",
               "4: listeners[1].listen: \"0.0.0.0:993\" clashes with [::]:993 of the listener at line 3");
    EXPECT_ERR(TLS_OK "listeners = (\n  " LST("a", "10.0.0.1:993") ",\n  " LST("b", "10.0.0.2:993") ",\n  "
               LST("c", "10.0.0.1:993") "\n);\n",
               "5: listeners[2].listen: \"10.0.0.1:993\" clashes with 10.0.0.1:993 of the listener at line 3");
    EXPECT_ERR(TLS_OK "listeners = (\n  " LST("a", "[::ffff:10.0.0.1]:993") ",\n  " LST("b", "10.0.0.1:993") "\n);\n",
               "4: listeners[1].listen: \"10.0.0.1:993\" clashes with [::ffff:10.0.0.1]:993 of the listener at line 3");
    EXPECT_ERR(TLS_OK L_OK "admin = \"127.0.0.1:993\";\n",
               "3: admin: 127.0.0.1:993 clashes with 0.0.0.0:993 of the listener at line 2");
}

static void test_missing(void)
{
    EXPECT_ERR(TLS_OK "listeners = (\n  {\n    name = \"a\"; protocol = \"imap\";\n    backend = \"127.0.0.1:143\";\n  }\n);\n",
               "3: listeners[0]: missing required key \"listen\"");
    EXPECT_ERR(TLS_OK "listeners = (\n  { name = \"a\"; listen = \"0.0.0.0:993\"; backend = \"127.0.0.1:143\"; }\n);\n",
               "3: listeners[0]: missing required key \"protocol\"");
    EXPECT_ERR(TLS_OK "listeners = (\n  { listen = \"0.0.0.0:993\"; protocol = \"imap\"; backend = \"127.0.0.1:143\"; }\n);\n",
               "3: listeners[0]: missing required key \"name\"");
    EXPECT_ERR(TLS_OK "listeners = (\n  { name = \"a\"; listen = \"0.0.0.0:993\"; protocol = \"imap\"; }\n);\n",
               "3: listeners[0]: missing required key \"backend\"");
    EXPECT_ERR(L_OK, "1: missing required key \"tls\"");
    EXPECT_ERR("workers = 2;\ntls = {\n  default_cert = \"/c\";\n};\n" L_OK,
               "2: tls: missing required key \"default_key\"");
    EXPECT_ERR(TLS_OK L_OK "certificates = (\n  { key = \"a.key\"; },\n  { cert = \"b.pem\";\n    key = \"b.key\"; }\n);\n",
               "4: certificates[0]: missing required key \"cert\"");
    EXPECT_ERR(TLS_OK, "1: missing required key \"listeners\"");
    EXPECT_ERR(TLS_OK "listeners = ();\n", "2: listeners: at least one listener is needed");
}

static void test_tls_modes(void)
{
    EXPECT_ERR(TLS_OK "listeners = ( { name = \"w\"; listen = \"0.0.0.0:80\"; protocol = \"http\";\n"
               "  tls = \"starttls\"; backend = \"127.0.0.1:8080\"; } );\n",
               "3: listeners[0].tls: HTTP has no STARTTLS: use tls = \"implicit\"");
    EXPECT_ERR(TLS_OK "listeners = ( { name = \"s\"; listen = \"0.0.0.0:465\"; protocol = \"smtp\";\n"
               "  starttls = \"required\"; backend = \"127.0.0.1:10465\"; } );\n",
               "3: listeners[0].starttls: only meaningful with tls = \"starttls\"");
    EXPECT_ERR(TLS_OK "listeners = ( { name = \"s\"; listen = \"0.0.0.0:587\"; protocol = \"smtp\";\n"
               "  tls = \"starttls\"; starttls = \"always\"; backend = \"127.0.0.1:10587\"; } );\n",
               "3: listeners[0].starttls: \"always\" is not one of \"optional\", \"required\"");
}

#define L_TIMEOUT(v) \
    TLS_OK "listeners = ( { name = \"a\"; listen = \"0.0.0.0:993\"; protocol = \"imap\";\n" \
    "  backend = \"127.0.0.1:143\";\n  idle_timeout = " v "; } );\n"

static void test_timeouts(void)
{
    EXPECT_ERR(L_TIMEOUT("0"), "4: listeners[0].idle_timeout: must be more than 0 and at most 4294967 seconds");
    EXPECT_ERR(L_TIMEOUT("-5"), "4: listeners[0].idle_timeout: must be more than 0 and at most 4294967 seconds");
    EXPECT_ERR(L_TIMEOUT("0.0001"), "4: listeners[0].idle_timeout: must be at least 0.001 (1 ms)");
    EXPECT_ERR(L_TIMEOUT("5000000"), "4: listeners[0].idle_timeout: must be more than 0 and at most 4294967 seconds");
    EXPECT_ERR(L_TIMEOUT("\"30m\""), "4: listeners[0].idle_timeout: expected a number of seconds");
}

static void test_names(void)
{
    EXPECT_ERR(TLS_OK L_OK "routes = (\n  { names = [ \"mail..x.org\" ]; imap = \"10.0.0.5:143\"; }\n);\n",
               "4: routes[0].names[0]: \"mail..x.org\": empty label in host name");
    EXPECT_ERR(TLS_OK L_OK "routes = (\n  { names = [ \"m\\u00e4il.x.org\" ]; imap = \"10.0.0.5:143\"; }\n);\n",
               "4: routes[0].names[0]: \"m\\\\u00e4il.x.org\": invalid character in host name "
               "(international names need their xn-- form)");
    EXPECT_ERR(TLS_OK L_OK "routes = (\n  { names = [ \"a.x.org\" ];\n    ftp_only = 1; }\n);\n",
               "4: routes[0]: a route needs at least one of \"imap\", \"pop3\", \"smtp\", \"http\"\n"
               "%s:5: routes[0].ftp_only: unknown key", cfg);
    EXPECT_ERR(TLS_OK L_OK "routes = (\n  { names = [ ]; imap = \"10.0.0.5:143\"; }\n);\n",
               "4: routes[0].names: must not be empty");
    EXPECT_ERR(TLS_OK L_OK "routes = (\n  { imap = \"10.0.0.5:143\"; }\n);\n",
               "4: routes[0]: missing required key \"names\"");
    EXPECT_ERR(TLS_OK L_OK "routes = (\n  { names = [ \"Mail.X.org.\" ]; imap = \"10.0.0.5:143\"; },\n"
               "  { names = [ \"webmail.x.org\",\n              \"mail.x.org\" ]; http = \"10.0.0.5:80\"; }\n);\n",
               "6: routes[1].names[1]: \"mail.x.org\" is already routed at line 4");
    EXPECT_ERR(TLS_OK L_OK "certificates = (\n  { cert = \"a.pem\"; key = \"a.key\"; names = [ \"*\" ]; }\n);\n",
               "4: certificates[0].names[0]: \"*\": a wildcard must be \"*.\" followed by a domain");
    EXPECT_ERR(TLS_OK L_OK "certificates = (\n  { cert = \"a.pem\"; key = \"a.key\"; names = [ \"a.*.org\" ]; }\n);\n",
               "4: certificates[0].names[0]: \"a.*.org\": \"*\" is only allowed as the whole leftmost label");
}

static void test_includes(void)
{
    char sub[PATH_MAX + 16];
    struct conf *c = NULL;
    char *err = NULL;

    snprintf(sub, sizeof sub, "%s/sub", dir);
    mkdir(sub, 0700);
    EXPECT_ERR(TLS_OK L_OK "@include \"sub\"\n", "3: @include \"sub\": Is a directory");
    EXPECT_ERR(TLS_OK L_OK "@include \"/etc/mailsnid/routes.cfg\"\n",
               "3: @include \"/etc/mailsnid/routes.cfg\": the path must be relative to %s", dir);
    EXPECT_ERR(TLS_OK L_OK "  @include \"sub\\x\"\n",
               "3: @include \"subx\": only \\\\ and \\\" may follow a backslash");

    {
        char fifo[PATH_MAX + 16];
        snprintf(fifo, sizeof fifo, "%s/fifo", dir);
        CHECK(mkfifo(fifo, 0600) == 0);
        EXPECT_ERR(TLS_OK "@include \"fifo\"\n" L_OK, "2: @include \"fifo\": not a regular file");
        unlink(fifo);
    }
    write_file("bad.cfg", "workers = 1;\nuser = ;\n");
    write_file("types.cfg", "workers = \"many\";\n");
    write_file("routes.cfg", "routes = ( { names = [ \"mail.inc.org\" ]; imap = \"10.0.0.9:143\"; } );\n");
    write_file("nested.cfg", "@include \"sub\"\n");
    {
        char want[PATH_MAX + 64];
        snprintf(want, sizeof want, "%s/bad.cfg:2: syntax error\n", dir);
        load(TLS_OK L_OK "@include \"bad.cfg\"\n", &c, &err);
        CHECK_STR(err, want);
        free(err);
        snprintf(want, sizeof want, "%s/types.cfg:1: workers: expected an integer\n", dir);
        load(TLS_OK L_OK "@include \"types.cfg\"\n", &c, &err);
        CHECK_STR(err, want);
        free(err);
        snprintf(want, sizeof want, "%s/nested.cfg:1: @include \"sub\": Is a directory\n", dir);
        load(TLS_OK L_OK "@include \"nested.cfg\"\n", &c, &err);
        CHECK_STR(err, want);
        free(err);
        err = NULL;
    }
    CHECK(load(TLS_OK L_OK "@include \"routes.cfg\"\n", &c, &err) == 0);
    CHECK(err == NULL);
    CHECK(c && c->n_routes == 1 && strcmp(c->routes[0].names[0], "mail.inc.org") == 0);
    conf_free(c);
    /* A self-include ends in libconfig's depth limit, not in a loop. */
    CHECK(load("@include \"mailsnid.cfg\"\n", &c, &err) == -EINVAL);
    CHECK(c == NULL && err && strstr(err, "include file nesting too deep"));
    free(err);
    rmdir(sub);
}

static void test_more_errors(void)
{
    char label[80], name[400], text[1024];

    EXPECT_ERR(TLS_OK "listeners = [ ];\n", "2: listeners: at least one listener is needed");
    EXPECT_ERR(TLS_OK L_OK "cert_dirs = ( \"/etc/live\",\n  42 );\n", "4: cert_dirs[1]: expected a string");
    EXPECT_ERR(TLS_OK L_OK "cert_dirs = \"/etc/live\";\n", "3: cert_dirs: expected a list of directories");
    EXPECT_ERR(TLS_OK L_OK "routes = ( { names = [ \"a.org\" ]; imap = \"10.0.0.1:143\"; proxy_protocol = 2; } );\n",
               "3: routes[0].proxy_protocol: expected a string, one of \"none\", \"v1\", \"v2\"");
    EXPECT_ERR(TLS_OK L_OK "routes = ( { names = \"a.org\"; imap = \"10.0.0.1:143\"; } );\n",
               "3: routes[0].names: expected a list of host names");
    EXPECT_ERR(TLS_OK L_OK "routes = { names = [ \"a.org\" ]; imap = \"10.0.0.1:143\"; };\n",
               "3: routes: expected a list ( { names = [ ... ]; ... }, ... )");
    EXPECT_ERR(TLS_OK L_OK "max_connections = 1L;\nmax_connections2 = 5;\n", "4: max_connections2: unknown key");
    /* libconfig 1.5 wraps integer literals past 32 bits unless they carry an L suffix. */
    EXPECT_ERR(TLS_OK L_OK "max_connections = 5000000000L;\n",
               "3: max_connections: must be from 0 to 4294967295, not 5000000000");

    memset(label, 'a', 64);
    label[64] = '\0';
    snprintf(text, sizeof text, TLS_OK L_OK "routes = ( { names = [ \"%s.org\" ]; imap = \"10.0.0.1:143\"; } );\n", label);
    EXPECT_ERR(text, "3: routes[0].names[0]: \"%s.org\": label longer than 63 characters in host name", label);
    label[63] = '\0';
    snprintf(name, sizeof name, "%s.%s.%s.%s", label, label, label, label);
    snprintf(text, sizeof text, TLS_OK L_OK "routes = ( { names = [ \"%s\" ]; imap = \"10.0.0.1:143\"; } );\n", name);
    /* Long values are shortened in messages so that one error stays one readable line. */
    EXPECT_ERR(text, "3: routes[0].names[0]: \"%.71s...\": host name longer than 253 characters", name);
    name[253] = '\0';
    snprintf(text, sizeof text, TLS_OK L_OK "routes = ( { names = [ \"%s.\" ]; imap = \"10.0.0.1:143\"; } );\n", name);
    {
        struct conf *c = NULL;
        char *err = NULL;
        CHECK(load(text, &c, &err) == 0);       /* 253 plus the trailing dot is fine */
        CHECK(c && strlen(c->routes[0].names[0]) == 253);
        free(err);
        conf_free(c);
    }
}

static void test_api_edges(void)
{
    struct conf *c = (struct conf *)&c;
    char *err = NULL;

    CHECK(conf_load(NULL, &c, &err) == -EINVAL);
    CHECK(c == NULL);
    CHECK_STR(err, "(null): cannot read: Invalid argument\n");
    free(err);
    write_file("mailsnid.cfg", "workers = ;\n");
    CHECK(conf_load(cfg, &c, NULL) == -EINVAL);     /* no error text wanted: nothing leaks */
    CHECK(c == NULL);
    conf_free(NULL);
}

static void test_many_errors(void)
{
    struct conf *c = NULL;
    char *err = NULL;
    int rc = load("workers = \"x\";\n"
                  "tls = { default_cert = \"/c\"; };\n"
                  "listeners = (\n"
                  "  { name = \"a\"; listen = \"host:1\"; protocol = \"imap\"; backend = \"127.0.0.1:1\"; },\n"
                  "  { name = \"a\"; listen = \"0.0.0.0:2\"; protocol = \"smtp\"; backend = \"127.0.0.1:2\"; x = 1; }\n"
                  ");\n"
                  "routes = ( { names = [ \"-.-\", \"a..b\" ]; } );\n",
                  &c, &err);
    CHECK(rc == -EINVAL);
    CHECK(c == NULL);
    CHECK(count_lines(err) == 7);
    CHECK(has_line(err, "1: workers: expected an integer"));
    CHECK(has_line(err, "2: tls: missing required key \"default_key\""));
    CHECK(has_line(err, "4: listeners[0].listen: \"host:1\": hostnames are not allowed"));
    CHECK(has_line(err, "5: listeners[1].x: unknown key"));
    CHECK(has_line(err, "5: listeners[1].name: duplicate listener name \"a\" (first at line 4)"));
    CHECK(has_line(err, "7: routes[0].names[1]: \"a..b\": empty label in host name"));
    CHECK(has_line(err, "7: routes[0]: a route needs at least one of"));
    free(err);

    /* Reported in file order, whatever order the schema walk found them in. */
    rc = load(TLS_OK "routes = 5;\nlisteners = 5;\nlog = 5;\nworkers = \"x\";\n", &c, &err);
    CHECK(rc == -EINVAL);
    {
        char want[5 * PATH_MAX];
        snprintf(want, sizeof want,
                 "%s:2: routes: expected a list ( { names = [ ... ]; ... }, ... )\n"
                 "%s:3: listeners: expected a list ( { ... }, ... )\n"
                 "%s:4: log: expected a group { ... }\n"
                 "%s:5: workers: expected an integer\n", cfg, cfg, cfg, cfg);
        CHECK_STR(err, want);
    }
    free(err);
}

static const char spec_config[] =
    "workers = 2;\n"                                                                  /* 1 */
    "user = \"mailsnid\"; group = \"mail\";\n"                                        /* 2 */
    "log = { level = \"debug\"; target = \"syslog\"; };\n"                            /* 3 */
    "admin = \"127.0.0.1:9180\";\n"                                                   /* 4 */
    "drain_timeout = 45;\n"                                                           /* 5 */
    "max_connections = 20000;\n"                                                      /* 6 */
    "tls = {\n"                                                                       /* 7 */
    "  default_cert = \"server.pem\";\n"
    "  default_key  = \"/etc/mailsnid/server.key\";\n"
    "  min_version  = \"TLSv1.3\";\n"
    "  ciphers = \"ECDHE+AESGCM\"; ciphersuites = \"TLS_AES_128_GCM_SHA256\";\n"
    "  ticket_keys  = \"keys/tickets.key\";\n"
    "};\n"
    "certificates = (\n"
    "  { cert = \"/etc/ssl/example.com/fullchain.pem\"; key = \"/etc/ssl/example.com/privkey.pem\"; },\n"
    "  { cert = \"x.pem\"; key = \"x.key\"; names = [ \"Mail.X.org.\", \"*.x.ORG\" ]; }\n"
    ");\n"
    "cert_dirs = ( \"/etc/letsencrypt/live\", \"live\" );\n"
    "listeners = (\n"
    "  { name = \"imaps\"; listen = \"0.0.0.0:993\"; protocol = \"imap\"; tls = \"implicit\"; backend = \"127.0.0.1:143\"; },\n"
    "  { name = \"imap\"; listen = \"0.0.0.0:143\"; protocol = \"imap\"; tls = \"starttls\"; backend = \"127.0.0.1:1143\"; },\n"
    "  { name = \"pop3s\"; listen = \"[::]:995\"; protocol = \"pop3\"; tls = \"implicit\"; backend = \"127.0.0.1:110\"; },\n"
    "  { name = \"smtps\"; listen = \"0.0.0.0:465\"; protocol = \"smtp\"; tls = \"implicit\"; backend = \"127.0.0.1:10465\"; },\n"
    "  { name = \"submission\"; listen = \"0.0.0.0:587\"; protocol = \"smtp\"; tls = \"starttls\"; starttls = \"required\";\n"
    "    backend = [ \"127.0.0.1:10587\", \"[::1]:10587\" ]; },\n"
    "  { name = \"https\"; listen = \"[2001:db8::1]:443\"; protocol = \"http\"; tls = \"implicit\"; backend = \"127.0.0.1:8080\";\n"
    "    proxy_protocol = \"v2\"; proxy_protocol_in = true; trusted = [ \"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\" ];\n"
    "    handshake_timeout = 2.5; connect_timeout = 1; idle_timeout = 600; max_connections = 500; },\n"
    "  { name = \"imaps6\"; listen = \"[::1]:993\"; protocol = \"imap\"; backend = \"127.0.0.1:143\"; }\n"
    ");\n"
    "routes = (\n"
    "  { names = [ \"mail.big-customer.com\", \"WebMail.Big-Customer.com.\" ];\n"
    "    imap = \"10.0.0.5:143\"; smtp = [ \"10.0.0.5:10465\", \"10.0.0.6:10465\" ]; http = \"10.0.0.5:8080\"; },\n"
    "  { names = [ \"*.wild.example\" ]; pop3 = \"10.0.0.7:110\"; proxy_protocol = \"v1\"; }\n"
    ");\n";

static unsigned port_of(const struct conf_addr *a)
{
    if (a->ss.ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
}

static void test_full_config(void)
{
    struct conf *c = NULL;
    char *err = (char *)"not cleared", want[PATH_MAX + 64];
    const struct conf_listener *l;
    int rc = load(spec_config, &c, &err);

    CHECK(rc == 0);
    CHECK(err == NULL);
    if (!c) {
        fprintf(stderr, "%s", err ? err : "");
        return;
    }
    CHECK_STR(c->path, cfg);
    CHECK(c->workers == 2);
    CHECK_STR(c->user, "mailsnid");
    CHECK_STR(c->group, "mail");
    CHECK(c->log_level == CONF_LOG_DEBUG && c->log_target == CONF_LOG_SYSLOG);
    CHECK(c->has_admin && c->admin.ss.ss_family == AF_INET && port_of(&c->admin) == 9180);
    CHECK(c->drain_timeout_s == 45 && c->max_connections == 20000);

    /* Relative paths are taken from the config file's directory. */
    snprintf(want, sizeof want, "%s/server.pem", dir);
    CHECK_STR(c->tls.default_cert, want);
    CHECK_STR(c->tls.default_key, "/etc/mailsnid/server.key");
    snprintf(want, sizeof want, "%s/keys/tickets.key", dir);
    CHECK_STR(c->tls.ticket_keys, want);
    CHECK(c->tls.min_version == TLS1_3_VERSION);
    CHECK_STR(c->tls.ciphers, "ECDHE+AESGCM");
    CHECK_STR(c->tls.ciphersuites, "TLS_AES_128_GCM_SHA256");

    CHECK(c->n_certs == 2);
    CHECK(c->certs[0].names == NULL && c->certs[0].n_names == 0);
    CHECK_STR(c->certs[0].key, "/etc/ssl/example.com/privkey.pem");
    snprintf(want, sizeof want, "%s/x.pem", dir);
    CHECK_STR(c->certs[1].cert, want);
    CHECK(c->certs[1].n_names == 2 && c->certs[1].line == 16);
    CHECK_STR(c->certs[1].names[0], "mail.x.org");
    CHECK_STR(c->certs[1].names[1], "*.x.org");
    CHECK(c->n_cert_dirs == 2);
    CHECK_STR(c->cert_dirs[0], "/etc/letsencrypt/live");
    snprintf(want, sizeof want, "%s/live", dir);
    CHECK_STR(c->cert_dirs[1], want);

    CHECK(c->n_listeners == 7);
    l = &c->listeners[0];
    CHECK_STR(l->name, "imaps");
    CHECK(l->line == 20 && l->proto == CONF_PROTO_IMAP && l->tls == CONF_TLS_IMPLICIT);
    CHECK(l->listen.ss.ss_family == AF_INET && port_of(&l->listen) == 993);
    CHECK_STR(l->listen.text, "0.0.0.0:993");
    CHECK(l->n_backends == 1 && port_of(&l->backends[0]) == 143);
    CHECK(l->handshake_timeout_ms == 10000 && l->connect_timeout_ms == 5000);
    CHECK(l->idle_timeout_ms == 30 * 60 * 1000);
    CHECK(l->proxy_protocol == CONF_PP_NONE && !l->proxy_protocol_in && l->max_connections == 0);
    l = &c->listeners[1];
    CHECK(l->tls == CONF_TLS_STARTTLS && l->starttls == CONF_STARTTLS_OPTIONAL);
    l = &c->listeners[2];
    CHECK(l->listen.ss.ss_family == AF_INET6 && port_of(&l->listen) == 995);
    CHECK(l->proto == CONF_PROTO_POP3 && l->idle_timeout_ms == 10 * 60 * 1000);
    CHECK(c->listeners[3].idle_timeout_ms == 5 * 60 * 1000);
    l = &c->listeners[4];
    CHECK(l->starttls == CONF_STARTTLS_REQUIRED);
    CHECK(l->n_backends == 2 && l->backends[0].ss.ss_family == AF_INET && l->backends[1].ss.ss_family == AF_INET6);
    CHECK_STR(l->backends[1].text, "[::1]:10587");
    l = &c->listeners[5];
    CHECK(l->proto == CONF_PROTO_HTTP && l->proxy_protocol == CONF_PP_V2 && l->proxy_protocol_in);
    CHECK(l->n_trusted == 3 && l->trusted[0].prefix == 8 && l->trusted[1].prefix == 32 && l->trusted[2].prefix == 32);
    CHECK(l->handshake_timeout_ms == 2500 && l->connect_timeout_ms == 1000 && l->idle_timeout_ms == 600000);
    CHECK(l->max_connections == 500);
    l = &c->listeners[6];
    CHECK(l->listen.ss.ss_family == AF_INET6 && l->idle_timeout_ms == 30 * 60 * 1000);

    CHECK(c->n_routes == 2);
    CHECK(c->routes[0].n_names == 2);
    CHECK_STR(c->routes[0].names[0], "mail.big-customer.com");
    CHECK_STR(c->routes[0].names[1], "webmail.big-customer.com");
    CHECK(c->routes[0].n_backends[CONF_PROTO_IMAP] == 1 && c->routes[0].n_backends[CONF_PROTO_SMTP] == 2);
    CHECK(c->routes[0].n_backends[CONF_PROTO_POP3] == 0 && c->routes[0].backends[CONF_PROTO_POP3] == NULL);
    CHECK(port_of(&c->routes[0].backends[CONF_PROTO_HTTP][0]) == 8080);
    CHECK(!c->routes[0].has_proxy_protocol);
    CHECK_STR(c->routes[1].names[0], "*.wild.example");
    CHECK(c->routes[1].has_proxy_protocol && c->routes[1].proxy_protocol == CONF_PP_V1);
    conf_free(c);
}

static void test_defaults(void)
{
    struct conf *c = NULL;
    char *err = NULL;

    CHECK(load(TLS_OK L_OK, &c, &err) == 0);
    if (!c)
        return;
    CHECK(c->workers == 0 && c->user == NULL && c->group == NULL);
    CHECK(c->log_level == CONF_LOG_INFO && c->log_target == CONF_LOG_STDERR);
    CHECK(!c->has_admin && c->drain_timeout_s == 30 && c->max_connections == 0);
    CHECK(c->tls.min_version == TLS1_2_VERSION);
    CHECK(c->tls.ciphers == NULL && c->tls.ciphersuites == NULL && c->tls.ticket_keys == NULL);
    CHECK(c->n_certs == 0 && c->n_cert_dirs == 0 && c->n_routes == 0);
    CHECK(c->n_listeners == 1 && c->listeners[0].tls == CONF_TLS_IMPLICIT);
    conf_free(c);

    /* [::1] and 127.0.0.1 are different sockets; so are different ports on one address. */
    CHECK(load(TLS_OK "listeners = ( " LST("a", "[::1]:993") ", " LST("b", "127.0.0.1:993") ", "
               LST("c", "127.0.0.1:995") " );\nadmin = \"[::1]:9180\";\n", &c, &err) == 0);
    CHECK(err == NULL);
    free(err);
    conf_free(c);
}

static void test_parse_addr(void)
{
    struct conf_addr a;
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&a.ss;

    CHECK(conf_parse_addr("1.2.3.4:993", &a) == 0 && a.len == sizeof(struct sockaddr_in) && port_of(&a) == 993);
    CHECK(conf_parse_addr("[2001:db8::1]:25", &a) == 0 && a.len == sizeof(struct sockaddr_in6) && port_of(&a) == 25);
    CHECK(s6->sin6_addr.s6_addr[0] == 0x20 && s6->sin6_addr.s6_addr[15] == 1);
    CHECK(conf_parse_addr("[::]:65535", &a) == 0 && port_of(&a) == 65535);
    CHECK(conf_parse_addr("1.2.3.4:", &a) == -EINVAL);
    CHECK(conf_parse_addr("1.2.3.4:99999", &a) == -EINVAL);
    CHECK(conf_parse_addr("1.2.3.4:+99", &a) == -EINVAL);
    CHECK(conf_parse_addr("1.2.3:99", &a) == -EINVAL);
    CHECK(conf_parse_addr("[::1]", &a) == -EINVAL);
    CHECK(conf_parse_addr("[::1:99", &a) == -EINVAL);
    CHECK(conf_parse_addr("example.com:25", &a) == -EINVAL);
    CHECK(conf_parse_addr("", &a) == -EINVAL);
    CHECK(conf_parse_addr(NULL, &a) == -EINVAL);
    CHECK(conf_parse_addr("[0000:0000:0000:0000:0000:ffff:255.255.255.255]:65535", &a) == 0);
    CHECK(conf_parse_addr("[0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000]:65535", &a) == -EINVAL);
    CHECK_STR(conf_proto_name(CONF_PROTO_IMAP), "imap");
    CHECK_STR(conf_proto_name(CONF_PROTO_HTTP), "http");
    CHECK_STR(conf_proto_name(CONF_PROTO_COUNT), "unknown");
}

static bool match(const struct conf_cidr *cidr, const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (strchr(ip, ':')) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        inet_pton(AF_INET6, ip, &s6->sin6_addr);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        inet_pton(AF_INET, ip, &s4->sin_addr);
    }
    return conf_cidr_match(cidr, (const struct sockaddr *)&ss);
}

static void test_cidr_match(void)
{
    struct conf *c = NULL;
    char *err = NULL;
    const struct conf_cidr *t;

    CHECK(load(PP_IN("[ \"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\", \"::ffff:198.51.100.0/120\", "
                     "\"0.0.0.0/0\", \"::1\" ]"), &c, &err) == 0);
    if (!c) {
        fprintf(stderr, "%s", err ? err : "");
        free(err);
        return;
    }
    t = c->listeners[0].trusted;
    CHECK(match(&t[0], "10.255.1.2"));
    CHECK(!match(&t[0], "11.0.0.1"));
    CHECK(match(&t[0], "::ffff:10.1.2.3"));          /* IPv4-mapped counts as IPv4 */
    CHECK(!match(&t[0], "2001:db8::1"));
    CHECK(match(&t[1], "2001:db8:ffff::1"));
    CHECK(!match(&t[1], "2001:db9::1"));
    CHECK(!match(&t[1], "10.0.0.1"));
    CHECK(match(&t[2], "192.0.2.7") && !match(&t[2], "192.0.2.8"));
    CHECK(t[3].net.ss_family == AF_INET && t[3].prefix == 24);   /* a mapped block is stored as IPv4 */
    CHECK(match(&t[3], "198.51.100.200") && match(&t[3], "::ffff:198.51.100.1") && !match(&t[3], "198.51.101.1"));
    CHECK(match(&t[4], "203.0.113.9") && !match(&t[4], "::1"));
    CHECK(match(&t[5], "::1") && !match(&t[5], "127.0.0.1"));
    CHECK(!conf_cidr_match(&t[0], NULL) && !conf_cidr_match(NULL, NULL));
    conf_free(c);
}

/* libconfig 1.5 wraps an integer without an L suffix to 32 bits and says nothing: each such
 * literal is refused where it is written, and a written-out 64-bit value is range-checked. */
static void test_integer_literals(void)
{
    struct conf *c = NULL;
    char *err = NULL;

#define WRAP(v, as) v " does not fit in 32 bits (libconfig would read it as " as "): " \
        "write it with an L suffix if you mean it"
    EXPECT_ERR(TLS_OK L_OK "drain_timeout = 4294967298;\n", "3: " WRAP("4294967298", "2"));
    EXPECT_ERR(TLS_OK L_OK "max_connections = 4294967296;\n", "3: " WRAP("4294967296", "0"));
    EXPECT_ERR(TLS_OK "listeners = ( { name = \"a\"; listen = \"0.0.0.0:993\"; protocol = \"imap\";\n"
               "  backend = \"127.0.0.1:143\"; idle_timeout = 4294967298; } );\n",
               "3: " WRAP("4294967298", "2"));
    EXPECT_ERR(TLS_OK L_OK "workers = 2147483648;\n", "3: " WRAP("2147483648", "-2147483648"));
    EXPECT_ERR(TLS_OK L_OK "workers = -2147483649;\n", "3: " WRAP("-2147483649", "2147483647"));
    EXPECT_ERR(TLS_OK L_OK "workers = 0x100000002;\n", "3: " WRAP("0x100000002", "2"));
    EXPECT_ERR(TLS_OK L_OK "workers = 0xFFFFFFFF;\n", "3: " WRAP("0xFFFFFFFF", "-1"));
    EXPECT_ERR(TLS_OK L_OK "workers = 99999999999999999999999;\n",
               "3: " WRAP("99999999999999999999999", "-1"));
    EXPECT_ERR(TLS_OK L_OK "/* a comment\n  over lines */ x = [ 1,\n 2, 3000000000 ];\n",
               "5: " WRAP("3000000000", "-1294967296"));
    /* Spelt out as 64-bit, the value arrives intact and meets the setting's own range. */
    EXPECT_ERR(TLS_OK L_OK "drain_timeout = 4294967298L;\n",
               "3: drain_timeout: must be from 0 to 4294967, not 4294967298");
    EXPECT_ERR(TLS_OK L_OK "max_connections = 4294967296L;\n",
               "3: max_connections: must be from 0 to 4294967295, not 4294967296");
    /* In an included file, the message names that file. */
    write_file("nested.cfg", "max_connections = 1;\n\nmax_connections_per_client = 5000000000;\n");
    CHECK(load(TLS_OK L_OK "@include \"nested.cfg\"\n", &c, &err) == -EINVAL);
    CHECK(err && strstr(err, "nested.cfg:3: " WRAP("5000000000", "705032704") "\n"));
    free(err);
    err = NULL;
#undef WRAP

    /* Digits that are not integers: strings, comments, names, floats, in-range values. */
    CHECK(load(TLS_OK L_OK "# 99999999999 in a comment\n// 99999999999\n/* 99999999999 */\n"
               "user = \"u99999999999\";\ngroup = \"g\\\"99999999999\";\n"
               "drain_timeout = 4294967L;\nmax_connections = 3000000000L;\n"
               "max_connections_per_client = 0x7FFFFFFF;\nworkers = +2;\n", &c, &err) == 0);
    CHECK(err == NULL);
    CHECK(c && c->max_connections == 3000000000u && c->drain_timeout_s == 4294967u &&
          c->max_connections_per_client == 0x7FFFFFFFu && c->workers == 2);
    conf_free(c);
    free(err);

    struct conf_ctx ctx = { .path = "x.cfg" };
    static const char ok[] = "x-99999999999 = 1.5e99999; y = .99999999999; z = 9999999999.5;\n"
                             "w = [ -2147483648, 2147483647, 0x7fffffff, 1e10, 5., 7L, 99999999999999L ];\n"
                             "v = \"multi\nline 99999999999\"; /* 99999999999\n */ u = 99999999999e0;";
    conf_check_int_literals(&ctx, "x.cfg", ok, sizeof ok - 1);
    CHECK(ctx.n_msgs == 0);
    static const char bad[] = "a = \"x\ny\"; /*\n*/ b = 99999999999;";
    conf_check_int_literals(&ctx, "x.cfg", bad, sizeof bad - 1);
    char *msgs = conf_errors_take(&ctx);
    CHECK_STR(msgs, "x.cfg:3: 99999999999 does not fit in 32 bits (libconfig would read it as "
                    "1215752191): write it with an L suffix if you mean it\n");
    free(msgs);
    conf_errors_free(&ctx);
}

/* A backend that leads back to the listener it serves sends every connection in again. */
static void test_backend_loops(void)
{
    struct conf *c = NULL;
    char *err = NULL;

#define SELF(addr, name, line) addr " is the address of listener " name " itself (line " line "): " \
        "connections would loop"
    EXPECT_ERR(TLS_OK "listeners = ( { name = \"a\"; listen = \"127.0.0.1:993\"; protocol = \"imap\";\n"
               "  backend = \"127.0.0.1:993\"; } );\n",
               "3: listeners[0].backend: " SELF("127.0.0.1:993", "a", "2"));
    EXPECT_ERR(TLS_OK "listeners = ( { name = \"a\"; listen = \"0.0.0.0:143\"; protocol = \"imap\";\n"
               "  tls = \"starttls\"; backend = [ \"10.0.0.9:143\",\n \"127.0.0.2:143\" ]; } );\n",
               "4: listeners[0].backend[1]: " SELF("127.0.0.2:143", "a", "2"));
    EXPECT_ERR(TLS_OK "listeners = ( { name = \"a\"; listen = \"[::]:993\"; protocol = \"imap\";\n"
               "  backend = \"[::1]:993\"; } );\n",
               "3: listeners[0].backend: " SELF("[::1]:993", "a", "2"));
    EXPECT_ERR(TLS_OK "listeners = ( { name = \"a\"; listen = \"[::]:993\"; protocol = \"imap\";\n"
               "  backend = \"127.0.0.1:993\"; } );\n",
               "3: listeners[0].backend: " SELF("127.0.0.1:993", "a", "2"));
    /* Through another listener, and back. */
    EXPECT_ERR(TLS_OK "listeners = (\n"
               "  { name = \"a\"; listen = \"0.0.0.0:993\"; protocol = \"imap\"; backend = \"127.0.0.1:143\"; },\n"
               "  { name = \"b\"; listen = \"127.0.0.1:143\"; protocol = \"imap\"; backend = \"127.0.0.1:993\"; } );\n",
               "3: listeners[0].backend: 127.0.0.1:143 is listener b (line 4), which leads back to "
               "listener a: connections would loop\n%s:4: listeners[1].backend: 127.0.0.1:993 is "
               "listener a (line 3), which leads back to listener b: connections would loop", cfg);
    /* A route applies to every listener of its protocol. */
    EXPECT_ERR(TLS_OK L_OK "routes = ( { names = [ \"mail.x.org\" ];\n  imap = \"127.0.0.1:993\"; } );\n",
               "4: routes[0].imap: " SELF("127.0.0.1:993", "a", "2"));
#undef SELF
    /* A chain that ends (implicit TLS in front of a STARTTLS listener, as in the example config),
     * the same port on another host, another loopback address than a specific listen address,
     * and a route for another protocol are not loops. */
    CHECK(load(TLS_OK "listeners = ( { name = \"a\"; listen = \"0.0.0.0:993\"; protocol = \"imap\";\n"
               "  backend = \"127.0.0.1:143\"; },\n"
               "  { name = \"b\"; listen = \"0.0.0.0:143\"; protocol = \"imap\"; tls = \"starttls\"; backend = \"127.0.0.1:1143\"; },\n"
               "  { name = \"c\"; listen = \"0.0.0.0:110\"; protocol = \"pop3\"; backend = \"10.0.0.5:110\"; },\n"
               "  { name = \"d\"; listen = \"127.0.0.1:995\"; protocol = \"pop3\"; backend = \"127.0.0.2:995\"; } );\n"
               "routes = ( { names = [ \"mail.x.org\" ]; smtp = \"127.0.0.1:993\"; } );\n",
               &c, &err) == 0);
    CHECK(err == NULL);
    conf_free(c);
    free(err);
}

/* The customer domains: normalised, unique, no wildcards; an empty list is a host with none. */
static void test_domains(void)
{
    struct conf *c = NULL;
    char *err = NULL;

    CHECK(load(TLS_OK L_OK "domains = [ \"Alpha.Example.\", \"beta.example\" ];\n", &c, &err) == 0);
    CHECK(c && c->n_domains == 2);
    if (c && c->n_domains == 2) {
        CHECK_STR(c->domains[0], "alpha.example");
        CHECK_STR(c->domains[1], "beta.example");
    }
    conf_free(c);
    c = NULL;
    CHECK(load(TLS_OK L_OK "domains = [ ];\n", &c, &err) == 0);
    CHECK(c && c->n_domains == 0);
    conf_free(c);
    c = NULL;
    write_file("nested.cfg", "domains = [\n  \"a.example\",\n  \"b.example\"\n];\n");
    CHECK(load(TLS_OK L_OK "@include \"nested.cfg\"\n", &c, &err) == 0);
    CHECK(c && c->n_domains == 2);
    conf_free(c);
    c = NULL;
    free(err);
    EXPECT_ERR(TLS_OK L_OK "domains = [ \"a.example\",\n  \"b.example\",\n  \"A.example.\" ];\n",
               "5: domains[2]: \"a.example\" is already listed at line 3");
    EXPECT_ERR(TLS_OK L_OK "domains = [ \"*.example\" ];\n",
               "3: domains[0]: \"*.example\": a domain, not a wildcard");
    EXPECT_ERR(TLS_OK L_OK "domains = [ \"a..example\" ];\n",
               "3: domains[0]: \"a..example\": empty label in host name");
    EXPECT_ERR(TLS_OK L_OK "domains = \"a.example\";\n",
               "3: domains: expected a list of host names");
}

#define SETUP_OK "autoconfig = {\n  display_name = \"Mail for %d (100%%)\";\n" \
    "  imap = { host = \"Mail.%d.\"; port = 993; socket = \"SSL\"; };\n" \
    "  smtp = { host = \"smtp.%d\"; socket = \"STARTTLS\"; };\n};\n" \
    "mta_sts = { mode = \"enforce\"; mx = [ \"mail.%d\", \"*.mx.%d\" ]; max_age = 86400; };\n"

static void test_client_setup(void)
{
    struct conf *c = NULL;
    char *err = NULL;

    CHECK(load(TLS_OK L_OK SETUP_OK, &c, &err) == 0);
    CHECK(c && c->has_autoconfig && c->has_mta_sts);
    if (c && c->has_autoconfig && c->has_mta_sts) {
        CHECK_STR(c->autoconfig.display_name, "Mail for %d (100%%)");
        CHECK_STR(c->autoconfig.imap.host, "mail.%d");
        CHECK(c->autoconfig.imap.port == 993 && c->autoconfig.imap.socket == CONF_SOCKET_SSL);
        CHECK(c->autoconfig.pop3.host == NULL);
        CHECK_STR(c->autoconfig.smtp.host, "smtp.%d");
        CHECK(c->autoconfig.smtp.port == 587 && c->autoconfig.smtp.socket == CONF_SOCKET_STARTTLS);
        CHECK(c->mta_sts.mode == CONF_STS_ENFORCE && c->mta_sts.n_mx == 2 &&
              c->mta_sts.max_age == 86400);
        CHECK_STR(c->mta_sts.mx[1], "*.mx.%d");
    }
    conf_free(c);
    c = NULL;
    CHECK(load(TLS_OK L_OK "mta_sts = { mode = \"none\"; };\n", &c, &err) == 0);
    CHECK(c && !c->has_autoconfig && c->has_mta_sts && c->mta_sts.mode == CONF_STS_NONE &&
          c->mta_sts.n_mx == 0 && c->mta_sts.max_age == 604800);
    conf_free(c);
    c = NULL;
    CHECK(load(TLS_OK L_OK "", &c, &err) == 0);
    CHECK(c && !c->has_autoconfig && !c->has_mta_sts);
    conf_free(c);
    free(err);

    EXPECT_ERR(TLS_OK L_OK "mta_sts = { mode = \"enforce\"; mx = [ \"mail.%d\" ];\n"
               "  max_age = 31557601; };\n",
               "4: mta_sts.max_age: must be from 0 to 31557600, not 31557601");
    EXPECT_ERR(TLS_OK L_OK "mta_sts = { mode = \"enforce\"; };\n",
               "3: mta_sts: missing required key \"mx\" (mode enforce and testing name the MX hosts)");
    EXPECT_ERR(TLS_OK L_OK "mta_sts = { mode = \"strict\"; mx = [ \"mail.%d\" ]; };\n",
               "3: mta_sts.mode: \"strict\" is not one of \"enforce\", \"testing\", \"none\"");
    EXPECT_ERR(TLS_OK L_OK "mta_sts = { mode = \"testing\";\n  mx = [ \"mail.%s\" ]; };\n",
               "4: mta_sts.mx[0]: \"mail.%%s\": only %%d (the domain) may follow %% in a host name");
    EXPECT_ERR(TLS_OK L_OK "autoconfig = {\n  imap = { host = \"*.%d\"; };\n"
               "  smtp = { host = \"mail.%d\"; port = 0; };\n};\n",
               "4: autoconfig.imap.host: \"*.%%d\": a wildcard is not a host a client can connect to\n"
               "%s:5: autoconfig.smtp.port: must be 1 to 65535", cfg);
    EXPECT_ERR(TLS_OK L_OK "autoconfig = {\n  imap = { host = \"mail..%d\"; socket = \"TLS\"; };\n};\n",
               "3: autoconfig: missing required key \"smtp\"\n"
               "%s:4: autoconfig.imap.socket: \"TLS\" is not one of \"SSL\", \"STARTTLS\"\n"
               "%s:4: autoconfig.imap.host: \"mail..%%d\": empty label in host name", cfg, cfg);
    EXPECT_ERR(TLS_OK L_OK "autoconfig = {\n  smtp = { host = \"mail.%d\"; };\n};\n",
               "3: autoconfig: autoconfig needs \"imap\" or \"pop3\" (or both)");
    EXPECT_ERR(TLS_OK L_OK "autoconfig = { display_name = \"50% off\";\n"
               "  pop3 = { host = \"mail.%d\"; }; smtp = { host = \"mail.%d\"; }; };\n",
               "3: autoconfig.display_name: \"50%% off\": write %%d for the domain and %%%% for a percent sign");
    EXPECT_ERR(TLS_OK L_OK "autoconfig = { pop3 = { host = \"mail.%d\"; user = 1; };\n"
               "  smtp = { host = \"mail.%d\"; }; };\n",
               "3: autoconfig.pop3.user: unknown key");
}

static void test_plain_http_listener(void)
{
    struct conf *c = NULL;
    char *err = NULL;

    CHECK(load(TLS_OK "listeners = ( { name = \"http\"; listen = \"0.0.0.0:80\"; protocol = \"http\";"
               " tls = \"none\"; } );\n", &c, &err) == 0);
    CHECK(c && c->n_listeners == 1 && c->listeners[0].tls == CONF_TLS_NONE &&
          c->listeners[0].n_backends == 0);
    conf_free(c);
    free(err);
    EXPECT_ERR(TLS_OK "listeners = ( { name = \"p\"; listen = \"0.0.0.0:110\"; protocol = \"pop3\";\n"
               " tls = \"none\"; backend = \"127.0.0.1:1110\"; } );\n",
               "3: listeners[0].tls: tls = \"none\" is only for protocol = \"http\" (the plain HTTP listener)");
    EXPECT_ERR(TLS_OK "listeners = ( { name = \"h\"; listen = \"0.0.0.0:443\"; protocol = \"http\"; } );\n",
               "2: listeners[0]: missing required key \"backend\"");
}

/* acme = { }: SPEC.md's example loads as written; defaults; each mistake at its line. */
#define ACME_OK "acme = {\n  directory = \"https://ca.example/dir\";\n  storage = \"acme\";\n" \
    "  names = [ \"mail.%d\", \"Webmail.%d\", \"%d\" ];\n"
static void test_acme(void)
{
    struct conf *c = NULL;
    char *err = NULL, name[64];

    CHECK(load(TLS_OK L_OK, &c, &err) == 0);
    CHECK(c && !c->acme.enabled);
    conf_free(c);
    c = NULL;
    CHECK(load(TLS_OK L_OK ACME_OK "};\n", &c, &err) == 0);
    CHECK(c && c->acme.enabled);
    if (c && c->acme.enabled) {
        char want[PATH_MAX + 8];
        snprintf(want, sizeof want, "%s/acme", dir);
        CHECK_STR(c->acme.directory, "https://ca.example/dir");
        CHECK_STR(c->acme.storage, want);
        CHECK(c->acme.contact == NULL && c->acme.ca_file == NULL);
        CHECK(c->acme.n_names == 3);
        CHECK_STR(c->acme.names[1], "webmail.%d");
        CHECK(c->acme.n_challenges == 2 && c->acme.challenges[0] == CONF_ACME_TLS_ALPN_01 &&
              c->acme.challenges[1] == CONF_ACME_HTTP_01);
        CHECK(c->acme.key_type == CONF_ACME_KEY_ECDSA);
        CHECK(c->acme.pace_orders == 300 && c->acme.pace_window_s == 10800);
        CHECK(c->acme.renew_before_days == 0);
        CHECK(c->acme.backoff_min_s == 60 && c->acme.backoff_max_s == 86400);
        CHECK(c->acme.order_timeout_s == 120);
        CHECK(conf_acme_name(c->acme.names[0], "alpha.example", name, sizeof name) == 18);
        CHECK_STR(name, "mail.alpha.example");
        CHECK(conf_acme_name(c->acme.names[2], "alpha.example", name, sizeof name) == 13);
        CHECK(conf_acme_name(c->acme.names[0], "alpha.example", name, 18) == -ENAMETOOLONG);
    }
    conf_free(c);
    c = NULL;
    CHECK(load(TLS_OK L_OK ACME_OK "  contact = \"mailto:h@example.net\"; ca_file = \"/etc/ca.pem\";\n"
               "  challenges = [ \"http-01\" ]; key_type = \"rsa\"; pace_orders = 10;\n"
               "  pace_window = 60; renew_before_days = 3000; backoff_min = 1; backoff_max = 5;\n"
               "  order_timeout = 30;\n};\n",
               &c, &err) == 0);
    if (c) {
        CHECK_STR(c->acme.contact, "mailto:h@example.net");
        CHECK_STR(c->acme.ca_file, "/etc/ca.pem");
        CHECK(c->acme.n_challenges == 1 && c->acme.challenges[0] == CONF_ACME_HTTP_01);
        CHECK(c->acme.key_type == CONF_ACME_KEY_RSA);
        CHECK(c->acme.pace_orders == 10 && c->acme.pace_window_s == 60);
        CHECK(c->acme.renew_before_days == 3000);
        CHECK(c->acme.backoff_min_s == 1 && c->acme.backoff_max_s == 5);
        CHECK(c->acme.order_timeout_s == 30);
    }
    conf_free(c);
    free(err);

    EXPECT_ERR(TLS_OK L_OK "acme = {\n  storage = \"/a\"; names = [ \"mail.%d\" ];\n};\n",
               "3: acme: missing required key \"directory\"");
    EXPECT_ERR(TLS_OK L_OK "acme = {\n  directory = \"http://ca/dir\";\n  storage = \"/a\"; names = [ \"mail.%d\" ];\n};\n",
               "4: acme.directory: expected an https:// URL of the CA's directory");
    EXPECT_ERR(TLS_OK L_OK "acme = {\n  directory = \"https://ca/dir\"; names = [ \"mail.%d\" ];\n};\n",
               "3: acme: missing required key \"storage\"");
    EXPECT_ERR(TLS_OK L_OK "acme = {\n  directory = \"https://ca/dir\"; storage = \"/a\";\n};\n",
               "3: acme: missing required key \"names\" (such as [ \"mail.%%d\", \"webmail.%%d\" ])");
    EXPECT_ERR(TLS_OK L_OK ACME_OK "  challenges = [ \"dns-01\" ];\n};\n",
               "7: acme.challenges[0]: \"dns-01\": expected \"tls-alpn-01\" or \"http-01\"");
    EXPECT_ERR(TLS_OK L_OK ACME_OK "  challenges = [ \"http-01\",\n \"http-01\" ];\n};\n",
               "8: acme.challenges[1]: \"http-01\" is already listed");
    EXPECT_ERR(TLS_OK L_OK ACME_OK "  challenges = [ ];\n};\n", "7: acme.challenges: must not be empty");
    EXPECT_ERR(TLS_OK L_OK "acme = {\n  directory = \"https://ca/dir\"; storage = \"/a\";\n"
               "  names = [ \"mail.example.com\" ];\n};\n",
               "5: acme.names[0]: \"mail.example.com\": needs exactly one %%d, at the end (\"mail.%%d\")");
    EXPECT_ERR(TLS_OK L_OK "acme = {\n  directory = \"https://ca/dir\"; storage = \"/a\";\n"
               "  names = [ \"mail.%d.%d\" ];\n};\n",
               "5: acme.names[0]: \"mail.%%d.%%d\": needs exactly one %%d, at the end (\"mail.%%d\")");
    EXPECT_ERR(TLS_OK L_OK "acme = {\n  directory = \"https://ca/dir\"; storage = \"/a\";\n"
               "  names = [ \"mail%d\" ];\n};\n",
               "5: acme.names[0]: \"mail%%d\": needs exactly one %%d, at the end (\"mail.%%d\")");
    EXPECT_ERR(TLS_OK L_OK "acme = {\n  directory = \"https://ca/dir\"; storage = \"/a\";\n"
               "  names = [ \"*.%d\" ];\n};\n",
               "5: acme.names[0]: \"*.%%d\": wildcards need DNS-01, which mailsnid does not answer");
    EXPECT_ERR(TLS_OK L_OK "acme = {\n  directory = \"https://ca/dir\"; storage = \"/a\";\n"
               "  names = [ \"a..%d\" ];\n};\n",
               "5: acme.names[0]: \"a..%%d\": empty label in host name");
    EXPECT_ERR(TLS_OK L_OK "acme = {\n  directory = \"https://ca/dir\"; storage = \"/a\";\n"
               "  names = [ \"mail.%d\",\n \"MAIL.%d\" ];\n};\n",
               "6: acme.names[1]: \"MAIL.%%d\" is already listed");
    EXPECT_ERR(TLS_OK L_OK ACME_OK "  key_type = \"dsa\";\n};\n",
               "7: acme.key_type: \"dsa\" is not one of \"ecdsa\", \"rsa\"");
    EXPECT_ERR(TLS_OK L_OK ACME_OK "  pace_orders = 0;\n};\n", "7: acme.pace_orders: must be at least 1");
    EXPECT_ERR(TLS_OK L_OK ACME_OK "  pace_window = 0;\n};\n", "7: acme.pace_window: must be at least 1 second");
    EXPECT_ERR(TLS_OK L_OK ACME_OK "  backoff_min = 10; backoff_max = 5;\n};\n",
               "3: acme: backoff_max (5) is less than backoff_min (10)");
    EXPECT_ERR(TLS_OK L_OK ACME_OK "  order_timeout = 0;\n};\n",
               "7: acme.order_timeout: must be at least 1 second");
    EXPECT_ERR(TLS_OK L_OK ACME_OK "  renew = 1;\n};\n", "7: acme.renew: unknown key");
}

static void test_drain_grace(void)
{
    struct conf *c = NULL;
    char *err = NULL;
    CHECK(load(TLS_OK L_OK "drain_grace = 2.5;\n", &c, &err) == 0);
    CHECK(c && c->drain_grace_ms == 2500);
    conf_free(c);
    c = NULL;
    CHECK(load(TLS_OK L_OK "drain_grace = 0;\n", &c, &err) == 0);
    CHECK(c && c->drain_grace_ms == 0);
    conf_free(c);
    c = NULL;
    CHECK(load(TLS_OK L_OK "drain_grace = 0.0;\n", &c, &err) == 0);
    CHECK(c && c->drain_grace_ms == 0);
    conf_free(c);
    c = NULL;
    CHECK(load(TLS_OK L_OK "", &c, &err) == 0);
    CHECK(c && c->drain_grace_ms == 0);
    conf_free(c);
    free(err);
    EXPECT_ERR(TLS_OK L_OK "drain_grace = -1;\n",
               "3: drain_grace: must be more than 0 and at most 4294967 seconds");
}

int main(void)
{
    char tmpl[] = "/tmp/test_conf_XXXXXX";
    const char *files[] = { "mailsnid.cfg", "bad.cfg", "types.cfg", "routes.cfg", "nested.cfg" };

    if (!mkdtemp(tmpl) || !realpath(tmpl, dir)) {
        perror("mkdtemp");
        return 2;
    }
    snprintf(cfg, sizeof cfg, "%s/mailsnid.cfg", dir);

    test_syntax_and_files();
    test_unknown_keys();
    test_types_and_enums();
    test_addresses();
    test_cidrs();
    test_between_listeners();
    test_missing();
    test_tls_modes();
    test_timeouts();
    test_names();
    test_includes();
    test_more_errors();
    test_api_edges();
    test_many_errors();
    test_full_config();
    test_defaults();
    test_parse_addr();
    test_cidr_match();
    test_integer_literals();
    test_backend_loops();
    test_domains();
    test_drain_grace();
    test_client_setup();
    test_plain_http_listener();
    test_acme();

    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char p[PATH_MAX + 64];
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
    return check_report("test_conf");
}
