/* tls13/frames: the record count must not depend on how OpenSSL's writes cut the stream. */
#include <stdint.h>
#include <stdbool.h>
#include <stdlib.h>

#include "tests/unit/check.h"
#include "tls13/frames.h"

/* A stream of N records with the given body lengths (type 23, version 0x0303). */
static size_t make_stream(uint8_t *out, const uint16_t *lens, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        out[o++] = 23;
        out[o++] = 3;
        out[o++] = 3;
        out[o++] = (uint8_t)(lens[i] >> 8);
        out[o++] = (uint8_t)lens[i];
        memset(out + o, 0xA5, lens[i]);
        o += lens[i];
    }
    return o;
}

static void test_every_split(void)
{
    /* A 256-byte and a 16-KB+ body check the length's high byte; 5 looks like a header. */
    static const uint16_t lens[] = { 1, 5, 256, 300, 16640, 22 };
    static uint8_t s[17500 + 6 * 5];
    size_t len = make_stream(s, lens, 6);
    for (size_t cut = 0; cut <= len; cut++) {
        struct tls13_frames f = { 0 };
        tls13_frames_feed(&f, s, cut);
        tls13_frames_feed(&f, s + cut, len - cut);
        CHECK(f.records == 6);
        CHECK(tls13_frames_at_boundary(&f));
    }
    struct tls13_frames f = { 0 };
    for (size_t i = 0; i < len; i++)
        tls13_frames_feed(&f, s + i, 1);
    CHECK(f.records == 6);
}

static void test_partial_record_is_not_a_boundary(void)
{
    static const uint16_t lens[] = { 40, 40 };
    uint8_t s[100];
    size_t len = make_stream(s, lens, 2);
    for (size_t cut = 1; cut < len; cut++) {
        struct tls13_frames f = { 0 };
        tls13_frames_feed(&f, s, cut);
        bool boundary = cut == 45;
        CHECK(tls13_frames_at_boundary(&f) == boundary);
        CHECK(f.records == (cut >= 45 ? 1u : 0u));
    }
}

int main(void)
{
    test_every_split();
    test_partial_record_is_not_a_boundary();
    return check_report("test_tls13_frames");
}
