/* ssl_wipe: an SSL object freed through ssl_free_wiped() leaves nothing of itself in the heap.
 * What the object holds inline (the session's secrets, in a real session) is stood in for by
 * its session-id context, a 32-byte array of the object's own, set to a marker. */
#include <malloc.h>
#include <string.h>
#include <openssl/ssl.h>

#include "check.h"
#include "proxy/tls/ssl_wipe.h"

static const unsigned char marker[32] = "mailsnid-ssl-wipe-marker-32bytes";

/* A fresh SSL with the marker inside it; *AT and *SIZE say where its block lies. */
static SSL *marked_ssl(SSL_CTX *ctx, const void **at, size_t *size)
{
    SSL *ssl = SSL_new(ctx);
    CHECK(ssl && SSL_set_session_id_context(ssl, marker, sizeof marker) == 1);
    *at = ssl;
    *size = malloc_usable_size(ssl);
    CHECK(memmem(ssl, *size, marker, sizeof marker) != NULL);
    return ssl;
}

int main(void)
{
    /* First, before OpenSSL allocates anything (after that, OpenSSL refuses). */
    CHECK(ssl_wipe_install());
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    CHECK(ctx != NULL);

    const void *at;
    size_t size;
    unsigned long long before = ssl_wiped_bytes();
    SSL *ssl = marked_ssl(ctx, &at, &size);
    ssl_free_wiped(ssl);
    /* The whole block of the object, and only that one (OpenSSL frees dozens with it). */
    CHECK(ssl_wiped_bytes() - before == size && size >= 4096);

    /* Reading a freed block is for this proof only, and not under ASan (which forbids it). */
#ifndef __SANITIZE_ADDRESS__
    CHECK(memmem(at, size, marker, sizeof marker) == NULL);
    /* The control: freed the plain way, the marker is still there to be found. */
    ssl = marked_ssl(ctx, &at, &size);
    SSL_free(ssl);
    CHECK(memmem(at, size, marker, sizeof marker) != NULL);
#endif

    /* A reference still held: nothing is freed, nothing wiped, and the next free is plain. */
    ssl = marked_ssl(ctx, &at, &size);
    CHECK(SSL_up_ref(ssl) == 1);
    before = ssl_wiped_bytes();
    ssl_free_wiped(ssl);
    CHECK(ssl_wiped_bytes() == before && memmem(ssl, size, marker, sizeof marker) != NULL);
    ssl_free_wiped(ssl);
    CHECK(ssl_wiped_bytes() - before == size);
    SSL_CTX_free(ctx);
    return check_report("test_ssl_wipe");
}
