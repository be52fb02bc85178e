/* A chained hash table under one mutex: it is touched twice per connection (open, close), a
 * few thousand times a second at most, which a mutex handles without contention worth
 * measuring next to a TLS handshake. Entries are freed when their count drops to zero, so the
 * table holds only clients that are connected now. */
#include "proxy/conn/climit.h"

#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CLIMIT_BUCKETS 4096

struct client {
    struct client *next;
    uint8_t key[16];
    unsigned count;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct client *buckets[CLIMIT_BUCKETS];
static atomic_uint limit;

void climit_setup(unsigned max)
{
    atomic_store(&limit, max);
}

static bool key_of(const struct sockaddr *addr, uint8_t key[16])
{
    memset(key, 0, 16);
    if (addr->sa_family == AF_INET) {
        memcpy(key + 12, &((const struct sockaddr_in *)addr)->sin_addr, 4);
        return true;
    }
    if (addr->sa_family == AF_INET6) {
        const uint8_t *a = ((const struct sockaddr_in6 *)addr)->sin6_addr.s6_addr;
        static const uint8_t v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
        if (memcmp(a, v4mapped, 12) == 0)
            memcpy(key + 12, a + 12, 4);  /* the same client as its IPv4 form */
        else
            memcpy(key, a, 8);            /* the /64; its zero tail keeps it apart from IPv4 keys */
        return true;
    }
    return false;
}

static unsigned bucket_of(const uint8_t key[16])
{
    uint32_t h = 2166136261u;
    for (int i = 0; i < 16; i++)
        h = (h ^ key[i]) * 16777619u;
    return h % CLIMIT_BUCKETS;
}

int climit_acquire(const struct sockaddr *addr)
{
    uint8_t key[16];
    unsigned max = atomic_load(&limit);
    if (!max || !key_of(addr, key))
        return 0;
    unsigned b = bucket_of(key);
    int rc = 1;
    pthread_mutex_lock(&lock);
    struct client *c = buckets[b];
    while (c && memcmp(c->key, key, 16) != 0)
        c = c->next;
    if (!c) {
        c = calloc(1, sizeof *c);
        if (c) {
            memcpy(c->key, key, 16);
            c->next = buckets[b];
            buckets[b] = c;
        }
    }
    if (!c)
        rc = 0; /* out of memory: do not refuse a client for our own failure */
    else if (c->count >= max)
        rc = -1;
    else
        c->count++;
    pthread_mutex_unlock(&lock);
    return rc;
}

void climit_release(const struct sockaddr *addr)
{
    uint8_t key[16];
    if (!key_of(addr, key))
        return;
    unsigned b = bucket_of(key);
    pthread_mutex_lock(&lock);
    struct client **link = &buckets[b];
    while (*link && memcmp((*link)->key, key, 16) != 0)
        link = &(*link)->next;
    struct client *c = *link;
    if (c && c->count && --c->count == 0) {
        *link = c->next;
        free(c);
    }
    pthread_mutex_unlock(&lock);
}

void climit_shutdown(void)
{
    pthread_mutex_lock(&lock);
    for (unsigned i = 0; i < CLIMIT_BUCKETS; i++) {
        while (buckets[i]) {
            struct client *c = buckets[i];
            buckets[i] = c->next;
            free(c);
        }
    }
    pthread_mutex_unlock(&lock);
}
