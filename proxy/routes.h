/* routes: per-SNI-name backend overrides (config `routes`), looked up after the handshake. */
#ifndef MAILSNID_ROUTES_H
#define MAILSNID_ROUTES_H

#include <stddef.h>

#include "conf/conf.h"

struct routes;

/* Indexes CONF's routes (names are already normalised by conf). NULL on allocation failure. */
struct routes *routes_new(const struct conf *conf);
void routes_free(struct routes *routes);

/* The route for NAME (normalised SNI) that overrides PROTO: exact name first, then a one-label
 * wildcard. NULL when none. */
const struct conf_route *routes_lookup(const struct routes *routes, const char *name,
                                       enum conf_proto proto);

#endif
