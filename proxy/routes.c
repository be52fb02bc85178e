/* A sorted array of (name, route) searched with bsearch: routes are few next to certificates,
 * are read on every connection and never change while a snapshot is in use. */
#include "proxy/routes.h"

#include <stdlib.h>
#include <string.h>

struct route_entry {
    const char *name;
    const struct conf_route *route;
};

struct routes {
    struct route_entry *entries;
    size_t n;
};

static int entry_cmp(const void *a, const void *b)
{
    return strcmp(((const struct route_entry *)a)->name, ((const struct route_entry *)b)->name);
}

struct routes *routes_new(const struct conf *conf)
{
    struct routes *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    size_t n = 0;
    for (size_t i = 0; i < conf->n_routes; i++)
        n += conf->routes[i].n_names;
    if (n && !(r->entries = calloc(n, sizeof *r->entries))) {
        free(r);
        return NULL;
    }
    for (size_t i = 0; i < conf->n_routes; i++)
        for (size_t j = 0; j < conf->routes[i].n_names; j++)
            r->entries[r->n++] = (struct route_entry){ conf->routes[i].names[j], &conf->routes[i] };
    if (r->n)
        qsort(r->entries, r->n, sizeof *r->entries, entry_cmp);
    return r;
}

void routes_free(struct routes *r)
{
    if (!r)
        return;
    free(r->entries);
    free(r);
}

static const struct conf_route *find(const struct routes *r, const char *name, enum conf_proto proto)
{
    struct route_entry key = { name, NULL };
    const struct route_entry *e = bsearch(&key, r->entries, r->n, sizeof *r->entries, entry_cmp);
    return e && e->route->n_backends[proto] ? e->route : NULL;
}

const struct conf_route *routes_lookup(const struct routes *r, const char *name,
                                       enum conf_proto proto)
{
    if (!r || !r->n || !name || !*name)
        return NULL;
    const struct conf_route *route = find(r, name, proto);
    if (route)
        return route;
    const char *dot = strchr(name, '.');
    if (!dot || !dot[1])
        return NULL;
    char wild[300];
    if (strlen(dot) + 2 > sizeof wild)
        return NULL;
    wild[0] = '*';
    strcpy(wild + 1, dot);
    return find(r, wild, proto);
}
