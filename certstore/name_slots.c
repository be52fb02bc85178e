/* name_slots.c: building the slot array of a static name index (name_slots.h). */
#include "certstore/name_slots.h"

#include <stdlib.h>

int name_slots_init(struct name_slots *t, size_t n)
{
    size_t slots = 8;

    t->slots = NULL;
    t->mask = 0;
    if (n >= UINT32_MAX / 2)
        return -1;
    while (slots < 2 * n)
        slots *= 2;
    t->slots = calloc(slots, sizeof *t->slots);
    if (!t->slots)
        return -1;
    t->mask = slots - 1;
    return 0;
}

void name_slots_free(struct name_slots *t)
{
    free(t->slots);
    t->slots = NULL;
    t->mask = 0;
}

void name_slots_add(struct name_slots *t, uint64_t hash, uint32_t entry)
{
    size_t s = (size_t)hash & t->mask;
    while (t->slots[s])
        s = (s + 1) & t->mask;
    t->slots[s] = entry + 1;
}
