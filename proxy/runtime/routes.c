/* Two open-addressing hash tables over the route names — exact names, and the suffixes of
 * one-label wildcards ("*.example.com" is kept as "example.com") — the same layout and hash as
 * the certificate store's index: a shared host routes 100,000 customer domains, and every
 * connection with SNI looks its name up, so the lookup is one hash and usually one compare. */
#include "proxy/runtime/routes.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "certstore/certstore.h"

struct route_entry {
    const char *name;                  /* the key: a whole name, or a wildcard's suffix */
    size_t len;
    const struct conf_route *route;
};

struct name_table {
    struct route_entry *entries;
    size_t n;
    uint32_t *slots;                   /* entry number + 1; 0 = empty; at most half full */
    size_t mask;
};

struct routes {
    atomic_uint refs;
    struct conf_route *routes;         /* owned: taken out of the conf */
    size_t n_routes;
    struct name_table exact, wild;
};

static int table_init(struct name_table *t, size_t n)
{
    size_t slots = 8;
    while (slots < 2 * n)
        slots *= 2;
    t->entries = n ? calloc(n, sizeof *t->entries) : NULL;
    t->slots = calloc(slots, sizeof *t->slots);
    t->mask = slots - 1;
    return (n && !t->entries) || !t->slots ? -1 : 0;
}

static void table_add(struct name_table *t, const char *name, size_t len, const struct conf_route *r)
{
    size_t i = (size_t)cs_name_hash(name, len) & t->mask;
    while (t->slots[i])
        i = (i + 1) & t->mask;
    t->entries[t->n] = (struct route_entry){ name, len, r };
    t->slots[i] = (uint32_t)++t->n;
}

static const struct conf_route *table_find(const struct name_table *t, const char *name, size_t len,
                                           enum conf_proto proto)
{
    if (!t->n)
        return NULL;
    for (size_t i = (size_t)cs_name_hash(name, len) & t->mask; t->slots[i]; i = (i + 1) & t->mask) {
        const struct route_entry *e = &t->entries[t->slots[i] - 1];
        if (e->len == len && memcmp(e->name, name, len) == 0)
            return e->route->n_backends[proto] ? e->route : NULL;
    }
    return NULL;
}

struct routes *routes_new(struct conf *conf)
{
    struct routes *r = calloc(1, sizeof *r);
    size_t n_exact = 0, n_wild = 0;

    if (!r)
        return NULL;
    atomic_init(&r->refs, 1);
    for (size_t i = 0; i < conf->n_routes; i++)
        for (size_t j = 0; j < conf->routes[i].n_names; j++)
            if (conf->routes[i].names[j])
                *(conf->routes[i].names[j][0] == '*' ? &n_wild : &n_exact) += 1;
    /* Entry numbers are 32-bit; conf could never hold that many names anyway. */
    if (n_exact + n_wild >= UINT32_MAX / 2 || table_init(&r->exact, n_exact) < 0 ||
        table_init(&r->wild, n_wild) < 0) {
        r->routes = NULL;
        routes_unref(r);
        return NULL;
    }
    r->routes = conf->routes;
    r->n_routes = conf->n_routes;
    conf->routes = NULL;
    conf->n_routes = 0;
    for (size_t i = 0; i < r->n_routes; i++) {
        for (size_t j = 0; j < r->routes[i].n_names; j++) {
            const char *name = r->routes[i].names[j];
            if (!name)
                continue;
            /* conf refuses a name routed twice, so each key is added once. */
            if (name[0] == '*')
                table_add(&r->wild, name + 2, strlen(name + 2), &r->routes[i]);
            else
                table_add(&r->exact, name, strlen(name), &r->routes[i]);
        }
    }
    return r;
}

void routes_ref(struct routes *r)
{
    if (r)
        atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
}

void routes_unref(struct routes *r)
{
    if (!r || atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1)
        return;
    free(r->exact.entries);
    free(r->exact.slots);
    free(r->wild.entries);
    free(r->wild.slots);
    conf_routes_free(r->routes, r->n_routes);
    free(r);
}

size_t routes_count(const struct routes *r)
{
    return r ? r->n_routes : 0;
}

const struct conf_route *routes_lookup(const struct routes *r, const char *name,
                                       enum conf_proto proto)
{
    if (!r || !name || !*name)
        return NULL;
    size_t len = strlen(name);
    const struct conf_route *route = table_find(&r->exact, name, len, proto);
    if (route)
        return route;
    /* A wildcard covers exactly one leftmost label: "a.b.example.com" is not "*.example.com". */
    const char *dot = memchr(name, '.', len);
    if (!dot || dot == name || !dot[1])
        return NULL;
    return table_find(&r->wild, dot + 1, len - (size_t)(dot + 1 - name), proto);
}
