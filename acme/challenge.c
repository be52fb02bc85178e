/* challenge.c: pending challenges in storage, written by the client and read by whichever
 * instance the CA's validator reaches. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "acme/challenge.h"
#include "acme/internal.h"

#define KEYAUTH_MAX 256

/* Names and tokens become file names: only characters that cannot climb out of the folder. */
static bool safe_component(const char *s, bool token)
{
    size_t n = strlen(s);
    if (n == 0 || n > 253 || s[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
                  (token ? (c >= 'A' && c <= 'Z') || c == '_' : c == '.');
        if (!ok)
            return false;
    }
    return true;
}

static int path_of(char *out, size_t cap, const char *storage, const char *type, const char *key)
{
    if (!safe_component(key, strcmp(type, "http-01") == 0))
        return -EINVAL;
    if ((size_t)snprintf(out, cap, "%s/challenges/%s/%s", storage, type, key) >= cap)
        return -ENAMETOOLONG;
    return 0;
}

int acme_challenge_put(const char *storage, const char *type, const char *key,
                       const char *key_authorization)
{
    char dir[PATH_MAX], path[PATH_MAX + 300];
    snprintf(dir, sizeof dir, "%s/challenges/%s", storage, type);
    int rc = acme_mkdirs(dir, 0755);
    if (rc == 0)
        rc = path_of(path, sizeof path, storage, type, key);
    if (rc == 0)
        rc = acme_write_file(path, key_authorization, strlen(key_authorization), 0644);
    return rc;
}

void acme_challenge_remove(const char *storage, const char *type, const char *key)
{
    char path[PATH_MAX + 300];
    if (path_of(path, sizeof path, storage, type, key) == 0)
        unlink(path);
}

static int read_keyauth(const char *storage, const char *type, const char *key, char *out,
                        size_t cap)
{
    char path[PATH_MAX + 300];
    int rc = path_of(path, sizeof path, storage, type, key);
    if (rc < 0)
        return rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return errno == ENOENT ? -ENOENT : -errno;
    char buf[KEYAUTH_MAX + 1];
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    if (n <= 0 || n > KEYAUTH_MAX)
        return -EINVAL;
    if ((size_t)n >= cap)
        return -ENOSPC;
    memcpy(out, buf, (size_t)n);
    out[n] = '\0';
    return (int)n;
}

int acme_http01_key_authorization(const char *storage, const char *token, char *out, size_t cap)
{
    if (!storage || !token)
        return -EINVAL;
    return read_keyauth(storage, "http-01", token, out, cap);
}

int acme_tlsalpn01_answer(const char *storage, const char *name, X509 **cert, EVP_PKEY **key)
{
    char ka[KEYAUTH_MAX + 1];
    unsigned char der[2 + 32];
    *cert = NULL;
    *key = NULL;
    if (!storage || !name)
        return -EINVAL;
    int n = read_keyauth(storage, "tls-alpn-01", name, ka, sizeof ka);
    if (n < 0)
        return n;
    /* The extension's value is the DER of an OCTET STRING of 32 bytes (RFC 8737 3). */
    der[0] = 0x04;
    der[1] = 32;
    if (!EVP_Digest(ka, (size_t)n, der + 2, NULL, EVP_sha256(), NULL))
        return -ENOMEM;

    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    ASN1_OCTET_STRING *val = ASN1_OCTET_STRING_new();
    ASN1_OBJECT *oid = OBJ_txt2obj("1.3.6.1.5.5.7.1.31", 1);
    X509_EXTENSION *ext = NULL, *san = NULL;
    X509V3_CTX v3;
    char san_text[300];
    int rc = -ENOMEM;
    if (!k || !x || !val || !oid || !ASN1_OCTET_STRING_set(val, der, sizeof der))
        goto out;
    ext = X509_EXTENSION_create_by_OBJ(NULL, oid, 1, val);
    snprintf(san_text, sizeof san_text, "DNS:%s", name);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    san = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san_text);
    unsigned char serial[16];
    if (!ext || !san || !X509_set_version(x, 2) || !X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
        !X509_gmtime_adj(X509_getm_notAfter(x), 7 * 86400) || !X509_set_pubkey(x, k) ||
        !X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                                    (const unsigned char *)"acme-tls-alpn-01", -1, -1, 0) ||
        !X509_set_issuer_name(x, X509_get_subject_name(x)) || !X509_add_ext(x, san, -1) ||
        !X509_add_ext(x, ext, -1))
        goto out;
    if (RAND_bytes(serial, sizeof serial) != 1)
        goto out;
    serial[0] &= 0x7f;
    BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
    bool serial_ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    BN_free(bn);
    if (!serial_ok || !X509_sign(x, k, EVP_sha256()))
        goto out;
    *cert = x;
    *key = k;
    x = NULL;
    k = NULL;
    rc = 0;
out:
    X509_EXTENSION_free(ext);
    X509_EXTENSION_free(san);
    ASN1_OBJECT_free(oid);
    ASN1_OCTET_STRING_free(val);
    X509_free(x);
    EVP_PKEY_free(k);
    return rc;
}
