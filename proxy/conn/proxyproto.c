/* PROXY protocol v1/v2 codec. See proxyproto.h for the decisions the spec leaves open.
 *
 * The parser is stateless and is simply called again with a longer buffer. To still refuse bad
 * input "as soon as possible" (the spec's advice), every check runs on whatever prefix is
 * there: a field cut short by the end of the buffer is judged on what it could still become. */
#include "proxy/conn/proxyproto.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

static const uint8_t v2_sig[12] = {
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
};

#define V2_HDR_LEN 16
#define V2_VERSION 0x20
#define V2_CMD_LOCAL 0x0
#define V2_CMD_PROXY 0x1
#define V2_FAM_UNSPEC 0x00
#define V2_FAM_TCP4 0x11
#define V2_FAM_UDP4 0x12
#define V2_FAM_TCP6 0x21
#define V2_FAM_UDP6 0x22
#define V2_FAM_UNIX_STREAM 0x31
#define V2_FAM_UNIX_DGRAM 0x32
#define V2_SSL_FIXED 5 /* client flags (1) + verify (4) */

/* An internal "need more bytes" that cannot collide with the negative errno results. */
#define PP_MORE 1

/* ---- shared address helpers ---- */

struct pp_ip {
    int family;          /* AF_INET or AF_INET6 */
    uint8_t addr[16];    /* 4 or 16 bytes used, network order */
    uint16_t port;       /* host order */
};

static void ip_to_storage(const struct pp_ip *ip, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (ip->family == AF_INET) {
        struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(ip->port) };
        memcpy(&sin.sin_addr, ip->addr, 4);
        memcpy(ss, &sin, sizeof(sin));
    } else {
        struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6, .sin6_port = htons(ip->port) };
        memcpy(&sin6.sin6_addr, ip->addr, 16);
        memcpy(ss, &sin6, sizeof(sin6));
    }
}

/* Returns false for anything but IPv4/IPv6, which the builders then announce as unknown. */
static bool ip_from_sockaddr(const struct sockaddr *sa, struct pp_ip *ip)
{
    if (!sa)
        return false;
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in sin;
        memcpy(&sin, sa, sizeof(sin));
        ip->family = AF_INET;
        memcpy(ip->addr, &sin.sin_addr, 4);
        ip->port = ntohs(sin.sin_port);
        return true;
    }
    if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 sin6;
        memcpy(&sin6, sa, sizeof(sin6));
        ip->family = AF_INET6;
        memcpy(ip->addr, &sin6.sin6_addr, 16);
        ip->port = ntohs(sin6.sin6_port);
        return true;
    }
    return false;
}

static void ip_map_v4_to_v6(struct pp_ip *ip)
{
    if (ip->family != AF_INET)
        return;
    uint8_t v4[4];
    memcpy(v4, ip->addr, 4);
    memset(ip->addr, 0, 10);
    ip->addr[10] = 0xff;
    ip->addr[11] = 0xff;
    memcpy(ip->addr + 12, v4, 4);
    ip->family = AF_INET6;
}

/* Both ends must share one family on the wire. Returns that family, or AF_UNSPEC when either
 * end is not IP. */
static int ip_pair(const struct sockaddr *src, const struct sockaddr *dst,
                   struct pp_ip *s, struct pp_ip *d)
{
    if (!ip_from_sockaddr(src, s) || !ip_from_sockaddr(dst, d))
        return AF_UNSPEC;
    if (s->family != d->family) {
        ip_map_v4_to_v6(s);
        ip_map_v4_to_v6(d);
    }
    return s->family;
}

/* ---- v1 ---- */

enum v1_field { V1_PROTO, V1_ADDR4, V1_ADDR6, V1_PORT };

static size_t v1_field_max(enum v1_field f)
{
    switch (f) {
    case V1_PROTO: return 7;                      /* "UNKNOWN" */
    case V1_ADDR4: return INET_ADDRSTRLEN - 1;
    case V1_ADDR6: return INET6_ADDRSTRLEN - 1;
    case V1_PORT:  return 5;
    }
    return 0;
}

static bool v1_in_class(char c, enum v1_field f)
{
    bool digit = c >= '0' && c <= '9';
    switch (f) {
    case V1_PROTO: return digit || (c >= 'A' && c <= 'Z');
    case V1_ADDR4: return digit || c == '.';
    case V1_ADDR6: return digit || c == ':' || c == '.' ||
                          (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
    case V1_PORT:  return digit;
    }
    return false;
}

static bool v1_is_prefix(const char *s, size_t n, const char *word)
{
    return n <= strlen(word) && memcmp(s, word, n) == 0;
}

/* Decimal without heading zeroes (the spec forbids them to avoid octal confusion). Works on a
 * partial field too: a prefix that is already too big or zero-led can never become valid. */
static long v1_port_value(const char *s, size_t n)
{
    if (n == 0 || (n > 1 && s[0] == '0'))
        return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    return v <= 65535 ? v : -1;
}

/* Judges a field the buffer ended inside: could more bytes still make it valid? */
static bool v1_partial_ok(const char *s, size_t n, enum v1_field f)
{
    switch (f) {
    case V1_PROTO:
        return v1_is_prefix(s, n, "TCP4") || v1_is_prefix(s, n, "TCP6") ||
               v1_is_prefix(s, n, "UNKNOWN");
    case V1_PORT:
        return n == 0 || v1_port_value(s, n) >= 0;
    case V1_ADDR4:
    case V1_ADDR6:
        return true;
    }
    return false;
}

/* Scans one field starting at *P. Returns 0 with *TOK and *TOKLEN set and *P just past the field,
 * PP_MORE when the bytes end inside it, -EINVAL when it can never be valid. The terminator is
 * left for the caller to match. */
static int v1_scan(const char **p, const char *end, enum v1_field f,
                   const char **tok, size_t *toklen)
{
    const char *s = *p, *q = s;
    size_t max = v1_field_max(f);
    while (q < end && v1_in_class(*q, f) && (size_t)(q - s) <= max)
        q++;
    size_t n = (size_t)(q - s);
    if (n > max)
        return -EINVAL;
    if (q == end)
        return v1_partial_ok(s, n, f) ? PP_MORE : -EINVAL;
    if (n == 0)
        return -EINVAL;
    *tok = s;
    *toklen = n;
    *p = q;
    return 0;
}

static int v1_literal(const char **p, const char *end, const char *lit)
{
    size_t want = strlen(lit), have = (size_t)(end - *p);
    size_t n = have < want ? have : want;
    if (memcmp(*p, lit, n) != 0)
        return -EINVAL;
    if (n < want)
        return PP_MORE;
    *p += want;
    return 0;
}

static int v1_addr(const char **p, const char *end, int family, struct pp_ip *ip)
{
    const char *tok;
    size_t n;
    int rc = v1_scan(p, end, family == AF_INET ? V1_ADDR4 : V1_ADDR6, &tok, &n);
    if (rc)
        return rc;
    char tmp[INET6_ADDRSTRLEN];
    memcpy(tmp, tok, n);
    tmp[n] = '\0';
    ip->family = family;
    /* glibc's inet_pton takes exactly four dotted decimals without heading zeroes for
     * AF_INET, which is the spec's canonical form. */
    return inet_pton(family, tmp, ip->addr) == 1 ? 0 : -EINVAL;
}

static int v1_port(const char **p, const char *end, struct pp_ip *ip)
{
    const char *tok;
    size_t n;
    int rc = v1_scan(p, end, V1_PORT, &tok, &n);
    if (rc)
        return rc;
    long v = v1_port_value(tok, n);
    if (v < 0)
        return -EINVAL;
    ip->port = (uint16_t)v;
    return 0;
}

/* UNKNOWN: the receiver must ignore everything up to the CRLF. */
static int v1_skip_to_crlf(const char **p, const char *end)
{
    for (const char *q = *p; q < end; q++) {
        if (q[0] == '\r' && q + 1 < end && q[1] == '\n') {
            *p = q + 2;
            return 0;
        }
    }
    return PP_MORE;
}

static int v1_body(const char **p, const char *end, struct pp_addrs *res)
{
    const char *proto;
    size_t plen;
    int rc;

    if ((rc = v1_literal(p, end, "PROXY ")) != 0 ||
        (rc = v1_scan(p, end, V1_PROTO, &proto, &plen)) != 0)
        return rc;
    if (plen == 7 && memcmp(proto, "UNKNOWN", 7) == 0) {
        res->local = true;
        if (**p == '\r')
            return v1_literal(p, end, "\r\n");
        if ((rc = v1_literal(p, end, " ")) != 0)
            return rc;
        return v1_skip_to_crlf(p, end);
    }
    if (plen != 4 || (memcmp(proto, "TCP4", 4) != 0 && memcmp(proto, "TCP6", 4) != 0))
        return -EINVAL;

    int family = proto[3] == '4' ? AF_INET : AF_INET6;
    struct pp_ip src, dst;
    if ((rc = v1_literal(p, end, " ")) != 0 ||
        (rc = v1_addr(p, end, family, &src)) != 0 ||
        (rc = v1_literal(p, end, " ")) != 0 ||
        (rc = v1_addr(p, end, family, &dst)) != 0 ||
        (rc = v1_literal(p, end, " ")) != 0 ||
        (rc = v1_port(p, end, &src)) != 0 ||
        (rc = v1_literal(p, end, " ")) != 0 ||
        (rc = v1_port(p, end, &dst)) != 0 ||
        (rc = v1_literal(p, end, "\r\n")) != 0)
        return rc;
    ip_to_storage(&src, &res->src);
    ip_to_storage(&dst, &res->dst);
    return 0;
}

static int v1_parse(const uint8_t *buf, size_t len, struct pp_addrs *out)
{
    /* Looking no further than 107 bytes makes "no CRLF within the limit" fall out of the
     * ordinary "ran out of bytes" path. */
    const char *start = (const char *)buf, *p = start;
    const char *end = start + (len < PP_V1_MAX_LEN ? len : PP_V1_MAX_LEN);
    struct pp_addrs res;
    memset(&res, 0, sizeof(res));

    int rc = v1_body(&p, end, &res);
    if (rc == PP_MORE)
        return len >= PP_V1_MAX_LEN ? -EINVAL : 0;
    if (rc < 0)
        return rc;
    if (out)
        *out = res;
    return (int)(p - start);
}

/* ---- v2 ---- */

/* CRC32C (Castagnoli, reflected 0x82F63B78), bitwise: headers are at most 1 KB and arrive
 * once per connection, so a table buys nothing. The CRC TLV's own four bytes count as zero. */
static uint32_t v2_crc32c(const uint8_t *buf, size_t len, size_t zero_at)
{
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < len; i++) {
        uint8_t b = (i >= zero_at && i < zero_at + 4) ? 0 : buf[i];
        crc ^= b;
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return ~crc;
}

/* Walks the TLVs in [off, end) of BUF, of which only [0, avail) has arrived. Each TLV must fit
 * inside [off, end); an SSL TLV's sub-TLVs must fit inside it (checked once it has arrived).
 * Records the offset of a CRC32C value in *CRC_AT. Returns 0 or -EINVAL. */
static int v2_tlvs(const uint8_t *buf, size_t off, size_t end, size_t avail, bool nested,
                   size_t *crc_at)
{
    while (off < end) {
        if (end - off < 3)
            return -EINVAL;
        if (avail < off + 3)
            return 0;
        uint8_t type = buf[off];
        size_t vlen = (size_t)buf[off + 1] << 8 | buf[off + 2];
        size_t v = off + 3;
        if (vlen > end - v)
            return -EINVAL;
        if (!nested && type == PP2_TYPE_CRC32C) {
            if (vlen != 4 || *crc_at)
                return -EINVAL;
            *crc_at = v;
        }
        if (!nested && type == PP2_TYPE_SSL) {
            if (vlen < V2_SSL_FIXED)
                return -EINVAL;
            if (v2_tlvs(buf, v + V2_SSL_FIXED, v + vlen, avail, true, crc_at) < 0)
                return -EINVAL;
        }
        off = v + vlen;
    }
    return 0;
}

static int v2_parse(const uint8_t *buf, size_t len, struct pp_addrs *out)
{
    size_t n = len < sizeof(v2_sig) ? len : sizeof(v2_sig);
    if (memcmp(buf, v2_sig, n) != 0)
        return -EINVAL;
    if (len > 12 && ((buf[12] & 0xF0) != V2_VERSION || (buf[12] & 0x0F) > V2_CMD_PROXY))
        return -EINVAL;

    /* Family/transport values the spec defines; anything else "must be rejected", whatever
     * the command. DGRAM is defined but never proxied to a TCP listener: only LOCAL, which
     * ignores the family, may carry it. */
    size_t addr_len = 0;
    if (len > 13) {
        bool local = (buf[12] & 0x0F) == V2_CMD_LOCAL;
        switch (buf[13]) {
        case V2_FAM_UNSPEC:      addr_len = 0;   break;
        case V2_FAM_TCP4:        addr_len = 12;  break;
        case V2_FAM_TCP6:        addr_len = 36;  break;
        case V2_FAM_UNIX_STREAM: addr_len = 216; break;
        case V2_FAM_UDP4:
        case V2_FAM_UDP6:
        case V2_FAM_UNIX_DGRAM:
            if (local)
                break;
            return -EINVAL;
        default: return -EINVAL;
        }
    }
    if (len < V2_HDR_LEN)
        return 0;

    size_t total = V2_HDR_LEN + ((size_t)buf[14] << 8 | buf[15]);
    if (total > PP_V2_MAX_LEN)
        return -E2BIG;
    struct pp_addrs res;
    memset(&res, 0, sizeof(res));

    /* LOCAL: the spec says to discard the whole block, family included. */
    if ((buf[12] & 0x0F) == V2_CMD_LOCAL) {
        if (len < total)
            return 0;
        res.local = true;
        goto done;
    }

    if (total - V2_HDR_LEN < addr_len)
        return -EINVAL;
    size_t crc_at = 0;
    if (v2_tlvs(buf, V2_HDR_LEN + addr_len, total, len, false, &crc_at) < 0)
        return -EINVAL;
    if (len < total)
        return 0;
    if (crc_at) {
        uint32_t want = (uint32_t)buf[crc_at] << 24 | (uint32_t)buf[crc_at + 1] << 16 |
                        (uint32_t)buf[crc_at + 2] << 8 | buf[crc_at + 3];
        if (v2_crc32c(buf, total, crc_at) != want)
            return -EINVAL;
    }

    const uint8_t *a = buf + V2_HDR_LEN;
    struct pp_ip src = { 0 }, dst = { 0 };
    switch (buf[13]) {
    case V2_FAM_TCP4:
        src.family = dst.family = AF_INET;
        memcpy(src.addr, a, 4);
        memcpy(dst.addr, a + 4, 4);
        src.port = (uint16_t)(a[8] << 8 | a[9]);
        dst.port = (uint16_t)(a[10] << 8 | a[11]);
        break;
    case V2_FAM_TCP6:
        src.family = dst.family = AF_INET6;
        memcpy(src.addr, a, 16);
        memcpy(dst.addr, a + 16, 16);
        src.port = (uint16_t)(a[32] << 8 | a[33]);
        dst.port = (uint16_t)(a[34] << 8 | a[35]);
        break;
    default:
        /* UNSPEC and UNIX carry no client IP we could use. */
        res.local = true;
        goto done;
    }
    ip_to_storage(&src, &res.src);
    ip_to_storage(&dst, &res.dst);
done:
    if (out)
        *out = res;
    return (int)total;
}

int pp_parse(const uint8_t *buf, size_t len, struct pp_addrs *out)
{
    if (len == 0)
        return 0;
    /* The two versions differ from the first byte on, and so does everything else we expect
     * to see by mistake (TLS 0x16, "GET", a mail client's first command). */
    if (buf[0] == 'P')
        return v1_parse(buf, len, out);
    if (buf[0] == v2_sig[0])
        return v2_parse(buf, len, out);
    return -EINVAL;
}

bool pp_could_be_header(const uint8_t *buf, size_t len)
{
    return pp_parse(buf, len, NULL) >= 0;
}

/* ---- builders ---- */

int pp_build_v1(char *out, size_t cap, const struct sockaddr *src, const struct sockaddr *dst)
{
    char line[PP_V1_MAX_LEN + 1];
    struct pp_ip s, d;
    int family = ip_pair(src, dst, &s, &d);
    int n;

    if (family == AF_UNSPEC) {
        n = snprintf(line, sizeof(line), "PROXY UNKNOWN\r\n");
    } else {
        char sa[INET6_ADDRSTRLEN], da[INET6_ADDRSTRLEN];
        if (!inet_ntop(family, s.addr, sa, sizeof(sa)) ||
            !inet_ntop(family, d.addr, da, sizeof(da)))
            return -EINVAL;
        n = snprintf(line, sizeof(line), "PROXY %s %s %s %u %u\r\n",
                     family == AF_INET ? "TCP4" : "TCP6", sa, da,
                     (unsigned)s.port, (unsigned)d.port);
    }
    /* inet_ntop never writes more than 39 characters for IPv6, so the line always fits. */
    if (n < 0 || (size_t)n >= sizeof(line))
        return -EINVAL;
    if ((size_t)n > cap)
        return -ENOSPC;
    memcpy(out, line, (size_t)n);
    return n;
}

struct v2_out {
    uint8_t *buf;
    size_t cap, len;
    bool overflow;
};

static void v2_put(struct v2_out *o, const void *data, size_t n)
{
    if (o->overflow || n > o->cap - o->len) {
        o->overflow = true;
        return;
    }
    memcpy(o->buf + o->len, data, n);
    o->len += n;
}

static void v2_put_u8(struct v2_out *o, uint8_t v)
{
    v2_put(o, &v, 1);
}

static void v2_put_u16(struct v2_out *o, uint16_t v)
{
    uint8_t b[2] = { (uint8_t)(v >> 8), (uint8_t)v };
    v2_put(o, b, 2);
}

static bool str_present(const char *s)
{
    return s && *s;
}

static void v2_put_str_tlv(struct v2_out *o, uint8_t type, const char *s)
{
    size_t n = strlen(s);
    v2_put_u8(o, type);
    v2_put_u16(o, (uint16_t)n);
    v2_put(o, s, n);
}

int pp_build_v2(uint8_t *out, size_t cap, const struct sockaddr *src, const struct sockaddr *dst,
                const struct pp_tls *tls)
{
    struct pp_ip s, d;
    int family = ip_pair(src, dst, &s, &d);
    size_t addr_len = family == AF_INET ? 12 : family == AF_INET6 ? 36 : 0;

    /* Sizes first, so an over-long string is refused instead of wrapping a 16-bit length. */
    const char *alpn = tls && str_present(tls->alpn) ? tls->alpn : NULL;
    const char *auth = tls && str_present(tls->authority) ? tls->authority : NULL;
    bool ssl = tls && tls->ssl;
    const char *ver = ssl && str_present(tls->version) ? tls->version : NULL;
    const char *cipher = ssl && str_present(tls->cipher) ? tls->cipher : NULL;
    size_t alpn_len = alpn ? strlen(alpn) : 0, auth_len = auth ? strlen(auth) : 0;
    size_t ver_len = ver ? strlen(ver) : 0, cipher_len = cipher ? strlen(cipher) : 0;
    if (alpn_len > 0xFFFF || auth_len > 0xFFFF || ver_len > 0xFFFF || cipher_len > 0xFFFF)
        return -EINVAL;
    size_t ssl_len = V2_SSL_FIXED + (ver ? 3 + ver_len : 0) + (cipher ? 3 + cipher_len : 0);
    size_t body = addr_len + (alpn ? 3 + alpn_len : 0) + (auth ? 3 + auth_len : 0) +
                  (ssl ? 3 + ssl_len : 0);
    if (ssl_len > 0xFFFF || body > 0xFFFF)
        return -EINVAL;
    if (V2_HDR_LEN + body > cap)
        return -ENOSPC;

    struct v2_out o = { .buf = out, .cap = cap };
    v2_put(&o, v2_sig, sizeof(v2_sig));
    v2_put_u8(&o, V2_VERSION | V2_CMD_PROXY);
    v2_put_u8(&o, family == AF_INET ? V2_FAM_TCP4 : family == AF_INET6 ? V2_FAM_TCP6
                                                                       : V2_FAM_UNSPEC);
    v2_put_u16(&o, (uint16_t)body);
    if (family != AF_UNSPEC) {
        size_t alen = family == AF_INET ? 4 : 16;
        v2_put(&o, s.addr, alen);
        v2_put(&o, d.addr, alen);
        v2_put_u16(&o, s.port);
        v2_put_u16(&o, d.port);
    }
    if (alpn)
        v2_put_str_tlv(&o, PP2_TYPE_ALPN, alpn);
    if (auth)
        v2_put_str_tlv(&o, PP2_TYPE_AUTHORITY, auth);
    if (ssl) {
        static const uint8_t verify[4] = { 0, 0, 0, 0 };
        v2_put_u8(&o, PP2_TYPE_SSL);
        v2_put_u16(&o, (uint16_t)ssl_len);
        v2_put_u8(&o, PP2_CLIENT_SSL);
        v2_put(&o, verify, sizeof(verify));
        if (ver)
            v2_put_str_tlv(&o, PP2_SUBTYPE_SSL_VERSION, ver);
        if (cipher)
            v2_put_str_tlv(&o, PP2_SUBTYPE_SSL_CIPHER, cipher);
    }
    if (o.overflow)
        return -ENOSPC;
    return (int)o.len;
}
