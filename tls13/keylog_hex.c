/* keylog_hex: OpenSSL 3.0's keylog lines without 300 calls into printf per handshake.
 *
 * The TLS 1.3 offload takes the traffic secrets from the keylog callback, the only way OpenSSL
 * 3.0 gives them out. Once any keylog callback is set, libssl's nss_keylog_int writes each of
 * the five secrets of a server handshake, and the client random before it, with one
 * sprintf("%02x") per byte — Debian builds libssl with _FORTIFY_SOURCE, so each is a call to
 * glibc's __sprintf_chk. That is 12-15 µs of a ~380 µs full handshake (bench/RESULTS.md, "The
 * handshake regression and its cause"), more than everything else the offload does together.
 *
 * This executable defines __sprintf_chk itself; the dynamic linker binds libssl's calls to the
 * executable's definition before glibc's (the same interposition jemalloc uses for malloc). The
 * one format "%02x" is answered here exactly as printf would; every other call goes to glibc's
 * __vsprintf_chk with the same arguments, checks included, so any other caller (another
 * library, or mailsnid itself built with _FORTIFY_SOURCE) gets exactly glibc's behaviour.
 */
#include "tls13/keylog_hex.h"

#include <stdarg.h>
#include <stddef.h>

/* glibc's, exported since 2.3.4 and declared in no public header. */
extern int __vsprintf_chk(char *s, int flag, size_t slen, const char *format, va_list ap);
extern void __chk_fail(void) __attribute__((noreturn));

int keylog_hex_format(char *out, size_t room, unsigned value)
{
    static const char digits[] = "0123456789abcdef";
    if (value <= 0xff) { /* every call OpenSSL makes: one byte */
        if (room < 3)
            return -1;
        out[0] = digits[value >> 4];
        out[1] = digits[value & 0xf];
        out[2] = '\0';
        return 2;
    }
    char tmp[sizeof value * 2];
    int n = 0;
    for (; value; value >>= 4)
        tmp[n++] = digits[value & 0xf];
    if ((size_t)n >= room)
        return -1;
    for (int i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    out[n] = '\0';
    return n;
}

int __sprintf_chk(char *s, int flag, size_t slen, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    int n;
    if (format[0] == '%' && format[1] == '0' && format[2] == '2' && format[3] == 'x' &&
        format[4] == '\0') {
        n = keylog_hex_format(s, slen, va_arg(ap, unsigned));
        if (n < 0)
            __chk_fail(); /* what glibc does when the output would not fit */
    } else {
        n = __vsprintf_chk(s, flag, slen, format, ap);
    }
    va_end(ap);
    return n;
}
