/* ari.c: ACME Renewal Information (RFC 9773): the ID a CA knows a certificate by, and the
 * window it suggests for renewing it. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/x509v3.h>

#include <jansson.h>

#include "acme/internal.h"

char *acme_ari_cert_id(X509 *cert)
{
    /* Decoded here rather than through X509_get0_authority_key_id, which answers only for a
     * certificate whose extensions all passed OpenSSL's own checks. */
    AUTHORITY_KEYID *akid = X509_get_ext_d2i(cert, NID_authority_key_identifier, NULL, NULL);
    const ASN1_OCTET_STRING *kid = akid ? akid->keyid : NULL;
    const ASN1_INTEGER *serial = X509_get0_serialNumber(cert);
    if (!kid || !serial || ASN1_STRING_length(kid) <= 0) {
        AUTHORITY_KEYID_free(akid);
        return NULL;
    }
    /* The serial's DER content octets (with the leading 0 a set top bit needs): the DER
     * encoding without its tag and length. */
    unsigned char *der = NULL;
    int n = i2d_ASN1_INTEGER(serial, &der);
    size_t skip = n >= 2 ? (der[1] < 0x80 ? 2u : 2u + (der[1] & 0x7fu)) : 0;
    if (n <= 0 || skip == 0 || (size_t)n <= skip) {
        OPENSSL_free(der);
        AUTHORITY_KEYID_free(akid);
        return NULL;
    }
    char *a = acme_b64url(ASN1_STRING_get0_data(kid), (size_t)ASN1_STRING_length(kid));
    char *b = acme_b64url(der + skip, (size_t)n - skip);
    OPENSSL_free(der);
    AUTHORITY_KEYID_free(akid);
    char *out = NULL;
    if (a && b && asprintf(&out, "%s.%s", a, b) < 0)
        out = NULL;
    free(a);
    free(b);
    return out;
}

int acme_ari_window(const char *json, size_t len, time_t *start, time_t *end)
{
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, NULL);
    json_t *w = root ? json_object_get(root, "suggestedWindow") : NULL;
    json_t *s = w ? json_object_get(w, "start") : NULL, *e = w ? json_object_get(w, "end") : NULL;
    int rc = -EINVAL;
    if (json_is_string(s) && json_is_string(e) &&
        acme_parse_rfc3339(json_string_value(s), json_string_length(s), start) == 0 &&
        acme_parse_rfc3339(json_string_value(e), json_string_length(e), end) == 0 &&
        *end >= *start)
        rc = 0;
    json_decref(root);
    return rc;
}
