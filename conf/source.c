/* conf/source.c: look at the file, and every file it @includes, before libconfig does.
 *
 * libconfig 1.5's flex lexer calls exit() when read() fails (a directory, an unreadable /proc
 * file), blocks on a FIFO or a device, and prints a lone backslash of an @include path to
 * stdout. A daemon that reloads on SIGHUP must survive a bad config, so those inputs are refused
 * here with a FILE:LINE message instead. The scan finds lines that *look like* @include in the
 * lexer's terms (start of line, blanks, "@include", blanks, a quote); it cannot tell whether such
 * a line sits inside a comment, so a commented-out @include of a directory is refused too. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf/internal.h"

/* Far beyond any real config (100,000 routes with two names each are ~12 MB), and small enough
 * that a mistaken @include of a log file or a sparse /proc file is refused instead of read. */
#define MAX_FILE_SIZE (128u << 20)
/* libconfig 1.5 stops at 10 nested files; scanning a little deeper costs nothing. */
#define MAX_DEPTH 12

struct seen {
    dev_t dev;
    ino_t ino;
};

struct scan {
    struct conf_ctx *ctx;
    struct seen *seen;
    size_t n_seen, cap_seen;
};

static int file_type_error(const struct stat *st)
{
    if (S_ISDIR(st->st_mode))
        return -EISDIR;
    return S_ISREG(st->st_mode) ? 0 : -EINVAL;
}

/* Reads a whole regular file. The type is checked before open() because opening some devices
 * has effects of its own (a watchdog, a tape), and again on the descriptor in case the path was
 * swapped in between. O_NONBLOCK makes a pseudo-file that would block fail with EAGAIN. */
static int read_whole(const char *path, char **out, size_t *out_len, struct stat *st)
{
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int fd, rc;

    *out = NULL;
    if (stat(path, st) < 0)
        return -errno;
    rc = file_type_error(st);
    if (rc < 0)
        return rc;
    fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    rc = fstat(fd, st) < 0 ? -errno : file_type_error(st);
    if (rc < 0)
        goto fail;
    for (;;) {
        ssize_t n;
        if (len + 1 >= cap) {
            size_t ncap = cap ? cap * 2 : 4096;
            char *p;
            if (ncap > MAX_FILE_SIZE + 1)
                ncap = MAX_FILE_SIZE + 1;
            if (len + 1 >= ncap) {
                rc = -EFBIG;
                goto fail;
            }
            p = realloc(buf, ncap);
            if (!p) {
                rc = -ENOMEM;
                goto fail;
            }
            buf = p;
            cap = ncap;
        }
        n = read(fd, buf + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            goto fail;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    if (!buf && !(buf = malloc(1)))
        return -ENOMEM;
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return 0;

fail:
    close(fd);
    free(buf);
    return rc;
}

static const char *read_error_text(int rc)
{
    return rc == -EINVAL ? "not a regular file" : strerror(-rc);
}

/* Has this file been scanned already? Records it if not. Keeps a self-including file (which
 * libconfig rejects by depth) or a file included twice from costing more than one scan. */
static int seen_before(struct scan *sc, const struct stat *st)
{
    for (size_t i = 0; i < sc->n_seen; i++)
        if (sc->seen[i].dev == st->st_dev && sc->seen[i].ino == st->st_ino)
            return 1;
    if (sc->n_seen == sc->cap_seen) {
        size_t ncap = sc->cap_seen ? sc->cap_seen * 2 : 8;
        struct seen *p = realloc(sc->seen, ncap * sizeof *p);
        if (!p)
            return -ENOMEM;
        sc->seen = p;
        sc->cap_seen = ncap;
    }
    sc->seen[sc->n_seen++] = (struct seen){ st->st_dev, st->st_ino };
    return 0;
}

static int scan_text(struct scan *sc, const char *file, const char *buf, size_t len, int depth);

/* Keeps *PATH (taken over) in the list of included files: the file watcher watches them too,
 * so an edit to an @included domain list reloads like an edit to the main file. */
static int remember_include(struct conf_ctx *ctx, char **path)
{
    char **p = realloc(ctx->includes, (ctx->n_includes + 1) * sizeof *p);
    if (!p)
        return -ENOMEM;
    ctx->includes = p;
    ctx->includes[ctx->n_includes++] = *path;
    *path = NULL;
    return 0;
}

/* One @include target: refused if libconfig could not read it safely, scanned if it can. */
static int check_include(struct scan *sc, const char *file, unsigned line, const char *target,
                         int depth)
{
    struct conf_ctx *ctx = sc->ctx;
    char q[CONF_QUOTE_MAX], *path = NULL, *buf = NULL;
    struct stat st;
    size_t len;
    int rc;

    /* libconfig 1.5 prefixes every @include path with the include directory (ours: the config
     * file's directory), so an absolute path can never be opened: say so plainly. */
    if (target[0] == '/') {
        conf_error_at(ctx, file, line, "@include %s: the path must be relative to %s",
                      conf_quote(q, sizeof q, target), ctx->dir);
        return 0;
    }
    if (asprintf(&path, "%s/%s", ctx->dir, target) < 0) {
        conf_oom(ctx);
        return -ENOMEM;
    }
    rc = read_whole(path, &buf, &len, &st);
    if (rc == -ENOMEM) {
        conf_oom(ctx);
        goto out;
    }
    if (rc == -ENOENT || rc == -EACCES || rc == -ENAMETOOLONG || rc == -ENOTDIR || rc == -ELOOP) {
        /* libconfig's own fopen() fails the same way and reports it; nothing unsafe happens. */
        rc = 0;
        goto out;
    }
    if (rc < 0) {
        conf_error_at(ctx, file, line, "@include %s: %s", conf_quote(q, sizeof q, target),
                      read_error_text(rc));
        rc = 0;
        goto out;
    }
    rc = seen_before(sc, &st);
    if (rc == 0)
        rc = remember_include(ctx, &path);
    if (rc < 0)
        conf_oom(ctx);
    else if (rc == 0 && depth < MAX_DEPTH)
        rc = scan_text(sc, target, buf, len, depth + 1);
out:
    free(buf);
    free(path);
    return rc < 0 ? rc : 0;
}

/* Decodes the @include string starting after its opening quote the way libconfig's lexer does:
 * \\ and \" are escapes, any other backslash is printed by the lexer (refused here), and a NUL
 * ends the run of plain characters it is in, because libconfig appends each run with strlen().
 * Returns the position after the closing quote, or NULL when the file ends first (libconfig then
 * silently includes nothing). */
static const char *decode_include(const char *p, const char *end, char *out, size_t size,
                                  bool *bad_escape, bool *too_long)
{
    size_t o = 0;
    bool in_nul_run = false;

    *bad_escape = *too_long = false;
    for (; p < end; p++) {
        char c = *p;
        if (c == '"') {
            out[o] = '\0';
            return p + 1;
        }
        if (c == '\\') {
            if (p + 1 < end && (p[1] == '\\' || p[1] == '"')) {
                c = *++p;
                in_nul_run = false;
            } else {
                *bad_escape = true;
                continue;
            }
        } else if (c == '\0') {
            in_nul_run = true;
            continue;
        } else if (in_nul_run) {
            continue;
        }
        if (o + 1 >= size)
            *too_long = true;
        else
            out[o++] = c;
    }
    return NULL;
}

/* libconfig's pattern allows only blanks and tabs here; a wider set only makes the scan look at
 * more lines, never fewer. */
static bool blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

static int scan_text(struct scan *sc, const char *file, const char *buf, size_t len, int depth)
{
    const char *p = buf, *end = buf + len;
    char target[PATH_MAX], q[CONF_QUOTE_MAX];
    unsigned line = 1;

    conf_check_int_literals(sc->ctx, file, buf, len);
    while (p < end) {
        const char *s = p, *after;
        bool bad_escape, too_long;
        unsigned at = line;

        while (s < end && blank(*s))
            s++;
        if ((size_t)(end - s) > 8 && memcmp(s, "@include", 8) == 0 && blank(s[8])) {
            s += 8;
            while (s < end && blank(*s))
                s++;
            if (s < end && *s == '"') {
                after = decode_include(s + 1, end, target, sizeof target, &bad_escape, &too_long);
                if (!after)
                    return 0;
                for (const char *c = p; c < after; c++)
                    line += *c == '\n';
                p = after;
                if (bad_escape)
                    conf_error_at(sc->ctx, file, at, "@include %s: only \\\\ and \\\" may follow a backslash",
                                  conf_quote(q, sizeof q, target));
                else if (!too_long && check_include(sc, file, at, target, depth) < 0)
                    return -ENOMEM;
            }
        }
        /* On to the next line start; the lexer's ^ anchors only there. */
        while (p < end && *p != '\n')
            p++;
        if (p < end) {
            p++;
            line++;
        }
    }
    return 0;
}

static int config_dir(struct conf_ctx *ctx)
{
    char *copy, *slash, *dir;

    copy = strdup(ctx->path);
    if (!copy)
        return -ENOMEM;
    slash = strrchr(copy, '/');
    if (!slash)
        dir = realpath(".", NULL);
    else if (slash == copy)
        dir = strdup("/");
    else {
        *slash = '\0';
        dir = realpath(copy, NULL);
    }
    free(copy);
    if (!dir)
        return errno ? -errno : -ENOMEM;
    ctx->dir = dir;
    return 0;
}

int conf_source_check(struct conf_ctx *ctx)
{
    struct scan sc = { .ctx = ctx };
    struct stat st;
    char *buf = NULL;
    size_t len;
    int rc;

    rc = read_whole(ctx->path, &buf, &len, &st);
    if (rc == 0)
        rc = config_dir(ctx);
    if (rc < 0) {
        if (rc == -ENOMEM)
            conf_oom(ctx);
        else
            conf_error_at(ctx, NULL, 0, "cannot read: %s", read_error_text(rc));
        goto out;
    }
    if (seen_before(&sc, &st) < 0 || scan_text(&sc, ctx->path, buf, len, 0) < 0) {
        conf_oom(ctx);
        rc = -ENOMEM;
        goto out;
    }
    rc = ctx->n_msgs ? -EINVAL : 0;
out:
    free(sc.seen);
    free(buf);
    return rc;
}
