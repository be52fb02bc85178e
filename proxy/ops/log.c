/* Each line is formatted into one buffer and written with one write(2), so lines from several
 * worker threads never interleave. */
#include "proxy/ops/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_level = CONF_LOG_INFO;
static atomic_int log_target = CONF_LOG_STDERR;

static const char *const level_names[] = {
    [CONF_LOG_ERR] = "error", [CONF_LOG_WARNING] = "warning", [CONF_LOG_NOTICE] = "notice",
    [CONF_LOG_INFO] = "info", [CONF_LOG_DEBUG] = "debug",
};

void log_setup(enum conf_log_level level, enum conf_log_target target)
{
    if (target == CONF_LOG_SYSLOG && atomic_load(&log_target) != CONF_LOG_SYSLOG)
        openlog("mailsnid", LOG_PID | LOG_NDELAY, LOG_MAIL);
    atomic_store(&log_level, level);
    atomic_store(&log_target, target);
}

bool log_enabled(enum conf_log_level level)
{
    return (int)level <= atomic_load(&log_level);
}

static void log_write(enum conf_log_level level, const char *msg, size_t len)
{
    if (atomic_load(&log_target) == CONF_LOG_SYSLOG) {
        syslog((int)level, "%.*s", (int)len, msg);
        return;
    }
    char line[4096];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int head = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s: ",
                        tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                        tm.tm_sec, ts.tv_nsec / 1000000, level_names[level]);
    size_t room = sizeof line - (size_t)head - 1;
    if (len > room)
        len = room;
    memcpy(line + head, msg, len);
    line[(size_t)head + len] = '\n';
    ssize_t ignored = write(STDERR_FILENO, line, (size_t)head + len + 1);
    (void)ignored;
}

void log_msg(enum conf_log_level level, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    char msg[3800];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    log_write(level, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
}

void log_lines(enum conf_log_level level, const char *text)
{
    if (!text || !log_enabled(level))
        return;
    while (*text) {
        const char *nl = strchr(text, '\n');
        size_t len = nl ? (size_t)(nl - text) : strlen(text);
        if (len)
            log_write(level, text, len);
        text += len + (nl ? 1 : 0);
    }
}
