/* privs: dropping root after the listening sockets are bound and the keys are read. */
#ifndef MAILSNID_PRIVS_H
#define MAILSNID_PRIVS_H

#include "conf/conf.h"

/* Switches to conf->user / conf->group when set. Returns 0, or -1 (already logged) when the
 * switch did not fully happen: the caller must not start serving then. */
int privs_drop(const struct conf *conf);

#endif
