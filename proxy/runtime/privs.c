/* The order matters: supplementary groups, then the group, then the user (after setuid we could
 * no longer change groups). Afterwards the process checks it cannot become root again: a
 * half-done switch is worse than refusing to start.
 *
 * Reloads read keys again as the unprivileged user, so keys must be readable by it: the
 * README's model is keys group-readable by the proxy's group (mode 0640, group mailsnid);
 * certbot keeps the mode and group of the previous key when it renews. */
#include "proxy/runtime/privs.h"

#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <stdbool.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "proxy/ops/log.h"

/* After the switch, of all root's powers only CAP_NET_BIND_SERVICE stays (permitted, effective,
 * inheritable and ambient): a reload may add a listener on port 443 or 993 while the process runs
 * as `user`, and so may the process a SIGUSR2 upgrade starts.
 * It grants nothing else — no file access, no way back to uid 0. glibc has no wrapper for
 * capset and libcap is not worth a dependency for one call. */
static int keep_bind_service(void)
{
    struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    memset(data, 0, sizeof data);
    data[CAP_TO_INDEX(CAP_NET_BIND_SERVICE)].permitted = CAP_TO_MASK(CAP_NET_BIND_SERVICE);
    data[CAP_TO_INDEX(CAP_NET_BIND_SERVICE)].effective = CAP_TO_MASK(CAP_NET_BIND_SERVICE);
    data[CAP_TO_INDEX(CAP_NET_BIND_SERVICE)].inheritable = CAP_TO_MASK(CAP_NET_BIND_SERVICE);
    if (syscall(SYS_capset, &hdr, data) < 0)
        return -1;
    /* Ambient, so that the binary a SIGUSR2 upgrade starts (not as root) keeps it too. */
    return prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0);
}

int privs_drop(const struct conf *conf)
{
    if (!conf->user && !conf->group)
        return 0;
    uid_t uid = getuid();
    gid_t gid = getgid();
    const char *name = NULL;
    if (conf->user) {
        struct passwd *pw = getpwnam(conf->user);
        if (!pw) {
            log_err("%s: user \"%s\" does not exist: refusing to run as root", conf->path, conf->user);
            return -1;
        }
        uid = pw->pw_uid;
        gid = pw->pw_gid;
        name = pw->pw_name;
    }
    if (conf->group) {
        struct group *gr = getgrnam(conf->group);
        if (!gr) {
            log_err("%s: group \"%s\" does not exist: refusing to start", conf->path, conf->group);
            return -1;
        }
        gid = gr->gr_gid;
    }
    if (getuid() == uid && geteuid() == uid && getgid() == gid && getegid() == gid) {
        /* Already that user (systemd's User=): nothing to switch, and setgroups would fail. */
        return 0;
    }
    int rc = name ? initgroups(name, gid) : setgroups(0, NULL);
    /* Keep the permitted capabilities across setuid, so that one of them can be kept below. */
    bool keep_bind = conf->user && uid != 0 && geteuid() == 0;
    if (keep_bind && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
        keep_bind = false;
    if (rc < 0 || setgid(gid) < 0 || (conf->user && setuid(uid) < 0)) {
        log_err("cannot switch to user %s group %s: %s: refusing to serve with the old privileges",
                conf->user ? conf->user : "-", conf->group ? conf->group : "-", strerror(errno));
        return -1;
    }
    if (keep_bind) {
        prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
        if (keep_bind_service() < 0)
            log_warning("cannot keep CAP_NET_BIND_SERVICE (%s): a reload that adds a listener on "
                        "a port below 1024 will fail until the next restart", strerror(errno));
    }
    if (conf->user && uid != 0 && (setuid(0) == 0 || geteuid() == 0)) {
        log_err("still able to regain root after switching to %s: refusing to serve", conf->user);
        return -1;
    }
    log_notice("running as uid %d gid %d", (int)getuid(), (int)getgid());
    return 0;
}
