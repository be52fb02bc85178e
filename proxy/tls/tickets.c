/* The callback runs on worker threads; the key set is swapped by the control thread. A mutex
 * guards the pointer and a reference count keeps a set alive while a callback uses it: one
 * uncontended lock per ticket operation is nothing next to the handshake around it. */
#include "proxy/tls/tickets.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#define TICKET_KEY_LEN 80
#define TICKET_MAX_KEYS 16

struct ticket_key {
    unsigned char name[16], aes[32], hmac[32];
};

struct tickets {
    atomic_int refs;
    size_t n;
    struct ticket_key keys[TICKET_MAX_KEYS];
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct tickets *current;

static char *fmt_error(const char *path, int line, const char *why)
{
    char *s = NULL;
    if (asprintf(&s, "%s:%d: %s\n", path, line, why) < 0)
        return NULL;
    return s;
}

struct tickets *tickets_load(const char *path, char **err)
{
    *err = NULL;
    FILE *f = fopen(path, "r");
    if (!f) {
        char why[256];
        snprintf(why, sizeof why, "cannot read ticket keys: %s", strerror(errno));
        *err = fmt_error(path, 0, why);
        return NULL;
    }
    struct tickets *t = calloc(1, sizeof *t);
    if (t)
        atomic_init(&t->refs, 1); /* so that tickets_free() on the error paths frees it */
    char line[512];
    int lineno = 0;
    while (t && fgets(line, sizeof line, f)) {
        lineno++;
        size_t len = strcspn(line, "\r\n");
        line[len] = 0;
        if (len == 0 || line[0] == '#')
            continue;
        /* EVP_DecodeBlock writes 3 bytes per 4 characters: size for the longest line. */
        unsigned char raw[(sizeof line / 4) * 3];
        int n = EVP_DecodeBlock(raw, (const unsigned char *)line, (int)len);
        /* EVP_DecodeBlock counts padding as output bytes: 80 bytes encode to 108 characters
         * with one '=' of padding, which it reports as 81. */
        int pad = len >= 2 && line[len - 1] == '=' ? (line[len - 2] == '=' ? 2 : 1) : 0;
        if (n < 0 || n - pad != TICKET_KEY_LEN) {
            *err = fmt_error(path, lineno, "not a ticket key: want base64 of 80 bytes "
                                           "(openssl rand 80 | base64 -w0)");
            break;
        }
        if (t->n == TICKET_MAX_KEYS) {
            *err = fmt_error(path, lineno, "too many keys (16 at most)");
            break;
        }
        memcpy(&t->keys[t->n++], raw, TICKET_KEY_LEN);
        OPENSSL_cleanse(raw, sizeof raw);
    }
    OPENSSL_cleanse(line, sizeof line);
    fclose(f);
    if (t && !*err && t->n == 0)
        *err = fmt_error(path, lineno, "no ticket key in the file");
    if (!t || *err) {
        tickets_free(t);
        if (!*err)
            *err = fmt_error(path, 0, "out of memory");
        return NULL;
    }
    return t;
}

void tickets_free(struct tickets *t)
{
    if (!t || atomic_fetch_sub(&t->refs, 1) != 1)
        return;
    OPENSSL_cleanse(t, sizeof *t);
    free(t);
}

static struct tickets *get_current(void)
{
    pthread_mutex_lock(&lock);
    struct tickets *t = current;
    if (t)
        atomic_fetch_add(&t->refs, 1);
    pthread_mutex_unlock(&lock);
    return t;
}

void tickets_set_current(struct tickets *t)
{
    pthread_mutex_lock(&lock);
    struct tickets *old = current;
    current = t;
    pthread_mutex_unlock(&lock);
    tickets_free(old);
}

void tickets_shutdown(void)
{
    tickets_set_current(NULL);
}

static int set_keys(const struct ticket_key *k, EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx,
                    unsigned char *iv, int enc)
{
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)k->hmac, sizeof k->hmac),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (!EVP_MAC_CTX_set_params(hctx, params))
        return -1;
    if (enc)
        return EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv) ? 0 : -1;
    return EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv) ? 0 : -1;
}

/* OpenSSL's contract: on encrypt return 1 (or 0: no ticket); on decrypt return 0 (unknown
 * key: full handshake), 1 (good), 2 (good, but issue a new ticket with the current key). */
static int ticket_cb(SSL *ssl, unsigned char *name, unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int enc)
{
    (void)ssl;
    struct tickets *t = get_current();
    int r = 0;
    if (!t)
        return 0;
    if (enc) {
        const struct ticket_key *k = &t->keys[0];
        memcpy(name, k->name, sizeof k->name);
        if (RAND_bytes(iv, EVP_MAX_IV_LENGTH) == 1 && set_keys(k, cctx, hctx, iv, 1) == 0)
            r = 1;
    } else {
        for (size_t i = 0; i < t->n; i++) {
            if (memcmp(name, t->keys[i].name, sizeof t->keys[i].name) == 0) {
                r = set_keys(&t->keys[i], cctx, hctx, iv, 0) == 0 ? (i == 0 ? 1 : 2) : -1;
                break;
            }
        }
    }
    tickets_free(t);
    return r;
}

void tickets_install(SSL_CTX *ctx)
{
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
}
