/* tickets: session-ticket keys shared by a fleet (config tls.ticket_keys).
 *
 * The file holds one key per line, base64 of 80 random bytes (16 name, 32 AES-256 key, 32
 * HMAC-SHA256 key): `openssl rand 80 | base64 -w0`. The first key encrypts new tickets; every
 * key decrypts, and a ticket made with an older key is renewed with the first. Rotation:
 * put a new line first, keep the old ones for a ticket lifetime, reload (SIGHUP or the file
 * watcher). Instances behind one load balancer that share the file resume each other's
 * sessions. Without the setting, OpenSSL's own per-process keys are used. */
#ifndef MAILSNID_TICKETS_H
#define MAILSNID_TICKETS_H

#include <openssl/ssl.h>

struct tickets;

/* Reads PATH. Returns NULL with *ERR set ("PATH:LINE: reason") on failure (heap string). */
struct tickets *tickets_load(const char *path, char **err);
void tickets_free(struct tickets *t);

/* The keys in force, shared by every listener's SSL_CTX; swapped on reload. */
void tickets_install(SSL_CTX *ctx);
/* Takes over T (NULL = go back to OpenSSL's own keys for new tickets). */
void tickets_set_current(struct tickets *t);
void tickets_shutdown(void);

#endif
