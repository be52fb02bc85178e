/* watch: automatic reload when the config file, a certificate or key file, or anything under
 * cert_dirs changes (inotify through uv_fs_event), debounced so that a burst of changes — an
 * editor's save, certbot's renewal of one lineage — costs one reload. */
#ifndef MAILSNID_WATCH_H
#define MAILSNID_WATCH_H

#include "proxy/runtime/server.h"

#define WATCH_DEBOUNCE_MS 1000

int watch_start(struct server *srv);
/* Re-derives the watched directories from CONF (after every reload: folders come and go). */
void watch_refresh(struct server *srv, const struct conf *conf);
void watch_stop(struct server *srv);

#endif
