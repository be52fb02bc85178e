/* reload: re-reading the configuration and certificates while running. The new snapshot is
 * built on libuv's thread pool, never on a worker's loop, and swapped in atomically; a reload
 * that fails changes nothing that is serving. */
#ifndef MAILSNID_RELOAD_H
#define MAILSNID_RELOAD_H

#include "proxy/runtime/server.h"

int reload_start(struct server *srv);
void reload_stop(struct server *srv);
/* Asks for a reload (coalesced when one is already running). WHY is logged. */
void reload_request(struct server *srv, const char *why);
/* ACME stored new pairs for DOMAINS (heap strings in a heap array; taken over): they go live
 * through an update of the running snapshot (see reload.c), after the build that runs. */
void reload_acme_pairs(struct server *srv, char **domains, size_t n);
/* True while a reload is being built (an upgrade waits for it). */
bool reload_running(const struct server *srv);

#endif
