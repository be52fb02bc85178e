/* certstore internals shared by its files; nothing here is visible outside certstore/ (and its
 * tests and fuzz target).
 *
 * Ownership, written once:
 * - struct cs_pair is owned by its leaf X509: it hangs off the X509's ex_data and is freed by the
 *   ex_data free callback when the last X509 reference goes. So "a reference to a pair" is an
 *   X509 reference (X509_up_ref is atomic), and an SSL that still holds the certificate keeps the
 *   pair, and therefore cs_used_cert_path()'s string, alive after the snapshot is gone.
 * - struct cs_chain (the intermediates of one or more pairs) is refcounted with an atomic and
 *   shared by every pair whose file carries the same chain; its X509s are also shared between
 *   chains, so 10,000 Let's Encrypt pairs hold one parsed copy of the intermediate.
 * - struct cs_store owns one reference to each of its pairs and its two indexes; it is freed by
 *   the last cs_store_unref(). */
#ifndef MAILSNID_CERTSTORE_INTERNAL_H
#define MAILSNID_CERTSTORE_INTERNAL_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "certstore/certstore.h"
#include "certstore/name_slots.h"

#define CS_SHA256_LEN 32

/* What identifies a file's content well enough to skip re-reading it on reload. */
struct cs_file_id {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtim;
};

struct cs_chain {
    atomic_uint refs;
    unsigned char hash[CS_SHA256_LEN];    /* over the concatenated certificate hashes below */
    STACK_OF(X509) *certs;                /* holds one reference to each X509 */
    size_t n;
    unsigned char cert_hash[][CS_SHA256_LEN]; /* SHA-256 of each certificate's DER */
};

struct cs_pair {
    X509 *x509;                           /* the owner (see above), not a reference */
    EVP_PKEY *key;
    struct cs_chain *chain;               /* NULL when the file holds only the leaf */
    time_t not_before, not_after;
    enum cs_key_type key_type;
    struct cs_file_id cert_id, key_id;
    const char *key_path;                 /* points into paths[] after the cert path */
    char paths[];                         /* "CERT\0KEY\0" */
};

/* A growable string for error and warning lines. */
struct cs_msg {
    char *buf;
    size_t len, cap;
};
void cs_msg_add(struct cs_msg *msg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* load.c */
/* Build-time dedupe tables for chains and their certificates; seeded from the previous
 * snapshot so that a reload keeps sharing with the pairs it reuses. */
struct cs_loader;
struct cs_loader *cs_loader_new(void);
void cs_loader_free(struct cs_loader *in);
int cs_loader_seed(struct cs_loader *in, struct cs_chain *chain);
void cs_chain_unref(struct cs_chain *chain);

int cs_file_id_of(const char *path, struct cs_file_id *id);
bool cs_file_id_eq(const struct cs_file_id *a, const struct cs_file_id *b);

/* Reads CERT_PATH and KEY_PATH into a new pair (one X509 reference, returned through *out).
 * On failure returns a negative errno and writes a one-line human reason (no newline, no file
 * prefix) to REASON. Warnings (key readable by others) go to WARN prefixed by the file. */
int cs_pair_load(struct cs_loader *in, const char *cert_path, const char *key_path,
                 struct cs_pair **out, char *reason, size_t reason_len, struct cs_msg *warn);
void cs_pair_ref(struct cs_pair *pair);
void cs_pair_unref(struct cs_pair *pair);
bool cs_pair_valid_at(const struct cs_pair *pair, time_t now);
/* Calls FN for each normalised DNS name of the certificate: SAN DNS entries, or the last CN when
 * there are none. Returns how many names were invalid (and skipped). */
size_t cs_pair_cert_names(const struct cs_pair *pair,
                          void (*fn)(void *arg, const char *name, size_t len), void *arg);
/* The X509 ex_data index that points from a leaf to its pair; -1 before the first load. */
int cs_pair_ex_index(void);
const struct cs_pair *cs_pair_of_x509(const X509 *x509);

/* index.c: a static hash index from names to a run of candidate pairs.
 * Each name's candidates are sorted by key type, then not-after (latest first), then rank (the
 * pair's place in the configuration), so the lookup takes, for each key type, the first
 * candidate that suits, and a tie goes to the same pair at every reload. */
struct cs_index_entry {
    uint64_t hash;
    uint32_t name;                        /* offset into the index's name arena */
    uint32_t name_len;
    uint32_t first, count;                /* run in the index's candidate array */
};
struct cs_index {
    struct name_slots slots;              /* entry numbers by name hash */
    struct cs_index_entry *entries;
    size_t n_entries;
    struct cs_pair **cands;               /* not references: the store holds those */
    size_t n_cands;
    char *names;                          /* NUL-terminated names, back to back */
};
/* What the builder feeds in: (name, pair) couples in any order, duplicates allowed. */
struct cs_index_input {
    const char *name;                     /* normalised; for wildcards the suffix after "*." */
    uint32_t name_len;
    uint32_t rank;                        /* the pair's load order: one rank per pair */
    struct cs_pair *pair;
};
int cs_index_build(struct cs_index *index, struct cs_index_input *in, size_t n);
void cs_index_free(struct cs_index *index);
const struct cs_index_entry *cs_index_find(const struct cs_index *index, const char *name,
                                           size_t len);

/* store.c builds it; index.c looks names up in it. */
struct cs_store {
    atomic_uint refs;
    struct cs_pair *def;                  /* also in pairs[] */
    struct cs_pair **pairs;               /* one reference each, in load order */
    size_t n_pairs;
    struct cs_index exact, wild;          /* wild is keyed by the suffix after "*." */
    struct cs_stats stats;
};

/* index.c: lookup with an already normalised NAME (NULL = no SNI). */
void cs_store_lookup_normalized(const struct cs_store *store, const char *name, size_t len,
                                time_t now, struct cs_match *match);

/* select.c: parses a server_name extension body (RFC 6066 section 3). On success returns 0 and
 * points *NAME at the first host_name entry (*NAME = NULL when the list holds none). Returns
 * -EINVAL when the lengths do not add up. */
int cs_sni_parse(const unsigned char *ext, size_t len, const unsigned char **name,
                 size_t *name_len);

#endif
