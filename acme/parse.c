/* parse.c: what a CA sends besides JSON (which jansson reads): response header lines,
 * Retry-After and RFC 3339 times. Pure functions over bytes that may hold anything: nothing is
 * assumed NUL-terminated, nothing is read past LEN. */
#include <errno.h>
#include <string.h>
#include <strings.h>

#include "acme/internal.h"

static bool blank(char c)
{
    return c == ' ' || c == '\t';
}

bool acme_header_match(const char *line, size_t len, const char *name, const char **value,
                       size_t *vlen)
{
    size_t n = strlen(name);
    if (len <= n || line[n] != ':' || strncasecmp(line, name, n) != 0)
        return false;
    const char *v = line + n + 1, *end = line + len;
    while (v < end && blank(*v))
        v++;
    while (end > v && (blank(end[-1]) || end[-1] == '\r' || end[-1] == '\n'))
        end--;
    *value = v;
    *vlen = (size_t)(end - v);
    return true;
}

#define DAY 86400L

/* Reads exactly N digits at *P (within END). */
static bool digits(const char **p, const char *end, int n, long *out)
{
    long v = 0;
    if (end - *p < n)
        return false;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return false;
        v = v * 10 + (c - '0');
    }
    *p += n;
    *out = v;
    return true;
}

static bool lit(const char **p, const char *end, const char *s)
{
    size_t n = strlen(s);
    if ((size_t)(end - *p) < n || memcmp(*p, s, n) != 0)
        return false;
    *p += n;
    return true;
}

/* Days from 1970-01-01 to Y-M-D (proleptic Gregorian), for M 1..12. */
static long days_from_civil(long y, long m, long d)
{
    y -= m <= 2;
    long era = (y >= 0 ? y : y - 399) / 400;
    long yoe = y - era * 400;
    long doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static bool valid_date(long y, long mo, long d, long h, long mi, long s)
{
    static const int mdays[] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || h > 23 || mi > 59 || s > 60)
        return false;
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return !(mo == 2 && d == 29 && !leap);
}

int acme_parse_rfc3339(const char *v, size_t len, time_t *out)
{
    const char *p = v, *end = v + len;
    long y, mo, d, h, mi, s, oh = 0, om = 0;
    int sign = 0;

    if (!digits(&p, end, 4, &y) || !lit(&p, end, "-") || !digits(&p, end, 2, &mo) ||
        !lit(&p, end, "-") || !digits(&p, end, 2, &d))
        return -EINVAL;
    if (p == end || (*p != 'T' && *p != 't' && *p != ' '))
        return -EINVAL;
    p++;
    if (!digits(&p, end, 2, &h) || !lit(&p, end, ":") || !digits(&p, end, 2, &mi) ||
        !lit(&p, end, ":") || !digits(&p, end, 2, &s))
        return -EINVAL;
    if (p < end && *p == '.') {
        const char *f = ++p;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        if (p == f)
            return -EINVAL;
    }
    if (p < end && (*p == 'Z' || *p == 'z')) {
        p++;
    } else if (p < end && (*p == '+' || *p == '-')) {
        sign = *p == '+' ? 1 : -1;
        p++;
        if (!digits(&p, end, 2, &oh) || !lit(&p, end, ":") || !digits(&p, end, 2, &om) ||
            oh > 23 || om > 59)
            return -EINVAL;
    } else {
        return -EINVAL;
    }
    if (p != end || !valid_date(y, mo, d, h, mi, s))
        return -EINVAL;
    long long t = (long long)days_from_civil(y, mo, d) * DAY + h * 3600 + mi * 60 + (s > 59 ? 59 : s);
    t -= (long long)sign * (oh * 3600 + om * 60);
    *out = (time_t)t;
    return 0;
}

/* IMF-fixdate only ("Sun, 06 Nov 1994 08:49:37 GMT"): RFC 9110 lets a recipient accept the
 * obsolete forms too, but no CA sends them and a narrower parser is a smaller target. */
static int parse_http_date(const char *v, size_t len, time_t *out)
{
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    const char *p = v, *end = v + len;
    long d, y, h, mi, s, mo = 0;

    if (len != 29 || p[3] != ',' || p[4] != ' ')
        return -EINVAL;
    p += 5;
    if (!digits(&p, end, 2, &d) || !lit(&p, end, " "))
        return -EINVAL;
    for (int i = 0; i < 12 && !mo; i++)
        if (memcmp(p, months + 3 * i, 3) == 0)
            mo = i + 1;
    if (!mo)
        return -EINVAL;
    p += 3;
    if (!lit(&p, end, " ") || !digits(&p, end, 4, &y) || !lit(&p, end, " ") ||
        !digits(&p, end, 2, &h) || !lit(&p, end, ":") || !digits(&p, end, 2, &mi) ||
        !lit(&p, end, ":") || !digits(&p, end, 2, &s) || !lit(&p, end, " GMT") || p != end ||
        !valid_date(y, mo, d, h, mi, s))
        return -EINVAL;
    *out = (time_t)((long long)days_from_civil(y, mo, d) * DAY + h * 3600 + mi * 60 + (s > 59 ? 59 : s));
    return 0;
}

long acme_parse_retry_after(const char *v, size_t len, time_t now)
{
    if (len == 0)
        return -1;
    if (v[0] >= '0' && v[0] <= '9') {
        long n = 0;
        for (size_t i = 0; i < len; i++) {
            if (v[i] < '0' || v[i] > '9')
                return -1;
            if (n < DAY)
                n = n * 10 + (v[i] - '0');
        }
        return n > DAY ? DAY : n;
    }
    time_t t;
    if (parse_http_date(v, len, &t) < 0)
        return -1;
    if (t <= now)
        return 0;
    return t - now > DAY ? DAY : (long)(t - now);
}
