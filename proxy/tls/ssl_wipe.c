/* ssl_wipe: OpenSSL 3.0's SSL_free hands the SSL object back to the heap as it was, and the
 * object holds the session's secrets in arrays of its own (handshake, application traffic,
 * exporter, resumption). Without the TLS 1.3 offload that happens when a connection closes;
 * with it, the SSL is freed when relaying begins, so the freed block holds the keys of a
 * session that is still running, for whatever reuses the block — or a memory-disclosure bug in
 * any library — to find. OpenSSL takes a program's allocator if it is given before OpenSSL's
 * first allocation (CRYPTO_set_mem_functions): ours is malloc, realloc and free, except that the
 * one block ssl_free_wiped() is freeing on this thread — the SSL object itself — is zeroed
 * first. One pointer comparison per OpenSSL free; the blocks OpenSSL frees with a secret in
 * them it cleanses itself (keys, the session's master key, the cipher contexts). */
#include "proxy/tls/ssl_wipe.h"

#include <malloc.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>

static _Thread_local const void *freeing_ssl;
static atomic_ullong wiped;

static void *wipe_malloc(size_t n, const char *file, int line)
{
    (void)file;
    (void)line;
    return malloc(n);
}

static void *wipe_realloc(void *p, size_t n, const char *file, int line)
{
    (void)file;
    (void)line;
    return realloc(p, n);
}

static void wipe_free(void *p, const char *file, int line)
{
    (void)file;
    (void)line;
    if (p && p == freeing_ssl) {
        size_t n = malloc_usable_size(p);
        explicit_bzero(p, n);
        atomic_fetch_add_explicit(&wiped, n, memory_order_relaxed);
        freeing_ssl = NULL;
    }
    free(p);
}

bool ssl_wipe_install(void)
{
    return CRYPTO_set_mem_functions(wipe_malloc, wipe_realloc, wipe_free) == 1;
}

void ssl_free_wiped(SSL *ssl)
{
    freeing_ssl = ssl;
    SSL_free(ssl);          /* its last step frees the object itself */
    freeing_ssl = NULL;     /* (still set when a reference kept it alive) */
}

unsigned long long ssl_wiped_bytes(void)
{
    return atomic_load_explicit(&wiped, memory_order_relaxed);
}
