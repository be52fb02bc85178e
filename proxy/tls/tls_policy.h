/* tls_policy: what a listener agrees to in a handshake beyond the certificate: the application
 * protocol (ALPN) and which session tickets it resumes. Installed on each listener's SSL_CTX. */
#ifndef MAILSNID_TLS_POLICY_H
#define MAILSNID_TLS_POLICY_H

#include <openssl/ssl.h>

#include "conf/conf.h"

/* ALPN: a mail listener selects its own protocol ("imap", "pop3", "smtp") when the client
 * offers it, carries on without ALPN when the client offers none, and otherwise refuses the
 * handshake with a no_application_protocol alert (ALPACA: an HTTP request sent to an IMAP
 * server under the same certificate). An HTTP listener selects "http/1.1", refuses a list
 * made only of mail protocols, and otherwise carries on without ALPN. A hello the TLS-ALPN-01
 * responder (acme_tls.h) answered gets "acme-tls/1" before this policy could refuse it.
 * Sessions: a ticket is resumed only on the listener and under the SNI name it was issued for
 * (RFC 6066 section 3), in TLS 1.2 and 1.3; any other ticket means a full handshake. */
void tls_policy_install(SSL_CTX *ctx, enum conf_proto proto);
/* The ALPN identifier a listener of PROTO agrees to (a static string). */
const char *tls_policy_alpn_id(enum conf_proto proto);

#endif
