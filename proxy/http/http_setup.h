/* http_setup: mail client setup served by mailsnid itself for every listed domain D —
 * Thunderbird autoconfig at autoconfig.D, Outlook Autodiscover (POX) at autodiscover.D, the
 * MTA-STS policy (RFC 8461) at mta-sts.D — built from the generation's "autoconfig" and
 * "mta_sts" blocks. Pure: a host name and a parsed request in, response bytes out.
 *
 * A struct http_setup belongs to one configuration generation (built off the event loops with
 * it, freed with it) and only points into that generation's conf. */
#ifndef MAILSNID_HTTP_SETUP_H
#define MAILSNID_HTTP_SETUP_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include "conf/conf.h"
#include "proxy/http/http_parse.h"
#include "proxy/http/http_reply.h"

/* Outlook's request is a few hundred bytes; nothing bigger is read. */
#define HTTP_SETUP_BODY_MAX 16384

enum http_site { HTTP_SITE_NONE, HTTP_SITE_AUTOCONFIG, HTTP_SITE_AUTODISCOVER, HTTP_SITE_MTA_STS };

struct http_setup;

/* Indexes CONF's domains (CONF must outlive the result). NULL when memory runs out. */
struct http_setup *http_setup_new(const struct conf *conf);
void http_setup_free(struct http_setup *s);
/* Is anything configured to be served (autoconfig or mta_sts, and at least one domain)? */
bool http_setup_active(const struct http_setup *s);
/* Which site HOST (lower-cased, no port, no trailing dot: as http_parse and the SNI give it)
 * is: autoconfig.D, autodiscover.D or mta-sts.D for a listed D whose block is configured. *DOMAIN
 * then points at D inside HOST. HTTP_SITE_NONE for every other host. */
enum http_site http_setup_site(const struct http_setup *s, const char *host, const char **domain);

/* How many body bytes to read before answering REQ: 0, the Content-Length, or -1 when the
 * body is one mailsnid will not read (too big, or chunked): the answer is then a 400. */
long http_setup_body_wanted(const struct http_request *req);
/* The answer to REQ for SITE of DOMAIN, with BODY (http_setup_body_wanted bytes, NULL when -1)
 * into OUT. TLS says whether the request came over TLS (the MTA-STS policy is served only
 * there; plain HTTP is sent to https://). Returns the response's status, or -ENOMEM. */
int http_setup_answer(const struct http_setup *s, enum http_site site, const char *domain,
                      const struct http_request *req, const char *body, bool tls, time_t now,
                      struct http_out *out);

/* The e-mail address in an Autodiscover POX request (<EMailAddress>), into OUT. Returns 0, or
 * -EINVAL when BODY is not such a request or the address is not one. */
int http_autodiscover_email(const char *body, size_t len, char *out, size_t cap);

#endif
