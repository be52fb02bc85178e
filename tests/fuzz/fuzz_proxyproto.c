/* libFuzzer target for the PROXY protocol codec. Beyond "no crash", it checks what the listener
 * relies on: the answer never claims more bytes than it was given, a prefix of the input never
 * contradicts the answer for the whole (incomplete stays incomplete until the header ends, an
 * error stays the same error), OUT is untouched unless a header was found, and whatever we
 * parse we can rebuild as v1 and v2 and parse back to the same addresses.
 *
 * clang-14 -g -O1 -fsanitize=fuzzer,address,undefined -I. tests/fuzz/fuzz_proxyproto.c \
 *     proxy/conn/proxyproto.c -o /tmp/fuzz_pp && /tmp/fuzz_pp tests/fuzz/corpus/proxyproto */
#include "proxy/conn/proxyproto.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

/* Checking every prefix is quadratic; past this size the whole-input checks still run. */
#define PREFIX_LIMIT 320

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

static void roundtrip(const struct pp_addrs *a, const uint8_t *rest, size_t rest_len)
{
    struct pp_addrs b;
    char line[PP_V1_MAX_LEN];
    int n = pp_build_v1(line, sizeof(line), (const struct sockaddr *)&a->src,
                        (const struct sockaddr *)&a->dst);
    if (n <= 0 || pp_parse((const uint8_t *)line, (size_t)n, &b) != n || b.local ||
        !same_addr(&a->src, &b.src) || !same_addr(&a->dst, &b.dst))
        abort();

    /* Let the payload behind the header pick the TLV strings, so the fuzzer explores them. */
    char auth[256] = "", ver[32] = "";
    size_t al = strnlen((const char *)rest, rest_len < 255 ? rest_len : 255);
    memcpy(auth, rest, al);
    auth[al] = '\0';
    if (al < rest_len) {
        size_t vl = strnlen((const char *)rest + al + 1, rest_len - al - 1 < 31 ? rest_len - al - 1 : 31);
        memcpy(ver, rest + al + 1, vl);
        ver[vl] = '\0';
    }
    struct pp_tls tls = { .authority = auth, .ssl = rest_len & 1, .version = ver,
                          .cipher = ver, .alpn = auth };
    uint8_t hdr[PP_V2_MAX_LEN];
    n = pp_build_v2(hdr, sizeof(hdr), (const struct sockaddr *)&a->src,
                    (const struct sockaddr *)&a->dst, &tls);
    if (n <= 0 || pp_parse(hdr, (size_t)n, &b) != n || b.local ||
        !same_addr(&a->src, &b.src) || !same_addr(&a->dst, &b.dst))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pp_addrs a, sentinel;
    memset(&sentinel, 0xA5, sizeof(sentinel));
    a = sentinel;

    int rc = pp_parse(data, size, &a);
    if (rc != 0 && rc != -EINVAL && rc != -E2BIG && rc <= 0)
        abort();
    if (rc > 0 && (size_t)rc > size)
        abort();
    if (rc == 0 && size >= PP_MAX_LEN)
        abort();
    if (rc <= 0 && memcmp(&a, &sentinel, sizeof(a)) != 0)
        abort();
    if (pp_could_be_header(data, size) != (rc >= 0))
        abort();

    if (size <= PREFIX_LIMIT) {
        for (size_t k = 0; k < size; k++) {
            int r = pp_parse(data, k, NULL);
            if (rc > 0 && r != (k < (size_t)rc ? 0 : rc))
                abort();
            if (rc == 0 && r != 0)
                abort();
            if (rc < 0 && r != 0 && r != rc)
                abort();
        }
    }

    if (rc > 0) {
        if (a.local) {
            if (a.src.ss_family != AF_UNSPEC || a.dst.ss_family != AF_UNSPEC)
                abort();
        } else {
            if ((a.src.ss_family != AF_INET && a.src.ss_family != AF_INET6) ||
                a.src.ss_family != a.dst.ss_family)
                abort();
            roundtrip(&a, data + rc, size - (size_t)rc);
        }
    }
    return 0;
}
