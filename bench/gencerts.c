/* gencerts: makes N customer domains' certificates in certbot's layout, for the scale benchmark
 * (bench/scale) and for anyone who wants 100,000 domains on disk quickly.
 *
 *   DIR/ca.pem                                  the test root (trust anchor for clients)
 *   DIR/ca/{root,intermediate}.{pem,key}        the test CA; reused by later runs (--start, --renew)
 *   DIR/ca/rsa-shared.key                       the one RSA-2048 key every RSA domain shares
 *   DIR/default/{fullchain,privkey}.pem         a server-wide pair (mail.scale.test) for tls.default_*
 *   DIR/archive/DOMAIN/{cert,chain,fullchain,privkey}K.pem
 *   DIR/live/DOMAIN/{cert,chain,fullchain,privkey}.pem -> ../../archive/DOMAIN/...K.pem
 *
 * Domain I (0-based, --start adds an offset) is dI.scale.test. Its certificate names
 * mail.dI.scale.test and webmail.dI.scale.test, except that every --wildcard-every'th domain
 * (I % W == W - 1) gets *.dI.scale.test and dI.scale.test instead. Every --rsa-every'th domain
 * (I % R == R / 2) has an RSA-2048 key; all other keys are ECDSA P-256, one fresh key per domain.
 * RSA key generation takes ~50-100 ms, so all RSA domains share one key (generated once, kept in
 * DIR/ca/rsa-shared.key); each still has its own privkey file, which the proxy parses.
 *
 * Speed: everything runs in one process on the OpenSSL 3 API, -j threads (default: one per CPU).
 * OpenSSL 3.0 runs an encoder chain for every PEM_write_bio_PrivateKey() and an encoder plus a
 * decoder chain for every X509_set_pubkey() (together most of the cost of a certificate), so a
 * P-256 key is written as PKCS#8 straight from its scalar and point (the DER of a P-256
 * PrivateKeyInfo is a fixed 138-byte template; checked once per run by parsing a key back) and
 * its point goes into the certificate's SubjectPublicKeyInfo directly. What remains is key
 * generation, one ECDSA signature and the file system (on ext4 most of the time goes to inode
 * allocation for the 8 files and links of each domain).
 *
 * --renew NAME does what `certbot renew` does to one lineage: a new key and certificate (same
 * names, same key type) as archive/NAME/{cert,chain,fullchain,privkey}K+1.pem (K = highest
 * existing), then each live link is unlinked and made again pointing at the new file, in
 * certbot's order (cert, privkey, chain, fullchain; storage.py ALL_FOUR / _update_link_to), so a
 * reader can catch the folder half-renewed, as with the real thing. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#define DOMAIN_SUFFIX ".scale.test"
#define NAME_MAX_LEN 256

struct opts {
    long n, start;
    const char *dir;
    const char *renew;
    long wild_every, rsa_every;
    int jobs;
    int days;
    bool quiet;
};

/* What every worker shares, read-only once set up. */
struct ca {
    X509 *root, *inter;
    EVP_PKEY *root_key, *inter_key;
    EVP_PKEY *rsa_key;                    /* shared by every RSA domain; NULL until needed */
    char *rsa_pem;                        /* its PKCS#8 PEM */
    size_t rsa_pem_len;
    char *chain_pem;                      /* the intermediate, PEM */
    size_t chain_pem_len;
    X509_EXTENSION *bc, *ku_ec, *ku_rsa, *eku, *aki;
};

static struct opts o = { .n = -1, .wild_every = 10, .rsa_every = 100, .days = 90 };
static struct ca ca;
static atomic_long next_index;
static atomic_long made_wild, made_rsa;
static atomic_int failed;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "gencerts: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static void die_errno(const char *what, const char *path)
{
    fprintf(stderr, "gencerts: %s %s: %s\n", what, path, strerror(errno));
    exit(1);
}

/* ---- files ---- */

/* snprintf into a PATH_MAX buffer; a path that does not fit is an error, not a truncation. */
__attribute__((format(printf, 2, 3)))
static int pathf(char out[PATH_MAX], const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, PATH_MAX, fmt, ap);
    va_end(ap);
    return n < 0 || n >= PATH_MAX ? -ENAMETOOLONG : 0;
}

static int write_file(const char *path, const void *data, size_t len, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return -errno;
    const char *p = data;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        p += n;
        len -= (size_t)n;
    }
    /* O_TRUNC on an existing file keeps its mode: a key file must not stay readable. */
    if ((mode & 077) != 044 && fchmod(fd, mode) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return close(fd) < 0 ? -errno : 0;
}

static int mkdir_p(const char *path)
{
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
        return -ENAMETOOLONG;
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(buf, 0755) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

/* LINK -> TARGET, replacing LINK atomically when it exists (certbot's way: the new link is made
 * beside the old one and renamed over it). */
static int set_link(const char *target, const char *link)
{
    if (symlink(target, link) == 0)
        return 0;
    if (errno != EEXIST)
        return -errno;
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof(tmp), "%s.new", link) >= (int)sizeof(tmp))
        return -ENAMETOOLONG;
    unlink(tmp);
    if (symlink(target, tmp) < 0)
        return -errno;
    if (rename(tmp, link) < 0) {
        int e = errno;
        unlink(tmp);
        return -e;
    }
    return 0;
}

/* ---- PEM in memory ---- */

struct buf {
    char *p;
    size_t len, cap;
};

static void buf_add(struct buf *b, const void *data, size_t len)
{
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            die("out of memory");
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, len);
    b->len += len;
}

/* Base64 in 64-column lines between BEGIN/END lines. */
static void pem_add(struct buf *b, const char *label, const unsigned char *der, size_t len)
{
    char line[80];
    unsigned char enc[80];
    int n = snprintf(line, sizeof(line), "-----BEGIN %s-----\n", label);
    buf_add(b, line, (size_t)n);
    for (size_t off = 0; off < len; off += 48) {
        size_t chunk = len - off < 48 ? len - off : 48;
        int m = EVP_EncodeBlock(enc, der + off, (int)chunk);
        enc[m] = '\n';
        buf_add(b, enc, (size_t)m + 1);
    }
    n = snprintf(line, sizeof(line), "-----END %s-----\n", label);
    buf_add(b, line, (size_t)n);
}

static void pem_add_x509(struct buf *b, X509 *x)
{
    unsigned char *der = NULL;
    int len = i2d_X509(x, &der);
    if (len <= 0)
        die("cannot encode a certificate");
    pem_add(b, "CERTIFICATE", der, (size_t)len);
    OPENSSL_free(der);
}

/* PKCS#8 PrivateKeyInfo of a P-256 key, as OpenSSL itself writes it (RFC 5915 ECPrivateKey with
 * the public key, curve named in the AlgorithmIdentifier only). */
static const unsigned char p256_head[] = {
    0x30, 0x81, 0x87, 0x02, 0x01, 0x00,
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
    0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    0x04, 0x6d, 0x30, 0x6b, 0x02, 0x01, 0x01, 0x04, 0x20,
};
static const unsigned char p256_mid[] = { 0xa1, 0x44, 0x03, 0x42, 0x00 };
#define P256_DER_LEN (sizeof(p256_head) + 32 + sizeof(p256_mid) + 65)

static int p256_pkcs8(const EVP_PKEY *key, unsigned char der[P256_DER_LEN])
{
    BIGNUM *priv = NULL;
    unsigned char *p = der;
    size_t publen = 0;
    memcpy(p, p256_head, sizeof(p256_head));
    p += sizeof(p256_head);
    if (!EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_PRIV_KEY, &priv) ||
        BN_bn2binpad(priv, p, 32) != 32) {
        BN_clear_free(priv);
        return -1;
    }
    BN_clear_free(priv);
    p += 32;
    memcpy(p, p256_mid, sizeof(p256_mid));
    p += sizeof(p256_mid);
    if (!EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_PUB_KEY, p, 65, &publen) ||
        publen != 65 || p[0] != 0x04)
        return -1;
    return 0;
}

static void pem_add_key(struct buf *b, EVP_PKEY *key)
{
    if (EVP_PKEY_is_a(key, "EC")) {
        unsigned char der[P256_DER_LEN];
        if (p256_pkcs8(key, der) < 0)
            die("cannot encode an ECDSA key");
        pem_add(b, "PRIVATE KEY", der, sizeof(der));
        OPENSSL_cleanse(der, sizeof(der));
        return;
    }
    /* RSA (rare, and one shared key): the ordinary, slow, encoder path. */
    BIO *bio = BIO_new(BIO_s_mem());
    char *data;
    if (!bio || !PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL))
        die("cannot encode a key");
    long n = BIO_get_mem_data(bio, &data);
    buf_add(b, data, (size_t)n);
    BIO_free(bio);
}

/* Once per run: the template must give back the very key it was made from. */
static void check_p256_template(EVP_PKEY *key)
{
    struct buf b = { 0 };
    pem_add_key(&b, key);
    BIO *bio = BIO_new_mem_buf(b.p, (int)b.len);
    EVP_PKEY *back = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    if (!back || EVP_PKEY_eq(key, back) != 1)
        die("internal error: the PKCS#8 template does not round-trip");
    BIGNUM *a = NULL, *c = NULL;
    if (!EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_PRIV_KEY, &a) ||
        !EVP_PKEY_get_bn_param(back, OSSL_PKEY_PARAM_PRIV_KEY, &c) || BN_cmp(a, c) != 0)
        die("internal error: the PKCS#8 template does not round-trip the private scalar");
    BN_clear_free(a);
    BN_clear_free(c);
    EVP_PKEY_free(back);
    BIO_free(bio);
    OPENSSL_cleanse(b.p, b.len);
    free(b.p);
}

/* ---- keys and certificates ---- */

static EVP_PKEY_CTX *ec_keygen_ctx(void)
{
    EVP_PKEY_CTX *kctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    if (!kctx || EVP_PKEY_keygen_init(kctx) <= 0 ||
        EVP_PKEY_CTX_set_group_name(kctx, "P-256") <= 0)
        die("cannot set up P-256 key generation");
    return kctx;
}

static EVP_PKEY *ec_key(EVP_PKEY_CTX *kctx)
{
    EVP_PKEY *key = NULL;
    if (EVP_PKEY_generate(kctx, &key) <= 0)
        die("P-256 key generation failed");
    return key;
}

static X509_EXTENSION *ext_conf(X509 *issuer, X509 *subject, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer, subject, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (!ext)
        die("cannot build an extension");
    return ext;
}

static void set_serial(X509 *x)
{
    unsigned char serial[16];
    if (RAND_bytes(serial, sizeof(serial)) != 1)
        die("RAND_bytes failed");
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    BIGNUM *bn = BN_bin2bn(serial, sizeof(serial), NULL);
    if (!bn || !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)))
        die("cannot set a serial number");
    BN_free(bn);
}

static void set_subject_cn(X509 *x, const char *cn)
{
    X509_NAME *name = X509_get_subject_name(x);
    if (!X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1,
                                    0))
        die("cannot set a subject");
}

static X509 *ca_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key,
                     const char *bc)
{
    X509 *x = X509_new();
    if (!x)
        die("out of memory");
    X509_set_version(x, X509_VERSION_3);
    set_serial(x);
    set_subject_cn(x, cn);
    X509_set_issuer_name(x, X509_get_subject_name(issuer ? issuer : x));
    X509_gmtime_adj(X509_getm_notBefore(x), -86400);
    X509_time_adj_ex(X509_getm_notAfter(x), 3650, 0, NULL);
    X509_set_pubkey(x, key);
    X509 *iss = issuer ? issuer : x;
    const char *exts[][2] = {
        { "basicConstraints", bc },
        { "keyUsage", "critical,keyCertSign,cRLSign" },
        { "subjectKeyIdentifier", "hash" },
        { "authorityKeyIdentifier", "keyid:always" },
    };
    for (size_t i = 0; i < sizeof(exts) / sizeof(exts[0]); i++) {
        X509_EXTENSION *ext = ext_conf(iss, x, OBJ_sn2nid(exts[i][0]), exts[i][1]);
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
    }
    if (!X509_sign(x, issuer_key, EVP_sha256()))
        die("cannot sign a CA certificate");
    return x;
}

/* X509_set_pubkey() in OpenSSL 3.0 encodes the key to DER through an encoder chain and decodes
 * it back through a decoder chain, which is half the cost of a certificate. A P-256 point goes
 * into the SubjectPublicKeyInfo as it is, so that is done directly. */
static void set_pubkey(X509 *x, EVP_PKEY *key)
{
    unsigned char point[65];
    size_t len = 0;
    if (!EVP_PKEY_is_a(key, "EC") ||
        !EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof(point),
                                         &len) ||
        len != sizeof(point)) {
        if (!X509_set_pubkey(x, key))
            die("cannot set a public key");
        return;
    }
    unsigned char *bits = OPENSSL_memdup(point, len);
    if (!bits || !X509_PUBKEY_set0_param(X509_get_X509_PUBKEY(x),
                                         OBJ_nid2obj(NID_X9_62_id_ecPublicKey), V_ASN1_OBJECT,
                                         OBJ_nid2obj(NID_X9_62_prime256v1), bits, (int)len))
        die("cannot set a public key");
}

/* A leaf for KEY naming NAMES[0..N), CN = NAMES[0], signed by the intermediate. */
static X509 *leaf_cert(EVP_PKEY *key, const char *const *names, size_t n, bool rsa)
{
    X509 *x = X509_new();
    if (!x)
        die("out of memory");
    X509_set_version(x, X509_VERSION_3);
    set_serial(x);
    set_subject_cn(x, names[0]);
    X509_set_issuer_name(x, X509_get_subject_name(ca.inter));
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_time_adj_ex(X509_getm_notAfter(x), o.days, 0, NULL);
    set_pubkey(x, key);
    X509_add_ext(x, ca.bc, -1);
    X509_add_ext(x, rsa ? ca.ku_rsa : ca.ku_ec, -1);
    X509_add_ext(x, ca.eku, -1);
    X509_add_ext(x, ca.aki, -1);

    GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
    for (size_t i = 0; gens && i < n; i++) {
        GENERAL_NAME *g = GENERAL_NAME_new();
        ASN1_IA5STRING *s = ASN1_IA5STRING_new();
        if (!g || !s || !ASN1_STRING_set(s, names[i], -1))
            die("out of memory");
        GENERAL_NAME_set0_value(g, GEN_DNS, s);
        sk_GENERAL_NAME_push(gens, g);
    }
    if (!gens || !X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT))
        die("cannot add subjectAltName");
    GENERAL_NAMES_free(gens);
    if (!X509_sign(x, ca.inter_key, EVP_sha256()))
        die("cannot sign a certificate");
    return x;
}

/* ---- the CA: made on the first run, read back on later ones ---- */

static X509 *read_cert(const char *path)
{
    FILE *f = fopen(path, "r");
    X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    return x;
}

static EVP_PKEY *read_key(const char *path)
{
    FILE *f = fopen(path, "r");
    EVP_PKEY *k = f ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    return k;
}

static void path_in(char *out, size_t size, const char *rel)
{
    if (snprintf(out, size, "%s/%s", o.dir, rel) >= (int)size) {
        errno = ENAMETOOLONG;
        die_errno("path too long:", rel);
    }
}

static void write_pem_file(const char *rel, const struct buf *b, mode_t mode)
{
    char path[PATH_MAX];
    path_in(path, sizeof(path), rel);
    int rc = write_file(path, b->p, b->len, mode);
    if (rc < 0) {
        errno = -rc;
        die_errno("cannot write", path);
    }
}

static void ca_setup(EVP_PKEY_CTX *kctx)
{
    char p1[PATH_MAX], p2[PATH_MAX], p3[PATH_MAX], p4[PATH_MAX];
    path_in(p1, sizeof(p1), "ca/root.pem");
    path_in(p2, sizeof(p2), "ca/root.key");
    path_in(p3, sizeof(p3), "ca/intermediate.pem");
    path_in(p4, sizeof(p4), "ca/intermediate.key");
    if (access(p4, F_OK) == 0) {
        ca.root = read_cert(p1);
        ca.root_key = read_key(p2);
        ca.inter = read_cert(p3);
        ca.inter_key = read_key(p4);
        if (!ca.root || !ca.root_key || !ca.inter || !ca.inter_key)
            die("cannot read the test CA in DIR/ca/");
    } else {
        path_in(p1, sizeof(p1), "ca");
        int rc = mkdir_p(p1);
        if (rc < 0) {
            errno = -rc;
            die_errno("cannot create", p1);
        }
        ca.root_key = ec_key(kctx);
        ca.root = ca_cert(ca.root_key, "mailsnid scale test root", NULL, ca.root_key,
                          "critical,CA:TRUE");
        ca.inter_key = ec_key(kctx);
        ca.inter = ca_cert(ca.inter_key, "mailsnid scale test intermediate", ca.root,
                           ca.root_key, "critical,CA:TRUE,pathlen:0");
        struct buf b = { 0 };
        pem_add_x509(&b, ca.root);
        write_pem_file("ca/root.pem", &b, 0644);
        write_pem_file("ca.pem", &b, 0644);
        b.len = 0;
        pem_add_key(&b, ca.root_key);
        write_pem_file("ca/root.key", &b, 0600);
        b.len = 0;
        pem_add_x509(&b, ca.inter);
        write_pem_file("ca/intermediate.pem", &b, 0644);
        b.len = 0;
        pem_add_key(&b, ca.inter_key);
        write_pem_file("ca/intermediate.key", &b, 0600);
        free(b.p);
    }
    struct buf chain = { 0 };
    pem_add_x509(&chain, ca.inter);
    ca.chain_pem = chain.p;
    ca.chain_pem_len = chain.len;

    ca.bc = ext_conf(ca.inter, NULL, NID_basic_constraints, "critical,CA:FALSE");
    ca.ku_ec = ext_conf(ca.inter, NULL, NID_key_usage, "critical,digitalSignature");
    ca.ku_rsa = ext_conf(ca.inter, NULL, NID_key_usage, "critical,digitalSignature,keyEncipherment");
    ca.eku = ext_conf(ca.inter, NULL, NID_ext_key_usage, "serverAuth");
    ca.aki = ext_conf(ca.inter, NULL, NID_authority_key_identifier, "keyid:always");
}

static void rsa_setup(void)
{
    char path[PATH_MAX];
    path_in(path, sizeof(path), "ca/rsa-shared.key");
    ca.rsa_key = read_key(path);
    struct buf b = { 0 };
    if (!ca.rsa_key) {
        ca.rsa_key = EVP_RSA_gen(2048);
        if (!ca.rsa_key)
            die("RSA key generation failed");
        pem_add_key(&b, ca.rsa_key);
        write_pem_file("ca/rsa-shared.key", &b, 0600);
    } else {
        pem_add_key(&b, ca.rsa_key);
    }
    ca.rsa_pem = b.p;
    ca.rsa_pem_len = b.len;
}

/* ---- one lineage ---- */

static void domain_name(long i, char *out, size_t size)
{
    snprintf(out, size, "d%ld" DOMAIN_SUFFIX, i);
}

/* Writes archive/DOMAIN/{cert,chain,fullchain,privkey}VER.pem and points live/DOMAIN at them;
 * RENEW swaps existing links as certbot does (unlink, symlink), otherwise a link in the way is
 * replaced atomically. Returns 0 or -errno, with *where naming the path that failed. */
static int write_lineage(const char *domain, int ver, X509 *leaf, EVP_PKEY *key, bool shared_rsa,
                         bool renew, struct buf *scratch, char *where, size_t where_len)
{
    /* certbot's ALL_FOUR order, which is also the order its links are swapped in. */
    static const char *const kinds[] = { "cert", "privkey", "chain", "fullchain" };
    char adir[PATH_MAX], ldir[PATH_MAX], path[PATH_MAX], target[PATH_MAX];
    int rc;

    if ((rc = pathf(adir, "%s/archive/%s", o.dir, domain)) < 0 ||
        (rc = pathf(ldir, "%s/live/%s", o.dir, domain)) < 0) {
        snprintf(where, where_len, "%s/.../%s", o.dir, domain);
        return rc;
    }
    /* The parents exist (main made them): one mkdir each is enough. */
    if ((mkdir(adir, 0755) < 0 && errno != EEXIST && (rc = mkdir_p(adir)) < 0) ||
        (mkdir(ldir, 0755) < 0 && errno != EEXIST && (rc = mkdir_p(ldir)) < 0)) {
        snprintf(where, where_len, "%s", adir);
        return rc;
    }
    for (size_t k = 0; k < 4; k++) {
        scratch->len = 0;
        mode_t mode = 0644;
        switch (k) {
        case 0: pem_add_x509(scratch, leaf); break;
        case 1:
            mode = 0600;
            if (shared_rsa)
                buf_add(scratch, ca.rsa_pem, ca.rsa_pem_len);
            else
                pem_add_key(scratch, key);
            break;
        case 2: buf_add(scratch, ca.chain_pem, ca.chain_pem_len); break;
        default:
            pem_add_x509(scratch, leaf);
            buf_add(scratch, ca.chain_pem, ca.chain_pem_len);
            break;
        }
        rc = pathf(path, "%s/%s%d.pem", adir, kinds[k], ver);
        if (rc == 0)
            rc = write_file(path, scratch->p, scratch->len, mode);
        if (k == 1)
            OPENSSL_cleanse(scratch->p, scratch->len);
        if (rc < 0) {
            snprintf(where, where_len, "%s", path);
            return rc;
        }
    }
    for (size_t k = 0; k < 4; k++) {
        if ((rc = pathf(target, "../../archive/%s/%s%d.pem", domain, kinds[k], ver)) < 0 ||
            (rc = pathf(path, "%s/%s.pem", ldir, kinds[k])) < 0 ||
            (renew && unlink(path) < 0 && errno != ENOENT && (rc = -errno) < 0) ||
            (rc = set_link(target, path)) < 0) {
            snprintf(where, where_len, "%s", path);
            return rc;
        }
    }
    return 0;
}

static bool is_wild(long i)
{
    return o.wild_every > 0 && i % o.wild_every == o.wild_every - 1;
}

static bool is_rsa(long i)
{
    return o.rsa_every > 0 && i % o.rsa_every == o.rsa_every / 2;
}

static void *worker(void *arg)
{
    (void)arg;
    EVP_PKEY_CTX *kctx = ec_keygen_ctx();
    struct buf scratch = { 0 };
    char domain[NAME_MAX_LEN], n1[NAME_MAX_LEN + 16], n2[NAME_MAX_LEN + 16], where[PATH_MAX];
    for (;;) {
        long j = atomic_fetch_add(&next_index, 1);
        if (j >= o.n || atomic_load(&failed))
            break;
        long i = o.start + j;
        bool wild = is_wild(i), rsa = is_rsa(i);
        domain_name(i, domain, sizeof(domain));
        if (wild) {
            snprintf(n1, sizeof(n1), "*.%s", domain);
            snprintf(n2, sizeof(n2), "%s", domain);
        } else {
            snprintf(n1, sizeof(n1), "mail.%s", domain);
            snprintf(n2, sizeof(n2), "webmail.%s", domain);
        }
        const char *names[] = { n1, n2 };
        EVP_PKEY *key = rsa ? ca.rsa_key : ec_key(kctx);
        X509 *leaf = leaf_cert(key, names, 2, rsa);
        int rc = write_lineage(domain, 1, leaf, key, rsa, false, &scratch, where, sizeof(where));
        X509_free(leaf);
        if (!rsa)
            EVP_PKEY_free(key);
        if (rc < 0) {
            fprintf(stderr, "gencerts: cannot write %s: %s\n", where, strerror(-rc));
            atomic_store(&failed, 1);
            break;
        }
        if (wild)
            atomic_fetch_add(&made_wild, 1);
        if (rsa)
            atomic_fetch_add(&made_rsa, 1);
    }
    free(scratch.p);
    EVP_PKEY_CTX_free(kctx);
    return NULL;
}

static void make_default(EVP_PKEY_CTX *kctx)
{
    char dir[PATH_MAX];
    path_in(dir, sizeof(dir), "default");
    if (access(dir, F_OK) == 0)
        return;
    int rc = mkdir_p(dir);
    if (rc < 0) {
        errno = -rc;
        die_errno("cannot create", dir);
    }
    const char *names[] = { "mail.scale.test", "webmail.scale.test" };
    EVP_PKEY *key = ec_key(kctx);
    X509 *leaf = leaf_cert(key, names, 2, false);
    struct buf b = { 0 };
    pem_add_x509(&b, leaf);
    buf_add(&b, ca.chain_pem, ca.chain_pem_len);
    write_pem_file("default/fullchain.pem", &b, 0644);
    b.len = 0;
    pem_add_key(&b, key);
    write_pem_file("default/privkey.pem", &b, 0600);
    free(b.p);
    X509_free(leaf);
    EVP_PKEY_free(key);
}

/* ---- --renew NAME ---- */

static int renew(EVP_PKEY_CTX *kctx, const char *domain)
{
    char path[PATH_MAX], where[PATH_MAX];
    if (!*domain || strchr(domain, '/') || strcmp(domain, ".") == 0 || strcmp(domain, "..") == 0) {
        fprintf(stderr, "gencerts: --renew: bad lineage name \"%s\"\n", domain);
        return 1;
    }
    if (pathf(path, "%s/live/%s/cert.pem", o.dir, domain) < 0) {
        fprintf(stderr, "gencerts: --renew: name too long\n");
        return 1;
    }
    X509 *old = read_cert(path);
    if (!old) {
        fprintf(stderr, "gencerts: --renew: cannot read %s\n", path);
        return 1;
    }
    /* Same names, same key type, as certbot renews a lineage. */
    char store[8][NAME_MAX_LEN];
    const char *names[8];
    size_t n = 0;
    GENERAL_NAMES *gens = X509_get_ext_d2i(old, NID_subject_alt_name, NULL, NULL);
    for (int k = 0; gens && k < sk_GENERAL_NAME_num(gens) && n < 8; k++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, k);
        if (g->type != GEN_DNS)
            continue;
        const ASN1_IA5STRING *s = g->d.dNSName;
        snprintf(store[n], NAME_MAX_LEN, "%.*s", ASN1_STRING_length(s),
                 (const char *)ASN1_STRING_get0_data(s));
        names[n] = store[n];
        n++;
    }
    GENERAL_NAMES_free(gens);
    bool rsa = EVP_PKEY_is_a(X509_get0_pubkey(old), "RSA");
    X509_free(old);
    if (n == 0) {
        fprintf(stderr, "gencerts: --renew: %s has no DNS names\n", path);
        return 1;
    }
    int ver = 1;
    for (;; ver++) {
        if (pathf(path, "%s/archive/%s/cert%d.pem", o.dir, domain, ver) < 0 ||
            access(path, F_OK) != 0)
            break;
    }
    if (rsa)
        rsa_setup();
    EVP_PKEY *key = rsa ? ca.rsa_key : ec_key(kctx);
    X509 *leaf = leaf_cert(key, names, n, rsa);
    struct buf scratch = { 0 };
    int rc = write_lineage(domain, ver, leaf, key, rsa, true, &scratch, where, sizeof(where));
    free(scratch.p);
    X509_free(leaf);
    if (!rsa)
        EVP_PKEY_free(key);
    if (rc < 0) {
        fprintf(stderr, "gencerts: cannot write %s: %s\n", where, strerror(-rc));
        return 1;
    }
    if (!o.quiet)
        printf("gencerts: renewed %s: archive/%s/{cert,privkey,chain,fullchain}%d.pem, live links "
               "swapped\n", domain, domain, ver);
    return 0;
}

/* ---- main ---- */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: gencerts -n N -o DIR [--start K] [-j THREADS] [--wildcard-every W]\n"
            "                [--rsa-every R] [--days D] [-q]\n"
            "       gencerts -o DIR --renew NAME\n"
            "Makes domains dK.." "d(K+N-1)" DOMAIN_SUFFIX " in certbot's layout under DIR:\n"
            "  archive/D/{cert,chain,fullchain,privkey}1.pem, live/D/*.pem -> ../../archive/D/*1.pem\n"
            "  ECDSA P-256 (a fresh key each), names mail.D and webmail.D, signed by a test\n"
            "  intermediate under a test root (DIR/ca.pem; the CA lives in DIR/ca/ and is reused);\n"
            "  every W-th domain (default 10) is a wildcard (*.D, D), every R-th (default 100) RSA-2048\n"
            "  (one RSA key shared by all of them); W or R = 0: none. DIR/default/ holds a\n"
            "  server-wide pair (mail.scale.test) for tls.default_cert/default_key.\n"
            "  --renew NAME: new key + certificate for live/NAME as archive/NAME/...K+1.pem, then\n"
            "  the live links are swapped one by one (unlink, symlink), as certbot does.\n"
            "  -j THREADS: worker threads (default: online CPUs). -q: no summary line.\n");
}

static long parse_long(const char *opt, const char *v, long min)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < min) {
        fprintf(stderr, "gencerts: %s: bad number \"%s\"\n", opt, v);
        exit(2);
    }
    return x;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "start", required_argument, NULL, 'S' },
        { "renew", required_argument, NULL, 'R' },
        { "wildcard-every", required_argument, NULL, 'W' },
        { "rsa-every", required_argument, NULL, 'A' },
        { "days", required_argument, NULL, 'D' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    long nproc = sysconf(_SC_NPROCESSORS_ONLN);
    o.jobs = nproc > 0 ? (int)nproc : 1;
    int c;
    while ((c = getopt_long(argc, argv, "n:o:j:qh", longopts, NULL)) != -1) {
        switch (c) {
        case 'n': o.n = parse_long("-n", optarg, 0); break;
        case 'o': o.dir = optarg; break;
        case 'j': o.jobs = (int)parse_long("-j", optarg, 1); break;
        case 'q': o.quiet = true; break;
        case 'S': o.start = parse_long("--start", optarg, 0); break;
        case 'R': o.renew = optarg; break;
        case 'W': o.wild_every = parse_long("--wildcard-every", optarg, 0); break;
        case 'A': o.rsa_every = parse_long("--rsa-every", optarg, 0); break;
        case 'D': o.days = (int)parse_long("--days", optarg, 1); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!o.dir || optind != argc || (o.n < 0 && !o.renew) || (o.n >= 0 && o.renew)) {
        usage(stderr);
        return 2;
    }
    if (o.jobs > 64)
        o.jobs = 64;

    double t0 = now_s();
    int rc = mkdir_p(o.dir);
    if (rc < 0) {
        errno = -rc;
        die_errno("cannot create", o.dir);
    }
    EVP_PKEY_CTX *kctx = ec_keygen_ctx();
    {
        EVP_PKEY *probe = ec_key(kctx);
        check_p256_template(probe);
        EVP_PKEY_free(probe);
    }
    ca_setup(kctx);
    make_default(kctx);

    if (o.renew) {
        int status = renew(kctx, o.renew);
        EVP_PKEY_CTX_free(kctx);
        return status;
    }

    char path[PATH_MAX];
    path_in(path, sizeof(path), "archive");
    if ((rc = mkdir_p(path)) < 0) {
        errno = -rc;
        die_errno("cannot create", path);
    }
    path_in(path, sizeof(path), "live");
    if ((rc = mkdir_p(path)) < 0) {
        errno = -rc;
        die_errno("cannot create", path);
    }
    bool any_rsa = false;
    for (long i = o.start; o.rsa_every > 0 && i < o.start + o.n && !any_rsa; i++)
        any_rsa = is_rsa(i);
    if (any_rsa)
        rsa_setup();

    double t1 = now_s();
    int jobs = o.n < o.jobs ? (int)(o.n ? o.n : 1) : o.jobs;
    pthread_t th[64];
    int started = 0;
    for (int k = 0; k < jobs; k++) {
        if (pthread_create(&th[k], NULL, worker, NULL) != 0)
            break;
        started++;
    }
    if (!started)
        die("cannot start a thread");
    for (int k = 0; k < started; k++)
        pthread_join(th[k], NULL);
    double t2 = now_s();
    EVP_PKEY_CTX_free(kctx);
    if (atomic_load(&failed))
        return 1;
    if (!o.quiet) {
        double secs = t2 - t1;
        char first[NAME_MAX_LEN], last[NAME_MAX_LEN];
        domain_name(o.start, first, sizeof(first));
        domain_name(o.start + (o.n ? o.n - 1 : 0), last, sizeof(last));
        printf("gencerts: %ld domains (%s .. %s; %ld wildcard, %ld RSA) in %.2f s with %d "
               "thread(s): %.0f domains/s; setup %.2f s\n",
               o.n, first, last, atomic_load(&made_wild), atomic_load(&made_rsa), secs, started,
               secs > 0 ? (double)o.n / secs : 0.0, t1 - t0);
    }
    return 0;
}
