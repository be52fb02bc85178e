/* Unit tests for certstore/: name normalisation, the SNI parser, lookup order, loading and its
 * errors, certbot's cert_dirs layout, snapshot sharing across reloads, real in-memory TLS
 * handshakes through the ClientHello callback, and (printed, not asserted) memory per pair.
 * Every certificate is generated here (certgen.h) in a temporary directory. */
#include <errno.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#ifdef MAILSNID_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif
#if defined(__SANITIZE_ADDRESS__)
#define CS_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CS_TEST_ASAN 1
#endif
#endif
#ifdef CS_TEST_ASAN
/* From <sanitizer/allocator_interface.h>, which GCC does not install. */
size_t __sanitizer_get_current_allocated_bytes(void);
#endif

#include "certstore/certstore.h"
#include "certstore/internal.h"
#include "conf/conf.h"
#include "tests/unit/certgen.h"
#include "tests/unit/check.h"

/* Test paths live under a short mkdtemp() directory; GCC cannot know that and warns about every
 * snprintf of one path into another. Truncation would only make a test fail, never pass. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wformat-truncation"
#endif

static char tmp[64];
static time_t now;
static EVP_PKEY *root_key, *int_key;
static X509 *root, *inter;

/* A generated pair on disk. */
struct tp {
    char crt[256], key[256];
};

static void pathf(char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void pathf(char *out, const char *fmt, ...)
{
    char rel[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rel, sizeof(rel), fmt, ap);
    va_end(ap);
    snprintf(out, 256, "%s/%s", tmp, rel);
}

/* Writes a leaf (signed by the test intermediate, chain = the intermediate) and its key. */
static void gen_files(const char *crt, const char *key, bool rsa, const char *cn,
                      const char *const *sans, size_t n, time_t nb, time_t na)
{
    EVP_PKEY *k = cg_key(rsa);
    X509 *x = cg_cert(k, cn, sans, n, nb, na, inter, int_key, false);
    if (!k || !x || cg_write_chain(crt, x, &inter, 1) < 0 || cg_write_key(key, k) < 0) {
        fprintf(stderr, "cannot generate %s\n", crt);
        exit(2);
    }
    X509_free(x);
    EVP_PKEY_free(k);
}

static void gen(struct tp *p, const char *base, bool rsa, const char *cn,
                const char *const *sans, size_t n, time_t nb, time_t na)
{
    pathf(p->crt, "%s.pem", base);
    pathf(p->key, "%s.key", base);
    gen_files(p->crt, p->key, rsa, cn, sans, n, nb, na);
}

static void setup_ca(void)
{
    root_key = cg_key(false);
    int_key = cg_key(false);
    root = cg_cert(root_key, "mailsnid test root", NULL, 0, now - 1000 * CG_DAY,
                   now + 3000 * CG_DAY, NULL, NULL, true);
    inter = cg_cert(int_key, "mailsnid test intermediate", NULL, 0, now - 1000 * CG_DAY,
                    now + 2000 * CG_DAY, root, root_key, true);
}

/* ---- names ---- */

static void norm_ok(const char *in, size_t len, bool wild, const char *want)
{
    char out[CS_NAME_MAX + 1];
    int n = cs_name_normalize(in, len, wild, out);
    CHECK(n == (int)strlen(want));
    if (n >= 0)
        CHECK_STR(out, want);
}

static void norm_bad(const char *in, size_t len, bool wild)
{
    char out[CS_NAME_MAX + 1];
    int n = cs_name_normalize(in, len, wild, out);
    if (n != -EINVAL)
        fprintf(stderr, "accepted \"%.*s\"\n", (int)len, in);
    CHECK(n == -EINVAL);
}

#define OK(s, w, want) norm_ok(s, strlen(s), w, want)
#define BAD(s, w) norm_bad(s, strlen(s), w)

static void test_names(void)
{
    char l63[64], l64[65], n253[300], n254[300];

    OK("Mail.Example.COM", false, "mail.example.com");
    OK("mail.example.com.", false, "mail.example.com");
    OK("localhost", false, "localhost");
    OK("_dmarc.x-y.org", false, "_dmarc.x-y.org");
    OK("xn--bcher-kva.example", false, "xn--bcher-kva.example");
    BAD("mail.example.com..", false);
    BAD("", false);
    BAD(".", false);
    BAD("..", false);
    BAD(".a.com", false);
    BAD("a..com", false);
    BAD("mail example.com", false);
    BAD("m\xc3\xa4il.de", false);
    BAD("a/b.com", false);
    BAD("a:443", false);
    norm_bad("a\0b.com", 7, false);
    norm_bad(NULL, 0, false);

    memset(l63, 'a', 63);
    l63[63] = '\0';
    memset(l64, 'b', 64);
    l64[64] = '\0';
    snprintf(n253, sizeof(n253), "%s.x", l63);
    OK(n253, false, n253);
    snprintf(n253, sizeof(n253), "%s.x", l64);
    BAD(n253, false);

    /* 63+1+63+1+63+1+61 = 253: the longest name; one more byte, with or without a trailing dot,
     * is too long, while 253 plus the trailing dot is fine. */
    snprintf(n253, sizeof(n253), "%s.%s.%s.%.61s", l63, l63, l63, l63);
    CHECK(strlen(n253) == 253);
    OK(n253, false, n253);
    snprintf(n254, sizeof(n254), "%s.", n253);
    OK(n254, false, n253);
    snprintf(n254, sizeof(n254), "%s.%s.%s.%.62s", l63, l63, l63, l63);
    BAD(n254, false);
    char n255[300];
    snprintf(n255, sizeof(n255), "%s.", n254);
    BAD(n255, false);
    snprintf(n255, sizeof(n255), "%s.%s.%s.%.63s", l63, l63, l63, l63);
    BAD(n255, false);

    OK("*.Example.com", true, "*.example.com");
    OK("*.com.", true, "*.com");
    BAD("*.example.com", false);
    BAD("*example.com", true);
    BAD("a.*.com", true);
    BAD("*.*.com", true);
    BAD("**.com", true);
    BAD("*", true);
    BAD("*.", true);
    BAD("*..", true);
    BAD("f*.example.com", true);
}

/* ---- the server_name extension parser ---- */

static void test_sni_parse(void)
{
    static const unsigned char good[] = { 0x00, 0x0a, 0x00, 0x00, 0x07, 'a', '.', 'b', '.', 'c',
                                          'o', 'm' };
    static const unsigned char other_first[] = { 0x00, 0x0a, 0x01, 0x00, 0x01, 'x', 0x00, 0x00,
                                                 0x02, 'h', 'i' };
    static const unsigned char only_other[] = { 0x00, 0x04, 0x05, 0x00, 0x01, 'x' };
    static const unsigned char long_name[] = { 0x00, 0x05, 0x00, 0x00, 0x07, 'a', 'b' };
    static const unsigned char empty_list[] = { 0x00, 0x00 };
    static const unsigned char trailing[] = { 0x00, 0x05, 0x00, 0x00, 0x01, 'a', 0x00 };
    const unsigned char *name;
    size_t len;

    CHECK(cs_sni_parse(good, sizeof(good), &name, &len) == 0);
    CHECK(name == good + 5 && len == 7);
    /* Every truncation of a valid extension is malformed, never a shorter name. */
    for (size_t cut = 0; cut < sizeof(good); cut++)
        CHECK(cs_sni_parse(good, cut, &name, &len) == -EINVAL);
    CHECK(cs_sni_parse(other_first, sizeof(other_first) - 1, &name, &len) == -EINVAL);
    static const unsigned char other_ok[] = { 0x00, 0x08, 0x01, 0x00, 0x01, 'x', 0x00, 0x00, 0x01,
                                              'h' };
    CHECK(cs_sni_parse(other_ok, sizeof(other_ok), &name, &len) == 0);
    CHECK(name == other_ok + 9 && len == 1);
    CHECK(cs_sni_parse(only_other, sizeof(only_other), &name, &len) == 0);
    CHECK(name == NULL && len == 0);
    CHECK(cs_sni_parse(long_name, sizeof(long_name), &name, &len) == -EINVAL);
    CHECK(cs_sni_parse(empty_list, sizeof(empty_list), &name, &len) == -EINVAL);
    CHECK(cs_sni_parse(trailing, sizeof(trailing), &name, &len) == -EINVAL);
}

/* ---- the main store used by the lookup, print and handshake tests ---- */

static struct tp def, mail_ec, mail_rsa, wild, old, gone, future, cnonly, alias, two30, two60,
    two_future, mixed_ec, mixed_rsa;

static void gen_main(void)
{
    const char *s_def[] = { "default.test" };
    const char *s_mail[] = { "mail.example.com", "WebMail.example.com." };
    const char *s_mail1[] = { "mail.example.com" };
    const char *s_wild[] = { "*.example.com" };
    const char *s_old[] = { "old.example.com" };
    const char *s_gone[] = { "gone.other.org" };
    const char *s_future[] = { "future.other.org" };
    const char *s_alias[] = { "x.org" };
    const char *s_two[] = { "two.example.net" };
    const char *s_mixed[] = { "mixed.example.net" };

    gen(&def, "default", false, NULL, s_def, 1, now - CG_DAY, now + 90 * CG_DAY);
    gen(&mail_ec, "mail_ec", false, NULL, s_mail, 2, now - CG_DAY, now + 80 * CG_DAY);
    gen(&mail_rsa, "mail_rsa", true, NULL, s_mail1, 1, now - CG_DAY, now + 80 * CG_DAY);
    gen(&wild, "wild", false, NULL, s_wild, 1, now - CG_DAY, now + 70 * CG_DAY);
    gen(&old, "old", false, NULL, s_old, 1, now - 100 * CG_DAY, now - 10 * CG_DAY);
    gen(&gone, "gone", false, NULL, s_gone, 1, now - 100 * CG_DAY, now - 5 * CG_DAY);
    gen(&future, "future", false, NULL, s_future, 1, now + 10 * CG_DAY, now + 100 * CG_DAY);
    gen(&cnonly, "cnonly", false, "CN.Only.org", NULL, 0, now - CG_DAY, now + 60 * CG_DAY);
    gen(&alias, "alias", false, NULL, s_alias, 1, now - CG_DAY, now + 60 * CG_DAY);
    gen(&two30, "two30", false, NULL, s_two, 1, now - CG_DAY, now + 30 * CG_DAY);
    gen(&two60, "two60", false, NULL, s_two, 1, now - CG_DAY, now + 60 * CG_DAY);
    gen(&two_future, "two_future", false, NULL, s_two, 1, now + 5 * CG_DAY, now + 400 * CG_DAY);
    gen(&mixed_ec, "mixed_ec", false, NULL, s_mixed, 1, now - CG_DAY, now + 60 * CG_DAY);
    gen(&mixed_rsa, "mixed_rsa", true, NULL, s_mixed, 1, now - 100 * CG_DAY, now - CG_DAY);
}

static char *alias_names[] = { "Alias.X.org.", "*.alias.x.org" };

static struct conf_cert main_certs[] = {
    { .line = 10 }, { .line = 11 }, { .line = 12 }, { .line = 13 }, { .line = 14 },
    { .line = 15 }, { .line = 16 }, { .line = 17 }, { .line = 18 }, { .line = 19 },
    { .line = 20 }, { .line = 21 }, { .line = 22 },
};

static void main_conf(struct conf *c)
{
    struct tp *ps[] = { &mail_ec, &mail_rsa, &wild, &old, &gone, &future, &cnonly, &alias,
                        &two30, &two60, &two_future, &mixed_ec, &mixed_rsa };
    memset(c, 0, sizeof(*c));
    c->path = "test.conf";
    c->tls.default_cert = def.crt;
    c->tls.default_key = def.key;
    for (size_t i = 0; i < sizeof(ps) / sizeof(ps[0]); i++) {
        main_certs[i].cert = ps[i]->crt;
        main_certs[i].key = ps[i]->key;
    }
    main_certs[7].names = alias_names;
    main_certs[7].n_names = 2;
    c->certs = main_certs;
    c->n_certs = sizeof(ps) / sizeof(ps[0]);
}

static struct cs_store *build_ok(const struct conf *c, struct cs_store *prev, char **warnings)
{
    struct cs_store *s = NULL;
    char *errors = NULL, *warn = NULL;
    int rc = cs_store_build(c, prev, &s, &errors, &warn);
    CHECK(rc == 0);
    CHECK(s != NULL);
    if (errors)
        fprintf(stderr, "unexpected errors:\n%s", errors);
    CHECK(errors == NULL);
    free(errors);
    if (warnings)
        *warnings = warn;
    else
        free(warn);
    return s;
}

static const char *path_or_null(const struct cs_pair *p)
{
    return p ? cs_pair_cert_path(p) : NULL;
}

/* Looks SNI up and compares the kind and the ECDSA / RSA pairs' files (NULL = none). */
static bool expect_at(const struct cs_store *s, const char *sni, time_t when, enum cs_kind kind,
                      const struct tp *ec, const struct tp *rsa)
{
    struct cs_match m;
    cs_store_lookup(s, sni, sni ? strlen(sni) : 0, when, &m);
    const char *got_ec = path_or_null(m.pair[CS_KEY_ECDSA]);
    const char *got_rsa = path_or_null(m.pair[CS_KEY_RSA]);
    bool ok = m.kind == kind && (ec ? got_ec && strcmp(got_ec, ec->crt) == 0 : !got_ec) &&
              (rsa ? got_rsa && strcmp(got_rsa, rsa->crt) == 0 : !got_rsa) && !m.pair[CS_KEY_OTHER];
    if (!ok)
        fprintf(stderr, "lookup %s: kind %d (want %d), ecdsa %s (want %s), rsa %s (want %s)\n",
                sni ? sni : "(none)", m.kind, kind, got_ec ? got_ec : "-", ec ? ec->crt : "-",
                got_rsa ? got_rsa : "-", rsa ? rsa->crt : "-");
    return ok;
}

#define EXPECT(s, sni, kind, ec, rsa) CHECK(expect_at(s, sni, now, kind, ec, rsa))

static void test_lookup(void)
{
    struct conf c;
    char *warnings = NULL;
    main_conf(&c);
    struct cs_store *s = build_ok(&c, NULL, &warnings);
    if (!s)
        return;

    EXPECT(s, "mail.example.com", CS_KIND_EXACT, &mail_ec, &mail_rsa);
    EXPECT(s, "MAIL.Example.COM.", CS_KIND_EXACT, &mail_ec, &mail_rsa);
    EXPECT(s, "webmail.example.com", CS_KIND_EXACT, &mail_ec, NULL);
    EXPECT(s, "foo.example.com", CS_KIND_WILDCARD, &wild, NULL);
    EXPECT(s, "Foo.Example.Com.", CS_KIND_WILDCARD, &wild, NULL);
    EXPECT(s, "example.com", CS_KIND_DEFAULT, &def, NULL);
    EXPECT(s, "a.b.example.com", CS_KIND_DEFAULT, &def, NULL);
    EXPECT(s, "*.example.com", CS_KIND_DEFAULT, &def, NULL);
    EXPECT(s, "unknown.test", CS_KIND_DEFAULT, &def, NULL);
    EXPECT(s, "bad name!", CS_KIND_DEFAULT, &def, NULL);
    EXPECT(s, "", CS_KIND_DEFAULT, &def, NULL);
    EXPECT(s, NULL, CS_KIND_NONE, &def, NULL);
    EXPECT(s, "default.test", CS_KIND_EXACT, &def, NULL);

    /* A valid wildcard beats an expired exact name; an expired exact name with nothing valid
     * behind it is still served, as exact; so is one not valid yet. */
    EXPECT(s, "old.example.com", CS_KIND_WILDCARD, &wild, NULL);
    EXPECT(s, "gone.other.org", CS_KIND_EXACT, &gone, NULL);
    EXPECT(s, "future.other.org", CS_KIND_EXACT, &future, NULL);
    /* Validity is judged at lookup time, not build time. */
    CHECK(expect_at(s, "old.example.com", now - 50 * CG_DAY, CS_KIND_EXACT, &old, NULL));
    CHECK(expect_at(s, "future.other.org", now + 20 * CG_DAY, CS_KIND_EXACT, &future, NULL));

    EXPECT(s, "cn.only.org", CS_KIND_EXACT, &cnonly, NULL);
    EXPECT(s, "x.org", CS_KIND_DEFAULT, &def, NULL);          /* names override the SAN */
    EXPECT(s, "alias.x.org", CS_KIND_EXACT, &alias, NULL);
    EXPECT(s, "q.alias.x.org", CS_KIND_WILDCARD, &alias, NULL);

    /* Several pairs of one type: the valid one that expires last; once all have lapsed, the
     * latest not-after. */
    EXPECT(s, "two.example.net", CS_KIND_EXACT, &two60, NULL);
    CHECK(expect_at(s, "two.example.net", now + 100 * CG_DAY, CS_KIND_EXACT, &two_future, NULL));
    CHECK(expect_at(s, "two.example.net", now + 500 * CG_DAY, CS_KIND_EXACT, &two_future, NULL));
    /* A valid ECDSA pair is not joined by an expired RSA one. */
    EXPECT(s, "mixed.example.net", CS_KIND_EXACT, &mixed_ec, NULL);
    CHECK(expect_at(s, "mixed.example.net", now + 100 * CG_DAY, CS_KIND_EXACT, &mixed_ec,
                    &mixed_rsa));

    struct cs_stats st;
    cs_store_stats(s, &st);
    CHECK(st.pairs == 14);
    /* default.test mail webmail old gone future cn.only two mixed alias.x.org = 10 exact;
     * example.com and alias.x.org as wildcard suffixes. */
    CHECK(st.exact_names == 10);
    CHECK(st.wildcard_names == 2);
    CHECK(st.skipped == 0);
    CHECK(st.pairs_added == 14 && st.pairs_changed == 0 && st.pairs_removed == 0);

    CHECK(warnings && strstr(warnings, "old.pem: expired on "));
    CHECK(warnings && strstr(warnings, "future.pem: not valid before "));
    CHECK(warnings && !strstr(warnings, "mail_ec.pem"));
    free(warnings);

    CHECK_STR(cs_key_type_name(CS_KEY_ECDSA), "ecdsa");
    CHECK_STR(cs_key_type_name(CS_KEY_RSA), "rsa");
    cs_store_unref(s);
}

static void test_print(void)
{
    struct conf c;
    char *text = NULL, want[512], d[16];
    size_t len = 0;
    main_conf(&c);
    struct cs_store *s = build_ok(&c, NULL, NULL);
    if (!s)
        return;
    FILE *f = open_memstream(&text, &len);
    cs_store_print(s, f);
    fclose(f);

    time_t t = now + 80 * CG_DAY;
    strftime(d, sizeof(d), "%Y-%m-%d", gmtime(&t));
    snprintf(want, sizeof(want), "mail.example.com exact %s ecdsa %s\n", mail_ec.crt, d);
    CHECK(strstr(text, want) != NULL);
    snprintf(want, sizeof(want), "mail.example.com exact %s rsa %s\n", mail_rsa.crt, d);
    CHECK(strstr(text, want) != NULL);
    snprintf(want, sizeof(want), "\n*.example.com wildcard %s ecdsa ", wild.crt);
    CHECK(strstr(text, want) != NULL);
    snprintf(want, sizeof(want), "\n- default %s ecdsa ", def.crt);
    CHECK(strstr(text, want) != NULL);
    CHECK(strstr(text, "# exact names: 10, wildcard names: 2, pairs: 14, skipped: 0\n") != NULL);
    /* Soonest first: old (-10 d), gone (-5 d), mixed_rsa (-1 d), two30, then a +60 d pair. */
    const char *soon = strstr(text, "# soonest expiries:\n");
    CHECK(soon != NULL);
    if (soon) {
        const char *o = strstr(soon, old.crt), *g = strstr(soon, gone.crt),
                   *m = strstr(soon, mixed_rsa.crt), *t30 = strstr(soon, two30.crt);
        CHECK(o && g && m && t30 && o < g && g < m && m < t30);
        CHECK(strstr(soon, mail_ec.crt) == NULL);
        int lines = 0;
        for (const char *p = soon; *p; p++)
            lines += *p == '\n';
        CHECK(lines == 6);
    }
    free(text);
    cs_store_unref(s);
}

/* ---- errors ---- */

static void build_fails(const struct conf *c, const char *want)
{
    struct cs_store *s = (struct cs_store *)1;
    char *errors = NULL, *warnings = NULL;
    int rc = cs_store_build(c, NULL, &s, &errors, &warnings);
    CHECK(rc == -EINVAL);
    CHECK(s == NULL);
    if (!errors || !strstr(errors, want))
        fprintf(stderr, "errors \"%s\", want \"%s\"\n", errors ? errors : "(null)", want);
    CHECK(errors && strstr(errors, want));
    free(errors);
    free(warnings);
}

static void test_errors(void)
{
    struct conf c;
    char want[600];
    struct conf_cert certs[3];
    char *bad_names[] = { "ok.example", "bad name" };

    /* An explicit pair whose key belongs to another certificate. */
    memset(&c, 0, sizeof(c));
    memset(certs, 0, sizeof(certs));
    c.path = "test.conf";
    c.tls.default_cert = def.crt;
    c.tls.default_key = def.key;
    certs[0] = (struct conf_cert){ .cert = mail_ec.crt, .key = wild.key, .line = 7 };
    c.certs = certs;
    c.n_certs = 1;
    snprintf(want, sizeof(want), "test.conf:7: key does not match certificate (%s)\n", wild.key);
    build_fails(&c, want);

    /* The same for the default pair, reported on line 0. */
    c.n_certs = 0;
    c.tls.default_key = mail_rsa.key;
    snprintf(want, sizeof(want), "test.conf:0: key does not match certificate (%s)\n",
             mail_rsa.key);
    build_fails(&c, want);
    c.tls.default_key = NULL;
    build_fails(&c, "test.conf:0: tls.default_cert and tls.default_key are required\n");
    c.tls.default_key = def.key;

    /* Missing files, a key file that is a certificate, a bad explicit name: all reported. */
    certs[0] = (struct conf_cert){ .cert = "/nonexistent/x.pem", .key = def.key, .line = 9 };
    certs[1] = (struct conf_cert){ .cert = mail_ec.crt, .key = mail_ec.crt, .line = 10 };
    certs[2] = (struct conf_cert){ .cert = mail_ec.crt, .key = mail_ec.key, .names = bad_names,
                                   .n_names = 2, .line = 11 };
    c.n_certs = 3;
    build_fails(&c, "test.conf:9: cannot read /nonexistent/x.pem: No such file or directory\n");
    snprintf(want, sizeof(want), "test.conf:10: %s: no private key found\n", mail_ec.crt);
    build_fails(&c, want);
    build_fails(&c, "test.conf:11: invalid name \"bad name\"\n");

    /* A certificate file with no certificate in it. */
    certs[0] = (struct conf_cert){ .cert = mail_ec.key, .key = mail_ec.key, .line = 12 };
    c.n_certs = 1;
    snprintf(want, sizeof(want), "test.conf:12: %s: no certificate found\n", mail_ec.key);
    build_fails(&c, want);

    /* A cert_dirs entry that does not exist is the operator's typo: an error. */
    char *dirs[] = { "/nonexistent/live" };
    c.n_certs = 0;
    c.cert_dirs = dirs;
    c.n_cert_dirs = 1;
    build_fails(&c, "test.conf:0: cert_dirs: cannot read /nonexistent/live: No such file");
}

/* ---- certbot's layout ---- */

static void mkdirf(const char *fmt, const char *arg)
{
    char p[256];
    pathf(p, fmt, arg);
    mkdir(p, 0755);
}

/* archive/NAME/{fullchainN,privkeyN}.pem and live/NAME/{fullchain,privkey}.pem symlinks to them,
 * relative like certbot's. */
static void certbot_pair(const char *name, int version, const char *const *sans, size_t n,
                         time_t na)
{
    char crt[256], key[256], link[256], target[256];
    mkdirf("le/archive/%s", name);
    mkdirf("le/live/%s", name);
    pathf(crt, "le/archive/%s/fullchain%d.pem", name, version);
    pathf(key, "le/archive/%s/privkey%d.pem", name, version);
    gen_files(crt, key, false, NULL, sans, n, now - CG_DAY, na);
    pathf(link, "le/live/%s/fullchain.pem", name);
    snprintf(target, sizeof(target), "../../archive/%s/fullchain%d.pem", name, version);
    unlink(link);
    CHECK(symlink(target, link) == 0);
    pathf(link, "le/live/%s/privkey.pem", name);
    snprintf(target, sizeof(target), "../../archive/%s/privkey%d.pem", name, version);
    unlink(link);
    CHECK(symlink(target, link) == 0);
}

static char le_live[256];
static char *le_dirs[] = { le_live };

static void gen_le(void)
{
    const char *a[] = { "a.org" }, *b[] = { "b.org", "www.b.org" };
    char p[256], p2[256];

    mkdirf("le%s", "");
    mkdirf("le/archive%s", "");
    mkdirf("le/live%s", "");
    pathf(le_live, "le/live");
    certbot_pair("a.org", 1, a, 1, now + 90 * CG_DAY);
    certbot_pair("b.org", 1, b, 2, now + 90 * CG_DAY);

    pathf(p, "le/live/README");
    FILE *f = fopen(p, "w");
    fputs("This directory contains your keys and certificates.\n", f);
    fclose(f);

    /* A folder whose key belongs to another folder's certificate, and an empty one. */
    mkdirf("le/live/%s", "bad.org");
    pathf(p, "le/live/bad.org/fullchain.pem");
    pathf(p2, "le/archive/a.org/fullchain1.pem");
    CHECK(symlink(p2, p) == 0);
    pathf(p, "le/live/bad.org/privkey.pem");
    CHECK(symlink(def.key, p) == 0);
    mkdirf("le/live/%s", "empty.org");
}

static void le_conf(struct conf *c)
{
    memset(c, 0, sizeof(*c));
    c->path = "test.conf";
    c->tls.default_cert = def.crt;
    c->tls.default_key = def.key;
    c->cert_dirs = le_dirs;
    c->n_cert_dirs = 1;
}

static const struct cs_pair *pair_for(const struct cs_store *s, const char *name)
{
    struct cs_match m;
    cs_store_lookup(s, name, strlen(name), now, &m);
    return m.kind == CS_KIND_EXACT ? m.pair[CS_KEY_ECDSA] : NULL;
}

static void test_cert_dirs(void)
{
    struct conf c;
    char *warnings = NULL, want[300];
    le_conf(&c);
    struct cs_store *s = build_ok(&c, NULL, &warnings);
    if (!s)
        return;

    struct cs_stats st;
    cs_store_stats(s, &st);
    CHECK(st.pairs == 3);
    CHECK(st.skipped == 2);
    CHECK(st.exact_names == 4);                            /* a.org b.org www.b.org default.test */
    const struct cs_pair *a = pair_for(s, "a.org"), *b = pair_for(s, "www.b.org");
    CHECK(a && b);
    if (a && b) {
        snprintf(want, sizeof(want), "%s/a.org/fullchain.pem", le_live);
        CHECK_STR(cs_pair_cert_path(a), want);
        /* Every pair here carries the same intermediate: one shared chain, one parsed X509. */
        const struct cs_pair *d = pair_for(s, "default.test");
        CHECK(a->chain && a->chain == b->chain && d && d->chain == a->chain);
        CHECK(a->chain && a->chain->n == 1);
    }
    snprintf(want, sizeof(want), "%s/bad.org: skipped: key does not match certificate (%s/"
             "bad.org/privkey.pem)\n", le_live, le_live);
    CHECK(warnings && strstr(warnings, want));
    snprintf(want, sizeof(want), "%s/empty.org: skipped: cannot read %s/empty.org/fullchain.pem: "
             "No such file or directory\n", le_live, le_live);
    CHECK(warnings && strstr(warnings, want));
    CHECK(warnings && !strstr(warnings, "README"));
    CHECK(warnings && !strstr(warnings, "readable"));
    free(warnings);
    cs_store_unref(s);

    /* A key anyone on the machine can read still loads, with a warning. */
    char key[256];
    pathf(key, "le/archive/b.org/privkey1.pem");
    chmod(key, 0644);
    s = build_ok(&c, NULL, &warnings);
    snprintf(want, sizeof(want), "%s/b.org/privkey.pem: private key is readable by every user\n",
             le_live);
    CHECK(warnings && strstr(warnings, want));
    free(warnings);
    cs_store_unref(s);
    chmod(key, 0600);
}

static void test_previous(void)
{
    struct conf c;
    struct cs_stats st;
    le_conf(&c);
    struct cs_store *s1 = build_ok(&c, NULL, NULL);
    struct cs_store *s2 = build_ok(&c, s1, NULL);
    if (!s1 || !s2)
        return;
    cs_store_stats(s2, &st);
    CHECK(pair_for(s1, "a.org") == pair_for(s2, "a.org"));
    CHECK(pair_for(s1, "b.org") == pair_for(s2, "b.org"));
    CHECK(pair_for(s1, "default.test") == pair_for(s2, "default.test"));
    CHECK(st.pairs == 3 && st.pairs_added == 0 && st.pairs_changed == 0 && st.pairs_removed == 0);

    /* certbot renews a.org (new archive files, symlinks re-pointed) and b.org is deleted. */
    const char *a[] = { "a.org", "new.a.org" };
    certbot_pair("a.org", 2, a, 2, now + 120 * CG_DAY);
    char p[256];
    pathf(p, "le/live/b.org/fullchain.pem");
    unlink(p);
    pathf(p, "le/live/b.org/privkey.pem");
    unlink(p);
    pathf(p, "le/live/b.org");
    rmdir(p);

    struct cs_store *s3 = build_ok(&c, s2, NULL);
    if (!s3)
        return;
    cs_store_stats(s3, &st);
    CHECK(st.pairs == 2 && st.pairs_added == 0 && st.pairs_changed == 1 && st.pairs_removed == 1);
    const struct cs_pair *a2 = pair_for(s2, "a.org"), *a3 = pair_for(s3, "a.org");
    CHECK(a3 && a2 != a3);
    CHECK(pair_for(s3, "new.a.org") == a3);
    CHECK(pair_for(s3, "b.org") == NULL);
    CHECK(pair_for(s3, "default.test") == pair_for(s2, "default.test"));
    /* The new pair shares the chain the previous snapshot had parsed. */
    CHECK(a2 && a3 && a3->chain == a2->chain);
    if (a3)
        CHECK(a3->not_after > now + 100 * CG_DAY);
    cs_store_unref(s1);
    cs_store_unref(s2);
    /* The old snapshot's pairs are gone with it; the surviving ones still work. */
    CHECK(pair_for(s3, "new.a.org") == a3);
    cs_store_unref(s3);
}

/* A configuration with only the default pair; tests add what they need. */
/* ACME's storage (acme.storage/certs, certbot's layout) comes after the operator's pairs and
 * takes only the names they do not cover; a storage without certs/ yet is no error. */
static void acme_pair(const char *dom, const char *const *sans, size_t n)
{
    char crt[256], key[256];
    mkdirf("acme/certs/%s", dom);
    pathf(crt, "acme/certs/%s/fullchain.pem", dom);
    pathf(key, "acme/certs/%s/privkey.pem", dom);
    gen_files(crt, key, false, NULL, sans, n, now - CG_DAY, now + 120 * CG_DAY); /* outlives the operator's */
}

static void test_acme_storage(void)
{
    struct conf c;
    char *warnings = NULL, storage[256], want[300];
    le_conf(&c);
    pathf(storage, "acme");
    c.acme.enabled = true;
    c.acme.storage = storage;
    struct cs_store *s = build_ok(&c, NULL, &warnings);
    CHECK(s && !(warnings && strstr(warnings, "acme")));
    free(warnings);
    cs_store_unref(s);

    const char *a[] = { "a.org", "mail.a.org" }, *b[] = { "www.b.org" }, *z[] = { "z.org" };
    mkdirf("acme%s", "");
    mkdirf("acme/certs%s", "");
    acme_pair("a.org", a, 2);
    acme_pair("b.org", b, 1);
    acme_pair("z.org", z, 1);
    s = build_ok(&c, NULL, &warnings);
    if (!s)
        return;
    const struct cs_pair *pa = pair_for(s, "a.org"), *pm = pair_for(s, "mail.a.org");
    const struct cs_pair *pb = pair_for(s, "www.b.org"), *pz = pair_for(s, "z.org");
    snprintf(want, sizeof want, "%s/a.org/fullchain.pem", le_live);
    CHECK(pa && strcmp(cs_pair_cert_path(pa), want) == 0);  /* the operator's, though older */
    pathf(want, "acme/certs/a.org/fullchain.pem");
    CHECK(pm && strcmp(cs_pair_cert_path(pm), want) == 0);  /* only ACME covers it */
    snprintf(want, sizeof want, "%s/b.org/fullchain.pem", le_live);
    CHECK(pb && strcmp(cs_pair_cert_path(pb), want) == 0);
    pathf(want, "acme/certs/z.org/fullchain.pem");
    CHECK(pz && strcmp(cs_pair_cert_path(pz), want) == 0);
    struct cs_stats st;
    cs_store_stats(s, &st);
    CHECK(st.pairs == 5);                 /* default, a.org, b.org, ACME a.org and z.org */
    CHECK(!(warnings && strstr(warnings, "acme/certs/b.org")));
    free(warnings);
    cs_store_unref(s);

    /* Without the acme block, its storage is nobody's business. */
    c.acme.enabled = false;
    s = build_ok(&c, NULL, &warnings);
    CHECK(s && !pair_for(s, "z.org"));
    free(warnings);
    cs_store_unref(s);
}

/* An update of ACME's pairs only must leave the snapshot a full build would make: the same
 * pairs in the same order (ties go to the same one), the same names, each served the same. */
static void same_as_full_build(const struct cs_store *upd, const struct conf *c)
{
    struct cs_store *full = build_ok(c, NULL, NULL);
    if (!full)
        return;
    CHECK(upd->n_pairs == full->n_pairs);
    for (size_t i = 0; i < upd->n_pairs && i < full->n_pairs; i++)
        CHECK_STR(upd->pairs[i]->paths, full->pairs[i]->paths);
    CHECK(upd->exact.n_entries == full->exact.n_entries);
    CHECK(upd->wild.n_entries == full->wild.n_entries);
    for (int w = 0; w < 2; w++) {
        const struct cs_index *ix = w ? &full->wild : &full->exact;
        for (size_t i = 0; i < ix->n_entries; i++) {
            char name[CS_NAME_MAX + 3];
            snprintf(name, sizeof name, "%s%s", w ? "x." : "", ix->names + ix->entries[i].name);
            struct cs_match a, b;
            cs_store_lookup(upd, name, strlen(name), now, &a);
            cs_store_lookup(full, name, strlen(name), now, &b);
            CHECK(a.kind == b.kind);
            for (int t = 0; t < CS_KEY_TYPES; t++) {
                CHECK(!a.pair[t] == !b.pair[t]);
                if (a.pair[t] && b.pair[t] && strcmp(a.pair[t]->paths, b.pair[t]->paths) != 0) {
                    fprintf(stderr, "%s: update serves %s, a full build %s\n", name,
                            a.pair[t]->paths, b.pair[t]->paths);
                    CHECK(false);
                }
            }
        }
    }
    cs_store_unref(full);
}

static void acme2_pair(const char *dom, const char *const *sans, size_t n, time_t na)
{
    char crt[256], key[256];
    mkdirf("acme2/certs/%s", dom);
    pathf(crt, "acme2/certs/%s/fullchain.pem", dom);
    pathf(key, "acme2/certs/%s/privkey.pem", dom);
    unlink(crt);                          /* a new inode, as acme_store_pair's rename makes */
    unlink(key);
    gen_files(crt, key, false, NULL, sans, n, now - CG_DAY, na);
}

static struct cs_store *update_ok(struct cs_store *prev, const char *storage, char **domains,
                                  size_t n)
{
    struct cs_store *s = NULL;
    char *errors = NULL, *warnings = NULL;
    CHECK(cs_store_update_acme(prev, storage, domains, n, &s, &errors, &warnings) == 0);
    CHECK(s != NULL && errors == NULL);
    free(errors);
    free(warnings);
    return s;
}

static void test_acme_update(void)
{
    struct conf c;
    char storage[256];
    le_conf(&c);
    pathf(storage, "acme2");
    c.acme.enabled = true;
    c.acme.storage = storage;
    mkdirf("acme2%s", "");
    mkdirf("acme2/certs%s", "");
    /* a.org: the operator's pair covers a.org, ACME's only mail.a.org. */
    const char *a[] = { "a.org", "mail.a.org" }, *m[] = { "mail.m.org", "webmail.m.org" };
    const char *k[] = { "mail.k.org" }, *z[] = { "mail.z.org", "*.z.org" }, *b[] = { "b.org" };
    acme2_pair("a.org", a, 2, now + 60 * CG_DAY);
    acme2_pair("m.org", m, 2, now + 60 * CG_DAY);
    struct cs_store *s1 = build_ok(&c, NULL, NULL);
    if (!s1)
        return;

    /* New domains before, between and after the ones loaded; one with nothing stored yet; one
     * (b.org) whose only name the operator covers; and a name given twice. */
    acme2_pair("k.org", k, 1, now + 60 * CG_DAY);
    acme2_pair("z.org", z, 2, now + 60 * CG_DAY);
    acme2_pair("0.org", k, 1, now + 30 * CG_DAY);   /* same name as k.org, expires sooner */
    acme2_pair("b.org", b, 1, now + 60 * CG_DAY);
    char *add[] = { "z.org", "k.org", "nothing.org", "0.org", "b.org", "k.org" };
    struct cs_store *s2 = update_ok(s1, storage, add, 6);
    if (!s2)
        return;
    struct cs_stats st;
    cs_store_stats(s2, &st);
    CHECK(st.pairs_added == 3 && st.pairs_changed == 0 && st.pairs_removed == 0);
    char want[300];
    pathf(want, "acme2/certs/k.org/fullchain.pem");
    const struct cs_pair *pk = pair_for(s2, "mail.k.org");
    CHECK(pk && strcmp(pk->paths, want) == 0);
    CHECK(pair_for(s2, "mail.m.org") == pair_for(s1, "mail.m.org"));   /* shared, not re-read */
    same_as_full_build(s2, &c);

    /* A renewal: a.org's new pair adds a name; the operator still wins a.org. */
    const char *a2[] = { "a.org", "mail.a.org", "new.a.org" };
    acme2_pair("a.org", a2, 3, now + 90 * CG_DAY);
    char *renew[] = { "a.org" };
    struct cs_store *s3 = update_ok(s2, storage, renew, 1);
    if (s3) {
        cs_store_stats(s3, &st);
        CHECK(st.pairs_added == 0 && st.pairs_changed == 1 && st.pairs_removed == 0);
        CHECK(pair_for(s3, "new.a.org") && pair_for(s3, "new.a.org") == pair_for(s3, "mail.a.org"));
        CHECK(pair_for(s3, "mail.a.org") != pair_for(s2, "mail.a.org"));
        snprintf(want, sizeof want, "%s/a.org/fullchain.pem", le_live);
        CHECK(pair_for(s3, "a.org") && strcmp(pair_for(s3, "a.org")->paths, want) == 0);
        same_as_full_build(s3, &c);
    }

    /* A folder gone drops its pair; an unreadable one keeps the pair it had. */
    char p[256], cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s/acme2/certs/m.org'", tmp);
    CHECK(system(cmd) == 0);
    pathf(p, "acme2/certs/z.org/privkey.pem");
    FILE *f = fopen(p, "w");
    if (f) {
        fputs("not a key\n", f);
        fclose(f);
    }
    char *drop[] = { "m.org", "z.org" };
    struct cs_store *s4 = s3 ? update_ok(s3, storage, drop, 2) : NULL;
    if (s4) {
        cs_store_stats(s4, &st);
        CHECK(st.pairs_removed == 1 && st.pairs_changed == 0);
        CHECK(pair_for(s4, "mail.m.org") == NULL);
        CHECK(pair_for(s4, "mail.z.org") == pair_for(s3, "mail.z.org") && pair_for(s4, "mail.z.org"));
        cs_store_unref(s4);
    }
    cs_store_unref(s1);
    cs_store_unref(s2);
    cs_store_unref(s3);
}

static void default_only_conf(struct conf *c)
{
    memset(c, 0, sizeof(*c));
    c->path = "test.conf";
    c->tls.default_cert = def.crt;
    c->tls.default_key = def.key;
}

/* ---- wildcards for a whole top-level domain ---- */

static void test_tld_wildcard(void)
{
    struct tp tld, tld_dir;
    const char *sans[] = { "*.com", "mail.tld.test", "*.tld.test" };
    const char *only[] = { "*.net" };
    gen(&tld, "tld", false, NULL, sans, 3, now - CG_DAY, now + 60 * CG_DAY);
    char *names[] = { "*.org", "q.named.test" };
    struct conf_cert certs[] = {
        { .cert = tld.crt, .key = tld.key, .line = 3 },
        { .cert = alias.crt, .key = alias.key, .names = names, .n_names = 2, .line = 4 },
    };

    /* A certbot folder whose only name is refused is skipped like one without names. */
    char live[256], sub[256];
    pathf(live, "tldlive");
    pathf(sub, "tldlive/net");
    mkdir(live, 0755);
    mkdir(sub, 0755);
    pathf(tld_dir.crt, "tldlive/net/fullchain.pem");
    pathf(tld_dir.key, "tldlive/net/privkey.pem");
    gen_files(tld_dir.crt, tld_dir.key, false, NULL, only, 1, now - CG_DAY, now + 60 * CG_DAY);
    char *dirs[] = { live };

    struct conf c;
    default_only_conf(&c);
    c.certs = certs;
    c.n_certs = 2;
    c.cert_dirs = dirs;
    c.n_cert_dirs = 1;
    char *warnings = NULL, want[600];
    struct cs_store *s = build_ok(&c, NULL, &warnings);
    if (!s)
        return;
    snprintf(want, sizeof(want), "%s: refused the wildcard \"*.com\": it would cover a whole "
             "top-level domain\n", tld.crt);
    CHECK(warnings && strstr(warnings, want));
    snprintf(want, sizeof(want), "%s: refused the wildcard \"*.org\"", alias.crt);
    CHECK(warnings && strstr(warnings, want));
    snprintf(want, sizeof(want), "%s: skipped: no usable DNS name in the certificate\n", sub);
    CHECK(warnings && strstr(warnings, want));
    free(warnings);

    EXPECT(s, "x.com", CS_KIND_DEFAULT, &def, NULL);
    EXPECT(s, "x.org", CS_KIND_DEFAULT, &def, NULL);
    EXPECT(s, "x.net", CS_KIND_DEFAULT, &def, NULL);
    EXPECT(s, "mail.tld.test", CS_KIND_EXACT, &tld, NULL);
    EXPECT(s, "imap.tld.test", CS_KIND_WILDCARD, &tld, NULL);
    EXPECT(s, "q.named.test", CS_KIND_EXACT, &alias, NULL);
    struct cs_stats st;
    cs_store_stats(s, &st);
    CHECK(st.wildcard_names == 1 && st.skipped == 1);
    cs_store_unref(s);
}

/* ---- the slot table under both name indexes ---- */

/* Entries filed under one hash come back in the order they were added, past the end of the slot
 * array (the probe wraps), and a hash whose run is empty gives nothing; a full-width hash only
 * uses its low bits. Room is made for 0 and for 5 entries. */
static void test_name_slots(void)
{
    struct name_slots t;
    uint32_t e, got[8], n = 0;

    CHECK(name_slots_init(&t, 0) == 0 && t.mask == 7);
    struct name_probe p = name_probe_start(&t, 3);
    CHECK(!name_probe_next(&p, &e));
    name_slots_free(&t);

    CHECK(name_slots_init(&t, 5) == 0 && t.mask == 15);
    for (uint32_t i = 0; i < 4; i++)
        name_slots_add(&t, 0xffffffff0000000eull, i);     /* slots 14, 15, 0, 1 */
    name_slots_add(&t, 5, 4);
    for (p = name_probe_start(&t, 0xe); n < 8 && name_probe_next(&p, &e);)
        got[n++] = e;
    CHECK(n == 4 && got[0] == 0 && got[1] == 1 && got[2] == 2 && got[3] == 3);
    p = name_probe_start(&t, 5);
    CHECK(name_probe_next(&p, &e) && e == 4 && !name_probe_next(&p, &e));
    p = name_probe_start(&t, 9);
    CHECK(!name_probe_next(&p, &e));
    name_slots_free(&t);
    CHECK(t.slots == NULL);
    CHECK(name_slots_init(&t, (size_t)UINT32_MAX) == -1 && t.slots == NULL);
}

/* ---- ties: same name, key type and expiry ---- */

/* The index alone: the rank decides, whatever the pairs' addresses, and a pair listed twice
 * under one name collapses. */
static void test_index_ties(void)
{
    struct cs_pair *p = calloc(1, sizeof(*p)), *q = calloc(1, sizeof(*q));
    if (!p || !q)
        exit(2);
    p->not_after = q->not_after = now + 10 * CG_DAY;
    struct cs_pair *low = p < q ? p : q, *high = p < q ? q : p;
    for (int first_is_high = 0; first_is_high < 2; first_is_high++) {
        struct cs_pair *first = first_is_high ? high : low, *second = first_is_high ? low : high;
        struct cs_index_input in[] = {
            { "tie.test", 8, 1, second },
            { "tie.test", 8, 0, first },
            { "tie.test", 8, 1, second },
        };
        struct cs_index idx;
        CHECK(cs_index_build(&idx, in, 3) == 0);
        const struct cs_index_entry *e = cs_index_find(&idx, "tie.test", 8);
        CHECK(e && e->count == 2);
        if (e && e->count == 2)
            CHECK(idx.cands[e->first] == first && idx.cands[e->first + 1] == second);
        cs_index_free(&idx);
    }
    free(p);
    free(q);
}

/* Through the store: the pair listed first wins, and swapping the entries swaps the winner even
 * when a rebuild reuses both pairs (same addresses) from the previous snapshot. */
static void test_store_ties(void)
{
    struct tp a, b;
    const char *sans[] = { "mail.tie.test" };
    gen(&a, "tie_a", false, NULL, sans, 1, now - CG_DAY, now + 50 * CG_DAY);
    gen(&b, "tie_b", false, NULL, sans, 1, now - CG_DAY, now + 50 * CG_DAY);
    struct conf_cert ab[] = { { .cert = a.crt, .key = a.key, .line = 1 },
                              { .cert = b.crt, .key = b.key, .line = 2 } };
    struct conf_cert ba[] = { ab[1], ab[0] };
    struct conf c;
    default_only_conf(&c);
    c.n_certs = 2;

    struct cs_store *prev = NULL;
    for (int round = 0; round < 6; round++) {
        bool a_first = round % 2 == 0;
        c.certs = a_first ? ab : ba;
        struct cs_store *s = build_ok(&c, prev, NULL);
        if (!s)
            break;
        EXPECT(s, "mail.tie.test", CS_KIND_EXACT, a_first ? &a : &b, NULL);
        cs_store_unref(prev);
        prev = s;
    }
    cs_store_unref(prev);
}

/* ---- real handshakes over a BIO pair ---- */

/* What the brief asked for, "RSA-PSS+SHA256:rsa_pss_rsae_sha256:RSA+SHA256", is refused by
 * OpenSSL 3.0: "RSA-PSS+SHA256" is another spelling of rsa_pss_rsae_sha256, and duplicates are an
 * error. This list names the same three algorithms once each. */
#define RSA_ONLY "rsa_pss_pss_sha256:rsa_pss_rsae_sha256:RSA+SHA256"

static bool handshake(SSL *client, SSL *server)
{
    for (int i = 0; i < 100; i++) {
        int c = SSL_do_handshake(client), s = SSL_do_handshake(server);
        if (c == 1 && s == 1)
            return true;
        int ce = SSL_get_error(client, c), se = SSL_get_error(server, s);
        if ((c != 1 && ce != SSL_ERROR_WANT_READ && ce != SSL_ERROR_WANT_WRITE) ||
            (s != 1 && se != SSL_ERROR_WANT_READ && se != SSL_ERROR_WANT_WRITE))
            return false;
    }
    return false;
}

struct hs {
    SSL *client, *server;
    bool ok;
};

/* When set, the server accepts only these groups, so a client whose first key share is another
 * gets a HelloRetryRequest and sends a second ClientHello. */
static const char *server_groups;

static struct hs run_hs(SSL_CTX *sctx, SSL_CTX *cctx, const char *sni, const char *sigalgs)
{
    struct hs h = { SSL_new(cctx), SSL_new(sctx), false };
    if (server_groups)
        CHECK(SSL_set1_groups_list(h.server, server_groups) == 1);
    BIO *cb, *sb;
    BIO_new_bio_pair(&cb, 0, &sb, 0);
    SSL_set_bio(h.client, cb, cb);
    SSL_set_bio(h.server, sb, sb);
    SSL_set_connect_state(h.client);
    SSL_set_accept_state(h.server);
    if (sni) {
        SSL_set_tlsext_host_name(h.client, sni);
        SSL_set1_host(h.client, sni);
    }
    if (sigalgs)
        CHECK(SSL_set1_sigalgs_list(h.client, sigalgs) == 1);
    h.ok = handshake(h.client, h.server);
    ERR_clear_error();
    return h;
}

static void hs_free(struct hs *h)
{
    SSL_free(h->client);
    SSL_free(h->server);
}

/* What the client received: the leaf's key type and whether it carries NAME. */
static bool peer_is(SSL *client, const char *name, const char *key_type)
{
    X509 *x = SSL_get0_peer_certificate(client);
    return x && EVP_PKEY_is_a(X509_get0_pubkey(x), key_type) &&
           X509_check_host(x, name, strlen(name), 0, NULL) == 1;
}

static void test_handshake(void)
{
    struct conf c;
    main_conf(&c);
    struct cs_store *s = build_ok(&c, NULL, NULL);
    if (!s)
        return;
    struct cs_current *cur = cs_current_new(s);
    SSL_CTX *sctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
    cs_select_install(sctx, cur);
    /* The client verifies the chain against the test root: this proves the intermediate from
     * the shared chain is sent. */
    X509_STORE_add_cert(SSL_CTX_get_cert_store(cctx), root);
    SSL_CTX_set_verify(cctx, SSL_VERIFY_PEER, NULL);

    struct hs h = run_hs(sctx, cctx, "mail.example.com", NULL);
    CHECK(h.ok);
    CHECK(peer_is(h.client, "mail.example.com", "EC"));
    CHECK(SSL_get_verify_result(h.client) == X509_V_OK);
    const struct cs_choice *ch = cs_choice_of(h.server);
    CHECK(ch && ch->kind == CS_KIND_EXACT);
    if (ch)
        CHECK_STR(ch->sni, "mail.example.com");
    CHECK_STR(cs_used_cert_path(h.server), mail_ec.crt);
    hs_free(&h);

    /* Same name, a client that can only verify RSA signatures: the RSA pair. */
    h = run_hs(sctx, cctx, "Mail.Example.com", RSA_ONLY);
    CHECK(h.ok);
    CHECK(peer_is(h.client, "mail.example.com", "RSA"));
    CHECK_STR(cs_used_cert_path(h.server), mail_rsa.crt);
    ch = cs_choice_of(h.server);
    CHECK(ch && ch->kind == CS_KIND_EXACT && strcmp(ch->sni, "mail.example.com") == 0);
    hs_free(&h);

    /* The same in TLS 1.2. */
    SSL_CTX_set_max_proto_version(cctx, TLS1_2_VERSION);
    h = run_hs(sctx, cctx, "mail.example.com", RSA_ONLY);
    CHECK(h.ok && SSL_version(h.client) == TLS1_2_VERSION);
    CHECK(peer_is(h.client, "mail.example.com", "RSA"));
    hs_free(&h);
    h = run_hs(sctx, cctx, "mail.example.com", NULL);
    CHECK(h.ok && peer_is(h.client, "mail.example.com", "EC"));
    hs_free(&h);
    SSL_CTX_set_max_proto_version(cctx, 0);

    /* A HelloRetryRequest runs the callback a second time on the same SSL. */
    server_groups = "P-384";
    h = run_hs(sctx, cctx, "mail.example.com", RSA_ONLY);
    server_groups = NULL;
    CHECK(h.ok && SSL_version(h.client) == TLS1_3_VERSION);
    CHECK(peer_is(h.client, "mail.example.com", "RSA"));
    CHECK_STR(cs_used_cert_path(h.server), mail_rsa.crt);
    ch = cs_choice_of(h.server);
    CHECK(ch && ch->kind == CS_KIND_EXACT);
    hs_free(&h);

    h = run_hs(sctx, cctx, "foo.example.com", NULL);
    CHECK(h.ok && peer_is(h.client, "foo.example.com", "EC"));
    ch = cs_choice_of(h.server);
    CHECK(ch && ch->kind == CS_KIND_WILDCARD);
    CHECK_STR(cs_used_cert_path(h.server), wild.crt);
    hs_free(&h);

    /* No SNI: the default pair, kind NONE. The client cannot check a host name here. */
    SSL_CTX_set_verify(cctx, SSL_VERIFY_NONE, NULL);
    h = run_hs(sctx, cctx, NULL, NULL);
    CHECK(h.ok && peer_is(h.client, "default.test", "EC"));
    ch = cs_choice_of(h.server);
    CHECK(ch && ch->kind == CS_KIND_NONE && ch->sni[0] == '\0');
    CHECK_STR(cs_used_cert_path(h.server), def.crt);
    hs_free(&h);

    /* A name nothing matches: the default pair, kind DEFAULT. */
    h = run_hs(sctx, cctx, "nowhere.test", NULL);
    CHECK(h.ok && peer_is(h.client, "default.test", "EC"));
    ch = cs_choice_of(h.server);
    CHECK(ch && ch->kind == CS_KIND_DEFAULT);
    if (ch)
        CHECK_STR(ch->sni, "nowhere.test");
    /* Taken for a session that outlives its SSL: the same choice, the SSL's is gone. */
    struct cs_choice *taken = cs_choice_take(h.server);
    CHECK(taken && taken->kind == CS_KIND_DEFAULT);
    if (taken)
        CHECK_STR(taken->sni, "nowhere.test");
    CHECK(cs_choice_of(h.server) == NULL && cs_choice_take(h.server) == NULL);
    free(taken);
    hs_free(&h);

    /* Reload while a connection is open: the old snapshot goes, the SSL keeps its pair. */
    h = run_hs(sctx, cctx, "webmail.example.com", NULL);
    CHECK(h.ok);
    cs_current_set(cur, build_ok(&c, NULL, NULL));
    CHECK_STR(cs_used_cert_path(h.server), mail_ec.crt);
    struct hs h2 = run_hs(sctx, cctx, "webmail.example.com", NULL);
    CHECK(h2.ok);
    CHECK_STR(cs_used_cert_path(h2.server), mail_ec.crt);
    /* Same path, but a different pair object: the second store reloaded the files. */
    CHECK(SSL_get_certificate(h.server) != SSL_get_certificate(h2.server));
    hs_free(&h2);
    cs_current_free(cur);
    CHECK_STR(cs_used_cert_path(h.server), mail_ec.crt);
    CHECK(cs_choice_of(h.client) == NULL);
    CHECK_STR(cs_used_cert_path(h.client), "-");
    hs_free(&h);

    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

/* ---- memory per loaded pair (printed, not asserted) ---- */

static size_t heap_used(void)
{
#if defined(CS_TEST_ASAN)
    return __sanitizer_get_current_allocated_bytes();
#elif defined(MAILSNID_JEMALLOC)
    uint64_t epoch = 1;
    size_t allocated = 0, sz = sizeof(epoch);
    mallctl("epoch", &epoch, &sz, &epoch, sz);
    sz = sizeof(allocated);
    if (mallctl("stats.allocated", &allocated, &sz, NULL, 0) != 0)
        return 0;
    return allocated;
#else
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
#endif
}

static size_t rss_bytes(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return 0;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
        resident = 0;
    fclose(f);
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void test_memory(size_t n)
{
    char live[256], dir[256], crt[300], key[300], name[64];
    pathf(live, "mem");
    mkdir(live, 0755);
    for (size_t i = 0; i < n; i++) {
        snprintf(name, sizeof(name), "mail.customer%zu.example", i);
        const char *sans[] = { name };
        snprintf(dir, sizeof(dir), "%s/customer%zu", live, i);
        mkdir(dir, 0755);
        snprintf(crt, sizeof(crt), "%s/fullchain.pem", dir);
        snprintf(key, sizeof(key), "%s/privkey.pem", dir);
        gen_files(crt, key, false, NULL, sans, 1, now - CG_DAY, now + 90 * CG_DAY);
    }
    char *dirs[] = { live };
    struct conf c;
    default_only_conf(&c);
    c.cert_dirs = dirs;
    c.n_cert_dirs = 1;

    /* Warm up OpenSSL's one-time state (providers, method caches) so it is not counted. */
    cs_store_unref(build_ok(&c, NULL, NULL));
    size_t heap0 = heap_used(), rss0 = rss_bytes();
    double t0 = mono();
    struct cs_store *s = build_ok(&c, NULL, NULL);
    double t1 = mono();
    size_t heap1 = heap_used(), rss1 = rss_bytes();
    if (!s)
        return;
    struct cs_stats st;
    cs_store_stats(s, &st);
    CHECK(st.pairs == n + 1);

    /* Handshakes on a sample of names: does first use make a pair grow (key caches)? */
    struct cs_current *cur = cs_current_new(s);
    SSL_CTX *sctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
    cs_select_install(sctx, cur);
    size_t sample = n < 200 ? n : 200, ok = 0;
    size_t heap2 = heap_used();
    for (size_t i = 0; i < sample; i++) {
        snprintf(name, sizeof(name), "mail.customer%zu.example", i);
        struct hs h = run_hs(sctx, cctx, name, NULL);
        ok += h.ok && peer_is(h.client, name, "EC");
        hs_free(&h);
    }
    size_t heap3 = heap_used();
    CHECK(ok == sample);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);

    fprintf(stderr, "memory: %zu ECDSA pairs: heap %+.0f B/pair, RSS %+.0f B/pair, build %.0f "
            "us/pair; after one handshake each on %zu of them: heap %+.0f B/pair\n",
            n, ((double)heap1 - (double)heap0) / (double)n, ((double)rss1 - (double)rss0) / (double)n,
            (t1 - t0) * 1e6 / (double)n, sample, ((double)heap3 - (double)heap2) / (double)sample);
    cs_current_free(cur);
}

int main(int argc, char **argv)
{
    size_t mem_pairs = argc > 1 ? strtoul(argv[1], NULL, 10) : 2000;
    snprintf(tmp, sizeof(tmp), "/tmp/cs-test-XXXXXX");
    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        return 2;
    }
    now = time(NULL);
    setup_ca();
    gen_main();
    gen_le();

    test_names();
    test_sni_parse();
    test_lookup();
    test_print();
    test_errors();
    test_cert_dirs();
    test_acme_storage();
    test_acme_update();
    test_previous();
    test_tld_wildcard();
    test_name_slots();
    test_index_ties();
    test_store_ties();
    test_handshake();
    if (mem_pairs)
        test_memory(mem_pairs);

    X509_free(root);
    X509_free(inter);
    EVP_PKEY_free(root_key);
    EVP_PKEY_free(int_key);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", tmp);
    return check_report("test_certstore");
}
