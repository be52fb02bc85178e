/* libFuzzer target for what acme/ parses from a CA besides plain JSON: response header lines,
 * Retry-After values, RFC 3339 times and ARI renewalInfo answers. The first byte picks the
 * parser; the rest is its input, in a buffer of exactly its size. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "acme/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t which = data[0];
    const char *in = (const char *)data + 1;
    size_t n = size - 1;
    char *buf = malloc(n ? n : 1);
    if (!buf)
        return 0;
    memcpy(buf, in, n);
    const char *v;
    size_t vlen;
    time_t t, e;
    switch (which % 5) {
    case 0:
        if (acme_header_match(buf, n, "Replay-Nonce", &v, &vlen) && (v < buf || v + vlen > buf + n))
            abort();
        break;
    case 1: {
        long r = acme_parse_retry_after(buf, n, 1445412480);
        if (r < -1 || r > 86400)
            abort();
        break;
    }
    case 2:
        acme_parse_rfc3339(buf, n, &t);
        break;
    case 3:
        if (acme_ari_window(buf, n, &t, &e) == 0 && e < t)
            abort();
        break;
    default: {
        /* What parses is a budget that formats back to a line that parses to the same. */
        struct acme_bucket b, again;
        char line[64];
        if (acme_bucket_parse(buf, n, &b)) {
            int len = acme_bucket_format(&b, line, sizeof line);
            if (!(b.tokens >= 0 && b.tokens <= 1e9) || len < 0 ||
                !acme_bucket_parse(line, (size_t)len, &again) || again.at != b.at)
                abort();
        }
        break;
    }
    }
    free(buf);
    return 0;
}
