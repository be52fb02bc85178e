/* Two name indexes over the route names -- exact names, and the suffixes of one-label wildcards
 * ("*.example.com" is kept as "example.com") -- on the certificate store's slot table
 * (certstore/name_slots.h) and hash: a shared host routes 100,000 customer domains, and every
 * connection with SNI looks its name up, so the lookup is one hash and usually one compare. */
#include "proxy/runtime/routes.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "certstore/certstore.h"
#include "certstore/name_slots.h"

struct route_entry {
    const char *name;                  /* the key: a whole name, or a wildcard's suffix */
    size_t len;
    const struct conf_route *route;
};

struct name_table {
    struct route_entry *entries;
    size_t n;
    struct name_slots slots;
};

struct routes {
    atomic_uint refs;
    struct conf_route *routes;         /* owned: taken out of the conf */
    size_t n_routes;
    struct name_table exact, wild;
};

static int table_init(struct name_table *t, size_t n)
{
    t->entries = n ? calloc(n, sizeof *t->entries) : NULL;
    return name_slots_init(&t->slots, n) < 0 || (n && !t->entries) ? -1 : 0;
}

static void table_free(struct name_table *t)
{
    free(t->entries);
    name_slots_free(&t->slots);
}

static void table_add(struct name_table *t, const char *name, size_t len, const struct conf_route *r)
{
    t->entries[t->n] = (struct route_entry){ name, len, r };
    name_slots_add(&t->slots, cs_name_hash(name, len), (uint32_t)t->n++);
}

static const struct conf_route *table_find(const struct name_table *t, const char *name, size_t len,
                                           enum conf_proto proto)
{
    uint32_t i;

    if (!t->n)
        return NULL;
    for (struct name_probe p = name_probe_start(&t->slots, cs_name_hash(name, len));
         name_probe_next(&p, &i);) {
        const struct route_entry *e = &t->entries[i];
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
    /* Entry numbers are 32-bit (name_slots_init refuses more); conf never holds that many. */
    if (table_init(&r->exact, n_exact) < 0 || table_init(&r->wild, n_wild) < 0) {
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
    table_free(&r->exact);
    table_free(&r->wild);
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
