#include "proxy/conn/buf.h"

#include <stdlib.h>

/* Spare buffers a worker keeps: enough for the buffers a busy worker has in flight at once,
 * and at most 64 x 66 KB (4 MB) held after a burst. Under AddressSanitizer the pool is off so
 * that a use after buf_put() is caught. */
#if defined(__SANITIZE_ADDRESS__)
#define BUF_POOL_MAX 0
#else
#define BUF_POOL_MAX 64
#endif

static _Thread_local struct buf *pool;
static _Thread_local unsigned pool_count;

struct buf *buf_get(void)
{
    struct buf *b = pool;
    if (b) {
        pool = b->next;
        pool_count--;
    } else {
        b = malloc(sizeof *b);
        if (!b)
            return NULL;
    }
    b->off = b->len = 0;
    b->owner = NULL;
    b->next = NULL;
    return b;
}

void buf_put(struct buf *b)
{
    if (!b)
        return;
    if (pool_count + 1 > BUF_POOL_MAX) {
        free(b);
        return;
    }
    b->next = pool;
    pool = b;
    pool_count++;
}

void buf_pool_drain(void)
{
    while (pool) {
        struct buf *b = pool;
        pool = b->next;
        free(b);
    }
    pool_count = 0;
}
