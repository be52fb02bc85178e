/* libFuzzer target: the attacker-facing half of certstore. One input is tried three ways:
 * as a raw host name (cs_name_normalize, with and without wildcards), as the body of a TLS
 * server_name extension (cs_sni_parse, then a lookup of what it yields), and as an SNI handed
 * straight to cs_store_lookup over a small real store built once at start-up.
 *
 * Build and run (from the repository root):
 *   clang-14 -g -O1 -std=c11 -D_GNU_SOURCE -I. -Wall -Wextra -Werror \
 *     -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
 *     tests/fuzz/fuzz_sni.c certstore/[a-z]*.c -lssl -lcrypto -lpthread -o build-fuzz/fuzz_sni
 *   build-fuzz/fuzz_sni -max_total_time=60 -max_len=600 tests/fuzz/corpus/sni */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "certstore/certstore.h"
#include "certstore/internal.h"
#include "conf/conf.h"
#include "tests/unit/certgen.h"

static struct cs_store *store;
static time_t now;

static void gen(const char *dir, const char *base, bool rsa, const char *const *sans, size_t n,
                time_t nb, time_t na, char *crt, char *key)
{
    snprintf(crt, 256, "%s/%s.pem", dir, base);
    snprintf(key, 256, "%s/%s.key", dir, base);
    EVP_PKEY *k = cg_key(rsa);
    X509 *x = cg_cert(k, NULL, sans, n, nb, na, NULL, NULL, false);
    if (!x || cg_write_chain(crt, x, NULL, 0) < 0 || cg_write_key(key, k) < 0)
        abort();
    X509_free(x);
    EVP_PKEY_free(k);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static char dir[] = "/tmp/fuzz-sni-XXXXXX";
    static char crt[5][256], key[5][256];
    const char *s_def[] = { "default.test" };
    const char *s_mail[] = { "mail.example.com", "webmail.example.com", "*.example.com" };
    const char *s_old[] = { "old.example.com", "*.old.example.com" };
    const char *s_wild[] = { "*.b.example.com", "a", "*.com" };  /* "*.com" is refused */
    (void)argc;
    (void)argv;

    if (!mkdtemp(dir))
        abort();
    now = time(NULL);
    gen(dir, "def", false, s_def, 1, now - 86400, now + 86400 * 90, crt[0], key[0]);
    gen(dir, "mail", false, s_mail, 3, now - 86400, now + 86400 * 90, crt[1], key[1]);
    gen(dir, "mail_rsa", true, s_mail, 1, now - 86400, now + 86400 * 90, crt[2], key[2]);
    gen(dir, "old", false, s_old, 2, now - 86400 * 90, now - 86400, crt[3], key[3]);
    gen(dir, "wild", false, s_wild, 3, now + 86400, now + 86400 * 90, crt[4], key[4]);

    static struct conf_cert certs[4];
    for (int i = 0; i < 4; i++)
        certs[i] = (struct conf_cert){ .cert = crt[i + 1], .key = key[i + 1], .line = i + 1 };
    struct conf c = { .path = "fuzz.conf", .certs = certs, .n_certs = 4 };
    c.tls.default_cert = crt[0];
    c.tls.default_key = key[0];
    char *errors = NULL, *warnings = NULL;
    if (cs_store_build(&c, NULL, &store, &errors, &warnings) != 0)
        abort();
    free(errors);
    free(warnings);
    for (int i = 0; i < 5; i++) {
        unlink(crt[i]);
        unlink(key[i]);
    }
    rmdir(dir);
    return 0;
}

static void check_normalized(const char *in, size_t len, bool wild)
{
    char out[CS_NAME_MAX + 1], again[CS_NAME_MAX + 1];
    int n = cs_name_normalize(in, len, wild, out);
    if (n < 0) {
        if (n != -EINVAL)
            abort();
        return;
    }
    /* What comes out is short, clean, and a fixed point. */
    if ((size_t)n > CS_NAME_MAX || strlen(out) != (size_t)n || (size_t)n > len)
        abort();
    for (int i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)out[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' ||
              ch == '.' || (ch == '*' && wild && i == 0)))
            abort();
    }
    if (cs_name_normalize(out, (size_t)n, wild, again) != n || memcmp(out, again, (size_t)n))
        abort();
}

static void check_lookup(const char *sni, size_t len)
{
    struct cs_match m;
    cs_store_lookup(store, sni, len, now, &m);
    if (m.kind != CS_KIND_EXACT && m.kind != CS_KIND_WILDCARD && m.kind != CS_KIND_DEFAULT &&
        !(m.kind == CS_KIND_NONE && !sni))
        abort();
    if (!m.pair[CS_KEY_ECDSA] && !m.pair[CS_KEY_RSA] && !m.pair[CS_KEY_OTHER])
        abort();
    /* A wildcard match needs two labels after the one it covers: no "*.com". */
    if (m.kind == CS_KIND_WILDCARD) {
        size_t n = len - (sni[len - 1] == '.');   /* a match is a name: len > 0 */
        const char *dot = memchr(sni, '.', n);
        if (!dot || !memchr(dot + 1, '.', n - (size_t)(dot + 1 - sni)))
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    const unsigned char *name;
    size_t name_len;

    check_normalized(s, size, false);
    check_normalized(s, size, true);
    check_lookup(s, size);
    if (cs_sni_parse(data, size, &name, &name_len) == 0) {
        if (name && (name < data || name + name_len > data + size))
            abort();
        check_lookup(name ? (const char *)name : NULL, name_len);
    }
    return 0;
}
