/* conf/hostname.c: the one spelling of a domain name that the SNI index and the route table use.
 *
 * Clients send SNI in any case and some with a trailing dot; storing names lower-cased and
 * without the dot lets every later lookup be a plain byte comparison. */
#include <string.h>

#include "conf/internal.h"

const char *conf_hostname_normalise(char *name)
{
    size_t len = strlen(name);
    char *p = name, *label;

    if (len > 1 && name[len - 1] == '.')
        name[--len] = '\0';
    if (len == 0)
        return "empty host name";
    if (len > 253)
        return "host name longer than 253 characters";
    /* A wildcard stands for exactly one leftmost label, so it is only ever "*." + a name. */
    if (p[0] == '*') {
        if (p[1] != '.' || p[2] == '\0')
            return "a wildcard must be \"*.\" followed by a domain";
        p += 2;
    }
    for (label = p;; p++) {
        char c = *p;
        if (c >= 'A' && c <= 'Z')
            *p = c = (char)(c - 'A' + 'a');
        if (c == '.' || c == '\0') {
            if (p == label)
                return "empty label in host name";
            if (p - label > 63)
                return "label longer than 63 characters in host name";
            if (c == '\0')
                return NULL;
            label = p + 1;
            continue;
        }
        if (c == '*')
            return "\"*\" is only allowed as the whole leftmost label";
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
            return "invalid character in host name (international names need their xn-- form)";
    }
}
