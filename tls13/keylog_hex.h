#ifndef MAILSNID_KEYLOG_HEX_H
#define MAILSNID_KEYLOG_HEX_H

#include <stddef.h>

/* Writes VALUE as printf's "%02x" would, NUL included, into OUT of ROOM bytes; returns the
 * digits written, or -1 when they and the NUL do not fit (nothing written then). The fast path
 * of this executable's __sprintf_chk (keylog_hex.c says why it has one). */
int keylog_hex_format(char *out, size_t room, unsigned value);

/* glibc's fortified sprintf, which keylog_hex.c defines for the whole process. */
int __sprintf_chk(char *s, int flag, size_t slen, const char *format, ...);

#endif
