/* Unit tests for acme/: the parsers of what a CA sends besides JSON (header lines, Retry-After,
 * RFC 3339 times, ARI windows), the JWS signing, the challenge answers and the storage. The
 * parsers take whole values (libcurl hands over whole header lines), so "split at every byte"
 * means here: every prefix of a good input, in a buffer of exactly its size (ASan sees any
 * read past it), must be refused or read the same, never crash. */
#include <errno.h>
#include <stdint.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <utime.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <jansson.h>

#include "acme/challenge.h"
#include "acme/internal.h"
#include "check.h"

static char tmp[64];

/* A heap copy of the first N bytes of S, exactly N bytes long (not NUL-terminated). */
static char *exact(const char *s, size_t n)
{
    char *p = malloc(n ? n : 1);
    memcpy(p, s, n);
    return p;
}

static void test_rfc3339(void)
{
    time_t t = 0;
    CHECK(acme_parse_rfc3339("2026-12-04T17:45:13Z", 20, &t) == 0 && t == 1796406313);
    CHECK(acme_parse_rfc3339("2026-12-04t17:45:13.123456z", 27, &t) == 0 && t == 1796406313);
    CHECK(acme_parse_rfc3339("2026-12-04T19:45:13+02:00", 25, &t) == 0 && t == 1796406313);
    CHECK(acme_parse_rfc3339("2026-12-04T16:15:13-01:30", 25, &t) == 0 && t == 1796406313);
    CHECK(acme_parse_rfc3339("2000-02-29T00:00:00Z", 20, &t) == 0 && t == 951782400);
    static const char *const bad[] = {
        "2026-02-29T00:00:00Z", "1900-02-29T00:00:00Z", "2026-13-01T00:00:00Z",
        "2026-00-01T00:00:00Z", "2026-04-31T00:00:00Z", "2026-12-04T24:00:00Z",
        "2026-12-04T17:60:13Z", "2026-12-04T17:45:13", "2026-12-04T17:45:13.Z",
        "2026-12-04T17:45:13Zx", "2026-12-04T17:45:13+0200", "2026-12-04T17:45:13+24:00",
        "2026-1-04T17:45:13Z", "+026-12-04T17:45:13Z", "", "2026-12-04",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        t = 42;
        CHECK(acme_parse_rfc3339(bad[i], strlen(bad[i]), &t) == -EINVAL && t == 42);
    }
    const char *good = "2026-12-04T19:45:13.5+02:00";
    for (size_t n = 0; n < strlen(good); n++) {
        char *p = exact(good, n);
        int rc = acme_parse_rfc3339(p, n, &t);
        /* The prefix without the offset's end is not a time; none before the zone is. */
        CHECK(rc == -EINVAL);
        free(p);
    }
}

static void test_retry_after(void)
{
    time_t when = 1445412480;              /* Wed, 21 Oct 2015 07:28:00 GMT */
    CHECK(acme_parse_retry_after("120", 3, 0) == 120);
    CHECK(acme_parse_retry_after("0", 1, 0) == 0);
    CHECK(acme_parse_retry_after("99999999999999999999", 20, 0) == 86400);
    CHECK(acme_parse_retry_after("12a", 3, 0) == -1);
    CHECK(acme_parse_retry_after("-5", 2, 0) == -1);
    CHECK(acme_parse_retry_after("", 0, 0) == -1);
    const char *date = "Wed, 21 Oct 2015 07:28:00 GMT";
    CHECK(acme_parse_retry_after(date, strlen(date), when - 100) == 100);
    CHECK(acme_parse_retry_after(date, strlen(date), when + 100) == 0);
    CHECK(acme_parse_retry_after(date, strlen(date), when - 1000000) == 86400);
    CHECK(acme_parse_retry_after("Wed, 21 Okt 2015 07:28:00 GMT", 29, 0) == -1);
    CHECK(acme_parse_retry_after("Wed, 31 Feb 2015 07:28:00 GMT", 29, 0) == -1);
    CHECK(acme_parse_retry_after("Wed, 21 Oct 2015 07:28:00 UTC", 29, 0) == -1);
    for (size_t n = 1; n < strlen(date); n++) {
        char *p = exact(date, n);
        CHECK(acme_parse_retry_after(p, n, when - 100) == -1);
        free(p);
    }
    /* Every prefix of a number is a smaller number: read, never past its end. */
    const char *num = "86399";
    for (size_t n = 1; n <= strlen(num); n++) {
        char *p = exact(num, n), want[8];
        memcpy(want, num, n);
        want[n] = '\0';
        CHECK(acme_parse_retry_after(p, n, 0) == strtol(want, NULL, 10));
        free(p);
    }
}

static void test_header(void)
{
    const char *v;
    size_t n;
    const char *line = "Replay-Nonce: abc-DEF_1 \r\n";
    CHECK(acme_header_match(line, strlen(line), "Replay-Nonce", &v, &n) && n == 9 &&
          memcmp(v, "abc-DEF_1", 9) == 0);
    CHECK(acme_header_match("replay-nonce:x\r\n", 16, "Replay-Nonce", &v, &n) && n == 1 && *v == 'x');
    CHECK(acme_header_match("Location:\r\n", 11, "Location", &v, &n) && n == 0);
    CHECK(!acme_header_match("Replay-Nonces: x\r\n", 18, "Replay-Nonce", &v, &n));
    CHECK(!acme_header_match("X-Replay-Nonce: x\r\n", 19, "Replay-Nonce", &v, &n));
    CHECK(!acme_header_match("Replay-Nonce x\r\n", 16, "Replay-Nonce", &v, &n));
    for (size_t k = 0; k <= strlen(line); k++) {
        char *p = exact(line, k);
        bool m = acme_header_match(p, k, "Replay-Nonce", &v, &n);
        /* Matches once the colon is in; the value is then a prefix of the full one. */
        CHECK(m == (k >= 13));
        CHECK(!m || (v >= p && v + n <= p + k && memcmp(v, "abc-DEF_1", n) == 0));
        free(p);
    }
}

static void test_ari(void)
{
    time_t s = 0, e = 0;
    const char *w = "{\"suggestedWindow\":{\"start\":\"2025-01-02T04:00:00Z\","
                    "\"end\":\"2025-01-03T04:00:00Z\"},\"explanationURL\":\"https://x\"}";
    CHECK(acme_ari_window(w, strlen(w), &s, &e) == 0 && s == 1735790400 && e == 1735876800);
    for (size_t n = 0; n < strlen(w); n++) {
        char *p = exact(w, n);
        CHECK(acme_ari_window(p, n, &s, &e) == -EINVAL);
        free(p);
    }
    static const char *const bad[] = {
        "{\"suggestedWindow\":{\"start\":\"2025-01-03T04:00:00Z\",\"end\":\"2025-01-02T04:00:00Z\"}}",
        "{\"suggestedWindow\":{\"start\":\"2025-01-02T04:00:00Z\"}}",
        "{\"suggestedWindow\":{\"start\":1,\"end\":2}}",
        "{\"suggestedWindow\":\"soon\"}", "[]", "null", "{}",
        "{\"suggestedWindow\":{\"start\":\"2025-01-02T04:00:00Z\",\"start\":\"x\",\"end\":\"2025-01-03T04:00:00Z\"}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK(acme_ari_window(bad[i], strlen(bad[i]), &s, &e) == -EINVAL);

    /* RFC 9773 appendix A: AKI 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:01:C8:D4 and
     * serial 00:87:65:43:21 give "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE". */
    static const unsigned char aki[] = { 0x69, 0x88, 0x5B, 0x6B, 0x87, 0x46, 0x40, 0x41, 0xE1, 0xB3,
                                         0x7B, 0x84, 0x7B, 0xA0, 0xAE, 0x2C, 0xDE, 0x01, 0xC8, 0xD4 };
    X509 *x = X509_new();
    AUTHORITY_KEYID *akid = AUTHORITY_KEYID_new();
    akid->keyid = ASN1_OCTET_STRING_new();
    ASN1_OCTET_STRING_set(akid->keyid, aki, sizeof aki);
    ASN1_INTEGER_set_uint64(X509_get_serialNumber(x), 0x87654321u);
    X509_add1_ext_i2d(x, NID_authority_key_identifier, akid, 0, 0);
    char *id = acme_ari_cert_id(x);
    CHECK_STR(id, "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE");
    free(id);
    AUTHORITY_KEYID_free(akid);
    X509_free(x);
}

static unsigned char *b64url_decode(const char *s, size_t *len)
{
    size_t n = strlen(s), pad = (4 - n % 4) % 4;
    char *std = malloc(n + pad + 1);
    for (size_t i = 0; i < n; i++)
        std[i] = s[i] == '-' ? '+' : s[i] == '_' ? '/' : s[i];
    memset(std + n, '=', pad);
    unsigned char *out = malloc(n + pad + 1);
    int m = EVP_DecodeBlock(out, (unsigned char *)std, (int)(n + pad));
    free(std);
    *len = m < 0 ? 0 : (size_t)m - pad;
    return out;
}

static void test_jws(void)
{
    char *b;
    static const struct { const char *in, *out; } v[] = {
        { "", "" }, { "f", "Zg" }, { "fo", "Zm8" }, { "foo", "Zm9v" }, { "foob", "Zm9vYg" },
        { "\xfb\xff", "-_8" },
    };
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        b = acme_b64url((const unsigned char *)v[i].in, strlen(v[i].in));
        CHECK_STR(b, v[i].out);
        free(b);
    }
    char err[256], storage[128];
    snprintf(storage, sizeof storage, "%s/store", tmp);
    EVP_PKEY *k = acme_account_key(storage, err, sizeof err);
    CHECK(k != NULL);
    if (!k)
        return;
    EVP_PKEY *again = acme_account_key(storage, err, sizeof err);
    CHECK(again && EVP_PKEY_eq(k, again) == 1);    /* read back, not made anew */
    EVP_PKEY_free(again);
    char path[256];
    struct stat st;
    snprintf(path, sizeof path, "%s/account.key", storage);
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);

    char *jwk = acme_jwk_json(k), thumb[64];
    static const char jwk_start[] = "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"";
    CHECK(jwk && strncmp(jwk, jwk_start, sizeof jwk_start - 1) == 0 && strstr(jwk, "\",\"y\":\""));
    CHECK(acme_jwk_thumbprint(k, thumb) == 0 && strlen(thumb) == 43);
    free(jwk);

    char *jws = acme_jws(k, NULL, "nonce-1", "https://ca/new-acct", "{\"a\":1}");
    json_t *o = jws ? json_loads(jws, 0, NULL) : NULL;
    const char *prot = json_string_value(json_object_get(o, "protected"));
    const char *pay = json_string_value(json_object_get(o, "payload"));
    const char *sig = json_string_value(json_object_get(o, "signature"));
    CHECK(prot && pay && sig);
    if (prot && pay && sig) {
        size_t plen, slen;
        unsigned char *p = b64url_decode(prot, &plen), *s = b64url_decode(sig, &slen);
        json_t *h = json_loadb((char *)p, plen, 0, NULL);
        CHECK_STR(json_string_value(json_object_get(h, "alg")), "ES256");
        CHECK_STR(json_string_value(json_object_get(h, "nonce")), "nonce-1");
        CHECK_STR(json_string_value(json_object_get(h, "url")), "https://ca/new-acct");
        CHECK(json_object_get(h, "jwk") && !json_object_get(h, "kid"));
        CHECK_STR(pay, "eyJhIjoxfQ");
        /* The signature verifies as ES256: R || S, 32 bytes each. */
        CHECK(slen == 64);
        ECDSA_SIG *es = ECDSA_SIG_new();
        ECDSA_SIG_set0(es, BN_bin2bn(s, 32, NULL), BN_bin2bn(s + 32, 32, NULL));
        unsigned char *der = NULL;
        int dlen = i2d_ECDSA_SIG(es, &der);
        char input[1024];
        snprintf(input, sizeof input, "%s.%s", prot, pay);
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        CHECK(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, k) == 1 &&
              EVP_DigestVerify(md, der, (size_t)dlen, (unsigned char *)input, strlen(input)) == 1);
        input[0] ^= 1;
        CHECK(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, k) == 1 &&
              EVP_DigestVerify(md, der, (size_t)dlen, (unsigned char *)input, strlen(input)) != 1);
        EVP_MD_CTX_free(md);
        OPENSSL_free(der);
        ECDSA_SIG_free(es);
        json_decref(h);
        free(p);
        free(s);
    }
    json_decref(o);
    free(jws);
    jws = acme_jws(k, "https://ca/acct/1", "n2", "https://ca/x", "");
    o = jws ? json_loads(jws, 0, NULL) : NULL;
    CHECK_STR(json_string_value(json_object_get(o, "payload")), "");
    json_decref(o);
    free(jws);
    EVP_PKEY_free(k);
}

static void test_challenges(void)
{
    char storage[128], out[256];
    snprintf(storage, sizeof storage, "%s/store", tmp);
    const char *ka = "tok_en-1.thumbprint";
    CHECK(acme_challenge_put(storage, "http-01", "tok_en-1", ka) == 0);
    CHECK(acme_http01_key_authorization(storage, "tok_en-1", out, sizeof out) == (int)strlen(ka));
    CHECK_STR(out, ka);
    CHECK(acme_http01_key_authorization(storage, "tok_en-1", out, 5) == -ENOSPC);
    CHECK(acme_http01_key_authorization(storage, "other", out, sizeof out) == -ENOENT);
    CHECK(acme_http01_key_authorization(storage, "../account.key", out, sizeof out) == -EINVAL);
    CHECK(acme_http01_key_authorization(storage, "", out, sizeof out) == -EINVAL);
    CHECK(acme_http01_key_authorization(storage, "a/b", out, sizeof out) == -EINVAL);
    acme_challenge_remove(storage, "http-01", "tok_en-1");
    CHECK(acme_http01_key_authorization(storage, "tok_en-1", out, sizeof out) == -ENOENT);

    X509 *x;
    EVP_PKEY *k;
    CHECK(acme_tlsalpn01_answer(storage, "mail.alpha.test", &x, &k) == -ENOENT);
    CHECK(acme_tlsalpn01_answer(storage, "../store", &x, &k) == -EINVAL);
    CHECK(acme_challenge_put(storage, "tls-alpn-01", "mail.alpha.test", ka) == 0);
    CHECK(acme_tlsalpn01_answer(storage, "mail.alpha.test", &x, &k) == 0);
    if (x && k) {
        CHECK(X509_check_private_key(x, k) == 1);
        CHECK(X509_check_host(x, "mail.alpha.test", 0, 0, NULL) == 1);
        CHECK(X509_check_host(x, "webmail.alpha.test", 0, 0, NULL) != 1);
        ASN1_OBJECT *oid = OBJ_txt2obj("1.3.6.1.5.5.7.1.31", 1);
        int at = X509_get_ext_by_OBJ(x, oid, -1);
        X509_EXTENSION *ext = at >= 0 ? X509_get_ext(x, at) : NULL;
        CHECK(ext && X509_EXTENSION_get_critical(ext) == 1);
        unsigned char want[34] = { 0x04, 0x20 };
        EVP_Digest(ka, strlen(ka), want + 2, NULL, EVP_sha256(), NULL);
        const ASN1_OCTET_STRING *d = ext ? X509_EXTENSION_get_data(ext) : NULL;
        CHECK(d && ASN1_STRING_length(d) == 34 && memcmp(ASN1_STRING_get0_data(d), want, 34) == 0);
        ASN1_OBJECT_free(oid);
    }
    X509_free(x);
    EVP_PKEY_free(k);
}

static void *lock_alpha(void *storage)
{
    return (void *)(intptr_t)acme_lock(storage, "alpha.test", 600);
}

static void write_lock_body(const char *path, long at)
{
    FILE *f = fopen(path, "w");
    CHECK(f && fprintf(f, "1 otherhost 1 %ld\n", at) > 0 && fclose(f) == 0);
}

static void test_storage(void)
{
    char storage[128], path[256], body[160] = "", owner[64];
    FILE *f;
    void *got;
    pthread_t th;
    snprintf(storage, sizeof storage, "%s/store", tmp);
    snprintf(path, sizeof path, "%s/locks/alpha.test.lock", storage);
    struct utimbuf old = { time(NULL) - 700, time(NULL) - 700 };

    int a = acme_lock(storage, "alpha.test", 600), b;
    CHECK(a >= 0);
    CHECK(acme_lock(storage, "alpha.test", 600) == -EBUSY);
    /* Each order thread holds its own: another thread of this process finds it taken. */
    CHECK(pthread_create(&th, NULL, lock_alpha, storage) == 0 && pthread_join(th, &got) == 0);
    CHECK((intptr_t)got == -EBUSY);
    CHECK((b = acme_lock(storage, "beta.test", 600)) >= 0);
    /* The body names this process and thread. */
    f = fopen(path, "r");
    CHECK(f && fgets(body, sizeof body, f) && fclose(f) == 0);
    snprintf(owner, sizeof owner, "%ld ", (long)getpid());
    CHECK(strncmp(body, owner, strlen(owner)) == 0);
    /* A holder that stalls past the staleness keeps its lock: its kernel lock says it lives
     * (with lock files alone, a second instance would have taken it over here). */
    CHECK(utime(path, &old) == 0);
    CHECK(acme_lock(storage, "alpha.test", 600) == -EBUSY);
    acme_unlock(storage, "alpha.test", a);
    CHECK(access(path, F_OK) != 0);
    acme_unlock(storage, "beta.test", b);

    /* A holder that died leaves its file and no kernel lock: the file counts while it is
     * recent (its host may not share our locks), and is taken over once it is STALE old. */
    write_lock_body(path, (long)time(NULL));
    CHECK(acme_lock(storage, "alpha.test", 600) == -EBUSY);
    CHECK(utime(path, &old) == 0);
    CHECK((a = acme_lock(storage, "alpha.test", 600)) >= 0);
    f = fopen(path, "r");
    CHECK(f && fgets(body, sizeof body, f) && fclose(f) == 0);
    CHECK(strncmp(body, owner, strlen(owner)) == 0);
    /* Taken over by a host that does not see our kernel lock while this holder stalled:
     * unlocking leaves it theirs. */
    write_lock_body(path, (long)time(NULL));
    acme_unlock(storage, "alpha.test", a);
    CHECK(access(path, F_OK) == 0);
    CHECK(acme_lock(storage, "alpha.test", 600) == -EBUSY);
    CHECK(unlink(path) == 0);
    /* An empty file (a taker between its open and its lock, or a crash before the body was
     * written) is no holder. */
    f = fopen(path, "w");
    CHECK(f && fclose(f) == 0);
    CHECK((a = acme_lock(storage, "alpha.test", 600)) >= 0);
    acme_unlock(storage, "alpha.test", a);
    CHECK(access(path, F_OK) != 0);
    acme_unlock(storage, "alpha.test", -EBUSY);   /* a failed lock: nothing to release */

    /* A pair: the link swapped, the old archive folder gone, the key 0600. */
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_set_pubkey(x, k);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_sign(x, k, EVP_sha256());
    BIO *cb = BIO_new(BIO_s_mem()), *kb = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(cb, x);
    PEM_write_bio_PrivateKey(kb, k, NULL, NULL, 0, NULL, NULL);
    char *cp, *kp;
    long cl = BIO_get_mem_data(cb, &cp), kl = BIO_get_mem_data(kb, &kp);
    char first[PATH_MAX] = "", second[PATH_MAX] = "";
    CHECK(acme_store_pair(storage, "alpha.test", cp, (size_t)cl, kp, (size_t)kl) == 0);
    snprintf(path, sizeof path, "%s/certs/alpha.test", storage);
    CHECK(realpath(path, first) != NULL);
    CHECK(acme_store_pair(storage, "alpha.test", cp, (size_t)cl, kp, (size_t)kl) == 0);
    CHECK(realpath(path, second) != NULL && strcmp(first, second) != 0);
    struct stat st;
    CHECK(stat(first, &st) < 0 && errno == ENOENT);
    snprintf(path, sizeof path, "%s/certs/alpha.test/privkey.pem", storage);
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
    X509 *back = acme_stored_cert(storage, "alpha.test");
    CHECK(back && X509_cmp(back, x) == 0);
    X509_free(back);
    CHECK(acme_stored_cert(storage, "beta.test") == NULL);

    /* A write that fails half-way (here a file size limit: the key fits, the chain does not;
     * a full disk does the same): an error with its errno, the pair in service untouched, and
     * nothing half-written left in storage. */
    char padded[8192];
    memset(padded, '#', sizeof padded);
    memcpy(padded, cp, (size_t)cl);
    struct rlimit was, small = { 4096, 4096 };
    getrlimit(RLIMIT_FSIZE, &was);
    small.rlim_max = was.rlim_max;
    signal(SIGXFSZ, SIG_IGN);
    CHECK(setrlimit(RLIMIT_FSIZE, &small) == 0);
    CHECK(acme_store_pair(storage, "alpha.test", padded, sizeof padded, kp, (size_t)kl) == -EFBIG);
    CHECK(acme_store_pair(storage, "beta.test", padded, sizeof padded, kp, (size_t)kl) == -EFBIG);
    setrlimit(RLIMIT_FSIZE, &was);
    signal(SIGXFSZ, SIG_DFL);
    snprintf(path, sizeof path, "%s/certs/alpha.test", storage);
    CHECK(realpath(path, first) != NULL && strcmp(first, second) == 0);
    CHECK(acme_stored_cert(storage, "beta.test") == NULL);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "test \"$(ls -A %s/archive)\" = \"$(basename %s)\" && "
             "test -z \"$(find %s -name '*.tmp*' -o -name '.*' -path '*/certs/*')\"", storage,
             second, storage);
    CHECK(system(cmd) == 0);
    BIO_free(cb);
    BIO_free(kb);
    X509_free(x);
    EVP_PKEY_free(k);
}

/* How long to wait: polls start soon and double to two seconds, never before Retry-After;
 * back-off doubles to its cap unless the CA asks for longer; the budget refills with time. */
static void test_pace(void)
{
    CHECK(acme_poll_delay_ms(0, -1) == 50);
    CHECK(acme_poll_delay_ms(1, -1) == 100);
    CHECK(acme_poll_delay_ms(5, -1) == 1600);
    CHECK(acme_poll_delay_ms(6, -1) == 2000);
    CHECK(acme_poll_delay_ms(400, -1) == 2000);
    CHECK(acme_poll_delay_ms(0, 3) == 3000);     /* Retry-After wins when longer */
    CHECK(acme_poll_delay_ms(9, 1) == 2000);
    CHECK(acme_poll_delay_ms(0, 0) == 50);
    CHECK(acme_poll_delay_ms(0, 86400) == 86400000L);

    /* The order's deadline: a look that fits in what is left of it is waited for, one that
     * would come after it (also by the CA's Retry-After) abandons the order. */
    CHECK(acme_poll_wait_ms(0, -1, 0, 120000) == 50);
    CHECK(acme_poll_wait_ms(6, -1, 118000, 120000) == 2000);      /* exactly at the limit */
    CHECK(acme_poll_wait_ms(6, -1, 118001, 120000) == -1);
    CHECK(acme_poll_wait_ms(0, -1, 119950, 120000) == 50);
    CHECK(acme_poll_wait_ms(0, -1, 119951, 120000) == -1);
    CHECK(acme_poll_wait_ms(0, -1, 120000, 120000) == -1);
    CHECK(acme_poll_wait_ms(3, -1, 500000, 120000) == -1);       /* long past it */
    CHECK(acme_poll_wait_ms(0, 121, 0, 120000) == -1);           /* Retry-After past the end */
    CHECK(acme_poll_wait_ms(0, 120, 0, 120000) == 120000);
    CHECK(acme_poll_wait_ms(0, 30, 100000, 120000) == -1);
    /* Polls at 50 ms doubling to 2 s, against a 10 s limit: the order gives up after the look
     * at 9.15 s (50+100+...+1600 = 3150 ms, then 2 s each): the next would come after 10 s. */
    long elapsed = 0, ms;
    unsigned looks = 0;
    while ((ms = acme_poll_wait_ms(looks, -1, elapsed, 10000)) >= 0) {
        elapsed += ms;
        looks++;
    }
    CHECK(looks == 9 && elapsed == 9150);

    /* renewalInfo is asked again when the CA says, within a minute and a day; six hours when
     * it says nothing. */
    CHECK(acme_ari_recheck_s(-1) == 21600);
    CHECK(acme_ari_recheck_s(0) == 60);
    CHECK(acme_ari_recheck_s(59) == 60);
    CHECK(acme_ari_recheck_s(60) == 60);
    CHECK(acme_ari_recheck_s(3600) == 3600);
    CHECK(acme_ari_recheck_s(86400) == 86400);
    CHECK(acme_ari_recheck_s(86401) == 86400);

    CHECK(acme_backoff_s(0, 60, 86400, -1) == 60);
    CHECK(acme_backoff_s(1, 60, 86400, -1) == 120);
    CHECK(acme_backoff_s(10, 60, 86400, -1) == 61440);
    CHECK(acme_backoff_s(11, 60, 86400, -1) == 86400);
    CHECK(acme_backoff_s(4000000000u, 60, 86400, -1) == 86400);   /* no shift overflow */
    CHECK(acme_backoff_s(0, 60, 86400, 600) == 600);
    CHECK(acme_backoff_s(3, 60, 86400, 5) == 480);

    /* 2 per 8 s, starting full: two now, the third when a token has grown back (4 s). */
    struct acme_bucket b = { .tokens = 2, .at = 1000 };
    time_t when = 0;
    CHECK(acme_bucket_take(&b, 2, 8, 1000, &when));
    CHECK(acme_bucket_take(&b, 2, 8, 1000, &when));
    CHECK(!acme_bucket_take(&b, 2, 8, 1000, &when) && when == 1005);
    CHECK(!acme_bucket_take(&b, 2, 8, 1002, &when) && when == 1005);
    CHECK(acme_bucket_take(&b, 2, 8, 1004, &when));
    /* A long pause refills to the cap, not beyond. */
    CHECK(acme_bucket_take(&b, 2, 8, 5000, &when));
    CHECK(acme_bucket_take(&b, 2, 8, 5000, &when));
    CHECK(!acme_bucket_take(&b, 2, 8, 5000, &when));
    /* A clock that steps back takes nothing away and gives nothing. */
    CHECK(!acme_bucket_take(&b, 2, 8, 4000, &when));
}

/* The budget as the file in storage holds it: one whole line of integers, never a piece of one. */
static void test_bucket_file(void)
{
    char text[64];
    struct acme_bucket b = { .tokens = 12.25, .at = 1796406313 }, r = { .tokens = -1, .at = -1 };
    int n = acme_bucket_format(&b, text, sizeof text);
    CHECK(n == 42 && strcmp(text, "00000000000012250000 00000000001796406313\n") == 0);
    CHECK(acme_bucket_parse(text, (size_t)n, &r) && r.tokens == 12.25 && r.at == 1796406313);
    CHECK(acme_bucket_format(&b, text, 5) == -ENOSPC);
    /* A millionth of a token survives (a budget of 50 a week refills 0.0004 in 5 s). */
    b.tokens = 0.000413;
    n = acme_bucket_format(&b, text, sizeof text);
    CHECK(acme_bucket_parse(text, (size_t)n, &r) && r.tokens > 0.000412 && r.tokens < 0.000414);
    /* Out of range in memory is written in range: never below 0, never above a billion. */
    b = (struct acme_bucket){ .tokens = -3, .at = -5 };
    n = acme_bucket_format(&b, text, sizeof text);
    CHECK(acme_bucket_parse(text, (size_t)n, &r) && r.tokens == 0 && r.at == 0);
    /* Cut at every byte: no prefix of a line is a budget. */
    b = (struct acme_bucket){ .tokens = 299, .at = 1796406313 };
    n = acme_bucket_format(&b, text, sizeof text);
    for (int cut = 0; cut < n; cut++) {
        r = (struct acme_bucket){ .tokens = 7, .at = 7 };
        CHECK(!acme_bucket_parse(text, (size_t)cut, &r) && r.tokens == 7 && r.at == 7);
    }
    static const char *const bad[] = {
        "\n", "1 5", "1 5\n\n", "-1 5\n", "+1 5\n", "1.5 5\n", "0x10 5\n", "1 x\n", "1 -5\n",
        "1  5\n", " 1 5\n", "1,5 5\n", "1 5 \n", "1 5x\n", "1\n", "1 123456789012345678901\n",
        "1000000000000001 5\n", "1 99999999999999999999\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        r = (struct acme_bucket){ .tokens = 7, .at = 7 };
        CHECK(!acme_bucket_parse(bad[i], strlen(bad[i]), &r) && r.tokens == 7 && r.at == 7);
    }
    CHECK(!acme_bucket_parse("1 5\0\n", 5, &r));
    CHECK(acme_bucket_parse("0 0\n", 4, &r) && r.tokens == 0 && r.at == 0);
    CHECK(acme_bucket_parse("1000000 5\n", 10, &r) && r.tokens == 1 && r.at == 5);
}

static bool read_text(const char *path, char *out, size_t cap)
{
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(out, 1, cap - 1, f) : 0;
    if (f)
        fclose(f);
    out[n] = '\0';
    return f != NULL;
}

/* The budget shared through storage: two callers (two instances) draw from one. */
static void test_pace_shared(void)
{
    char storage[128], path[256], before[64], after[64];
    snprintf(storage, sizeof storage, "%s/pace-store", tmp);
    CHECK(acme_mkdirs(storage, 0700) == 0);
    struct acme_bucket own = { .tokens = 42, .at = 0 };
    time_t when = 0;
    /* No file yet: a full budget of 2 per 100 s; the third order waits 50 s for a token. */
    CHECK(acme_pace_take_shared(storage, 2, 100, 1000, &own, &when) == 1 && own.tokens == 1);
    CHECK(acme_pace_take_shared(storage, 2, 100, 1000, &own, &when) == 1 && own.tokens == 0);
    snprintf(path, sizeof path, "%s/pace-2-100", storage);
    /* A refusal writes nothing: looks every second neither lose nor round away the refill. */
    CHECK(read_text(path, before, sizeof before));
    CHECK(acme_pace_take_shared(storage, 2, 100, 1010, &own, &when) == 0 && when == 1051);
    CHECK(read_text(path, after, sizeof after) && strcmp(before, after) == 0);
    CHECK(own.tokens > 0.19 && own.tokens < 0.21);  /* the caller's copy follows the file */
    CHECK(acme_pace_take_shared(storage, 2, 100, 1051, &own, &when) == 1);
    struct stat st;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
    /* A slow budget (50 a week) looked at every 5 s refills as it should: one order in ~3.4 h. */
    unsigned taken = 0;
    for (time_t t = 0; t < 86400; t += 5)
        taken += acme_pace_take_shared(storage, 50, 604800, 1000000 + t, &own, &when) == 1;
    CHECK(taken == 50 + 7);   /* the first 50 at once, then one per 12,096 s */
    /* Other settings, another budget (a fleet changing its pace moves to a fresh one). */
    CHECK(acme_pace_take_shared(storage, 3, 100, 1051, &own, &when) == 1);
    /* A file that is not a budget counts as an empty one, refilled from now. */
    FILE *f = fopen(path, "w");
    CHECK(f && fputs("garbage", f) >= 0 && fclose(f) == 0);
    CHECK(acme_pace_take_shared(storage, 2, 100, 2000, &own, &when) == 0 && when == 2051);
    CHECK(acme_pace_take_shared(storage, 2, 100, 2051, &own, &when) == 1);
    /* A host whose clock ran ten years ahead wrote its time: the others still refill. */
    f = fopen(path, "w");
    CHECK(f && fputs("0 317000000\n", f) >= 0 && fclose(f) == 0);
    CHECK(acme_pace_take_shared(storage, 2, 100, 3000, &own, &when) == 0 && when == 3051);
    CHECK(acme_pace_take_shared(storage, 2, 100, 3051, &own, &when) == 1);
    /* Another holder of the lock (another instance, or another of our threads: the lock is the
     * open file's): after a second of trying, "not now", the caller's copy untouched. */
    int held = open(path, O_RDWR);
    struct flock lk = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
    CHECK(held >= 0 && fcntl(held, F_OFD_SETLK, &lk) == 0);
    own = (struct acme_bucket){ .tokens = 42, .at = 0 };
    time_t start = time(NULL);
    CHECK(acme_pace_take_shared(storage, 2, 100, 5000, &own, &when) == 0 && own.tokens == 42);
    CHECK(when >= start + 1 && time(NULL) - start <= 3);
    /* ... and gone with its holder. */
    close(held);
    CHECK(acme_pace_take_shared(storage, 2, 100, 5000, &own, &when) == 1);
    /* Storage that cannot be used: the caller counts on its own. */
    snprintf(path, sizeof path, "%s/pace-2-100/below-a-file", storage);
    CHECK(acme_pace_take_shared(path, 2, 100, 5000, &own, &when) < 0);
}

int main(void)
{
    test_pace();
    test_bucket_file();
    snprintf(tmp, sizeof tmp, "/tmp/acme-test-XXXXXX");
    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        return 2;
    }
    test_pace_shared();
    test_rfc3339();
    test_retry_after();
    test_header();
    test_ari();
    test_jws();
    test_challenges();
    test_storage();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", tmp);
    return check_report("test_acme");
}
