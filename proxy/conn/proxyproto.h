/* PROXY protocol v1/v2 codec (haproxy's proxy-protocol.txt): pure functions over caller-owned
 * buffers, no I/O and no allocation, so the same code serves the inbound listener (header from a
 * load balancer) and the upstream side (header to Dovecot/Postfix/webmail) and can be fuzzed.
 *
 * Decisions the spec leaves open, made here once:
 *  - v2 LOCAL ignores the whole protocol block (family, addresses, TLVs) as the spec requires;
 *    the caller uses the real connection addresses (local = true).
 *  - v2 PROXY with AF_UNSPEC, or AF_UNIX over STREAM, is accepted as local = true: a Unix socket
 *    path says nothing about the client, and the spec lets UNSPEC fall back to the real
 *    endpoints. DGRAM transports and undefined family/transport values are rejected.
 *  - v2 TLVs are walked under PROXY: each must fit inside the header, an SSL TLV's sub-TLVs must
 *    fit inside it, and a CRC32C TLV must match the header's checksum.
 *  - Builders map an IPv4 address into IPv6 (::ffff:a.b.c.d) when the other end is IPv6, because
 *    both addresses must share one family and UNKNOWN would lose the client's address. Any other
 *    family (AF_UNIX, or NULL) gives v1 "PROXY UNKNOWN" or v2 PROXY over AF_UNSPEC.
 *  - v2 SSL TLV: client = PP2_CLIENT_SSL, verify = 0. The spec's "non-zero otherwise" would
 *    suggest 1 without a client certificate, but haproxy sends 0 and receivers (Dovecot,
 *    lighttpd, Varnish) only read verify when a CERT_CONN/CERT_SESS flag is set; we never set
 *    those flags because mailsnid does not ask for client certificates. */
#ifndef MAILSNID_PROXYPROTO_H
#define MAILSNID_PROXYPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* v1: the spec's worst case line, CRLF included. */
#define PP_V1_MAX_LEN 107
/* v2: whole header (16 fixed bytes + address block + TLVs). A load balancer in front of a mail
 * host has no reason to send kilobytes of TLVs; refusing them bounds what we buffer. */
#define PP_V2_MAX_LEN 1024
/* The most bytes pp_parse can need before it answers with something other than 0. */
#define PP_MAX_LEN PP_V2_MAX_LEN

#define PP2_TYPE_ALPN           0x01
#define PP2_TYPE_AUTHORITY      0x02
#define PP2_TYPE_CRC32C         0x03
#define PP2_TYPE_NOOP           0x04
#define PP2_TYPE_SSL            0x20
#define PP2_SUBTYPE_SSL_VERSION 0x21
#define PP2_SUBTYPE_SSL_CIPHER  0x23
#define PP2_CLIENT_SSL          0x01

struct pp_addrs {
    struct sockaddr_storage src, dst;  /* AF_INET or AF_INET6, port set; zeroed when local */
    bool local;                        /* use the real connection's addresses instead */
};

/* Parses a PROXY header (v1 or v2, told apart by the first byte) at the start of BUF.
 * Returns > 0: the header's length (what follows is payload and was not looked at);
 *         0: incomplete, BUF is a valid prefix shorter than PP_MAX_LEN: call again with more;
 *         -EINVAL: malformed, detected as early as the bytes allow (a first byte other than
 *                  'P' or '\r' is enough);
 *         -E2BIG: a v2 header longer than PP_V2_MAX_LEN.
 * OUT may be NULL; it is written only when the result is > 0. */
int pp_parse(const uint8_t *buf, size_t len, struct pp_addrs *out);

/* True while BUF could still be the start of a valid PROXY header (complete or not), so a
 * listener that requires one can drop other traffic after its first read. */
bool pp_could_be_header(const uint8_t *buf, size_t len);

/* What the client's TLS session looked like, for the v2 TLVs. Strings are NUL-terminated; NULL
 * or "" means absent. */
struct pp_tls {
    const char *authority;  /* SNI name */
    bool ssl;               /* client used TLS: adds the PP2_TYPE_SSL TLV */
    const char *version;    /* e.g. "TLSv1.3" */
    const char *cipher;     /* e.g. "TLS_AES_128_GCM_SHA256" */
    const char *alpn;       /* only when it matches the backend's protocol: Dovecot drops a
                               connection whose ALPN does not */
};

/* Writes a v1 line (CRLF-terminated, no NUL) into OUT. Returns its length, or -ENOSPC when it
 * does not fit in CAP (at most PP_V1_MAX_LEN bytes are ever needed). */
int pp_build_v1(char *out, size_t cap, const struct sockaddr *src, const struct sockaddr *dst);

/* Writes a v2 header with the PROXY command; TLS may be NULL. TLVs in this order: ALPN,
 * AUTHORITY, SSL (with VERSION and CIPHER sub-TLVs). Returns its length, -ENOSPC when it does
 * not fit in CAP, or -EINVAL when a string is too long for a TLV or the header for its length
 * field. */
int pp_build_v2(uint8_t *out, size_t cap, const struct sockaddr *src, const struct sockaddr *dst,
                const struct pp_tls *tls);

#endif
