/* ssl_wipe: OpenSSL's SSL objects are zeroed as they are freed. */
#ifndef MAILSNID_SSL_WIPE_H
#define MAILSNID_SSL_WIPE_H

#include <stdbool.h>
#include <openssl/ssl.h>

/* Gives OpenSSL an allocator of ours (plain malloc, realloc and free, but for the wipe). Must
 * come before OpenSSL allocates anything; false when it came too late (nothing is wiped then). */
bool ssl_wipe_install(void);

/* SSL_free(SSL), with the SSL object's own block zeroed before it goes back to the heap. */
void ssl_free_wiped(SSL *ssl);

/* Bytes zeroed so far (the tests' proof that the block was the SSL object's). */
unsigned long long ssl_wiped_bytes(void);

#endif
