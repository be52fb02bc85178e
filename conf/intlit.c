/* conf/intlit.c: find the integer literals that libconfig 1.5 would silently wrap.
 *
 * libconfig 1.5 reads an integer without an L suffix into a 32-bit int with no range check:
 * `idle_timeout = 4294967298;` becomes 2 and `max_connections = 4294967296;` becomes 0 (= no
 * limit), and nothing in the parsed tree shows that it happened. So the source text is looked at
 * before libconfig sees it: a lexer just good enough to skip strings and comments finds each
 * number token the way libconfig's own lexer would split it, and one that does not fit in 32 bits
 * is an error with its file and line. Values that need 64 bits must say so with an L suffix, as
 * libconfig documents; those are read correctly and range-checked by the typed readers. */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "conf/internal.h"

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_hex(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Characters of a setting name (libconfig: [A-Za-z*][-A-Za-z0-9_*]*): digits inside a name, as
 * in `a-1234567890123`, are not a number. A '.' before digits makes them a float's fraction. */
static bool joins_token(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '_' ||
           c == '*' || c == '-' || c == '.';
}

/* One number token at P (a sign, if any, included). Returns where it ends; sets *bad when it is a
 * 32-bit integer that does not fit, with its wrapped value in *wrapped. */
static const char *number(const char *p, const char *end, bool *bad, int *wrapped)
{
    const char *start = p, *digits;
    bool hex = false;

    *bad = false;
    if (*p == '-' || *p == '+')
        p++;
    if (end - p > 2 && p[0] == '0' && (p[1] == 'x' || p[1] == 'X') && is_hex(p[2])) {
        hex = true;
        p += 2;
    }
    digits = p;
    while (p < end && (hex ? is_hex(*p) : is_digit(*p)))
        p++;
    if (!hex && p < end && (*p == '.' || *p == 'e' || *p == 'E')) {
        /* A float: libconfig reads it as a double, nothing wraps. */
        while (p < end && (is_digit(*p) || *p == '.' || *p == 'e' || *p == 'E' ||
                           ((*p == '-' || *p == '+') && (p[-1] == 'e' || p[-1] == 'E'))))
            p++;
        return p;
    }
    if (p < end && *p == 'L')
        return p + 1;           /* 64-bit, read as written */

    char text[80];
    size_t n = (size_t)(p - start);
    if (n >= sizeof text) {
        *bad = true;
        *wrapped = -1;          /* saturated to LLONG_MAX, then cut to 32 bits */
        return p;
    }
    memcpy(text, start, n);
    text[n] = '\0';
    errno = 0;
    if (hex) {
        unsigned long long v = strtoull(digits, NULL, 16);
        *bad = errno == ERANGE || v > INT_MAX;
        *wrapped = (int)(uint32_t)v;
    } else {
        long long v = strtoll(text, NULL, 10);
        *bad = errno == ERANGE || v < INT_MIN || v > INT_MAX;
        *wrapped = (int)(uint32_t)(unsigned long long)v;
    }
    return p;
}

void conf_check_int_literals(struct conf_ctx *ctx, const char *file, const char *buf, size_t len)
{
    const char *p = buf, *end = buf + len;
    unsigned line = 1;

    while (p < end) {
        char c = *p;
        if (c == '\n') {
            line++;
            p++;
        } else if (c == '"') {
            /* Strings may span lines; \" and \\ are the escapes that matter for finding the end. */
            for (p++; p < end && *p != '"'; p++) {
                if (*p == '\\' && p + 1 < end)
                    p++;
                line += *p == '\n';
            }
            p += p < end;
        } else if (c == '#' || (c == '/' && p + 1 < end && p[1] == '/')) {
            while (p < end && *p != '\n')
                p++;
        } else if (c == '/' && p + 1 < end && p[1] == '*') {
            for (p += 2; p < end && !(*p == '*' && p + 1 < end && p[1] == '/'); p++)
                line += *p == '\n';
            p += p < end ? 2 : 0;
        } else if ((is_digit(c) || ((c == '-' || c == '+') && p + 1 < end && is_digit(p[1]))) &&
                   (p == buf || !joins_token(p[-1]))) {
            const char *start = p;
            bool bad;
            int wrapped;
            p = number(p, end, &bad, &wrapped);
            if (bad) {
                char text[CONF_QUOTE_MAX];
                size_t n = (size_t)(p - start) < sizeof text - 1 ? (size_t)(p - start) : sizeof text - 1;
                memcpy(text, start, n);
                text[n] = '\0';
                conf_error_at(ctx, file, line,
                              "%s does not fit in 32 bits (libconfig would read it as %d): "
                              "write it with an L suffix if you mean it",
                              text, wrapped);
            }
        } else {
            p++;
        }
    }
}
