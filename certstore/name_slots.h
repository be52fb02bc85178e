/* name_slots: the slot array of a static name index, shared by the certificate store's index
 * (certstore/index.c) and the routes (proxy/runtime/routes.c). Both look a client's SNI up on
 * every connection, for up to 100,000 customer domains, so both want one hash and usually one
 * slot and one compare.
 *
 * Open addressing with linear probing over 32-bit entry numbers, at most half full, built once
 * at its final size and then only read (from any thread, without locks): no rehash, no delete.
 * The caller keeps its entries (names and payload) in its own array and compares the names;
 * this keeps only where each entry's probe sequence starts. */
#ifndef MAILSNID_NAME_SLOTS_H
#define MAILSNID_NAME_SLOTS_H

#include <stddef.h>
#include <stdint.h>

struct name_slots {
    uint32_t *slots;                   /* entry number + 1; 0 = empty */
    size_t mask;                       /* slot count - 1 (a power of two) */
};

/* Room for N entries (at least 8 slots, twice N rounded up to a power of two). -1 when N is
 * beyond 32-bit entry numbers or memory is short. */
int name_slots_init(struct name_slots *t, size_t n);
void name_slots_free(struct name_slots *t);

/* Files entry number ENTRY (0-based) under HASH. The caller adds each name once and never more
 * entries than it made room for. */
void name_slots_add(struct name_slots *t, uint64_t hash, uint32_t entry);

/* The entries filed under a hash, in probe order: the name looked up is among them or absent.
 *   for (struct name_probe p = name_probe_start(t, h); name_probe_next(&p, &e);) compare e...  */
struct name_probe {
    const struct name_slots *t;
    size_t s;
};

static inline struct name_probe name_probe_start(const struct name_slots *t, uint64_t hash)
{
    return (struct name_probe){ t, t->slots ? (size_t)hash & t->mask : 0 };
}

/* Sets *ENTRY to the next candidate and returns 1, or returns 0 at the first empty slot. */
static inline int name_probe_next(struct name_probe *p, uint32_t *entry)
{
    if (!p->t->slots || !p->t->slots[p->s])
        return 0;
    *entry = p->t->slots[p->s] - 1;
    p->s = (p->s + 1) & p->t->mask;
    return 1;
}

#endif
