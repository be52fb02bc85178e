/* http_parse: the one HTTP/1.1 request-head parser (RFC 9112), pure and incremental: bytes in,
 * no I/O, no allocation. It reads only what mailsnid decides by — the request line, Host,
 * Content-Length and whether a Transfer-Encoding is present — and checks the rest of the head
 * for well-formedness and size, so a hostile head is refused here and never buffered.
 *
 * Feed bytes as they arrive; the parser copies what it keeps into its own bounded fields, so the
 * caller's buffer may move between calls. Splitting the input anywhere gives the same result
 * (the unit test feeds every input split at every byte offset). */
#ifndef MAILSNID_HTTP_PARSE_H
#define MAILSNID_HTTP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HTTP_HEAD_MAX 8192      /* request line + header fields + the empty line */
#define HTTP_TARGET_MAX 2048    /* request-target, origin form */
#define HTTP_HOST_MAX 255       /* a DNS name; the port is checked and dropped */

enum http_method { HTTP_GET, HTTP_HEAD, HTTP_POST, HTTP_OTHER };

struct http_request {
    enum http_method method;
    unsigned version;                  /* 10 or 11 */
    char target[HTTP_TARGET_MAX + 1];  /* "/path?query" ("*" for OPTIONS *); absolute-form is
                                          turned into this, its authority into host */
    size_t target_len;
    bool has_host;                     /* a Host field (or an absolute-form authority) */
    char host[HTTP_HOST_MAX + 1];      /* lower-cased, port and one trailing dot removed; may be "" */
    bool has_length;
    uint64_t content_length;
    bool has_transfer_encoding;
};

enum http_parse_result {
    HTTP_PARSE_MORE,    /* every byte given was used: feed more */
    HTTP_PARSE_DONE,    /* the head is complete; *consumed ends at its empty line */
    HTTP_PARSE_ERROR,   /* not a request we accept: http_parser.status is the HTTP status */
};

struct http_parser {
    struct http_request req;
    unsigned status;                   /* with HTTP_PARSE_ERROR: 400, 414, 431, 501 or 505 */
    /* Private. */
    int state;
    size_t total;                      /* head bytes seen */
    char tok[24];                      /* method, version or field name being read */
    size_t tok_len;
    bool tok_long;
    int field;                         /* which field's value is being read */
    char val[HTTP_HOST_MAX + 16];      /* that value, when it is one we keep */
    size_t val_len;
    bool host_seen;
};

void http_parser_init(struct http_parser *p);
/* Parses LEN bytes of DATA. *CONSUMED is set to the bytes used (all of them unless DONE). After
 * DONE or ERROR (*CONSUMED then ends at the refused byte) further calls return the same answer and consume nothing. */
enum http_parse_result http_parse(struct http_parser *p, const char *data, size_t len,
                                  size_t *consumed);

#endif
