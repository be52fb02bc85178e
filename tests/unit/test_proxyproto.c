/* PROXY protocol codec: round trips, exact bytes, every valid header split at every offset, and
 * malformed input rejected at the earliest byte that proves it wrong. */
#include "proxy/conn/proxyproto.h"
#include "check.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/un.h>

static const uint8_t sig[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };

static struct sockaddr_storage mk(const char *ip, uint16_t port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (strchr(ip, ':')) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        inet_pton(AF_INET6, ip, &s6->sin6_addr);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        inet_pton(AF_INET, ip, &s4->sin_addr);
    }
    return ss;
}

#define SA(ss) ((const struct sockaddr *)&(ss))

static bool same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}

/* Every proper prefix must ask for more, the whole header must parse to exactly its length,
 * and payload behind it must stay untouched. Returns the number of failing offsets. */
static int split_failures(const uint8_t *hdr, size_t len)
{
    int bad = 0;
    uint8_t buf[2048];
    struct pp_addrs a;
    for (size_t k = 0; k < len; k++) {
        if (pp_parse(hdr, k, &a) != 0 || !pp_could_be_header(hdr, k)) {
            fprintf(stderr, "  prefix %zu of %zu not incomplete\n", k, len);
            bad++;
        }
    }
    if (pp_parse(hdr, len, &a) != (int)len)
        bad++;
    static const char payload[] = "A001 LOGIN user pass\r\n";
    memcpy(buf, hdr, len);
    memcpy(buf + len, payload, sizeof(payload) - 1);
    for (size_t extra = 1; extra < sizeof(payload); extra++)
        if (pp_parse(buf, len + extra, &a) != (int)len)
            bad++;
    return bad;
}

/* Length of the shortest prefix that is rejected, and checks that every longer one is too:
 * an answer must never flip back to "incomplete". */
static size_t reject_point(const uint8_t *buf, size_t len, int want)
{
    size_t first = 0;
    for (size_t k = 1; k <= len; k++) {
        int rc = pp_parse(buf, k, NULL);
        if (rc < 0 && !first)
            first = k;
        if (first && rc != want) {
            fprintf(stderr, "  prefix %zu: rc %d, want %d\n", k, rc, want);
            return 0;
        }
        if (!first && rc != 0)
            return 0;
    }
    return first;
}

#define BAD(str, want, at) CHECK(reject_point((const uint8_t *)(str), sizeof(str) - 1, want) == (at))

/* ---- builders and round trips ---- */

static void test_v1_build(void)
{
    char out[PP_V1_MAX_LEN];
    struct sockaddr_storage s4 = mk("192.0.2.1", 54321), d4 = mk("198.51.100.7", 993);
    struct sockaddr_storage s6 = mk("2001:db8::1", 1), d6 = mk("2001:db8::2", 65535);
    int n;

    n = pp_build_v1(out, sizeof(out), SA(s4), SA(d4));
    CHECK(n > 0);
    CHECK(n == 45 && memcmp(out, "PROXY TCP4 192.0.2.1 198.51.100.7 54321 993\r\n", 45) == 0);

    n = pp_build_v1(out, sizeof(out), SA(s6), SA(d6));
    CHECK(n == 44 && memcmp(out, "PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n", 44) == 0);

    /* Mixed families: the IPv4 end is mapped into IPv6. */
    n = pp_build_v1(out, sizeof(out), SA(s4), SA(d6));
    static const char mixed[] = "PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 54321 65535\r\n";
    CHECK(n == (int)sizeof(mixed) - 1 && memcmp(out, mixed, sizeof(mixed) - 1) == 0);

    struct sockaddr_un un = { .sun_family = AF_UNIX };
    n = pp_build_v1(out, sizeof(out), (const struct sockaddr *)&un, SA(d4));
    CHECK(n == 15 && memcmp(out, "PROXY UNKNOWN\r\n", 15) == 0);
    n = pp_build_v1(out, sizeof(out), NULL, NULL);
    CHECK(n == 15);

    CHECK(pp_build_v1(out, 44, SA(s4), SA(d4)) == -ENOSPC);
    CHECK(pp_build_v1(out, 45, SA(s4), SA(d4)) == 45);

    /* Longest address pair we can produce still fits the spec's 107 bytes. */
    struct sockaddr_storage l1 = mk("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", 65535);
    struct sockaddr_storage l2 = mk("fffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535);
    n = pp_build_v1(out, sizeof(out), SA(l1), SA(l2));
    CHECK(n == 104);
}

static void test_v1_roundtrip(void)
{
    static const char *pairs[][2] = {
        { "192.0.2.1", "198.51.100.7" }, { "0.0.0.0", "255.255.255.255" },
        { "2001:db8::1", "::1" }, { "::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" },
        { "::ffff:10.0.0.1", "fe80::1" },
    };
    static const uint16_t ports[][2] = { { 0, 0 }, { 1, 65535 }, { 54321, 993 } };
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        for (size_t j = 0; j < sizeof(ports) / sizeof(ports[0]); j++) {
            struct sockaddr_storage s = mk(pairs[i][0], ports[j][0]);
            struct sockaddr_storage d = mk(pairs[i][1], ports[j][1]);
            char out[PP_V1_MAX_LEN];
            int n = pp_build_v1(out, sizeof(out), SA(s), SA(d));
            CHECK(n > 0 && n <= PP_V1_MAX_LEN);
            struct pp_addrs a;
            CHECK(pp_parse((const uint8_t *)out, (size_t)n, &a) == n);
            CHECK(!a.local && same_addr(&a.src, &s) && same_addr(&a.dst, &d));
            CHECK(split_failures((const uint8_t *)out, (size_t)n) == 0);
        }
    }
    /* Mixed families come back as IPv4-mapped IPv6. */
    struct sockaddr_storage s4 = mk("192.0.2.1", 25), d6 = mk("2001:db8::2", 587);
    struct sockaddr_storage s4m = mk("::ffff:192.0.2.1", 25);
    char out[PP_V1_MAX_LEN];
    int n = pp_build_v1(out, sizeof(out), SA(s4), SA(d6));
    struct pp_addrs a;
    CHECK(pp_parse((const uint8_t *)out, (size_t)n, &a) == n);
    CHECK(same_addr(&a.src, &s4m) && same_addr(&a.dst, &d6));
}

static void test_v1_parse_valid(void)
{
    struct pp_addrs a;
    static const char unk[] = "PROXY UNKNOWN\r\n";
    CHECK(pp_parse((const uint8_t *)unk, 15, &a) == 15 && a.local);
    CHECK(split_failures((const uint8_t *)unk, 15) == 0);

    /* The long UNKNOWN form: everything up to CRLF is ignored, 107 bytes is the limit. */
    static const char unk_long[] =
        "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    CHECK(sizeof(unk_long) - 1 == 107);
    CHECK(pp_parse((const uint8_t *)unk_long, 107, &a) == 107 && a.local);
    CHECK(split_failures((const uint8_t *)unk_long, 107) == 0);
    static const char unk_junk[] = "PROXY UNKNOWN \r\r whatever\n\r\n";
    CHECK(pp_parse((const uint8_t *)unk_junk, sizeof(unk_junk) - 1, &a) ==
          (int)sizeof(unk_junk) - 1);

    static const char tcp6[] = "PROXY TCP6 2001:DB8::AB 2001:db8::cd 143 65535\r\n";
    CHECK(pp_parse((const uint8_t *)tcp6, sizeof(tcp6) - 1, &a) == (int)sizeof(tcp6) - 1);
    struct sockaddr_storage s = mk("2001:db8::ab", 143), d = mk("2001:db8::cd", 65535);
    CHECK(!a.local && same_addr(&a.src, &s) && same_addr(&a.dst, &d));
    CHECK(split_failures((const uint8_t *)tcp6, sizeof(tcp6) - 1) == 0);
}

/* The header we expect for a typical IMAPS connection, written out by hand. */
static const uint8_t v2_expected[] = {
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
    0x21,                   /* version 2, PROXY */
    0x11,                   /* TCP over IPv4 */
    0x00, 0x51,             /* 81 bytes follow */
    192, 0, 2, 1,           /* src */
    198, 51, 100, 7,        /* dst */
    0xD4, 0x31,             /* 54321 */
    0x03, 0xE1,             /* 993 */
    0x01, 0x00, 0x04, 'i', 'm', 'a', 'p',
    0x02, 0x00, 0x10, 'm', 'a', 'i', 'l', '.', 'e', 'x', 'a', 'm', 'p', 'l', 'e', '.', 'c', 'o', 'm',
    0x20, 0x00, 0x28,       /* SSL, 40 bytes */
    0x01,                   /* PP2_CLIENT_SSL */
    0x00, 0x00, 0x00, 0x00, /* verify */
    0x21, 0x00, 0x07, 'T', 'L', 'S', 'v', '1', '.', '3',
    0x23, 0x00, 0x16, 'T', 'L', 'S', '_', 'A', 'E', 'S', '_', '1', '2', '8', '_', 'G', 'C', 'M',
    '_', 'S', 'H', 'A', '2', '5', '6',
};

static void test_v2_build_exact(void)
{
    struct sockaddr_storage s = mk("192.0.2.1", 54321), d = mk("198.51.100.7", 993);
    struct pp_tls tls = { .authority = "mail.example.com", .ssl = true, .version = "TLSv1.3",
                          .cipher = "TLS_AES_128_GCM_SHA256", .alpn = "imap" };
    uint8_t out[256];
    int n = pp_build_v2(out, sizeof(out), SA(s), SA(d), &tls);
    CHECK(n == (int)sizeof(v2_expected));
    CHECK(n > 0 && memcmp(out, v2_expected, sizeof(v2_expected)) == 0);
    CHECK(pp_build_v2(out, sizeof(v2_expected) - 1, SA(s), SA(d), &tls) == -ENOSPC);
    CHECK(pp_build_v2(out, sizeof(v2_expected), SA(s), SA(d), &tls) == n);

    struct pp_addrs a;
    CHECK(pp_parse(v2_expected, sizeof(v2_expected), &a) == (int)sizeof(v2_expected));
    CHECK(!a.local && same_addr(&a.src, &s) && same_addr(&a.dst, &d));
    CHECK(split_failures(v2_expected, sizeof(v2_expected)) == 0);

    /* No TLS: just the addresses. Empty strings count as absent. */
    struct pp_tls plain = { .authority = "", .ssl = false, .version = "TLSv1.3" };
    n = pp_build_v2(out, sizeof(out), SA(s), SA(d), &plain);
    CHECK(n == 28 && memcmp(out, v2_expected, 14) == 0 && out[14] == 0 && out[15] == 12);
    CHECK(n == 28 && memcmp(out + 16, v2_expected + 16, 12) == 0);
    CHECK(pp_build_v2(out, sizeof(out), SA(s), SA(d), NULL) == 28);

    /* SSL without version or cipher: just the five fixed bytes. */
    struct pp_tls bare = { .ssl = true };
    n = pp_build_v2(out, sizeof(out), SA(s), SA(d), &bare);
    static const uint8_t bare_tlv[] = { 0x20, 0x00, 0x05, 0x01, 0, 0, 0, 0 };
    CHECK(n == 36 && memcmp(out + 28, bare_tlv, sizeof(bare_tlv)) == 0);
}

static void test_v2_roundtrip(void)
{
    static const char *pairs[][2] = {
        { "192.0.2.1", "198.51.100.7" }, { "2001:db8::1", "2001:db8::2" },
        { "192.0.2.1", "::1" }, { "::", "10.1.2.3" },
    };
    struct pp_tls tlss[] = {
        { 0 },
        { .authority = "webmail.customer.example", .alpn = "http/1.1" },
        { .authority = "mail.x.org", .ssl = true, .version = "TLSv1.2",
          .cipher = "ECDHE-ECDSA-AES128-GCM-SHA256" },
        { .ssl = true, .cipher = "TLS_CHACHA20_POLY1305_SHA256" },
    };
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        for (size_t j = 0; j < sizeof(tlss) / sizeof(tlss[0]); j++) {
            struct sockaddr_storage s = mk(pairs[i][0], (uint16_t)(1000 + i));
            struct sockaddr_storage d = mk(pairs[i][1], (uint16_t)(60000 + j));
            uint8_t out[512];
            int n = pp_build_v2(out, sizeof(out), SA(s), SA(d), &tlss[j]);
            CHECK(n > 16);
            struct pp_addrs a;
            CHECK(pp_parse(out, (size_t)n, &a) == n);
            CHECK(!a.local);
            if (s.ss_family == d.ss_family) {
                CHECK(same_addr(&a.src, &s) && same_addr(&a.dst, &d));
            } else {
                CHECK(a.src.ss_family == AF_INET6 && a.dst.ss_family == AF_INET6);
            }
            CHECK(split_failures(out, (size_t)n) == 0);
        }
    }
    /* Non-IP ends: PROXY over AF_UNSPEC, TLVs still carried, parsed as local. */
    struct sockaddr_un un = { .sun_family = AF_UNIX };
    struct sockaddr_storage d = mk("127.0.0.1", 143);
    struct pp_tls t = { .authority = "mail.x.org", .ssl = true, .version = "TLSv1.3" };
    uint8_t out[256];
    int n = pp_build_v2(out, sizeof(out), (const struct sockaddr *)&un, SA(d), &t);
    CHECK(n > 16 && out[12] == 0x21 && out[13] == 0x00);
    struct pp_addrs a;
    CHECK(pp_parse(out, (size_t)n, &a) == n && a.local);
    CHECK(split_failures(out, (size_t)n) == 0);

    /* A string too long for a TLV length is refused, not truncated. */
    static char huge[70000];
    memset(huge, 'a', sizeof(huge) - 1);
    struct pp_tls big = { .authority = huge };
    static uint8_t bigout[80000];
    CHECK(pp_build_v2(bigout, sizeof(bigout), SA(d), SA(d), &big) == -EINVAL);
}

/* ---- v2 input from other senders ---- */

static size_t v2_hdr(uint8_t *b, uint8_t ver_cmd, uint8_t fam, size_t body_len)
{
    memcpy(b, sig, 12);
    b[12] = ver_cmd;
    b[13] = fam;
    b[14] = (uint8_t)(body_len >> 8);
    b[15] = (uint8_t)body_len;
    return 16;
}

static uint32_t crc32c_ref(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    while (n--) {
        c ^= *p++;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    }
    return ~c;
}

static void test_v2_parse_valid(void)
{
    uint8_t b[2048];
    struct pp_addrs a;

    /* LOCAL (health check): block ignored whatever it holds, even a DGRAM family. */
    size_t n = v2_hdr(b, 0x20, 0x00, 0);
    CHECK(pp_parse(b, n, &a) == 16 && a.local);
    CHECK(split_failures(b, n) == 0);
    n = v2_hdr(b, 0x20, 0x12, 5);
    memset(b + 16, 0xEE, 5);
    CHECK(pp_parse(b, n + 5, &a) == 21 && a.local);
    CHECK(split_failures(b, n + 5) == 0);

    /* UNIX stream: accepted, real addresses used. */
    n = v2_hdr(b, 0x21, 0x31, 216);
    memset(b + 16, 0, 216);
    CHECK(pp_parse(b, n + 216, &a) == 232 && a.local);

    /* Unknown and NOOP TLVs are skipped; a zero-length TLV is fine. */
    n = v2_hdr(b, 0x21, 0x11, 12 + 3 + 3 + 5);
    memset(b + 16, 1, 12);
    memcpy(b + 28, "\x04\x00\x00" "\xE0\x00\x02xy" "\x30\x00\x00", 3 + 5 + 3);
    b[15] = 12 + 11;
    CHECK(pp_parse(b, 16 + 23, &a) == 39 && !a.local);
    CHECK(split_failures(b, 39) == 0);

    /* A correct CRC32C is accepted. */
    CHECK(crc32c_ref((const uint8_t *)"123456789", 9) == 0xE3069283u);
    n = v2_hdr(b, 0x21, 0x11, 12 + 7);
    memset(b + 16, 2, 12);
    memcpy(b + 28, "\x03\x00\x04\0\0\0\0", 7);
    uint32_t crc = crc32c_ref(b, 35);
    b[31] = (uint8_t)(crc >> 24); b[32] = (uint8_t)(crc >> 16);
    b[33] = (uint8_t)(crc >> 8); b[34] = (uint8_t)crc;
    CHECK(pp_parse(b, 35, &a) == 35);
    CHECK(split_failures(b, 35) == 0);
    b[20] ^= 1;
    CHECK(pp_parse(b, 35, &a) == -EINVAL);

    /* The largest header we accept, exactly PP_V2_MAX_LEN. */
    size_t body = PP_V2_MAX_LEN - 16, pad = body - 12 - 3;
    n = v2_hdr(b, 0x21, 0x11, body);
    memset(b + 16, 3, 12);
    b[28] = 0x04; b[29] = (uint8_t)(pad >> 8); b[30] = (uint8_t)pad;
    memset(b + 31, 0, pad);
    CHECK(pp_parse(b, PP_V2_MAX_LEN, &a) == PP_V2_MAX_LEN);
    CHECK(split_failures(b, PP_V2_MAX_LEN) == 0);
}

/* ---- malformed ---- */

static void test_malformed(void)
{
    /* Not PROXY at all: refused on the first byte. */
    BAD("GET / HTTP/1.1\r\nHost: x\r\n\r\n", -EINVAL, 1);
    BAD("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", -EINVAL, 1);
    BAD("a001 CAPABILITY\r\n", -EINVAL, 1);
    BAD("EHLO x\r\n", -EINVAL, 1);
    BAD("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", -EINVAL, 1);
    BAD("PROXZ", -EINVAL, 5);

    /* v1 syntax. */
    BAD("PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", -EINVAL, 7);
    BAD("PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", -EINVAL, 10);
    BAD("PROXY TCP 1.2.3.4 5.6.7.8 1 2\r\n", -EINVAL, 10);
    BAD("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", -EINVAL, 31);
    BAD("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r", -EINVAL, 32);
    BAD("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", -EINVAL, 31);
    BAD("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", -EINVAL, 29);
    BAD("PROXY UNKNOWN\rx", -EINVAL, 15);
    BAD("PROXY UNKNOWNX\r\n", -EINVAL, 14);
    BAD("PROXY\r\n", -EINVAL, 6);

    /* v1 addresses and ports. */
    BAD("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", -EINVAL, 17);
    BAD("PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n", -EINVAL, 21);
    BAD("PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", -EINVAL, 20);
    BAD("PROXY TCP4 ::1 5.6.7.8 1 2\r\n", -EINVAL, 12);
    BAD("PROXY TCP6 1.2.3.4 ::1 1 2\r\n", -EINVAL, 19);
    BAD("PROXY TCP6 2001:db8:::1 ::1 1 2\r\n", -EINVAL, 24);
    BAD("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ::1 1 2\r\n", -EINVAL, 56);
    /* Longer than any IPv6 text form: refused before its end. */
    BAD("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff ::1 1 2\r\n", -EINVAL, 57);
    BAD("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", -EINVAL, 32);
    BAD("PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", -EINVAL, 34);
    BAD("PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", -EINVAL, 28);
    BAD("PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", -EINVAL, 29);
    BAD("PROXY TCP4 1.2.3.4 5.6.7.8 80x 2\r\n", -EINVAL, 30);
    BAD("PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", -EINVAL, 28);

    /* v1 without CRLF within 107 bytes: incomplete up to 106, refused at 107. */
    uint8_t longline[200];
    memcpy(longline, "PROXY UNKNOWN ", 14);
    memset(longline + 14, 'x', sizeof(longline) - 14);
    CHECK(pp_parse(longline, 106, NULL) == 0);
    CHECK(reject_point(longline, sizeof(longline), -EINVAL) == 107);
    /* A CRLF at 108-109 is one byte too late. */
    longline[106] = '\r';
    longline[107] = '\n';
    CHECK(pp_parse(longline, 108, NULL) == -EINVAL);
    longline[105] = '\r';
    longline[106] = '\n';
    CHECK(pp_parse(longline, 108, NULL) == 107);

    /* v2. */
    uint8_t b[2048];
    memcpy(b, sig, 12);
    b[5] = 0x0E;
    CHECK(reject_point(b, 12, -EINVAL) == 6);

    size_t n = v2_hdr(b, 0x11, 0x11, 12);                /* version 1 */
    CHECK(reject_point(b, n, -EINVAL) == 13);
    n = v2_hdr(b, 0x22, 0x11, 12);                       /* command 2 */
    CHECK(reject_point(b, n, -EINVAL) == 13);
    n = v2_hdr(b, 0x21, 0x41, 12);                       /* family 4 */
    CHECK(reject_point(b, n, -EINVAL) == 14);
    n = v2_hdr(b, 0x21, 0x13, 12);                       /* transport 3 */
    CHECK(reject_point(b, n, -EINVAL) == 14);
    n = v2_hdr(b, 0x21, 0x12, 12);                       /* UDP under PROXY */
    CHECK(reject_point(b, n, -EINVAL) == 14);
    n = v2_hdr(b, 0x21, 0x11, 11);                       /* too short for IPv4 */
    CHECK(reject_point(b, n, -EINVAL) == 16);
    n = v2_hdr(b, 0x21, 0x21, 12);                       /* too short for IPv6 */
    CHECK(reject_point(b, n, -EINVAL) == 16);
    n = v2_hdr(b, 0x21, 0x31, 215);                      /* too short for UNIX */
    CHECK(reject_point(b, n, -EINVAL) == 16);

    /* TLV overrunning the header: refused as soon as its length is readable. */
    n = v2_hdr(b, 0x21, 0x11, 12 + 3 + 4);
    memset(b + 16, 0, 12);
    memcpy(b + 28, "\x02\x00\x05" "abcd", 7);
    CHECK(reject_point(b, n + 19, -EINVAL) == 31);
    /* Trailing bytes too short to be a TLV. */
    n = v2_hdr(b, 0x21, 0x11, 12 + 2);
    memcpy(b + 28, "\x04\x00", 2);
    CHECK(reject_point(b, n + 14, -EINVAL) == 16);
    /* SSL TLV shorter than its fixed part, and with an overrunning sub-TLV. */
    n = v2_hdr(b, 0x21, 0x11, 12 + 3 + 4);
    memcpy(b + 28, "\x20\x00\x04\x01\0\0\0", 7);
    CHECK(reject_point(b, n + 19, -EINVAL) == 31);
    n = v2_hdr(b, 0x21, 0x11, 12 + 3 + 5 + 3 + 2);
    memcpy(b + 28, "\x20\x00\x0A\x01\0\0\0\0\x21\x00\x03" "ab", 13);
    CHECK(reject_point(b, n + 25, -EINVAL) == 39);
    /* CRC32C of the wrong size, and twice. */
    n = v2_hdr(b, 0x21, 0x11, 12 + 3 + 3);
    memcpy(b + 28, "\x03\x00\x03\0\0\0", 6);
    CHECK(pp_parse(b, n + 18, NULL) == -EINVAL);
    n = v2_hdr(b, 0x21, 0x11, 12 + 7 + 7);
    memcpy(b + 28, "\x03\x00\x04\0\0\0\0" "\x03\x00\x04\0\0\0\0", 14);
    CHECK(reject_point(b, n + 26, -EINVAL) == 38);

    /* Oversized v2: refused on the length field. */
    n = v2_hdr(b, 0x21, 0x11, PP_V2_MAX_LEN - 16 + 1);
    CHECK(reject_point(b, n, -E2BIG) == 16);
    n = v2_hdr(b, 0x21, 0x11, 0xFFFF);
    CHECK(reject_point(b, n, -E2BIG) == 16);
    n = v2_hdr(b, 0x20, 0x00, 0xFFFF);                   /* LOCAL too */
    CHECK(reject_point(b, n, -E2BIG) == 16);
}

static void test_could_be_header(void)
{
    CHECK(pp_could_be_header((const uint8_t *)"", 0));
    CHECK(pp_could_be_header((const uint8_t *)"P", 1));
    CHECK(pp_could_be_header((const uint8_t *)"PROXY TCP", 9));
    CHECK(pp_could_be_header(sig, 5));
    CHECK(pp_could_be_header(sig, 12));
    CHECK(!pp_could_be_header((const uint8_t *)"G", 1));
    CHECK(!pp_could_be_header((const uint8_t *)"\x16\x03", 2));
    CHECK(!pp_could_be_header((const uint8_t *)"PROXY UDP4", 10));
    CHECK(pp_could_be_header(v2_expected, sizeof(v2_expected)));
}

int main(void)
{
    test_v1_build();
    test_v1_roundtrip();
    test_v1_parse_valid();
    test_v2_build_exact();
    test_v2_roundtrip();
    test_v2_parse_valid();
    test_malformed();
    test_could_be_header();
    return check_report("test_proxyproto");
}
