/* log: one line per event, to stderr or syslog, from any thread.
 * Levels are syslog priorities (conf_log_level). Never pass key material or credentials here. */
#ifndef MAILSNID_LOG_H
#define MAILSNID_LOG_H

#include "conf/conf.h"

void log_setup(enum conf_log_level level, enum conf_log_target target);
bool log_enabled(enum conf_log_level level);
void log_msg(enum conf_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Logs each line of TEXT (a "FILE:LINE: reason\n…" block) at LEVEL. */
void log_lines(enum conf_log_level level, const char *text);

#define log_err(...)     log_msg(CONF_LOG_ERR, __VA_ARGS__)
#define log_warning(...) log_msg(CONF_LOG_WARNING, __VA_ARGS__)
#define log_notice(...)  log_msg(CONF_LOG_NOTICE, __VA_ARGS__)
#define log_info(...)    log_msg(CONF_LOG_INFO, __VA_ARGS__)
#define log_debug(...)   log_msg(CONF_LOG_DEBUG, __VA_ARGS__)

#endif
