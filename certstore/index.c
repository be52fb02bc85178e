/* index.c: the static name → candidate pairs hash index (one for exact names, one for wildcard
 * suffixes), and the lookup through both that picks a handshake's pairs. Built once per
 * snapshot, then only read, from any thread, without locks.
 *
 * The slots are name_slots.h's (shared with the routes): a lookup is one hash over the name,
 * usually one slot and one memcmp, and the whole table costs ~8 bytes of slots + 24 bytes of
 * entry + the name per name, so 100,000 names stay in a few MB and never rehash (the table is
 * built at its final size). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "certstore/internal.h"

/* FNV-1a, then a 64-bit finaliser so that names differing only at the end still spread over
 * the low bits the mask keeps. The table is built from the operator's names, so a client can
 * choose what it looks up but not how the table is laid out: no keyed hash is needed. */
uint64_t cs_name_hash(const char *name, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)name[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static int input_cmp(const void *a, const void *b)
{
    const struct cs_index_input *x = a, *y = b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, n);
    if (c)
        return c;
    if (x->name_len != y->name_len)
        return x->name_len < y->name_len ? -1 : 1;
    if (x->pair->key_type != y->pair->key_type)
        return x->pair->key_type < y->pair->key_type ? -1 : 1;
    if (x->pair->not_after != y->pair->not_after)
        return x->pair->not_after > y->pair->not_after ? -1 : 1;
    /* Same name, type and expiry: the pair loaded first wins. Not the pointers' order, which
     * changes whenever a reload reads a file again; equal pairs (a name listed twice) share a
     * rank, end up next to each other and collapse. */
    if (x->rank != y->rank)
        return x->rank < y->rank ? -1 : 1;
    return 0;
}

int cs_index_build(struct cs_index *index, struct cs_index_input *in, size_t n)
{
    size_t n_entries = 0, n_cands = 0, arena = 0;

    memset(index, 0, sizeof(*index));
    if (n >= UINT32_MAX / 2)
        return -E2BIG;
    qsort(in, n, sizeof(*in), input_cmp);

    for (size_t i = 0; i < n; i++) {
        bool same_name = i > 0 && in[i].name_len == in[i - 1].name_len &&
                         memcmp(in[i].name, in[i - 1].name, in[i].name_len) == 0;
        if (same_name && in[i].pair == in[i - 1].pair)
            continue;
        n_cands++;
        if (!same_name) {
            n_entries++;
            arena += in[i].name_len + 1;
        }
    }
    if (arena > UINT32_MAX)
        return -E2BIG;

    int slots_failed = name_slots_init(&index->slots, n_entries);
    index->entries = malloc((n_entries ? n_entries : 1) * sizeof(*index->entries));
    index->cands = malloc((n_cands ? n_cands : 1) * sizeof(*index->cands));
    index->names = malloc(arena ? arena : 1);
    if (slots_failed || !index->entries || !index->cands || !index->names) {
        cs_index_free(index);
        return -ENOMEM;
    }

    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        bool same_name = i > 0 && in[i].name_len == in[i - 1].name_len &&
                         memcmp(in[i].name, in[i - 1].name, in[i].name_len) == 0;
        if (same_name && in[i].pair == in[i - 1].pair)
            continue;
        if (!same_name) {
            struct cs_index_entry *e = &index->entries[index->n_entries];
            e->hash = cs_name_hash(in[i].name, in[i].name_len);
            e->name = (uint32_t)at;
            e->name_len = in[i].name_len;
            e->first = (uint32_t)index->n_cands;
            e->count = 0;
            memcpy(index->names + at, in[i].name, in[i].name_len);
            index->names[at + in[i].name_len] = '\0';
            at += in[i].name_len + 1;
            name_slots_add(&index->slots, e->hash, (uint32_t)index->n_entries++);
        }
        index->cands[index->n_cands++] = in[i].pair;
        index->entries[index->n_entries - 1].count++;
    }
    return 0;
}

void cs_index_free(struct cs_index *index)
{
    name_slots_free(&index->slots);
    free(index->entries);
    free(index->cands);
    free(index->names);
    memset(index, 0, sizeof(*index));
}

const struct cs_index_entry *cs_index_find(const struct cs_index *index, const char *name,
                                           size_t len)
{
    uint32_t i;

    if (index->n_entries == 0)
        return NULL;
    uint64_t h = cs_name_hash(name, len);
    for (struct name_probe p = name_probe_start(&index->slots, h); name_probe_next(&p, &i);) {
        const struct cs_index_entry *e = &index->entries[i];
        if (e->hash == h && e->name_len == len && memcmp(index->names + e->name, name, len) == 0)
            return e;
    }
    return NULL;
}

/* ---- lookup ---- */

/* Takes, for each key type, the first candidate of E that suits (candidates are sorted latest
 * not-after first, so that is the best one). Returns whether it took any. */
static bool take(const struct cs_index *index, const struct cs_index_entry *e, time_t now,
                 bool valid_only, struct cs_match *match)
{
    bool any = false;
    if (!e)
        return false;
    for (uint32_t i = 0; i < e->count; i++) {
        const struct cs_pair *p = index->cands[e->first + i];
        if (valid_only && !cs_pair_valid_at(p, now))
            continue;
        if (!match->pair[p->key_type])
            match->pair[p->key_type] = p;
        any = true;
    }
    return any;
}

/* The order is the SPEC's: valid exact, valid wildcard, expired exact, expired wildcard, default.
 * At a "valid" step only the valid pairs are installed, even if that leaves a key type out: a
 * client that could use either would otherwise be handed the expired one when it lists that
 * signature algorithm first. */
void cs_store_lookup_normalized(const struct cs_store *store, const char *name, size_t len,
                                time_t now, struct cs_match *match)
{
    memset(match, 0, sizeof(*match));
    if (name) {
        const struct cs_index_entry *e = cs_index_find(&store->exact, name, len), *w = NULL;
        const char *dot = memchr(name, '.', len);
        if (dot)
            w = cs_index_find(&store->wild, dot + 1, len - (size_t)(dot + 1 - name));
        for (int valid = 1; valid >= 0; valid--) {
            if (take(&store->exact, e, now, valid, match)) {
                match->kind = CS_KIND_EXACT;
                return;
            }
            if (take(&store->wild, w, now, valid, match)) {
                match->kind = CS_KIND_WILDCARD;
                return;
            }
        }
        match->kind = CS_KIND_DEFAULT;
    } else {
        match->kind = CS_KIND_NONE;
    }
    if (store->def)
        match->pair[store->def->key_type] = store->def;
}

void cs_store_lookup(const struct cs_store *store, const char *sni, size_t sni_len, time_t now,
                     struct cs_match *match)
{
    char norm[CS_NAME_MAX + 1];
    if (!sni) {
        cs_store_lookup_normalized(store, NULL, 0, now, match);
        return;
    }
    /* A name that is not a host name cannot match anything; it still counts as "sent a name". */
    int n = cs_name_normalize(sni, sni_len, false, norm);
    cs_store_lookup_normalized(store, n < 0 ? "" : norm, n < 0 ? 0 : (size_t)n, now, match);
}
