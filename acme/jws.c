/* jws.c: the account key and what is signed with it (RFC 7515, 7638, 8555 6.2). ES256 only:
 * every CA that speaks ACME accepts it, and one algorithm is one code path. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include <jansson.h>

#include "acme/internal.h"

char *acme_b64url(const unsigned char *data, size_t len)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char *out = malloc(len / 3 * 4 + 5), *o = out;
    if (!out)
        return NULL;
    size_t i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8 | data[i + 2];
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = tab[(v >> 6) & 63];
        *o++ = tab[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)data[i] << 16;
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8;
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = tab[(v >> 6) & 63];
    }
    *o = '\0';
    return out;
}

static EVP_PKEY *read_key(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    return k;
}

EVP_PKEY *acme_account_key(const char *storage, char *err, size_t errlen)
{
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/account.key", storage);
    EVP_PKEY *k = read_key(path);
    if (k) {
        if (EVP_PKEY_is_a(k, "EC") && EVP_PKEY_get_bits(k) == 256)
            return k;
        snprintf(err, errlen, "%s: not a P-256 key", path);
        EVP_PKEY_free(k);
        return NULL;
    }
    if (acme_mkdirs(storage, 0700) < 0) {
        snprintf(err, errlen, "cannot create %s: %s", storage, strerror(errno));
        return NULL;
    }
    k = EVP_EC_gen("P-256");
    unsigned char r[8];
    RAND_bytes(r, sizeof r);
    snprintf(tmp, sizeof tmp, "%s/.account.key.%02x%02x%02x%02x", storage, r[0], r[1], r[2], r[3]);
    int fd = k ? open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0600) : -1;
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    bool ok = f && PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) && fflush(f) == 0 &&
              fsync(fileno(f)) == 0;
    if (f)
        fclose(f);
    else if (fd >= 0)
        close(fd);
    /* link() fails when another instance sharing the storage was first: its key is the one. */
    if (ok && link(tmp, path) < 0 && errno != EEXIST)
        ok = false;
    int saved = errno;
    unlink(tmp);
    EVP_PKEY_free(k);
    if (!ok) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(saved));
        return NULL;
    }
    k = read_key(path);
    if (!k)
        snprintf(err, errlen, "cannot read %s back", path);
    return k;
}

static char *coord(EVP_PKEY *key, const char *param)
{
    BIGNUM *bn = NULL;
    unsigned char buf[32];
    char *s = NULL;
    if (EVP_PKEY_get_bn_param(key, param, &bn) && BN_bn2binpad(bn, buf, sizeof buf) == 32)
        s = acme_b64url(buf, sizeof buf);
    BN_free(bn);
    return s;
}

char *acme_jwk_json(EVP_PKEY *key)
{
    char *x = coord(key, OSSL_PKEY_PARAM_EC_PUB_X), *y = coord(key, OSSL_PKEY_PARAM_EC_PUB_Y);
    char *out = NULL;
    if (x && y && asprintf(&out, "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"%s\",\"y\":\"%s\"}", x, y) < 0)
        out = NULL;
    free(x);
    free(y);
    return out;
}

int acme_jwk_thumbprint(EVP_PKEY *key, char out[64])
{
    char *jwk = acme_jwk_json(key);
    unsigned char md[32];
    if (!jwk || !EVP_Digest(jwk, strlen(jwk), md, NULL, EVP_sha256(), NULL)) {
        free(jwk);
        return -ENOMEM;
    }
    free(jwk);
    char *b = acme_b64url(md, sizeof md);
    if (!b)
        return -ENOMEM;
    snprintf(out, 64, "%s", b);
    free(b);
    return 0;
}

/* ES256 (RFC 7518 3.4): the signature is R and S as 32 bytes each, not OpenSSL's DER. */
static char *sign_es256(EVP_PKEY *key, const char *input)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char der[80], raw[64];
    size_t der_len = sizeof der;
    char *out = NULL;
    ECDSA_SIG *sig = NULL;
    if (md && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
        EVP_DigestSign(md, der, &der_len, (const unsigned char *)input, strlen(input)) == 1) {
        const unsigned char *p = der;
        sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
        if (sig && BN_bn2binpad(ECDSA_SIG_get0_r(sig), raw, 32) == 32 &&
            BN_bn2binpad(ECDSA_SIG_get0_s(sig), raw + 32, 32) == 32)
            out = acme_b64url(raw, sizeof raw);
    }
    ECDSA_SIG_free(sig);
    EVP_MD_CTX_free(md);
    return out;
}

char *acme_jws(EVP_PKEY *key, const char *kid, const char *nonce, const char *url,
               const char *payload)
{
    json_t *prot = json_pack("{s:s, s:s, s:s}", "alg", "ES256", "nonce", nonce, "url", url);
    char *result = NULL, *prot_s = NULL, *prot_b = NULL, *pay_b = NULL, *input = NULL, *sig = NULL;
    if (!prot)
        return NULL;
    if (kid) {
        json_object_set_new(prot, "kid", json_string(kid));
    } else {
        char *jwk = acme_jwk_json(key);
        json_t *j = jwk ? json_loads(jwk, 0, NULL) : NULL;
        free(jwk);
        if (!j)
            goto out;
        json_object_set_new(prot, "jwk", j);
    }
    prot_s = json_dumps(prot, JSON_COMPACT);
    prot_b = prot_s ? acme_b64url((const unsigned char *)prot_s, strlen(prot_s)) : NULL;
    pay_b = acme_b64url((const unsigned char *)payload, strlen(payload));
    if (!prot_b || !pay_b || asprintf(&input, "%s.%s", prot_b, pay_b) < 0) {
        input = NULL;
        goto out;
    }
    sig = sign_es256(key, input);
    if (sig) {
        json_t *o = json_pack("{s:s, s:s, s:s}", "protected", prot_b, "payload", pay_b,
                              "signature", sig);
        result = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
    }
out:
    json_decref(prot);
    free(prot_s);
    free(prot_b);
    free(pay_b);
    free(input);
    free(sig);
    return result;
}
