/* routes: per-SNI-name backend overrides (config `routes`), looked up after the handshake.
 *
 * A struct routes is an immutable, reference-counted snapshot, built off the event loops (at
 * start, and by each reload) and owned by a configuration generation (generation.h): every
 * connection holds its generation, so a reload never changes the backend of a session that is
 * already open and never frees what such a session still points at. */
#ifndef MAILSNID_ROUTES_H
#define MAILSNID_ROUTES_H

#include <stddef.h>

#include "conf/conf.h"

struct routes;

/* Indexes CONF's routes, taking them out of CONF (conf->routes becomes NULL): the snapshot then
 * owns them and outlives the conf. Names are already normalised by conf. NULL on allocation
 * failure (CONF keeps its routes then). */
struct routes *routes_new(struct conf *conf);
void routes_ref(struct routes *routes);
void routes_unref(struct routes *routes);
size_t routes_count(const struct routes *routes);

/* The route for NAME (normalised SNI) that overrides PROTO: exact name first, then a one-label
 * wildcard; O(1) whatever the number of routes. NULL when none. */
const struct conf_route *routes_lookup(const struct routes *routes, const char *name,
                                       enum conf_proto proto);

#endif
