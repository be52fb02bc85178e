#include "tls13/frames.h"

void tls13_frames_feed(struct tls13_frames *f, const uint8_t *p, size_t n)
{
    while (n) {
        if (f->left) {
            size_t take = n < f->left ? n : f->left;
            f->left -= (uint32_t)take;
            p += take;
            n -= take;
            if (f->left == 0)
                f->records++;
            continue;
        }
        /* Header: type, version (2), length (2). */
        if (f->have == 3)
            f->len_hi = *p;
        if (f->have == 4) {
            f->have = 0;
            f->left = (uint32_t)f->len_hi << 8 | *p;
            if (f->left == 0)
                f->records++; /* an empty record (never ours, but count it all the same) */
        } else {
            f->have++;
        }
        p++;
        n--;
    }
}
