/* name.c: turns a host name from a config, a certificate or a ClientHello into the one form the
 * indexes compare: lower case, no trailing dot, checked label by label. */
#include <errno.h>

#include "certstore/internal.h"

/* Host names in SNI and in certificates are A-labels (RFC 5890), so anything outside this table
 * is garbage or an attack. '_' is allowed because real zones use it (service labels) and some
 * private CAs issue for it. */
static signed char name_char(unsigned char c)
{
    if (c >= 'a' && c <= 'z')
        return (signed char)c;
    if (c >= 'A' && c <= 'Z')
        return (signed char)(c - 'A' + 'a');
    if ((c >= '0' && c <= '9') || c == '-' || c == '_')
        return (signed char)c;
    return -1;
}

int cs_name_normalize(const char *name, size_t len, bool allow_wildcard, char *out)
{
    size_t i = 0, o = 0, label = 0;

    if (!name)
        return -EINVAL;
    if (len > 0 && name[len - 1] == '.')
        len--;
    if (len == 0 || len > CS_NAME_MAX)
        return -EINVAL;

    /* The wildcard is only a whole leftmost label followed by at least one more label: that is
     * the only form RFC 6125 section 6.4.3 lets us honour without ambiguity. */
    if (name[0] == '*') {
        if (!allow_wildcard || len < 3 || name[1] != '.')
            return -EINVAL;
        out[o++] = '*';
        out[o++] = '.';
        i = 2;
    }
    for (; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c == '.') {
            if (label == 0)
                return -EINVAL;
            label = 0;
            out[o++] = '.';
            continue;
        }
        signed char n = name_char(c);
        if (n < 0 || ++label > 63)
            return -EINVAL;
        out[o++] = (char)n;
    }
    if (label == 0)
        return -EINVAL;
    out[o] = '\0';
    return (int)o;
}
