/* certgen.h: makes test keys, CAs and certificates in memory and writes them as PEM, so the
 * certificate tests need no fixtures on disk and can ask for any name, key type or validity
 * window (expired, not yet valid) they want. Test code only: no error handling beyond NULL. */
#ifndef MAILSNID_CERTGEN_H
#define MAILSNID_CERTGEN_H

#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#define CG_DAY (24 * 60 * 60)

/* ECDSA P-256, or RSA-2048 when RSA. */
static inline EVP_PKEY *cg_key(bool rsa)
{
    return rsa ? EVP_RSA_gen(2048) : EVP_EC_gen("P-256");
}

/* A certificate for KEY, signed by ISSUER_KEY with ISSUER's name (self-signed when ISSUER is
 * NULL). CN may be NULL; SANS[0..N_SANS) become DNS entries verbatim, bytes and all, so tests can
 * put garbage in them. CA adds basicConstraints CA:TRUE. */
static inline X509 *cg_cert(EVP_PKEY *key, const char *cn, const char *const *sans,
                            size_t n_sans, time_t not_before, time_t not_after, X509 *issuer,
                            EVP_PKEY *issuer_key, bool ca)
{
    X509 *x = X509_new();
    unsigned char serial[16];
    BIGNUM *bn = NULL;

    if (!x)
        return NULL;
    X509_set_version(x, X509_VERSION_3);
    RAND_bytes(serial, sizeof(serial));
    serial[0] &= 0x7f;
    bn = BN_bin2bn(serial, sizeof(serial), NULL);
    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    BN_free(bn);

    X509_NAME *name = X509_get_subject_name(x);
    if (cn)
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1,
                                   0);
    else
        X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)"mailsnid test",
                                   -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
    ASN1_TIME_set(X509_getm_notBefore(x), not_before);
    ASN1_TIME_set(X509_getm_notAfter(x), not_after);
    X509_set_pubkey(x, key);

    if (n_sans) {
        GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
        for (size_t i = 0; i < n_sans; i++) {
            GENERAL_NAME *gen = GENERAL_NAME_new();
            ASN1_IA5STRING *s = ASN1_IA5STRING_new();
            ASN1_STRING_set(s, sans[i], (int)strlen(sans[i]));
            GENERAL_NAME_set0_value(gen, GEN_DNS, s);
            sk_GENERAL_NAME_push(gens, gen);
        }
        X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT);
        GENERAL_NAMES_free(gens);
    }
    if (ca) {
        X509V3_CTX ctx;
        X509V3_set_ctx_nodb(&ctx);
        X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
        X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_basic_constraints,
                                                  "critical,CA:TRUE");
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
        ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
    }
    if (!X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256())) {
        X509_free(x);
        return NULL;
    }
    return x;
}

/* Writes LEAF then CHAIN[0..N) as one PEM file (certbot's fullchain.pem). */
static inline int cg_write_chain(const char *path, X509 *leaf, X509 *const *chain, size_t n)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    int ok = PEM_write_X509(f, leaf);
    for (size_t i = 0; i < n; i++)
        ok = ok && PEM_write_X509(f, chain[i]);
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* Writes KEY as unencrypted PKCS#8 PEM, mode 0600 like certbot's privkey.pem. */
static inline int cg_write_key(const char *path, EVP_PKEY *key)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    chmod(path, 0600);
    int ok = PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    return fclose(f) == 0 && ok ? 0 : -1;
}

#endif
