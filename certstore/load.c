/* load.c: reads one certificate chain + private key pair from PEM files and checks it.
 *
 * Memory per pair is what limits how many customers fit, so the pair keeps only the parsed leaf,
 * the key and a reference to a shared chain: the PEM text is dropped as soon as it is parsed,
 * and intermediates are looked up by the SHA-256 of their DER before they are parsed at all, so
 * the thousandth Let's Encrypt chain costs neither memory nor parsing time. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/decoder.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "certstore/internal.h"

/* A PEM chain or key larger than this is not something we should hold in memory for a moment. */
#define CS_PEM_MAX (1 << 20)
/* Real chains have 1-3 intermediates; the bound keeps a hostile file from costing much. */
#define CS_CHAIN_MAX 16

static int pair_index = -1;
static pthread_once_t pair_index_once = PTHREAD_ONCE_INIT;

/* The pair belongs to its leaf X509 (see internal.h): it goes when the X509 goes. */
static void pair_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                         void *argp)
{
    struct cs_pair *pair = ptr;
    (void)parent; (void)ad; (void)idx; (void)argl; (void)argp;
    if (!pair)
        return;
    EVP_PKEY_free(pair->key);
    cs_chain_unref(pair->chain);
    free(pair);
}

/* OpenSSL copies the ex_data pointer into a duplicate by default; the pair must have exactly one
 * owner, so a copy of the X509 gets none. */
static int pair_ex_dup(CRYPTO_EX_DATA *to, const CRYPTO_EX_DATA *from, void **from_d, int idx,
                       long argl, void *argp)
{
    (void)to; (void)from; (void)idx; (void)argl; (void)argp;
    *from_d = NULL;
    return 1;
}

static void pair_index_init(void)
{
    pair_index = X509_get_ex_new_index(0, NULL, NULL, pair_ex_dup, pair_ex_free);
}

int cs_pair_ex_index(void)
{
    pthread_once(&pair_index_once, pair_index_init);
    return pair_index;
}

const struct cs_pair *cs_pair_of_x509(const X509 *x509)
{
    int idx = cs_pair_ex_index();
    if (!x509 || idx < 0)
        return NULL;
    return X509_get_ex_data(x509, idx);
}

void cs_pair_ref(struct cs_pair *pair)
{
    X509_up_ref(pair->x509);
}

void cs_pair_unref(struct cs_pair *pair)
{
    if (pair)
        X509_free(pair->x509);
}

bool cs_pair_valid_at(const struct cs_pair *pair, time_t now)
{
    return now >= pair->not_before && now <= pair->not_after;
}

void cs_chain_unref(struct cs_chain *chain)
{
    if (chain && atomic_fetch_sub_explicit(&chain->refs, 1, memory_order_acq_rel) == 1) {
        sk_X509_pop_free(chain->certs, X509_free);
        free(chain);
    }
}

/* ---- the loader: per-build state. SHA-256 → chain and SHA-256 → X509 for sharing, and the
 * key decoders. ---- */

struct hslot {
    const unsigned char *key;             /* CS_SHA256_LEN bytes, inside a chain we hold */
    void *val;
};
struct htab {
    struct hslot *slots;
    size_t mask, n;
};
/* OpenSSL 3.0 builds a decoder chain for every PEM_read_bio_PrivateKey() call, which costs
 * ~290 us; reusing one context per (structure, key type) brings a key down to ~15 us, which is
 * what makes 100,000 pairs load in seconds. Each context writes its result to decoded. */
#define CS_DECODERS 8
struct key_decoder {
    const char *structure, *type;
    OSSL_DECODER_CTX *ctx;
};
struct cs_loader {
    struct htab chains;                   /* holds one chain reference per entry */
    struct htab certs;                    /* no references: the chains above hold them */
    struct key_decoder dec[CS_DECODERS];
    size_t n_dec;
    EVP_PKEY *decoded;
};

static void *htab_get(const struct htab *t, const unsigned char *key)
{
    if (!t->slots)
        return NULL;
    uint64_t h;
    memcpy(&h, key, sizeof(h));
    for (size_t s = h & t->mask; t->slots[s].key; s = (s + 1) & t->mask)
        if (memcmp(t->slots[s].key, key, CS_SHA256_LEN) == 0)
            return t->slots[s].val;
    return NULL;
}

static void htab_place(struct htab *t, const unsigned char *key, void *val)
{
    uint64_t h;
    memcpy(&h, key, sizeof(h));
    size_t s = h & t->mask;
    while (t->slots[s].key)
        s = (s + 1) & t->mask;
    t->slots[s].key = key;
    t->slots[s].val = val;
    t->n++;
}

/* The key is already a uniform hash, so its first 8 bytes index the table directly. */
static int htab_put(struct htab *t, const unsigned char *key, void *val)
{
    if (!t->slots || (t->n + 1) * 2 > t->mask + 1) {
        size_t cap = t->slots ? (t->mask + 1) * 2 : 64;
        struct htab bigger = { calloc(cap, sizeof(struct hslot)), cap - 1, 0 };
        if (!bigger.slots)
            return -ENOMEM;
        for (size_t i = 0; t->slots && i <= t->mask; i++)
            if (t->slots[i].key)
                htab_place(&bigger, t->slots[i].key, t->slots[i].val);
        free(t->slots);
        *t = bigger;
    }
    htab_place(t, key, val);
    return 0;
}

struct cs_loader *cs_loader_new(void)
{
    return calloc(1, sizeof(struct cs_loader));
}

void cs_loader_free(struct cs_loader *in)
{
    if (!in)
        return;
    for (size_t i = 0; in->chains.slots && i <= in->chains.mask; i++)
        if (in->chains.slots[i].key)
            cs_chain_unref(in->chains.slots[i].val);
    free(in->chains.slots);
    free(in->certs.slots);
    for (size_t i = 0; i < in->n_dec; i++)
        OSSL_DECODER_CTX_free(in->dec[i].ctx);
    free(in);
}

static int chain_intern(struct cs_loader *in, struct cs_chain *chain)
{
    if (htab_get(&in->chains, chain->hash))
        return 0;
    for (size_t i = 0; i < chain->n; i++)
        if (!htab_get(&in->certs, chain->cert_hash[i]) &&
            htab_put(&in->certs, chain->cert_hash[i], sk_X509_value(chain->certs, (int)i)) < 0)
            return -ENOMEM;
    if (htab_put(&in->chains, chain->hash, chain) < 0)
        return -ENOMEM;
    atomic_fetch_add_explicit(&chain->refs, 1, memory_order_relaxed);
    return 0;
}

int cs_loader_seed(struct cs_loader *in, struct cs_chain *chain)
{
    return chain ? chain_intern(in, chain) : 0;
}

/* ---- files ---- */

static void id_from_stat(const struct stat *st, struct cs_file_id *id)
{
    id->dev = st->st_dev;
    id->ino = st->st_ino;
    id->size = st->st_size;
    id->mtim = st->st_mtim;
}

int cs_file_id_of(const char *path, struct cs_file_id *id)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return -errno;
    id_from_stat(&st, id);
    return 0;
}

bool cs_file_id_eq(const struct cs_file_id *a, const struct cs_file_id *b)
{
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtim.tv_sec == b->mtim.tv_sec && a->mtim.tv_nsec == b->mtim.tv_nsec;
}

/* Reads the whole file through one descriptor, so the identity we record (fstat) is the one of
 * the bytes we parsed even if certbot swaps a symlink meanwhile. */
static int read_file(const char *path, char **out, size_t *len, struct stat *st)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = 0;
    char *buf = NULL;
    if (fstat(fd, st) < 0) {
        rc = -errno;
        goto done;
    }
    if (!S_ISREG(st->st_mode)) {
        rc = -EINVAL;
        goto done;
    }
    if (st->st_size > CS_PEM_MAX) {
        rc = -EFBIG;
        goto done;
    }
    buf = malloc((size_t)st->st_size + 1);
    if (!buf) {
        rc = -ENOMEM;
        goto done;
    }
    size_t got = 0;
    while (got < (size_t)st->st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st->st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            goto done;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    *out = buf;
    *len = got;
    buf = NULL;
done:
    free(buf);
    close(fd);
    return rc;
}

static const char *read_error(int rc)
{
    if (rc == -EINVAL)
        return "not a regular file";
    if (rc == -EFBIG)
        return "file too large";
    return strerror(-rc);
}

static void sha256(const void *data, size_t len, unsigned char *md)
{
    unsigned int mdlen = CS_SHA256_LEN;
    EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
}

static OSSL_DECODER_CTX *decoder_for(struct cs_loader *in, const char *structure,
                                     const char *type)
{
    for (size_t i = 0; i < in->n_dec; i++)
        if (strcmp(in->dec[i].structure, structure) == 0 &&
            (in->dec[i].type == type || (type && in->dec[i].type &&
                                         strcmp(in->dec[i].type, type) == 0)))
            return in->dec[i].ctx;
    if (in->n_dec == CS_DECODERS)
        return NULL;
    OSSL_DECODER_CTX *ctx = OSSL_DECODER_CTX_new_for_pkey(&in->decoded, "DER", structure, type,
                                                          EVP_PKEY_KEYPAIR, NULL, NULL);
    if (ctx)
        in->dec[in->n_dec++] = (struct key_decoder){ structure, type, ctx };
    return ctx;
}

/* The key type of a PKCS#8 blob, so that the decoder can be one narrowed to it: an open-ended
 * PrivateKeyInfo decoder tries every key type and costs ~70 us per key. */
static const char *pkcs8_type(const unsigned char *der, long len)
{
    const unsigned char *p = der;
    const ASN1_OBJECT *alg = NULL;
    const char *type = NULL;
    PKCS8_PRIV_KEY_INFO *p8 = d2i_PKCS8_PRIV_KEY_INFO(NULL, &p, len);
    if (p8 && PKCS8_pkey_get0(&alg, NULL, NULL, NULL, p8)) {
        switch (OBJ_obj2nid(alg)) {
        case NID_X9_62_id_ecPublicKey: type = "EC"; break;
        case NID_rsaEncryption: type = "RSA"; break;
        case NID_rsassaPss: type = "RSA-PSS"; break;
        case NID_ED25519: type = "ED25519"; break;
        case NID_ED448: type = "ED448"; break;
        default: break;
        }
    }
    PKCS8_PRIV_KEY_INFO_free(p8);
    return type;
}

/* Takes the first private key block of the file: PKCS#8 (certbot), or the traditional SEC1 /
 * PKCS#1 forms older tools write. EC PARAMETERS and certificate blocks are passed over. */
static EVP_PKEY *parse_key(struct cs_loader *in, const char *buf, size_t len, const char **why)
{
    EVP_PKEY *key = NULL;
    BIO *bio = BIO_new_mem_buf(buf, (int)len);

    *why = "no private key found";
    for (;;) {
        char *name = NULL, *header = NULL;
        unsigned char *data = NULL;
        long dlen = 0;
        if (!bio || !PEM_read_bio_ex(bio, &name, &header, &data, &dlen,
                                     PEM_FLAG_SECURE | PEM_FLAG_EAY_COMPATIBLE))
            break;
        const char *structure = NULL, *type = NULL;
        bool encrypted = strstr(header, "ENCRYPTED") || strcmp(name, PEM_STRING_PKCS8) == 0;
        if (encrypted) {
            *why = "the private key is encrypted; mailsnid needs it in clear";
        } else if (strcmp(name, PEM_STRING_PKCS8INF) == 0) {
            structure = "PrivateKeyInfo";
            type = pkcs8_type(data, dlen);
        } else if (strcmp(name, PEM_STRING_ECPRIVATEKEY) == 0) {
            structure = "type-specific";
            type = "EC";
        } else if (strcmp(name, PEM_STRING_RSA) == 0) {
            structure = "type-specific";
            type = "RSA";
        }
        bool done = structure || encrypted;
        if (structure) {
            OSSL_DECODER_CTX *ctx = decoder_for(in, structure, type);
            const unsigned char *p = data;
            size_t left = (size_t)dlen;
            in->decoded = NULL;
            if (ctx && OSSL_DECODER_from_data(ctx, &p, &left) && in->decoded) {
                key = in->decoded;
            } else {
                EVP_PKEY_free(in->decoded);
                *why = "cannot parse the private key";
            }
            in->decoded = NULL;
        }
        OPENSSL_free(name);
        OPENSSL_free(header);
        OPENSSL_secure_clear_free(data, (size_t)dlen);
        if (done)
            break;
    }
    BIO_free(bio);
    ERR_clear_error();
    return key;
}

/* Finds or builds the shared chain for the DER blobs DER[0..N). */
static int chain_get(struct cs_loader *in, unsigned char **der, long *der_len, size_t n,
                     struct cs_chain **out)
{
    struct cs_chain *chain = calloc(1, sizeof(*chain) + n * CS_SHA256_LEN);
    if (!chain)
        return -ENOMEM;
    chain->n = n;
    for (size_t i = 0; i < n; i++)
        sha256(der[i], (size_t)der_len[i], chain->cert_hash[i]);
    sha256(chain->cert_hash, n * CS_SHA256_LEN, chain->hash);

    struct cs_chain *known = htab_get(&in->chains, chain->hash);
    if (known) {
        free(chain);
        atomic_fetch_add_explicit(&known->refs, 1, memory_order_relaxed);
        *out = known;
        return 0;
    }

    atomic_init(&chain->refs, 1);
    chain->certs = sk_X509_new_reserve(NULL, (int)n);
    if (!chain->certs)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        X509 *x = htab_get(&in->certs, chain->cert_hash[i]);
        if (x) {
            X509_up_ref(x);
        } else {
            const unsigned char *p = der[i];
            x = d2i_X509(NULL, &p, der_len[i]);
            if (!x) {
                cs_chain_unref(chain);
                return -EBADMSG;
            }
        }
        sk_X509_push(chain->certs, x);  /* cannot fail: reserved above */
    }
    if (chain_intern(in, chain) < 0)
        goto fail;
    *out = chain;
    return 0;
fail:
    cs_chain_unref(chain);
    return -ENOMEM;
}

/* Parses the certificate file: the first CERTIFICATE block is the leaf, the next ones the chain.
 * Other blocks (a key bundled in the same file) are ignored. */
static int parse_chain(struct cs_loader *in, const char *buf, size_t len, X509 **leaf,
                       struct cs_chain **chain, const char **why)
{
    unsigned char *der[CS_CHAIN_MAX + 1];
    long der_len[CS_CHAIN_MAX + 1];
    size_t n = 0;
    int rc = 0;

    *leaf = NULL;
    *chain = NULL;
    BIO *bio = BIO_new_mem_buf(buf, (int)len);
    if (!bio)
        return -ENOMEM;
    for (;;) {
        char *name = NULL, *header = NULL;
        unsigned char *data = NULL;
        long dlen = 0;
        if (!PEM_read_bio(bio, &name, &header, &data, &dlen))
            break;
        bool cert = strcmp(name, PEM_STRING_X509) == 0;
        OPENSSL_free(name);
        OPENSSL_free(header);
        if (!cert) {
            OPENSSL_free(data);
            continue;
        }
        if (n == CS_CHAIN_MAX + 1) {
            OPENSSL_free(data);
            *why = "too many certificates in the chain";
            rc = -E2BIG;
            goto done;
        }
        der[n] = data;
        der_len[n++] = dlen;
    }
    /* PEM_read_bio leaves "no start line" at the end of every file: not an error for us. */
    ERR_clear_error();
    if (n == 0) {
        *why = "no certificate found";
        rc = -EBADMSG;
        goto done;
    }
    const unsigned char *p = der[0];
    *leaf = d2i_X509(NULL, &p, der_len[0]);
    if (!*leaf) {
        *why = "cannot parse the certificate";
        rc = -EBADMSG;
        goto done;
    }
    if (n > 1) {
        rc = chain_get(in, der + 1, der_len + 1, n - 1, chain);
        if (rc < 0) {
            *why = rc == -ENOMEM ? "out of memory" : "cannot parse a chain certificate";
            X509_free(*leaf);
            *leaf = NULL;
        }
    }
done:
    for (size_t i = 0; i < n; i++)
        OPENSSL_free(der[i]);
    BIO_free(bio);
    ERR_clear_error();
    return rc;
}

static enum cs_key_type key_type_of(const EVP_PKEY *key)
{
    if (EVP_PKEY_is_a(key, "EC"))
        return CS_KEY_ECDSA;
    if (EVP_PKEY_is_a(key, "RSA") || EVP_PKEY_is_a(key, "RSA-PSS"))
        return CS_KEY_RSA;
    return CS_KEY_OTHER;
}

static bool asn1_time(const ASN1_TIME *t, time_t *out)
{
    struct tm tm;
    if (!t || !ASN1_TIME_to_tm(t, &tm))
        return false;
    *out = timegm(&tm);
    return true;
}

int cs_pair_load(struct cs_loader *in, const char *cert_path, const char *key_path,
                 struct cs_pair **out, char *reason, size_t reason_len, struct cs_msg *warn)
{
    char *buf = NULL;
    size_t len = 0;
    struct stat cert_st, key_st;
    X509 *leaf = NULL;
    struct cs_chain *chain = NULL;
    EVP_PKEY *key = NULL;
    const char *why = NULL;
    int rc;

    *out = NULL;
    if (cs_pair_ex_index() < 0) {
        snprintf(reason, reason_len, "cannot register certificate ex_data");
        return -ENOMEM;
    }

    rc = read_file(cert_path, &buf, &len, &cert_st);
    if (rc < 0) {
        snprintf(reason, reason_len, "cannot read %s: %s", cert_path, read_error(rc));
        return rc;
    }
    rc = parse_chain(in, buf, len, &leaf, &chain, &why);
    free(buf);
    buf = NULL;
    if (rc < 0) {
        snprintf(reason, reason_len, "%s: %s", cert_path, why);
        return rc;
    }

    rc = read_file(key_path, &buf, &len, &key_st);
    if (rc < 0) {
        snprintf(reason, reason_len, "cannot read %s: %s", key_path, read_error(rc));
        goto fail;
    }
    key = parse_key(in, buf, len, &why);
    /* The key file's text is secret: wipe it before the allocator hands the memory on. */
    OPENSSL_cleanse(buf, len);
    free(buf);
    ERR_clear_error();
    if (!key) {
        snprintf(reason, reason_len, "%s: %s", key_path, why);
        rc = -EBADMSG;
        goto fail;
    }
    if (X509_check_private_key(leaf, key) != 1) {
        ERR_clear_error();
        snprintf(reason, reason_len, "key does not match certificate (%s)", key_path);
        rc = -EINVAL;
        goto fail;
    }
    if (key_st.st_mode & S_IROTH)
        cs_msg_add(warn, "%s: private key is readable by every user\n", key_path);

    time_t nb, na;
    if (!asn1_time(X509_get0_notBefore(leaf), &nb) || !asn1_time(X509_get0_notAfter(leaf), &na)) {
        snprintf(reason, reason_len, "%s: unreadable validity dates", cert_path);
        rc = -EBADMSG;
        goto fail;
    }

    size_t cl = strlen(cert_path) + 1, kl = strlen(key_path) + 1;
    struct cs_pair *pair = malloc(sizeof(*pair) + cl + kl);
    if (!pair) {
        snprintf(reason, reason_len, "out of memory");
        rc = -ENOMEM;
        goto fail;
    }
    pair->x509 = leaf;
    pair->key = key;
    pair->chain = chain;
    pair->not_before = nb;
    pair->not_after = na;
    pair->key_type = key_type_of(key);
    id_from_stat(&cert_st, &pair->cert_id);
    id_from_stat(&key_st, &pair->key_id);
    memcpy(pair->paths, cert_path, cl);
    memcpy(pair->paths + cl, key_path, kl);
    pair->key_path = pair->paths + cl;
    if (!X509_set_ex_data(leaf, cs_pair_ex_index(), pair)) {
        free(pair);
        snprintf(reason, reason_len, "out of memory");
        rc = -ENOMEM;
        goto fail;
    }
    *out = pair;
    return 0;
fail:
    EVP_PKEY_free(key);
    cs_chain_unref(chain);
    X509_free(leaf);
    ERR_clear_error();
    return rc;
}

/* ---- names the certificate itself carries ---- */

size_t cs_pair_cert_names(const struct cs_pair *pair,
                          void (*fn)(void *arg, const char *name, size_t len), void *arg)
{
    char norm[CS_NAME_MAX + 1];
    size_t bad = 0, good = 0;
    GENERAL_NAMES *sans = X509_get_ext_d2i(pair->x509, NID_subject_alt_name, NULL, NULL);

    for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(sans, i);
        if (gn->type != GEN_DNS)
            continue;
        const ASN1_IA5STRING *s = gn->d.dNSName;
        int n = cs_name_normalize((const char *)ASN1_STRING_get0_data(s),
                                  (size_t)ASN1_STRING_length(s), true, norm);
        if (n < 0) {
            bad++;
            continue;
        }
        good++;
        fn(arg, norm, (size_t)n);
    }
    GENERAL_NAMES_free(sans);
    if (good || bad)
        return bad;

    /* No DNS SAN at all: the legacy rule (RFC 6125 section 6.4.4) takes the most specific CN. */
    const X509_NAME *subject = X509_get_subject_name(pair->x509);
    int last = -1;
    for (int i = -1; (i = X509_NAME_get_index_by_NID(subject, NID_commonName, i)) >= 0;)
        last = i;
    if (last >= 0) {
        const ASN1_STRING *cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, last));
        unsigned char *utf8 = NULL;
        int ulen = ASN1_STRING_to_UTF8(&utf8, cn);
        if (ulen >= 0 && (size_t)ulen <= CS_NAME_MAX + 1) {
            int n = cs_name_normalize((const char *)utf8, (size_t)ulen, true, norm);
            if (n < 0)
                bad++;
            else
                fn(arg, norm, (size_t)n);
        } else {
            bad++;
        }
        OPENSSL_free(utf8);
    }
    ERR_clear_error();
    return bad;
}
