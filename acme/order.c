/* order.c: the RFC 8555 conversation with the CA, on the ACME thread: directory, nonce,
 * account, order, authorizations and their challenges, finalize, download. Every answer is
 * read with jansson and checked for the members and types used; anything else is an error
 * with the CA's words in it, never a crash. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include <jansson.h>

#include "acme/internal.h"

#define NONCE_RETRIES 5
#define ACCOUNT_LOCK ".account"           /* locks/.account.lock (no domain starts with a dot) */
#define ACCOUNT_LOCK_WAIT 30              /* seconds: a registration never takes this long */

struct acme_client {
    const struct acme_settings *s;
    const volatile bool *stop;
    acme_log_fn *log;
    struct acme_net *net;
    EVP_PKEY *key;
    char thumb[64];
    char *kid;
    bool have_dir;
    char *new_nonce, *new_account, *new_order, *renewal_info;
    char nonce[128];
    unsigned long nonce_retries;          /* badNonce answers retried, for the log */
    struct timespec order_began;          /* CLOCK_MONOTONIC: the polls' deadline counts from it */
};

struct acme_client *acme_client_new(const struct acme_settings *s, const volatile bool *stop,
                                    acme_log_fn *log)
{
    struct acme_client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->s = s;
    c->stop = stop;
    c->log = log;
    c->net = acme_net_new(s->ca_file, stop);
    if (!c->net) {
        free(c);
        return NULL;
    }
    return c;
}

void acme_client_settings(struct acme_client *c, const struct acme_settings *s)
{
    c->s = s;
}

void acme_client_free(struct acme_client *c)
{
    if (!c)
        return;
    acme_net_free(c->net);
    EVP_PKEY_free(c->key);
    free(c->kid);
    free(c->new_nonce);
    free(c->new_account);
    free(c->new_order);
    free(c->renewal_info);
    free(c);
}

static void fail(struct acme_result *res, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct acme_result *res, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->error, sizeof res->error, fmt, ap);
    va_end(ap);
    /* The CA's words go to logs and --certs lines: one line, no terminal escapes. */
    for (char *p = res->error; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
    res->ok = false;
}

/* A problem document (RFC 7807) or whatever else came, as one line for logs and --certs. */
static void fail_http(struct acme_result *res, const char *what, const struct acme_http *h)
{
    if (h->status == 0) {
        fail(res, "%s: %s", what, h->error);
        return;
    }
    json_t *root = h->body ? json_loadb(h->body, h->body_len, 0, NULL) : NULL;
    const char *type = json_string_value(json_object_get(root, "type"));
    const char *detail = json_string_value(json_object_get(root, "detail"));
    if (type && strncmp(type, "urn:ietf:params:acme:error:", 27) == 0)
        type += 27;
    fail(res, "%s: HTTP %ld%s%s%s%s", what, h->status, type ? " " : "", type ? type : "",
         detail ? ": " : "", detail ? detail : "");
    json_decref(root);
    if (h->retry_after >= 0)
        res->retry_after = h->retry_after;
    if (h->status == 429)
        res->rate_limited = true;
}

/* Sleeps MS milliseconds in slices of at most 100, so that a stop is seen soon. */
static bool sleep_or_stop(struct acme_client *c, long ms)
{
    while (ms > 0) {
        if (*c->stop)
            return false;
        long slice = ms < 100 ? ms : 100;
        struct timespec ts = { 0, slice * 1000 * 1000 };
        nanosleep(&ts, NULL);
        ms -= slice;
    }
    return !*c->stop;
}

/* Before the next look at WHAT, which is still STATE: false (with RES filled in) when the look
 * would come after the order's deadline (order_timeout from its start, whatever it waited for:
 * every authorization, readiness, the certificate), or the thread is stopping. A Retry-After
 * that points past the deadline becomes the domain's back-off. */
static bool poll_pause(struct acme_client *c, const char *what, const char *state,
                       unsigned attempt, long retry_after, struct acme_result *res)
{
    long ms = acme_poll_wait_ms(attempt, retry_after, acme_ms_since(&c->order_began),
                                (long)c->s->order_timeout_s * 1000);
    if (ms < 0) {
        fail(res, "%s is still %s after the order's %u s (order_timeout)", what, state,
             c->s->order_timeout_s);
        if (retry_after > 0)
            res->retry_after = retry_after;
        return false;
    }
    if (!sleep_or_stop(c, ms)) {
        fail(res, "stopping");
        return false;
    }
    return true;
}

static char *dup_member(json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v && strncmp(v, "https://", 8) == 0 ? strdup(v) : NULL;
}

static int load_directory(struct acme_client *c, struct acme_result *res)
{
    struct acme_http h = { 0 };
    if (c->have_dir)
        return 0;
    if (acme_net_request(c->net, c->s->directory, NULL, false, NULL, &h) < 0 || h.status != 200) {
        fail_http(res, "directory", &h);
        acme_http_clear(&h);
        return -EIO;
    }
    json_t *root = json_loadb(h.body ? h.body : "", h.body_len, 0, NULL);
    c->new_nonce = dup_member(root, "newNonce");
    c->new_account = dup_member(root, "newAccount");
    c->new_order = dup_member(root, "newOrder");
    c->renewal_info = dup_member(root, "renewalInfo");
    json_decref(root);
    acme_http_clear(&h);
    if (!c->new_nonce || !c->new_account || !c->new_order) {
        fail(res, "directory %s: no newNonce, newAccount or newOrder URL", c->s->directory);
        return -EINVAL;
    }
    c->have_dir = true;
    return 0;
}

unsigned long acme_client_nonce_retries(const struct acme_client *c)
{
    return c->nonce_retries;
}

static int fresh_nonce(struct acme_client *c, struct acme_result *res)
{
    struct acme_http h = { 0 };
    int rc = acme_net_request(c->net, c->new_nonce, NULL, true, NULL, &h);
    if (rc < 0 || !h.nonce[0]) {
        fail_http(res, "newNonce", &h);
        acme_http_clear(&h);
        return -EIO;
    }
    memcpy(c->nonce, h.nonce, sizeof c->nonce);
    acme_http_clear(&h);
    return 0;
}

static bool is_bad_nonce(const struct acme_http *h)
{
    if (h->status != 400 || !h->body)
        return false;
    json_t *root = json_loadb(h->body, h->body_len, 0, NULL);
    const char *type = json_string_value(json_object_get(root, "type"));
    bool bad = type && strcmp(type, "urn:ietf:params:acme:error:badNonce") == 0;
    json_decref(root);
    return bad;
}

/* POSTs PAYLOAD signed for URL; a badNonce answer is retried with the nonce it carried (RFC 8555
 * 6.5), as many CAs reject some nonces on purpose. Returns 0 when an answer came (any status). */
static int post(struct acme_client *c, const char *url, const char *payload, bool with_kid,
                const char *accept, struct acme_http *h, struct acme_result *res)
{
    for (int attempt = 0; attempt <= NONCE_RETRIES; attempt++) {
        if (!c->nonce[0] && fresh_nonce(c, res) < 0)
            return -EIO;
        char *body = acme_jws(c->key, with_kid ? c->kid : NULL, c->nonce, url, payload);
        c->nonce[0] = '\0';
        if (!body) {
            fail(res, "cannot sign a request");
            return -ENOMEM;
        }
        int rc = acme_net_request(c->net, url, body, false, accept, h);
        free(body);
        if (h->nonce[0])
            memcpy(c->nonce, h->nonce, sizeof c->nonce);
        if (rc < 0) {
            fail(res, "%s", h->error);            /* it names the URL */
            return rc;
        }
        if (!is_bad_nonce(h))
            return 0;
        c->nonce_retries++;
    }
    fail_http(res, url, h);
    return -EAGAIN;
}

/* The account key (read from storage, made there when there is none) and its thumbprint. */
static int load_key(struct acme_client *c, struct acme_result *res)
{
    char err[256];
    if (c->key)
        return 0;
    c->key = acme_account_key(c->s->storage, err, sizeof err);
    if (!c->key) {
        fail(res, "account key: %s", err);
        return -EIO;
    }
    if (acme_jwk_thumbprint(c->key, c->thumb) < 0) {
        fail(res, "account key: cannot compute its thumbprint");
        return -ENOMEM;
    }
    return 0;
}

/* The account URL is remembered per directory, so switching from staging to production
 * registers anew with the same key. True when account.json has one for this directory. */
static bool saved_account(struct acme_client *c)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/account.json", c->s->storage);
    json_t *saved = json_load_file(path, 0, NULL);
    const char *dir = json_string_value(json_object_get(saved, "directory"));
    const char *url = json_string_value(json_object_get(saved, "url"));
    if (dir && url && strcmp(dir, c->s->directory) == 0)
        c->kid = strdup(url);
    json_decref(saved);
    return c->kid != NULL;
}

/* newAccount with the key (RFC 8555 7.3). Returns 0 with c->kid set, -EACCES when the CA
 * refuses the key itself (401/403 unauthorized: its account is deactivated or revoked), or
 * another error. */
static int register_account(struct acme_client *c, struct acme_result *res)
{
    char path[4200];
    json_t *p = json_pack("{s:b}", "termsOfServiceAgreed", 1);
    if (c->s->contact)
        json_object_set_new(p, "contact", json_pack("[s]", c->s->contact));
    char *payload = json_dumps(p, JSON_COMPACT);
    json_decref(p);
    struct acme_http h = { 0 };
    int rc = payload ? post(c, c->new_account, payload, false, NULL, &h, res) : -ENOMEM;
    free(payload);
    if (rc == 0 && (h.status == 200 || h.status == 201) && h.location[0]) {
        c->kid = strdup(h.location);
        snprintf(path, sizeof path, "%s/account.json", c->s->storage);
        json_t *o = json_pack("{s:s, s:s}", "directory", c->s->directory, "url", h.location);
        char *text = o ? json_dumps(o, JSON_INDENT(2)) : NULL;
        json_decref(o);
        int wrc = text ? acme_write_file(path, text, strlen(text), 0600) : -ENOMEM;
        free(text);
        if (c->log)
            c->log(wrc < 0 ? CONF_LOG_WARNING : CONF_LOG_NOTICE,
                   "acme: registered the account %s%s%s", h.location,
                   wrc < 0 ? "; cannot keep it in account.json: " : "", wrc < 0 ? strerror(-wrc) : "");
        rc = c->kid ? 0 : -ENOMEM;
    } else if (rc == 0) {
        fail_http(res, "newAccount", &h);
        /* Only "unauthorized" says the key is refused: externalAccountRequired, badPublicKey
         * and the like would be refused again with any key. */
        rc = (h.status == 401 || h.status == 403) && strstr(res->error, " unauthorized") ? -EACCES
                                                                                        : -EIO;
    }
    acme_http_clear(&h);
    return rc;
}

/* The key's account is deactivated or revoked (by its owner, or by the CA after a key
 * compromise): no request signed with it will ever pass again, and the CA will not register it
 * anew. It is kept aside, for the operator, and a new key is made. */
static int retire_key(struct acme_client *c, struct acme_result *res)
{
    char path[4200], aside[4300];
    snprintf(path, sizeof path, "%s/account.key", c->s->storage);
    snprintf(aside, sizeof aside, "%s.deactivated-%ld", path, (long)time(NULL));
    if (rename(path, aside) < 0) {
        fail(res, "%s; cannot put the account key aside: %s", res->error, strerror(errno));
        return -errno;
    }
    if (c->log)
        c->log(CONF_LOG_WARNING, "acme: the CA refuses the account key (%s); it is kept as %s "
               "and a new account is registered with a new key", res->error, aside);
    EVP_PKEY_free(c->key);
    c->key = NULL;
    return load_key(c, res);
}

/* One registration at a time per storage (threads and instances sharing it): the first makes
 * the account, the others then read it from account.json. Returns the lock (acme_lock's). */
static int account_lock(struct acme_client *c, struct acme_result *res)
{
    for (int i = 0; i < ACCOUNT_LOCK_WAIT * 10; i++) {
        int rc = acme_lock(c->s->storage, ACCOUNT_LOCK, ACCOUNT_LOCK_WAIT);
        if (rc != -EBUSY) {
            if (rc < 0)
                fail(res, "account: cannot lock in %s: %s", c->s->storage, strerror(-rc));
            return rc;
        }
        if (!sleep_or_stop(c, 100))
            break;
    }
    fail(res, "account: another thread or instance is still registering it");
    return -EBUSY;
}

static int ensure_account(struct acme_client *c, struct acme_result *res)
{
    if (c->kid)
        return 0;
    if (load_key(c, res) < 0)
        return -EIO;
    if (saved_account(c))
        return 0;
    int lock = account_lock(c, res), rc;
    if (lock < 0)
        return lock;
    /* Another may have registered, or put the key aside, while we waited: read both again. */
    EVP_PKEY_free(c->key);
    c->key = NULL;
    rc = load_key(c, res);
    if (rc == 0 && !saved_account(c)) {
        rc = register_account(c, res);
        if (rc == -EACCES && (rc = retire_key(c, res)) == 0) {
            res->error[0] = '\0';
            rc = register_account(c, res);
        }
    }
    acme_unlock(c->s->storage, ACCOUNT_LOCK, lock);
    return c->kid ? 0 : rc < 0 ? rc : -ENOMEM;
}

/* The CA refused our account (deactivated, revoked, forgotten by a CA reset): forget it, so
 * that the next attempt reads key and account from storage again and registers when it must.
 * account.json goes only while it names this account: another thread or instance may have
 * registered a new one meanwhile. */
static void account_forget(struct acme_client *c)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/account.json", c->s->storage);
    json_t *saved = json_load_file(path, 0, NULL);
    const char *url = json_string_value(json_object_get(saved, "url"));
    if (url && c->kid && strcmp(url, c->kid) == 0)
        unlink(path);
    json_decref(saved);
    free(c->kid);
    c->kid = NULL;
    EVP_PKEY_free(c->key);
    c->key = NULL;
}

static json_t *body_json(const struct acme_http *h)
{
    return h->body ? json_loadb(h->body, h->body_len, 0, NULL) : NULL;
}

static bool challenge_pick(struct acme_client *c, json_t *challenges, json_t **out,
                           enum conf_acme_challenge *type)
{
    for (size_t p = 0; p < c->s->n_challenges; p++) {
        const char *want = conf_acme_challenge_name(c->s->challenges[p]);
        size_t i;
        json_t *ch;
        json_array_foreach(challenges, i, ch) {
            const char *t = json_string_value(json_object_get(ch, "type"));
            if (t && strcmp(t, want) == 0 && json_is_string(json_object_get(ch, "url")) &&
                json_is_string(json_object_get(ch, "token"))) {
                *out = ch;
                *type = c->s->challenges[p];
                return true;
            }
        }
    }
    return false;
}

/* Where the key authorization of a challenge is filed: tls-alpn-01 by name (the validator's
 * SNI is all a ClientHello says), http-01 by token (the request path). */
static const char *challenge_key(enum conf_acme_challenge type, const char *name, const char *token)
{
    return type == CONF_ACME_TLS_ALPN_01 ? name : token;
}

/* One authorization: already valid, or its preferred challenge answered and polled until the
 * CA decides. */
static int authorize(struct acme_client *c, const char *url, struct acme_result *res)
{
    struct acme_http h = { 0 };
    int rc = post(c, url, "", true, NULL, &h, res);
    if (rc < 0 || h.status != 200) {
        if (rc == 0)
            fail_http(res, "authorization", &h);
        acme_http_clear(&h);
        return -EIO;
    }
    json_t *authz = body_json(&h);
    acme_http_clear(&h);
    const char *status = json_string_value(json_object_get(authz, "status"));
    const char *name = json_string_value(json_object_get(json_object_get(authz, "identifier"), "value"));
    json_t *ch = NULL;
    enum conf_acme_challenge type;
    if (status && strcmp(status, "valid") == 0) {
        json_decref(authz);
        return 0;
    }
    if (!status || strcmp(status, "pending") != 0 || !name ||
        !challenge_pick(c, json_object_get(authz, "challenges"), &ch, &type)) {
        fail(res, "authorization for %s is %s, with no challenge we answer", name ? name : "?",
             status ? status : "without status");
        json_decref(authz);
        return -EINVAL;
    }
    char *ch_url = strdup(json_string_value(json_object_get(ch, "url")));
    char *token = strdup(json_string_value(json_object_get(ch, "token")));
    char *id = strdup(name);
    json_decref(authz);
    char keyauth[256];
    const char *tname = conf_acme_challenge_name(type);
    rc = -ENOMEM;
    if (!ch_url || !token || !id)
        goto out;
    snprintf(keyauth, sizeof keyauth, "%s.%s", token, c->thumb);
    rc = acme_challenge_put(c->s->storage, tname, challenge_key(type, id, token), keyauth);
    if (rc < 0) {
        fail(res, "%s: cannot write the %s challenge to storage: %s", id, tname, strerror(-rc));
        goto out;
    }
    rc = post(c, ch_url, "{}", true, NULL, &h, res);
    if (rc == 0 && h.status != 200) {
        fail_http(res, tname, &h);
        rc = -EIO;
    }
    long retry_after = h.retry_after;
    unsigned attempt = 0;
    acme_http_clear(&h);
    char what[300], state[32] = "pending";
    snprintf(what, sizeof what, "%s: authorization", id);
    while (rc == 0) {
        if (!poll_pause(c, what, state, attempt++, retry_after, res)) {
            rc = *c->stop ? -ECANCELED : -ETIMEDOUT;
            break;
        }
        if ((rc = post(c, url, "", true, NULL, &h, res)) < 0)
            break;
        json_t *a = body_json(&h);
        const char *st = json_string_value(json_object_get(a, "status"));
        retry_after = h.retry_after;
        if (h.status != 200 || !st) {
            fail_http(res, "authorization", &h);
            rc = -EIO;
        } else if (strcmp(st, "valid") == 0) {
            json_decref(a);
            acme_http_clear(&h);
            break;
        } else if (strcmp(st, "pending") == 0 || strcmp(st, "processing") == 0) {
            snprintf(state, sizeof state, "%s", st);
        } else {
            /* The reason sits in the challenge that failed. */
            const char *detail = NULL;
            size_t i;
            json_t *x;
            json_array_foreach(json_object_get(a, "challenges"), i, x) {
                const char *d = json_string_value(json_object_get(json_object_get(x, "error"), "detail"));
                if (d)
                    detail = d;
            }
            fail(res, "%s: %s validation %s: %s", id, tname, st, detail ? detail : "no detail");
            rc = -EPERM;
        }
        json_decref(a);
        acme_http_clear(&h);
    }
out:
    if (id && token)
        acme_challenge_remove(c->s->storage, tname, challenge_key(type, id, token));
    free(ch_url);
    free(token);
    free(id);
    return rc;
}

static EVP_PKEY *new_cert_key(enum conf_acme_key type)
{
    return type == CONF_ACME_KEY_RSA ? EVP_RSA_gen(2048) : EVP_EC_gen("P-256");
}

/* The CSR names every name in its SAN; the subject stays empty (RFC 8555 7.4 lets the CA take
 * the names from the SAN, and Let's Encrypt does). */
static char *make_csr(EVP_PKEY *key, char **names, size_t n)
{
    X509_REQ *req = X509_REQ_new();
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    GENERAL_NAMES *gens = GENERAL_NAMES_new();
    char *out = NULL;
    unsigned char *der = NULL;
    if (!req || !exts || !gens)
        goto out;
    for (size_t i = 0; i < n; i++) {
        GENERAL_NAME *g = GENERAL_NAME_new();
        ASN1_IA5STRING *s = ASN1_IA5STRING_new();
        if (!g || !s || !ASN1_STRING_set(s, names[i], -1)) {
            GENERAL_NAME_free(g);
            ASN1_IA5STRING_free(s);
            goto out;
        }
        GENERAL_NAME_set0_value(g, GEN_DNS, s);
        sk_GENERAL_NAME_push(gens, g);
    }
    X509_EXTENSION *ext = X509V3_EXT_i2d(NID_subject_alt_name, 0, gens);
    if (!ext || !sk_X509_EXTENSION_push(exts, ext)) {
        X509_EXTENSION_free(ext);
        goto out;
    }
    if (!X509_REQ_set_version(req, 0) || !X509_REQ_set_pubkey(req, key) ||
        !X509_REQ_add_extensions(req, exts) || !X509_REQ_sign(req, key, EVP_sha256()))
        goto out;
    int len = i2d_X509_REQ(req, &der);
    if (len > 0)
        out = acme_b64url(der, (size_t)len);
out:
    OPENSSL_free(der);
    GENERAL_NAMES_free(gens);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_REQ_free(req);
    return out;
}

static char *key_pem(EVP_PKEY *key, size_t *len)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *out = NULL, *p;
    if (b && PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL)) {
        long n = BIO_get_mem_data(b, &p);
        if (n > 0 && (out = malloc((size_t)n))) {
            memcpy(out, p, (size_t)n);
            *len = (size_t)n;
        }
    }
    BIO_free(b);
    return out;
}

/* The downloaded chain must start with a certificate for our key: a CA (or a proxy in between)
 * that sends something else must not get it served. */
static bool chain_matches(const char *pem, size_t len, EVP_PKEY *key)
{
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    bool ok = x && X509_check_private_key(x, key) == 1;
    X509_free(x);
    BIO_free(b);
    return ok;
}

/* Polls URL (an order) until it leaves "pending"/"processing"/"ready" as wanted. */
static json_t *poll_order(struct acme_client *c, const char *url, const char *until,
                          struct acme_result *res)
{
    struct acme_http h = { 0 };
    for (unsigned attempt = 0;; attempt++) {
        if (post(c, url, "", true, NULL, &h, res) < 0)
            return NULL;
        json_t *o = body_json(&h);
        const char *st = json_string_value(json_object_get(o, "status"));
        if (h.status != 200 || !st) {
            fail_http(res, "order", &h);
        } else if (strcmp(st, until) == 0) {
            acme_http_clear(&h);
            return o;
        } else if (strcmp(st, "invalid") == 0) {
            fail(res, "order became invalid");
        } else {
            char state[32];
            snprintf(state, sizeof state, "%s", st);
            long retry_after = h.retry_after;
            json_decref(o);
            acme_http_clear(&h);
            if (poll_pause(c, "the order", state, attempt, retry_after, res))
                continue;
            return NULL;
        }
        json_decref(o);
        acme_http_clear(&h);
        return NULL;
    }
}

static void order_in_time(struct acme_client *c, const char *domain, char **names,
                          size_t n_names, const char *replaces, struct acme_result *res);

void acme_client_order(struct acme_client *c, const char *domain, char **names, size_t n_names,
                       const char *replaces, struct acme_result *res)
{
    clock_gettime(CLOCK_MONOTONIC, &c->order_began);
    acme_net_deadline(c->net, &c->order_began, c->s->order_timeout_s);
    order_in_time(c, domain, names, n_names, replaces, res);
    acme_net_deadline(c->net, NULL, 0);
}

/* The order itself: every request and every wait within order_timeout from order_began. */
static void order_in_time(struct acme_client *c, const char *domain, char **names,
                          size_t n_names, const char *replaces, struct acme_result *res)
{
    struct acme_http h = { 0 };
    json_t *order = NULL, *done = NULL;
    EVP_PKEY *key = NULL;
    char *payload = NULL, *order_url = NULL, *finalize = NULL, *csr = NULL, *kp = NULL;
    size_t kl = 0;

    memset(res, 0, sizeof *res);
    res->retry_after = -1;
    if (load_directory(c, res) < 0 || ensure_account(c, res) < 0)
        return;

    json_t *ids = json_array();
    for (size_t i = 0; i < n_names; i++)
        json_array_append_new(ids, json_pack("{s:s, s:s}", "type", "dns", "value", names[i]));
    json_t *p = json_pack("{s:o}", "identifiers", ids);
    if (replaces && c->renewal_info)
        json_object_set_new(p, "replaces", json_string(replaces));
    payload = p ? json_dumps(p, JSON_COMPACT) : NULL;
    json_decref(p);
    if (!payload || post(c, c->new_order, payload, true, NULL, &h, res) < 0)
        goto out;
    if (h.status != 201) {
        fail_http(res, "newOrder", &h);
        /* A deactivated, revoked or forgotten account: see ensure_account at the next
         * attempt, instead of failing every domain forever. */
        if (strstr(res->error, " accountDoesNotExist") || strstr(res->error, " unauthorized"))
            account_forget(c);
        goto out;
    }
    order = body_json(&h);
    json_t *authzs = json_object_get(order, "authorizations");
    const char *fin = json_string_value(json_object_get(order, "finalize"));
    if (!h.location[0] || !fin || !json_is_array(authzs)) {
        fail(res, "newOrder: the answer has no Location, finalize or authorizations");
        goto out;
    }
    order_url = strdup(h.location);
    finalize = strdup(fin);
    acme_http_clear(&h);
    size_t i;
    json_t *a;
    json_array_foreach(authzs, i, a) {
        if (!json_is_string(a)) {
            fail(res, "newOrder: an authorization that is not a URL");
            goto out;
        }
        if (authorize(c, json_string_value(a), res) < 0)
            goto out;
    }
    json_decref(poll_order(c, order_url, "ready", res));
    if (res->error[0])
        goto out;

    key = new_cert_key(c->s->key_type);
    csr = key ? make_csr(key, names, n_names) : NULL;
    free(payload);
    payload = NULL;
    json_t *f = csr ? json_pack("{s:s}", "csr", csr) : NULL;
    payload = f ? json_dumps(f, JSON_COMPACT) : NULL;
    json_decref(f);
    if (!payload) {
        fail(res, "cannot make the certificate request");
        goto out;
    }
    if (post(c, finalize, payload, true, NULL, &h, res) < 0)
        goto out;
    if (h.status != 200) {
        fail_http(res, "finalize", &h);
        goto out;
    }
    acme_http_clear(&h);
    done = poll_order(c, order_url, "valid", res);
    const char *cert_url = json_string_value(json_object_get(done, "certificate"));
    if (!cert_url) {
        if (!res->error[0])
            fail(res, "order is valid but names no certificate");
        goto out;
    }
    if (post(c, cert_url, "", true, "application/pem-certificate-chain", &h, res) < 0)
        goto out;
    if (h.status != 200 || !h.body || !chain_matches(h.body, h.body_len, key)) {
        if (h.status == 200)
            fail(res, "certificate download: not a PEM chain for our key");
        else
            fail_http(res, "certificate download", &h);
        goto out;
    }
    kp = key_pem(key, &kl);
    int rc = kp ? acme_store_pair(c->s->storage, domain, h.body, h.body_len, kp, kl) : -ENOMEM;
    if (rc < 0) {
        fail(res, "cannot store the certificate: %s", strerror(-rc));
        goto out;
    }
    res->ok = true;
out:
    if (kp)
        OPENSSL_cleanse(kp, kl);
    free(kp);
    acme_http_clear(&h);
    json_decref(order);
    json_decref(done);
    EVP_PKEY_free(key);
    free(payload);
    free(order_url);
    free(finalize);
    free(csr);
}

int acme_client_ari(struct acme_client *c, const char *cert_id, time_t *start, time_t *end,
                    long *retry_after)
{
    struct acme_result res = { 0 };
    struct acme_http h = { 0 };
    char url[2048];
    *retry_after = -1;
    if (load_directory(c, &res) < 0)
        return -EIO;
    if (!c->renewal_info)
        return -ENOENT;
    snprintf(url, sizeof url, "%s%s%s", c->renewal_info,
             c->renewal_info[strlen(c->renewal_info) - 1] == '/' ? "" : "/", cert_id);
    int rc = acme_net_request(c->net, url, NULL, false, NULL, &h);
    *retry_after = h.retry_after;
    if (rc == 0)
        rc = h.status == 200 && h.body ? acme_ari_window(h.body, h.body_len, start, end) : -EIO;
    acme_http_clear(&h);
    return rc;
}
