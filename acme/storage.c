/* storage.c: acme.storage on disk, shared by every instance that points at it.
 *
 *   account.key, account.json          the ACME account (key 0600)
 *   certs/DOMAIN -> ../archive/DOMAIN.N  link swapped by rename(): a reader sees one whole pair
 *   archive/DOMAIN.N/{fullchain,privkey}.pem   (key 0600)
 *   challenges/tls-alpn-01/NAME, challenges/http-01/TOKEN   key authorizations
 *   locks/DOMAIN.lock                   who orders DOMAIN now (O_EXCL; taken over when stale)
 *   pace-N-W                            the new-order budget of N per W seconds (locked with fcntl)
 *   status/DOMAIN                       "pending" or "failing: reason", for --certs */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "acme/internal.h"

int acme_mkdirs(const char *path, int mode)
{
    char p[PATH_MAX];
    if (snprintf(p, sizeof p, "%s", path) >= (int)sizeof p)
        return -ENAMETOOLONG;
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, (mode_t)mode) < 0 && errno != EEXIST)
            return -errno;
        *s = '/';
    }
    if (mkdir(p, (mode_t)mode) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

static void tmp_name(char *out, size_t cap, const char *path)
{
    unsigned char r[6];
    RAND_bytes(r, sizeof r);
    snprintf(out, cap, "%s.tmp%02x%02x%02x%02x%02x%02x", path, r[0], r[1], r[2], r[3], r[4], r[5]);
}

int acme_write_file(const char *path, const void *data, size_t len, int mode)
{
    char tmp[PATH_MAX + 32];
    tmp_name(tmp, sizeof tmp, path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, (mode_t)mode);
    if (fd < 0)
        return -errno;
    const char *p = data;
    size_t left = len;
    int rc = 0;
    while (left && rc == 0) {
        ssize_t n = write(fd, p, left);
        if (n < 0)
            rc = -errno;
        else {
            p += n;
            left -= (size_t)n;
        }
    }
    /* A full disk shows here or at fsync: the old file stays. */
    if (rc == 0 && fsync(fd) < 0)
        rc = -errno;
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, path) < 0)
        rc = -errno;
    if (rc < 0)
        unlink(tmp);
    return rc;
}

/* What a lock file says of its holder: the process, its host and the thread, so that a holder
 * whose lock was taken over (it stalled past the staleness) does not remove its successor's. */
static int lock_owner(char *out, size_t cap)
{
    char host[64] = "";
    gethostname(host, sizeof host - 1);
    return snprintf(out, cap, "%ld %s %ld", (long)getpid(), host, (long)gettid());
}

/* The holder keeps the lock file open with an fcntl OFD lock on it for as long as it holds it,
 * so the kernel (and NFS's lock manager) knows a live holder from a dead one: two takers of a
 * stale lock cannot both get it, and a holder that stalls past the staleness keeps it. The body
 * (holder, time) still counts for STALE seconds, for a file system whose locks do not reach the
 * other hosts; a crashed holder's lock file stays until then, as before. */
int acme_lock(const char *storage, const char *name, long stale)
{
    char dir[PATH_MAX], path[PATH_MAX + 300], body[128];
    snprintf(dir, sizeof dir, "%s/locks", storage);
    int rc = acme_mkdirs(dir, 0700);
    if (rc < 0)
        return rc;
    snprintf(path, sizeof path, "%s/%s.lock", dir, name);
    for (int attempt = 0; attempt < 3; attempt++) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0)
            return -errno;
        struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
        /* NFSv3 without its lock manager has no locks at all (ENOLCK): the body alone decides
         * there, as on any file system whose locks do not reach the other hosts. */
        if (fcntl(fd, F_OFD_SETLK, &fl) < 0 && errno != ENOLCK) {
            rc = errno == EAGAIN || errno == EACCES ? -EBUSY : -errno;
            close(fd);
            return rc;                    /* a live holder */
        }
        /* A holder that released between our open and our lock removed the file we locked:
         * PATH is then another file or none. */
        struct stat mine, there;
        bool gone = false;
        if (fstat(fd, &mine) < 0 || (stat(path, &there) < 0 && !(gone = errno == ENOENT))) {
            rc = -errno;
            close(fd);
            return rc;
        }
        if (gone || mine.st_nlink == 0 || mine.st_ino != there.st_ino ||
            mine.st_dev != there.st_dev) {
            close(fd);
            continue;
        }
        if (mine.st_size > 0 && time(NULL) - mine.st_mtime < stale) {
            close(fd);
            return -EBUSY;                /* a recent holder that died, or one on another host */
        }
        int n = lock_owner(body, sizeof body);
        n += snprintf(body + n, sizeof body - (size_t)n, " %ld\n", (long)time(NULL));
        /* A full disk shows here first: say so (ENOSPC), not just "I/O error". */
        ssize_t w = ftruncate(fd, 0) < 0 ? -1 : pwrite(fd, body, (size_t)n, 0);
        rc = w == n ? 0 : w < 0 ? -errno : -EIO;
        /* On NFS the body would otherwise wait in this host's cache while the others read
         * an empty file; and a full disk may only show here. */
        if (rc == 0 && fsync(fd) < 0)
            rc = -errno;
        if (rc < 0) {
            unlink(path);
            close(fd);
            return rc;
        }
        return fd;
    }
    return -EBUSY;
}

void acme_unlock(const char *storage, const char *name, int lock)
{
    char path[PATH_MAX + 300], owner[128], body[160];
    if (lock < 0)
        return;
    snprintf(path, sizeof path, "%s/locks/%s.lock", storage, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, body, sizeof body - 1);
        close(fd);
        size_t len = (size_t)lock_owner(owner, sizeof owner);
        /* "OWNER TIME\n": ours, or taken over by a host that does not see our kernel lock while
         * we were stalled (theirs stays). Removed before our kernel lock goes, so a waiting
         * taker never finds our file unlocked and empty. */
        if (n > (ssize_t)len && memcmp(body, owner, len) == 0 && body[len] == ' ')
            unlink(path);
    }
    close(lock);
}

#define PACE_LOCK_TRIES 100 /* 10 ms apart: a second */

int acme_pace_take_shared(const char *storage, unsigned per_window, unsigned window_s, time_t now,
                          struct acme_bucket *state, time_t *when)
{
    char path[PATH_MAX + 64], text[64];
    snprintf(path, sizeof path, "%s/pace-%u-%u", storage, per_window, window_s);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    struct flock lk = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
    int rc = -EBUSY;
    for (int i = 0; i < PACE_LOCK_TRIES && rc == -EBUSY; i++) {
        if (i)
            nanosleep(&(struct timespec){ .tv_nsec = 10 * 1000 * 1000 }, NULL);
        if (fcntl(fd, F_OFD_SETLK, &lk) == 0)
            rc = 0;
        else if (errno != EAGAIN && errno != EACCES)
            rc = -errno;
    }
    if (rc < 0) {
        close(fd);
        if (rc != -EBUSY)
            return rc;
        *when = time(NULL) + 1;
        return 0;
    }
    struct acme_bucket b = { .tokens = per_window, .at = now };  /* an empty file: a new budget */
    bool repaired = false;   /* what the file said cannot stand: it is rewritten, taken or not */
    ssize_t n = pread(fd, text, sizeof text, 0);
    if (n < 0)
        rc = -errno;
    else if (n > 0 && !acme_bucket_parse(text, (size_t)n, &b))
        b = (struct acme_bucket){ .tokens = 0, .at = now }, repaired = true;
    if (b.at > now)
        b.at = now, repaired = true;
    bool taken = false;
    if (rc == 0) {
        taken = acme_bucket_take(&b, per_window, window_s, now, when);
        *state = b;
    }
    if (rc == 0 && (taken || repaired)) {
        int len = acme_bucket_format(&b, text, sizeof text);
        ssize_t w = len < 0 ? 0 : pwrite(fd, text, (size_t)len, 0);
        if (len < 0)
            rc = len;
        else if (w < 0 || fdatasync(fd) < 0)
            rc = -errno;            /* a full disk or quota: the caller counts on its own */
        else if (w != len)
            rc = -EIO;
    }
    if (close(fd) < 0 && rc == 0)   /* also where NFS reports a write that failed */
        rc = -errno;
    return rc < 0 ? rc : taken;
}

int acme_store_pair(const char *storage, const char *domain, const char *chain_pem,
                    size_t chain_len, const char *key_pem, size_t key_len)
{
    char archive[PATH_MAX], dir[PATH_MAX + 300], file[PATH_MAX + 340], certs[PATH_MAX];
    char link_path[PATH_MAX + 300], target[PATH_MAX + 300], tmp[PATH_MAX + 340];
    int rc;
    snprintf(archive, sizeof archive, "%s/archive", storage);
    snprintf(certs, sizeof certs, "%s/certs", storage);
    if ((rc = acme_mkdirs(archive, 0700)) < 0 || (rc = acme_mkdirs(certs, 0755)) < 0)
        return rc;
    unsigned char r[4];
    RAND_bytes(r, sizeof r);
    snprintf(dir, sizeof dir, "%s/%s.%ld-%02x%02x%02x%02x", archive, domain, (long)time(NULL),
             r[0], r[1], r[2], r[3]);
    if (mkdir(dir, 0700) < 0)
        return -errno;
    /* Nothing half-written stays behind (a full disk, a read-only remount): the new folder
     * goes unless the link points at it, so a reader never finds a chain without its key. */
    snprintf(file, sizeof file, "%s/privkey.pem", dir);
    rc = acme_write_file(file, key_pem, key_len, 0600);
    snprintf(file, sizeof file, "%s/fullchain.pem", dir);
    if (rc == 0)
        rc = acme_write_file(file, chain_pem, chain_len, 0644);
    snprintf(link_path, sizeof link_path, "%s/%s", certs, domain);
    char old[PATH_MAX] = "";
    ssize_t n = readlink(link_path, old, sizeof old - 1);
    old[n > 0 ? n : 0] = '\0';
    snprintf(target, sizeof target, "../archive/%s", strrchr(dir, '/') + 1);
    /* A dot name: certstore passes over it if it reads the folder meanwhile. */
    char dotted[PATH_MAX + 300];
    snprintf(dotted, sizeof dotted, "%s/.%s", certs, domain);
    tmp_name(tmp, sizeof tmp, dotted);
    if (rc == 0 && symlink(target, tmp) < 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, link_path) < 0) {
        rc = -errno;
        unlink(tmp);
    }
    if (rc < 0) {
        unlink(file);
        snprintf(file, sizeof file, "%s/privkey.pem", dir);
        unlink(file);
        rmdir(dir);
        return rc;
    }
    /* The previous pair's files: the running snapshot has them parsed already. */
    if (old[0] && strncmp(old, "../archive/", 11) == 0 && !strchr(old + 11, '/')) {
        char p[2 * PATH_MAX + 32];
        snprintf(p, sizeof p, "%s/%s/fullchain.pem", archive, old + 11);
        unlink(p);
        snprintf(p, sizeof p, "%s/%s/privkey.pem", archive, old + 11);
        unlink(p);
        snprintf(p, sizeof p, "%s/%s", archive, old + 11);
        rmdir(p);
    }
    return 0;
}

X509 *acme_stored_cert(const char *storage, const char *domain)
{
    char path[PATH_MAX + 300];
    snprintf(path, sizeof path, "%s/certs/%s/fullchain.pem", storage, domain);
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    return x;
}

void acme_status_write(const char *storage, const char *domain, const char *line)
{
    char dir[PATH_MAX], path[PATH_MAX + 300], text[600];
    snprintf(dir, sizeof dir, "%s/status", storage);
    if (acme_mkdirs(dir, 0755) < 0)
        return;
    snprintf(path, sizeof path, "%s/%s", dir, domain);
    int n = snprintf(text, sizeof text, "%s\n", line);
    for (char *c = text; c < text + n - 1; c++)
        if (*c == '\n' || *c == '\r')
            *c = ' ';
    acme_write_file(path, text, (size_t)(n < (int)sizeof text ? n : (int)sizeof text - 1), 0644);
}
