/* store.c: builds a snapshot from the config, hands out references to it, publishes it, and
 * prints it for --certs. */
#include <errno.h>
#include <dirent.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "certstore/internal.h"
#include "conf/conf.h"

void cs_msg_add(struct cs_msg *msg, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !msg)
        return;
    if (msg->len + (size_t)n + 1 > msg->cap) {
        size_t cap = msg->cap ? msg->cap : 256;
        while (cap < msg->len + (size_t)n + 1)
            cap *= 2;
        char *buf = realloc(msg->buf, cap);
        if (!buf)
            return;                       /* a lost message beats a lost build */
        msg->buf = buf;
        msg->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(msg->buf + msg->len, msg->cap - msg->len, fmt, ap);
    va_end(ap);
    msg->len += (size_t)n;
}

static void date(time_t t, char out[16])
{
    struct tm tm;
    if (!gmtime_r(&t, &tm) || !strftime(out, 16, "%Y-%m-%d", &tm))
        snprintf(out, 16, "?");
}

/* ---- a map from (cert path, key path) to pair, for sharing across and within builds ---- */

struct pairmap {
    struct cs_pair **slots;
    size_t mask, n;
};

static uint64_t paths_hash(const char *cert, const char *key)
{
    uint64_t a = cs_name_hash(cert, strlen(cert)), b = cs_name_hash(key, strlen(key));
    return a ^ (b * 0x9e3779b97f4a7c15ull);
}

static struct cs_pair *pairmap_get(const struct pairmap *m, const char *cert, const char *key)
{
    if (!m->slots)
        return NULL;
    for (size_t s = paths_hash(cert, key) & m->mask; m->slots[s]; s = (s + 1) & m->mask) {
        struct cs_pair *p = m->slots[s];
        if (strcmp(p->paths, cert) == 0 && strcmp(p->key_path, key) == 0)
            return p;
    }
    return NULL;
}

static void pairmap_place(struct pairmap *m, struct cs_pair *p)
{
    size_t s = paths_hash(p->paths, p->key_path) & m->mask;
    while (m->slots[s])
        s = (s + 1) & m->mask;
    m->slots[s] = p;
    m->n++;
}

static int pairmap_put(struct pairmap *m, struct cs_pair *p)
{
    if (!m->slots || (m->n + 1) * 2 > m->mask + 1) {
        size_t cap = m->slots ? (m->mask + 1) * 2 : 64;
        struct pairmap bigger = { calloc(cap, sizeof(*bigger.slots)), cap - 1, 0 };
        if (!bigger.slots)
            return -ENOMEM;
        for (size_t i = 0; m->slots && i <= m->mask; i++)
            if (m->slots[i])
                pairmap_place(&bigger, m->slots[i]);
        free(m->slots);
        *m = bigger;
    }
    pairmap_place(m, p);
    return 0;
}

/* ---- the build ---- */

struct name_ref {
    size_t off;                           /* into build.names */
    uint32_t len;
    bool wild;
    struct cs_pair *pair;
};

struct build {
    const struct conf *conf;
    struct pairmap prev_map;
    struct pairmap map;                   /* this build's pairs, to find them by path */
    struct cs_pair **pairs;               /* the same, in load order; one reference each */
    size_t n_pairs, pairs_cap;
    struct cs_loader *loader;
    struct cs_msg errors, warnings;
    char *names;                          /* normalised names, back to back */
    size_t names_len, names_cap;
    struct name_ref *refs;
    size_t n_refs, refs_cap;
    struct cs_stats stats;
    bool oom;
    /* While the ACME storage is read: the names the operator's pairs cover (sorted), which an
     * ACME pair does not take. */
    struct covered *covered;
    char *covered_names;
    size_t n_covered, n_dropped;
};

struct covered {
    const char *name;                     /* into build.names */
    uint32_t len;
    bool wild;
};

static int covered_cmp(const void *a, const void *b)
{
    const struct covered *x = a, *y = b;
    if (x->wild != y->wild)
        return x->wild ? 1 : -1;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->name, y->name, n);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* Does an operator pair cover NAME, exactly or by a wildcard? */
static bool is_covered(const struct build *b, const char *name, size_t len)
{
    if (!b->covered)
        return false;
    struct covered key = { name, (uint32_t)len, false };
    if (len > 2 && name[0] == '*') {
        key.name += 2;
        key.len -= 2;
        key.wild = true;
    }
    if (bsearch(&key, b->covered, b->n_covered, sizeof key, covered_cmp))
        return true;
    const char *dot = key.wild ? NULL : memchr(name, '.', len);
    if (!dot)
        return false;
    key = (struct covered){ dot + 1, (uint32_t)(len - (size_t)(dot + 1 - name)), true };
    return bsearch(&key, b->covered, b->n_covered, sizeof key, covered_cmp) != NULL;
}

/* Returns a new reference to the pair for CERT/KEY: one already taken in this build, the
 * previous snapshot's when its files have not changed, or a freshly loaded one. */
static int pair_get(struct build *b, const char *cert, const char *key, struct cs_pair **out,
                    char *reason, size_t reason_len)
{
    struct cs_pair *p = pairmap_get(&b->map, cert, key);
    if (p) {
        cs_pair_ref(p);
        *out = p;
        return 0;
    }
    p = pairmap_get(&b->prev_map, cert, key);
    if (p) {
        struct cs_file_id c, k;
        if (cs_file_id_of(cert, &c) == 0 && cs_file_id_of(key, &k) == 0 &&
            cs_file_id_eq(&c, &p->cert_id) && cs_file_id_eq(&k, &p->key_id)) {
            cs_pair_ref(p);
            *out = p;
            return 0;
        }
    }
    return cs_pair_load(b->loader, cert, key, out, reason, reason_len, &b->warnings);
}

/* Makes P (a reference from pair_get) part of the snapshot, or drops the extra reference when
 * it already is. */
static int pair_commit(struct build *b, struct cs_pair *p)
{
    if (pairmap_get(&b->map, p->paths, p->key_path) == p) {
        cs_pair_unref(p);
        return 0;
    }
    if (b->n_pairs == b->pairs_cap) {
        size_t cap = b->pairs_cap ? b->pairs_cap * 2 : 64;
        struct cs_pair **pairs = realloc(b->pairs, cap * sizeof(*pairs));
        if (!pairs)
            goto oom;
        b->pairs = pairs;
        b->pairs_cap = cap;
    }
    if (pairmap_put(&b->map, p) < 0)
        goto oom;
    b->pairs[b->n_pairs++] = p;
    struct cs_pair *old = pairmap_get(&b->prev_map, p->paths, p->key_path);
    if (!old)
        b->stats.pairs_added++;
    else if (old != p)
        b->stats.pairs_changed++;
    return 0;
oom:
    cs_pair_unref(p);
    b->oom = true;
    return -ENOMEM;
}

/* Adds NAME (normalised) for PAIR; returns whether it was taken. A wildcard with one label
 * after the star ("*.com") would answer for every name under a top-level domain that no other
 * certificate covers: no CA may issue one (CA/B Baseline Requirements 3.2.2.6), so it is a
 * mistake or a forgery, and it is refused with a warning while the pair's other names load. */
static bool name_add(struct build *b, const char *name, size_t len, struct cs_pair *pair)
{
    bool wild = len > 2 && name[0] == '*';
    if (wild) {
        name += 2;
        len -= 2;
        if (!memchr(name, '.', len)) {
            cs_msg_add(&b->warnings, "%s: refused the wildcard \"*.%.*s\": it would cover a "
                       "whole top-level domain\n", pair->paths, (int)len, name);
            return false;
        }
    }
    if (b->names_len + len > b->names_cap) {
        size_t cap = b->names_cap ? b->names_cap * 2 : 4096;
        while (cap < b->names_len + len)
            cap *= 2;
        char *n = realloc(b->names, cap);
        if (!n) {
            b->oom = true;
            return false;
        }
        b->names = n;
        b->names_cap = cap;
    }
    if (b->n_refs == b->refs_cap) {
        size_t cap = b->refs_cap ? b->refs_cap * 2 : 256;
        struct name_ref *r = realloc(b->refs, cap * sizeof(*r));
        if (!r) {
            b->oom = true;
            return false;
        }
        b->refs = r;
        b->refs_cap = cap;
    }
    memcpy(b->names + b->names_len, name, len);
    b->refs[b->n_refs++] = (struct name_ref){ b->names_len, (uint32_t)len, wild, pair };
    b->names_len += len;
    return true;
}

struct cert_names {
    struct build *b;
    struct cs_pair *pair;
    size_t n;
};

static void cert_name_cb(void *arg, const char *name, size_t len)
{
    struct cert_names *cn = arg;
    if (is_covered(cn->b, name, len))
        cn->b->n_dropped++;
    else
        cn->n += name_add(cn->b, name, len, cn->pair);
}

static size_t names_from_cert(struct build *b, struct cs_pair *p, const char *where)
{
    struct cert_names cn = { b, p, 0 };
    size_t bad = cs_pair_cert_names(p, cert_name_cb, &cn);
    if (bad)
        cs_msg_add(&b->warnings, "%s: ignored %zu invalid DNS name(s) in the certificate\n",
                   where, bad);
    return cn.n;
}

static const char *conf_path(const struct conf *conf)
{
    return conf && conf->path ? conf->path : "(config)";
}

/* The default pair's errors carry line 0: struct conf does not record where tls = { } was. */
static void load_default(struct build *b)
{
    const struct conf *conf = b->conf;
    char reason[512];
    struct cs_pair *p;

    if (!conf->tls.default_cert || !conf->tls.default_key) {
        cs_msg_add(&b->errors, "%s:0: tls.default_cert and tls.default_key are required\n",
                   conf_path(conf));
        return;
    }
    if (pair_get(b, conf->tls.default_cert, conf->tls.default_key, &p, reason,
                 sizeof(reason)) < 0) {
        cs_msg_add(&b->errors, "%s:0: %s\n", conf_path(conf), reason);
        return;
    }
    /* Its own names are indexed like any pair's, so a client asking for the server's own name
     * is told "exact", not "default". */
    if (pair_commit(b, p) == 0)
        names_from_cert(b, p, conf->tls.default_cert);
}

static void load_explicit(struct build *b, const struct conf_cert *c)
{
    const struct conf *conf = b->conf;
    char reason[512], norm[CS_NAME_MAX + 1];
    struct cs_pair *p;

    if (!c->cert || !c->key) {
        cs_msg_add(&b->errors, "%s:%d: a certificate entry needs both cert and key\n",
                   conf_path(conf), c->line);
        return;
    }
    for (size_t i = 0; i < c->n_names; i++) {
        const char *n = c->names[i] ? c->names[i] : "";
        if (cs_name_normalize(n, strlen(n), true, norm) < 0) {
            cs_msg_add(&b->errors, "%s:%d: invalid name \"%.*s\"\n", conf_path(conf), c->line,
                       CS_NAME_MAX, n);
            return;
        }
    }
    if (pair_get(b, c->cert, c->key, &p, reason, sizeof(reason)) < 0) {
        cs_msg_add(&b->errors, "%s:%d: %s\n", conf_path(conf), c->line, reason);
        return;
    }
    if (pair_commit(b, p) < 0)
        return;
    if (c->names && c->n_names) {
        for (size_t i = 0; i < c->n_names; i++) {
            int n = cs_name_normalize(c->names[i], strlen(c->names[i]), true, norm);
            name_add(b, norm, (size_t)n, p);
        }
    } else if (names_from_cert(b, p, c->cert) == 0) {
        cs_msg_add(&b->warnings, "%s: no usable DNS name in the certificate; give it names\n",
                   c->cert);
    }
}

static int skip_dots(const struct dirent *d)
{
    return d->d_name[0] != '.';
}

/* certbot's layout: DIR/NAME/{fullchain,privkey}.pem, where the files are symlinks into
 * ../../archive/NAME/. stat() and open() follow them; a README or stray file is passed over. */
static void load_dir(struct build *b, const char *dir, bool optional)
{
    struct dirent **ents = NULL;
    int n = scandir(dir, &ents, skip_dots, alphasort);
    if (n < 0 && optional && errno == ENOENT)
        return;
    if (n < 0) {
        cs_msg_add(&b->errors, "%s:0: cert_dirs: cannot read %s: %s\n", conf_path(b->conf), dir,
                   strerror(errno));
        return;
    }
    for (int i = 0; i < n; i++) {
        char sub[PATH_MAX - 32], cert[PATH_MAX], key[PATH_MAX], reason[512];
        struct stat st;
        struct cs_pair *p;
        const char *name = ents[i]->d_name;

        /* The directory entry's type saves a stat() per domain (a third of an unchanged
         * reload at 10,000 domains); symlinks and file systems without d_type still get one. */
        unsigned char type = ents[i]->d_type;
        if ((size_t)snprintf(sub, sizeof(sub), "%s/%s", dir, name) >= sizeof(sub) ||
            type == DT_REG || type == DT_FIFO || type == DT_SOCK || type == DT_CHR ||
            type == DT_BLK || (type != DT_DIR && (stat(sub, &st) < 0 || !S_ISDIR(st.st_mode))))
            continue;
        snprintf(cert, sizeof(cert), "%s/fullchain.pem", sub);
        snprintf(key, sizeof(key), "%s/privkey.pem", sub);
        int rc = pair_get(b, cert, key, &p, reason, sizeof(reason));
        if (rc == -ENOMEM)
            b->oom = true;
        /* certbot swaps the live links one at a time (the new key sits beside the old chain
         * for a moment): a folder caught half-renewed keeps the pair it had, and the reload
         * that follows the last change picks up the new one. */
        struct cs_pair *kept = rc < 0 && rc != -ENOMEM ? pairmap_get(&b->prev_map, cert, key) : NULL;
        if (kept) {
            cs_msg_add(&b->warnings, "%s: not usable now (%s); keeping the pair loaded before\n",
                       sub, reason);
            cs_pair_ref(kept);
            p = kept;
        } else if (rc < 0) {
            cs_msg_add(&b->warnings, "%s: skipped: %s\n", sub, reason);
            b->stats.skipped++;
            continue;
        }
        size_t before = b->n_refs, dropped = b->n_dropped;
        if (names_from_cert(b, p, cert) == 0) {
            b->n_refs = before;
            cs_pair_unref(p);
            if (b->n_dropped > dropped)
                continue;                 /* the operator's pairs cover every name */
            cs_msg_add(&b->warnings, "%s: skipped: no usable DNS name in the certificate\n", sub);
            b->stats.skipped++;
            continue;
        }
        pair_commit(b, p);
    }
    for (int i = 0; i < n; i++)
        free(ents[i]);
    free(ents);
}

/* What ACME obtained (acme.storage/certs, certbot's layout) comes last and takes only the
 * names no valid operator pair covers: an operator's certificate for a name wins (SPEC.md). */
static void load_acme(struct build *b, const char *storage)
{
    char dir[PATH_MAX];
    time_t now = time(NULL);
    if ((size_t)snprintf(dir, sizeof dir, "%s/certs", storage) >= sizeof dir)
        return;
    /* A copy of the names: adding the ACME pairs' names may move b->names. */
    b->covered_names = malloc(b->names_len ? b->names_len : 1);
    b->covered = malloc((b->n_refs ? b->n_refs : 1) * sizeof *b->covered);
    if (!b->covered || !b->covered_names) {
        b->oom = true;
        return;
    }
    memcpy(b->covered_names, b->names, b->names_len);
    for (size_t i = 0; i < b->n_refs; i++)
        if (cs_pair_valid_at(b->refs[i].pair, now))
            b->covered[b->n_covered++] = (struct covered){ b->covered_names + b->refs[i].off,
                                                           b->refs[i].len, b->refs[i].wild };
    qsort(b->covered, b->n_covered, sizeof *b->covered, covered_cmp);
    load_dir(b, dir, true);
}

static void store_free(struct cs_store *s)
{
    for (size_t i = 0; i < s->n_pairs; i++)
        cs_pair_unref(s->pairs[i]);
    free(s->pairs);
    cs_index_free(&s->exact);
    cs_index_free(&s->wild);
    free(s);
}

/* A pair's rank is its place in load order: the default pair, then `certificates` in the
 * configuration's order, then `cert_dirs` in order with each folder's subfolders by name. The
 * indexes break ties on it, so the same pair is served at every reload. */
struct ranked {
    const struct cs_pair *pair;
    uint32_t rank;
};

static int ranked_cmp(const void *a, const void *b)
{
    const struct ranked *x = a, *y = b;
    return x->pair == y->pair ? 0 : (uintptr_t)x->pair < (uintptr_t)y->pair ? -1 : 1;
}

static int index_names(struct build *b, const struct ranked *ranks, size_t n_ranks,
                       struct cs_index *index, bool wild)
{
    size_t n = 0;
    for (size_t i = 0; i < b->n_refs; i++)
        n += b->refs[i].wild == wild;
    struct cs_index_input *in = malloc((n ? n : 1) * sizeof(*in));
    if (!in)
        return -ENOMEM;
    n = 0;
    for (size_t i = 0; i < b->n_refs; i++) {
        if (b->refs[i].wild != wild)
            continue;
        struct ranked key = { b->refs[i].pair, 0 };
        const struct ranked *r = bsearch(&key, ranks, n_ranks, sizeof(*ranks), ranked_cmp);
        in[n++] = (struct cs_index_input){ b->names + b->refs[i].off, b->refs[i].len,
                                           r ? r->rank : UINT32_MAX, b->refs[i].pair };
    }
    int rc = cs_index_build(index, in, n);
    free(in);
    return rc;
}

static int index_all(struct build *b, struct cs_store *s)
{
    if (s->n_pairs >= UINT32_MAX)
        return -E2BIG;
    struct ranked *ranks = malloc((s->n_pairs ? s->n_pairs : 1) * sizeof(*ranks));
    if (!ranks)
        return -ENOMEM;
    for (size_t i = 0; i < s->n_pairs; i++)
        ranks[i] = (struct ranked){ s->pairs[i], (uint32_t)i };
    qsort(ranks, s->n_pairs, sizeof(*ranks), ranked_cmp);
    int rc = index_names(b, ranks, s->n_pairs, &s->exact, false);
    if (rc == 0)
        rc = index_names(b, ranks, s->n_pairs, &s->wild, true);
    free(ranks);
    return rc;
}

static void warn_validity(struct build *b, const struct cs_pair *p, time_t now)
{
    char d[16];
    if (now < p->not_before) {
        date(p->not_before, d);
        cs_msg_add(&b->warnings, "%s: not valid before %s; served only when nothing valid "
                   "matches\n", p->paths, d);
    } else if (now > p->not_after) {
        date(p->not_after, d);
        cs_msg_add(&b->warnings, "%s: expired on %s; served only when nothing valid matches\n",
                   p->paths, d);
    }
}

/* Seeds B with what PREVIOUS (may be NULL) lends: its pairs, to reuse unchanged files, and its
 * chains, to share intermediates. */
static int build_seed(struct build *b, struct cs_store *previous)
{
    b->loader = cs_loader_new();
    if (!b->loader)
        return -ENOMEM;
    for (size_t i = 0; previous && i < previous->n_pairs; i++)
        if (pairmap_put(&b->prev_map, previous->pairs[i]) < 0 ||
            cs_loader_seed(b->loader, previous->pairs[i]->chain) < 0)
            return -ENOMEM;
    return 0;
}

/* The snapshot of what B committed, with DEF as its default pair; warnings about validity for
 * every pair, or (ALL false) only for those PREVIOUS did not have. Frees what B holds. */
static int build_finish(struct build *b, struct cs_store *previous, struct cs_pair *def, bool all,
                        struct cs_store **out, char **errors, char **warnings)
{
    struct cs_store *s = NULL;
    int rc = -ENOMEM;

    free(b->covered);
    free(b->covered_names);
    b->covered = NULL;
    if (b->oom)
        goto fail;
    if (b->errors.len) {
        rc = -EINVAL;
        goto fail;
    }

    for (size_t i = 0; previous && i < previous->n_pairs; i++) {
        const struct cs_pair *p = previous->pairs[i];
        if (!pairmap_get(&b->map, p->paths, p->key_path))
            b->stats.pairs_removed++;
    }

    s = calloc(1, sizeof(*s));
    if (!s)
        goto fail;
    atomic_init(&s->refs, 1);
    /* The store takes over the pairs and their references. */
    s->pairs = b->pairs;
    s->n_pairs = b->n_pairs;
    b->pairs = NULL;
    b->n_pairs = 0;
    s->def = def;
    time_t now = time(NULL);
    for (size_t i = 0; i < s->n_pairs; i++)
        if (all || pairmap_get(&b->prev_map, s->pairs[i]->paths, s->pairs[i]->key_path) != s->pairs[i])
            warn_validity(b, s->pairs[i], now);
    if (index_all(b, s) < 0)
        goto fail;

    b->stats.pairs = s->n_pairs;
    b->stats.exact_names = s->exact.n_entries;
    b->stats.wildcard_names = s->wild.n_entries;
    s->stats = b->stats;
    *out = s;
    s = NULL;
    rc = 0;
fail:
    if (s)
        store_free(s);
    for (size_t i = 0; i < b->n_pairs; i++)
        cs_pair_unref(b->pairs[i]);
    free(b->pairs);
    free(b->map.slots);
    free(b->prev_map.slots);
    cs_loader_free(b->loader);
    free(b->names);
    free(b->refs);
    if (rc == -ENOMEM && !b->errors.len)
        cs_msg_add(&b->errors, "%s:0: out of memory while loading certificates\n",
                   conf_path(b->conf));
    *errors = b->errors.buf;
    *warnings = b->warnings.buf;
    return rc;
}

int cs_store_build(const struct conf *conf, struct cs_store *previous, struct cs_store **out,
                   char **errors, char **warnings)
{
    struct build b = { .conf = conf };

    *out = NULL;
    if (build_seed(&b, previous) < 0) {
        b.oom = true;
        return build_finish(&b, previous, NULL, true, out, errors, warnings);
    }
    load_default(&b);
    struct cs_pair *def = conf->tls.default_cert && conf->tls.default_key
                              ? pairmap_get(&b.map, conf->tls.default_cert, conf->tls.default_key)
                              : NULL;
    for (size_t i = 0; i < conf->n_certs; i++)
        load_explicit(&b, &conf->certs[i]);
    for (size_t i = 0; i < conf->n_cert_dirs; i++)
        load_dir(&b, conf->cert_dirs[i], false);
    if (conf->acme.enabled && conf->acme.storage)
        load_acme(&b, conf->acme.storage);
    return build_finish(&b, previous, def, true, out, errors, warnings);
}

/* ---- ACME's pairs only (cs_store_update_acme) ---- */

/* Is P one of ACME's, CERTS "DOMAIN/fullchain.pem"? Points *DOM at DOMAIN (LEN bytes). */
static bool acme_folder(const struct cs_pair *p, const char *certs, size_t certs_len,
                        const char **dom, size_t *len)
{
    if (strncmp(p->paths, certs, certs_len) != 0)
        return false;
    const char *d = p->paths + certs_len, *slash = strchr(d, '/');
    if (!slash || slash == d || strcmp(slash, "/fullchain.pem") != 0)
        return false;
    *dom = d;
    *len = (size_t)(slash - d);
    return true;
}

/* The names an operator pair of PREVIOUS covers (what load_acme computes from the operator's
 * pairs): every index entry with a candidate that is not ACME's and is valid NOW. The names
 * point into PREVIOUS's index. */
static int covered_from(struct build *b, const struct cs_store *previous, const char *certs,
                        size_t certs_len, time_t now)
{
    b->covered = malloc((previous->exact.n_entries + previous->wild.n_entries + 1) *
                        sizeof *b->covered);
    if (!b->covered)
        return -ENOMEM;
    for (int wild = 0; wild < 2; wild++) {
        const struct cs_index *ix = wild ? &previous->wild : &previous->exact;
        for (size_t i = 0; i < ix->n_entries; i++) {
            const struct cs_index_entry *e = &ix->entries[i];
            const char *dom;
            size_t len;
            for (uint32_t k = 0; k < e->count; k++) {
                const struct cs_pair *p = ix->cands[e->first + k];
                if (!acme_folder(p, certs, certs_len, &dom, &len) && cs_pair_valid_at(p, now)) {
                    b->covered[b->n_covered++] = (struct covered){ ix->names + e->name,
                                                                   e->name_len, wild };
                    break;
                }
            }
        }
    }
    qsort(b->covered, b->n_covered, sizeof *b->covered, covered_cmp);
    return 0;
}

/* DOMAIN's pair read again from CERTS, in place of PREV (its pair in the previous snapshot, or
 * NULL), with the same rules as load_dir: unchanged files keep PREV (whose names come from the
 * previous index), a pair that cannot be read now keeps PREV, a folder that is gone drops it. */
static void acme_take(struct build *b, const char *certs, const char *domain, struct cs_pair *prev)
{
    char cert[PATH_MAX], key[PATH_MAX], reason[512];
    struct cs_pair *p;
    if ((size_t)snprintf(cert, sizeof cert, "%s%s/fullchain.pem", certs, domain) >= sizeof cert ||
        (size_t)snprintf(key, sizeof key, "%s%s/privkey.pem", certs, domain) >= sizeof key)
        return;
    int rc = pair_get(b, cert, key, &p, reason, sizeof reason);
    if (rc == -ENOMEM) {
        b->oom = true;
        return;
    }
    if (rc == -ENOENT || rc == -ENOTDIR)
        return;
    if (rc < 0 && prev) {
        cs_msg_add(&b->warnings, "%s%s: not usable now (%s); keeping the pair loaded before\n",
                   certs, domain, reason);
        cs_pair_ref(prev);
        pair_commit(b, prev);
        return;
    }
    if (rc < 0) {
        cs_msg_add(&b->warnings, "%s%s: skipped: %s\n", certs, domain, reason);
        b->stats.skipped++;
        return;
    }
    size_t before = b->n_refs, dropped = b->n_dropped;
    if (p != prev && names_from_cert(b, p, cert) == 0) {
        b->n_refs = before;
        cs_pair_unref(p);
        if (b->n_dropped == dropped) {
            cs_msg_add(&b->warnings, "%s%s: skipped: no usable DNS name in the certificate\n",
                       certs, domain);
            b->stats.skipped++;
        }
        return;
    }
    pair_commit(b, p);
}

/* The names of every pair B kept from the previous snapshot, as its index had them. */
static void names_from_index(struct build *b, const struct cs_index *ix, bool wild)
{
    char name[CS_NAME_MAX + 3] = "*.";
    for (size_t i = 0; i < ix->n_entries; i++) {
        const struct cs_index_entry *e = &ix->entries[i];
        for (uint32_t k = 0; k < e->count; k++) {
            struct cs_pair *p = ix->cands[e->first + k];
            if (pairmap_get(&b->map, p->paths, p->key_path) != p)
                continue;
            if (wild) {
                memcpy(name + 2, ix->names + e->name, e->name_len);
                name_add(b, name, e->name_len + 2, p);
            } else {
                name_add(b, ix->names + e->name, e->name_len, p);
            }
        }
    }
}

static int strcmp_p(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Compares DOMAIN with the LEN bytes at FOLDER, as scandir's alphasort orders folders. */
static int folder_cmp(const char *domain, const char *folder, size_t len)
{
    int c = strncmp(domain, folder, len);
    return c ? c : domain[len] != '\0';
}

int cs_store_update_acme(struct cs_store *previous, const char *storage, char *const *domains,
                         size_t n_domains, struct cs_store **out, char **errors, char **warnings)
{
    struct build b = { 0 };
    char certs[PATH_MAX];
    size_t certs_len = (size_t)snprintf(certs, sizeof certs, "%s/certs/", storage);
    char **sorted = malloc((n_domains ? n_domains : 1) * sizeof *sorted);

    *out = NULL;
    if (!sorted || certs_len >= sizeof certs || build_seed(&b, previous) < 0 ||
        covered_from(&b, previous, certs, certs_len, time(NULL)) < 0) {
        free(sorted);
        b.oom = true;
        return build_finish(&b, previous, NULL, false, out, errors, warnings);
    }
    memcpy(sorted, domains, n_domains * sizeof *sorted);
    qsort(sorted, n_domains, sizeof *sorted, strcmp_p);
    size_t n = 0;
    for (size_t i = 0; i < n_domains; i++)
        if (n == 0 || strcmp(sorted[i], sorted[n - 1]) != 0)
            sorted[n++] = sorted[i];
    /* The previous order, with each named domain's pair read again in its place: ACME's pairs
     * come last, by folder name, as a full build loads them, so ties go the same way. */
    size_t next = 0;
    for (size_t i = 0; i < previous->n_pairs; i++) {
        struct cs_pair *p = previous->pairs[i];
        const char *dom;
        size_t len;
        if (acme_folder(p, certs, certs_len, &dom, &len)) {
            while (next < n && folder_cmp(sorted[next], dom, len) < 0)
                acme_take(&b, certs, sorted[next++], NULL);
            if (next < n && folder_cmp(sorted[next], dom, len) == 0) {
                acme_take(&b, certs, sorted[next++], p);
                continue;
            }
        }
        cs_pair_ref(p);
        pair_commit(&b, p);
    }
    while (next < n)
        acme_take(&b, certs, sorted[next++], NULL);
    free(sorted);
    names_from_index(&b, &previous->exact, false);
    names_from_index(&b, &previous->wild, true);
    return build_finish(&b, previous, previous->def, false, out, errors, warnings);
}

void cs_store_ref(struct cs_store *store)
{
    atomic_fetch_add_explicit(&store->refs, 1, memory_order_relaxed);
}

void cs_store_unref(struct cs_store *store)
{
    if (store && atomic_fetch_sub_explicit(&store->refs, 1, memory_order_acq_rel) == 1)
        store_free(store);
}

void cs_store_stats(const struct cs_store *store, struct cs_stats *stats)
{
    *stats = store->stats;
}

const char *cs_pair_cert_path(const struct cs_pair *pair)
{
    return pair->paths;
}

enum cs_key_type cs_pair_key_type(const struct cs_pair *pair)
{
    return pair->key_type;
}

time_t cs_pair_not_after(const struct cs_pair *pair)
{
    return pair->not_after;
}

const char *cs_key_type_name(enum cs_key_type type)
{
    switch (type) {
    case CS_KEY_ECDSA: return "ecdsa";
    case CS_KEY_RSA: return "rsa";
    default: return "other";
    }
}

/* ---- --certs ---- */

static void print_index(const struct cs_index *index, const char *prefix, const char *kind,
                        FILE *out)
{
    char d[16];
    for (size_t i = 0; i < index->n_entries; i++) {
        const struct cs_index_entry *e = &index->entries[i];
        for (uint32_t j = 0; j < e->count; j++) {
            const struct cs_pair *p = index->cands[e->first + j];
            date(p->not_after, d);
            fprintf(out, "%s%s %s %s %s %s\n", prefix, index->names + e->name, kind, p->paths,
                    cs_key_type_name(p->key_type), d);
        }
    }
}

#define CS_SOONEST 5

void cs_store_print(const struct cs_store *store, FILE *out)
{
    char d[16];
    print_index(&store->exact, "", "exact", out);
    print_index(&store->wild, "*.", "wildcard", out);
    if (store->def) {
        date(store->def->not_after, d);
        fprintf(out, "- default %s %s %s\n", store->def->paths,
                cs_key_type_name(store->def->key_type), d);
    }
    fprintf(out, "# exact names: %zu, wildcard names: %zu, pairs: %zu, skipped: %zu\n",
            store->stats.exact_names, store->stats.wildcard_names, store->stats.pairs,
            store->stats.skipped);

    /* A partial insertion sort keeps the five soonest without sorting every pair. */
    const struct cs_pair *soon[CS_SOONEST];
    size_t n = 0;
    for (size_t i = 0; i < store->n_pairs; i++) {
        const struct cs_pair *p = store->pairs[i];
        size_t at = n;
        while (at > 0 && soon[at - 1]->not_after > p->not_after)
            at--;
        if (at >= CS_SOONEST)
            continue;
        size_t last = n < CS_SOONEST ? n : CS_SOONEST - 1;
        memmove(&soon[at + 1], &soon[at], (last - at) * sizeof(*soon));
        soon[at] = p;
        if (n < CS_SOONEST)
            n++;
    }
    fprintf(out, "# soonest expiries:\n");
    for (size_t i = 0; i < n; i++) {
        date(soon[i]->not_after, d);
        fprintf(out, "#   %s %s\n", d, soon[i]->paths);
    }
}

/* ---- the published snapshot ---- */

/* A mutex around "load the pointer, take a reference" is enough: the critical section is a load
 * and one atomic increment, held for nanoseconds, once per handshake; the only writer swaps the
 * pointer on reload and drops the old reference outside the lock. A lock-free scheme (hazard
 * pointers, RCU) would save little and be far harder to get right. */
struct cs_current {
    pthread_mutex_t lock;
    struct cs_store *store;
};

struct cs_current *cs_current_new(struct cs_store *store)
{
    struct cs_current *c = calloc(1, sizeof(*c));
    if (!c) {
        cs_store_unref(store);
        return NULL;
    }
    pthread_mutex_init(&c->lock, NULL);
    c->store = store;
    return c;
}

void cs_current_free(struct cs_current *current)
{
    if (!current)
        return;
    cs_store_unref(current->store);
    pthread_mutex_destroy(&current->lock);
    free(current);
}

struct cs_store *cs_current_get(struct cs_current *current)
{
    pthread_mutex_lock(&current->lock);
    struct cs_store *s = current->store;
    if (s)
        cs_store_ref(s);
    pthread_mutex_unlock(&current->lock);
    return s;
}

void cs_current_set(struct cs_current *current, struct cs_store *store)
{
    pthread_mutex_lock(&current->lock);
    struct cs_store *old = current->store;
    current->store = store;
    pthread_mutex_unlock(&current->lock);
    cs_store_unref(old);
}

void cs_store_foreach_pair(const struct cs_store *store,
                           void (*fn)(const struct cs_pair *pair, void *arg), void *arg)
{
    for (size_t i = 0; i < store->n_pairs; i++)
        fn(store->pairs[i], arg);
}
