/* pace.c: how long to wait, as pure functions of what happened (unit-tested on their own):
 * between two looks at a pending authorization or order, between two attempts for a failing
 * domain, and before the next new order the global budget allows; and that budget's state as
 * the file in storage holds it. */
#include "acme/internal.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* A CA decides a validation in milliseconds (pebble) to a few seconds (Let's Encrypt): the
 * first look comes soon and the gaps double from there, so a quick CA is not kept waiting a
 * whole second per authorization and a slow one is not asked more than every two seconds. */
#define POLL_FIRST_MS 50
#define POLL_MAX_MS 2000

long acme_poll_delay_ms(unsigned attempt, long retry_after_s)
{
    long ms = POLL_FIRST_MS;
    for (unsigned i = 0; i < attempt && ms < POLL_MAX_MS; i++)
        ms *= 2;
    if (ms > POLL_MAX_MS)
        ms = POLL_MAX_MS;
    /* RFC 8555 7.5.1: never sooner than the CA asked. */
    if (retry_after_s > 0 && retry_after_s * 1000 > ms)
        ms = retry_after_s * 1000;
    return ms;
}

long acme_poll_wait_ms(unsigned attempt, long retry_after_s, long elapsed_ms, long limit_ms)
{
    long ms = acme_poll_delay_ms(attempt, retry_after_s);
    return ms > limit_ms - elapsed_ms ? -1 : ms;
}

#define ARI_RECHECK_DEFAULT (6 * 3600)
#define ARI_RECHECK_MIN 60
#define ARI_RECHECK_MAX 86400

unsigned long acme_ari_recheck_s(long retry_after_s)
{
    if (retry_after_s < 0)
        return ARI_RECHECK_DEFAULT;
    if (retry_after_s < ARI_RECHECK_MIN)
        return ARI_RECHECK_MIN;
    return retry_after_s > ARI_RECHECK_MAX ? ARI_RECHECK_MAX : (unsigned long)retry_after_s;
}

unsigned long acme_backoff_s(unsigned failures, unsigned min_s, unsigned max_s, long retry_after_s)
{
    unsigned shift = failures < 20 ? failures : 20;
    unsigned long wait = (unsigned long)min_s << shift;
    if (wait > max_s)
        wait = max_s;
    if (retry_after_s > 0 && (unsigned long)retry_after_s > wait)
        wait = (unsigned long)retry_after_s;
    return wait;
}

bool acme_bucket_take(struct acme_bucket *b, unsigned per_window, unsigned window_s, time_t now,
                      time_t *when)
{
    double rate = (double)per_window / window_s;
    if (now > b->at) {                    /* a clock stepping back gives nothing */
        b->tokens += (double)(now - b->at) * rate;
        b->at = now;
    }
    if (b->tokens > per_window)
        b->tokens = per_window;
    if (b->tokens >= 1) {
        b->tokens -= 1;
        return true;
    }
    *when = now + (time_t)((1 - b->tokens) / rate) + 1;
    return false;
}

/* "<millionths of a token> <unix seconds>\n", both in decimal digits of fixed width: integers,
 * so no locale's decimal point and no rounding that a float printed short would bring (a slow
 * budget refills by less than a thousandth of an order between two looks); the same length
 * every time, so a rewrite in place never leaves the tail of a longer line behind. */
#define MICRO 1000000.0
#define TOKENS_MAX 1e9

int acme_bucket_format(const struct acme_bucket *b, char *out, size_t cap)
{
    double t = b->tokens < 0 ? 0 : b->tokens > TOKENS_MAX ? TOKENS_MAX : b->tokens;
    unsigned long long micro = (unsigned long long)(t * MICRO);  /* down: never a token more */
    long long at = b->at < 0 ? 0 : (long long)b->at;
    int n = snprintf(out, cap, "%020llu %020lld\n", micro, at);
    return n > 0 && (size_t)n < cap ? n : -ENOSPC;
}

/* Decimal digits only, 1 to 20 of them, ending at *END (strtoull would take signs, blanks,
 * "0x"). */
static bool digits(const char *s, char stop, unsigned long long *out, const char **end)
{
    unsigned long long v = 0;
    size_t n = 0;
    for (; s[n] >= '0' && s[n] <= '9'; n++) {
        unsigned d = (unsigned)(s[n] - '0');
        if (n == 20 || v > (ULLONG_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    if (n == 0 || s[n] != stop)
        return false;
    *out = v;
    *end = s + n;
    return true;
}

bool acme_bucket_parse(const char *text, size_t len, struct acme_bucket *b)
{
    char buf[64];
    /* One line, whole: a file cut short is not read as a smaller number. */
    if (len == 0 || len >= sizeof buf || text[len - 1] != '\n' || memchr(text, '\0', len))
        return false;
    memcpy(buf, text, len);
    buf[len] = '\0';
    unsigned long long micro, at;
    const char *end;
    if (!digits(buf, ' ', &micro, &end) || !digits(end + 1, '\n', &at, &end) || end[1] != '\0' ||
        micro / MICRO > TOKENS_MAX || at > (unsigned long long)INT64_MAX)
        return false;
    b->tokens = (double)micro / MICRO;
    b->at = (time_t)at;
    return true;
}
