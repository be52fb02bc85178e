/* conf/addr.c: numeric socket addresses and CIDR blocks as written in the config.
 *
 * Only numeric addresses: a name would need a resolver at load time, and an answer that changes
 * between reloads would move a listener or a backend without anyone editing the file. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>

#include "conf/internal.h"

static const char no_names[] =
    "hostnames are not allowed, use a numeric IPv4 address or an [IPv6] address";

/* A host that failed to parse as an IP but has a letter in it was meant as a name (or an
 * unbracketed IPv6 with hex digits, which the caller tells apart by its colons first). */
static bool looks_like_name(const char *host, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (isalpha((unsigned char)host[i]))
            return true;
    return false;
}

static int parse_port(const char *p, in_port_t *port)
{
    unsigned v = 0;
    size_t n = 0;

    for (; p[n]; n++) {
        if (!isdigit((unsigned char)p[n]) || n >= 5)
            return -EINVAL;
        v = v * 10 + (unsigned)(p[n] - '0');
    }
    if (n == 0 || v < 1 || v > 65535)
        return -EINVAL;
    *port = htons((in_port_t)v);
    return 0;
}

int conf_addr_parse(const char *text, struct conf_addr *addr, const char **why)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *colon, *end;
    size_t hlen;
    in_port_t port;

    memset(addr, 0, sizeof *addr);
    *why = "expected \"IPv4:port\" or \"[IPv6]:port\"";
    if (!text || !*text)
        return -EINVAL;
    if (strlen(text) >= sizeof addr->text) {
        *why = "address too long";
        return -EINVAL;
    }
    if (text[0] == '[') {
        end = strchr(text, ']');
        if (!end)
            return -EINVAL;
        hlen = (size_t)(end - text - 1);
        if (end[1] != ':') {
            *why = "missing port: expected \"[IPv6]:port\"";
            return -EINVAL;
        }
        colon = end + 1;
        if (hlen >= sizeof host)
            goto bad_v6;
        memcpy(host, text + 1, hlen);
        host[hlen] = '\0';
        if (parse_port(colon + 1, &port) < 0)
            goto bad_port;
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&addr->ss;
        if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
            goto bad_v6;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = port;
        addr->len = sizeof *sin6;
    } else {
        colon = strrchr(text, ':');
        if (!colon) {
            *why = looks_like_name(text, strlen(text)) ? no_names
                 : "missing port: expected \"IPv4:port\" or \"[IPv6]:port\"";
            return -EINVAL;
        }
        if (memchr(text, ':', (size_t)(colon - text))) {
            *why = "IPv6 addresses need brackets, e.g. \"[::1]:993\"";
            return -EINVAL;
        }
        hlen = (size_t)(colon - text);
        if (hlen == 0) {
            *why = "missing host: use 0.0.0.0 or [::] for every address";
            return -EINVAL;
        }
        if (hlen == 1 && text[0] == '*') {
            *why = "\"*\" is not an address: use 0.0.0.0 or [::]";
            return -EINVAL;
        }
        if (hlen >= sizeof host) {
            *why = looks_like_name(text, hlen) ? no_names : "invalid IPv4 address";
            return -EINVAL;
        }
        memcpy(host, text, hlen);
        host[hlen] = '\0';
        struct sockaddr_in *sin = (struct sockaddr_in *)&addr->ss;
        if (inet_pton(AF_INET, host, &sin->sin_addr) != 1) {
            *why = looks_like_name(host, hlen) ? no_names : "invalid IPv4 address";
            return -EINVAL;
        }
        if (parse_port(colon + 1, &port) < 0)
            goto bad_port;
        sin->sin_family = AF_INET;
        sin->sin_port = port;
        addr->len = sizeof *sin;
    }
    strcpy(addr->text, text);
    *why = NULL;
    return 0;

bad_v6:
    *why = memchr(text, '%', hlen + 1) ? "scoped IPv6 addresses (with %) are not supported"
                                       : "invalid IPv6 address";
    memset(addr, 0, sizeof *addr);
    return -EINVAL;
bad_port:
    *why = "port must be a number from 1 to 65535";
    memset(addr, 0, sizeof *addr);
    return -EINVAL;
}

int conf_parse_addr(const char *text, struct conf_addr *addr)
{
    const char *why;
    return conf_addr_parse(text, addr, &why);
}

/* The bytes to compare and their count (4 or 16), with IPv4-mapped IPv6 folded to IPv4: a
 * dual-stack socket reports IPv4 clients that way, and they must meet the IPv4 rules. */
static int ip_bytes(const struct sockaddr *sa, uint8_t out[16])
{
    if (!sa)
        return 0;
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in sin;
        memcpy(&sin, sa, sizeof sin);
        memcpy(out, &sin.sin_addr, 4);
        return 4;
    }
    if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 sin6;
        memcpy(&sin6, sa, sizeof sin6);
        if (IN6_IS_ADDR_V4MAPPED(&sin6.sin6_addr)) {
            memcpy(out, sin6.sin6_addr.s6_addr + 12, 4);
            return 4;
        }
        memcpy(out, sin6.sin6_addr.s6_addr, 16);
        return 16;
    }
    return 0;
}

static bool prefix_equal(const uint8_t *a, const uint8_t *b, int bits)
{
    int full = bits / 8, rest = bits % 8;

    if (memcmp(a, b, (size_t)full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[full] & mask) == (b[full] & mask);
}

static void store_ip(struct sockaddr_storage *ss, const uint8_t *b, int n)
{
    memset(ss, 0, sizeof *ss);
    if (n == 4) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        sin->sin_family = AF_INET;
        memcpy(&sin->sin_addr, b, 4);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
        sin6->sin6_family = AF_INET6;
        memcpy(sin6->sin6_addr.s6_addr, b, 16);
    }
}

int conf_cidr_parse(const char *text, struct conf_cidr *cidr, const char **why)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *slash;
    uint8_t b[16];
    size_t hlen;
    int n, max, prefix;

    memset(cidr, 0, sizeof *cidr);
    *why = "expected an address or \"address/prefix\"";
    if (!text || !*text)
        return -EINVAL;
    slash = strchr(text, '/');
    hlen = slash ? (size_t)(slash - text) : strlen(text);
    if (hlen == 0)
        return -EINVAL;
    if (hlen >= sizeof host) {
        if (looks_like_name(text, hlen) && !memchr(text, ':', hlen))
            *why = no_names;
        return -EINVAL;
    }
    memcpy(host, text, hlen);
    host[hlen] = '\0';
    if (memchr(host, ':', hlen)) {
        n = 16;
        if (inet_pton(AF_INET6, host, b) != 1) {
            *why = "invalid IPv6 address";
            return -EINVAL;
        }
    } else {
        n = 4;
        if (inet_pton(AF_INET, host, b) != 1) {
            *why = looks_like_name(host, hlen) ? no_names : "invalid IPv4 address";
            return -EINVAL;
        }
    }
    max = n * 8;
    prefix = max;
    if (slash) {
        const char *p = slash + 1;
        size_t i;
        prefix = 0;
        for (i = 0; p[i]; i++) {
            if (!isdigit((unsigned char)p[i]) || i >= 3)
                break;
            prefix = prefix * 10 + (p[i] - '0');
        }
        if (i == 0 || p[i] || prefix > max) {
            *why = n == 4 ? "prefix length must be from 0 to 32" : "prefix length must be from 0 to 128";
            return -EINVAL;
        }
    }
    /* Bits past the prefix are almost always a typo (10.1.2.3/8 for 10.1.2.3/32?), so they are
     * refused rather than silently widened. */
    uint8_t masked[16];
    memcpy(masked, b, (size_t)n);
    for (int bit = prefix; bit < max; bit++)
        masked[bit / 8] &= (uint8_t)~(0x80 >> (bit % 8));
    if (memcmp(masked, b, (size_t)n) != 0) {
        *why = "address has bits set beyond the prefix length";
        return -EINVAL;
    }
    /* A v4-mapped block means IPv4 clients: store it as IPv4 because conf_cidr_match folds
     * mapped client addresses to IPv4 before comparing. */
    static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    if (n == 16 && prefix >= 96 && memcmp(b, mapped, 12) == 0) {
        memmove(b, b + 12, 4);
        n = 4;
        prefix -= 96;
    }
    store_ip(&cidr->net, b, n);
    cidr->prefix = prefix;
    *why = NULL;
    return 0;
}

bool conf_cidr_match(const struct conf_cidr *cidr, const struct sockaddr *addr)
{
    uint8_t net[16], ip[16];
    int nn, ni;

    if (!cidr)
        return false;
    nn = ip_bytes((const struct sockaddr *)&cidr->net, net);
    ni = ip_bytes(addr, ip);
    if (nn == 0 || nn != ni || cidr->prefix < 0 || cidr->prefix > nn * 8)
        return false;
    return prefix_equal(net, ip, cidr->prefix);
}

bool conf_addr_is_any(const struct conf_addr *addr)
{
    uint8_t b[16], zero[16] = { 0 };
    int n = ip_bytes((const struct sockaddr *)&addr->ss, b);
    return n > 0 && memcmp(b, zero, (size_t)n) == 0;
}

static in_port_t addr_port(const struct conf_addr *a)
{
    if (a->ss.ss_family == AF_INET)
        return ((const struct sockaddr_in *)&a->ss)->sin_port;
    return ((const struct sockaddr_in6 *)&a->ss)->sin6_port;
}

/* Linux binds [::] dual-stack by default (net.ipv6.bindv6only = 0), so [::]:X takes X for IPv4
 * too; 0.0.0.0:X takes X for every IPv4 address. With SO_REUSEPORT a second bind may even
 * succeed and quietly split the traffic, which is worse than failing, hence a config error. */
bool conf_addr_clash(const struct conf_addr *a, const struct conf_addr *b)
{
    uint8_t ba[16], bb[16];
    int na, nb;
    bool any6a, any6b;

    if (addr_port(a) != addr_port(b))
        return false;
    na = ip_bytes((const struct sockaddr *)&a->ss, ba);
    nb = ip_bytes((const struct sockaddr *)&b->ss, bb);
    any6a = na == 16 && conf_addr_is_any(a);
    any6b = nb == 16 && conf_addr_is_any(b);
    if (any6a || any6b)
        return true;
    if (na != nb)
        return false;
    return conf_addr_is_any(a) || conf_addr_is_any(b) || memcmp(ba, bb, (size_t)na) == 0;
}

bool conf_addr_reaches(const struct conf_addr *backend, const struct conf_addr *listen)
{
    uint8_t bb[16], bl[16];
    int nb, nl;

    if (addr_port(backend) != addr_port(listen))
        return false;
    nb = ip_bytes((const struct sockaddr *)&backend->ss, bb);
    nl = ip_bytes((const struct sockaddr *)&listen->ss, bl);
    if (nb == nl && memcmp(bb, bl, (size_t)nb) == 0)
        return true;
    if (!conf_addr_is_any(listen))
        return false;
    /* A wildcard takes every local address; of those the config can only know loopback for
     * sure. [::] is dual-stack (see conf_addr_clash), 0.0.0.0 IPv4 only. */
    bool v4_loopback = nb == 4 && bb[0] == 127;
    static const uint8_t v6_loopback[16] = { [15] = 1 };
    bool v6_loop = nb == 16 && memcmp(bb, v6_loopback, 16) == 0;
    return nl == 16 ? (v4_loopback || v6_loop) : v4_loopback;
}
