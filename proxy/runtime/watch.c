/* Directories are watched, not files: editors and certbot replace files by rename or swap
 * symlinks, which a watch on the old inode would miss. The set is:
 *   - the config file's directory;
 *   - the directory of every certificate and key file, and of the file a symlink points to;
 *   - every cert_dirs directory (a new or removed domain folder) and each folder in it
 *     (certbot swaps the live/NAME links there; its new archive files are reached through
 *     them, so archive/ needs no watch of its own).
 * Only events about files we read count (a log file written next to the config must not cause
 * reloads); in cert_dirs every event counts. Any counted event restarts the debounce timer; when
 * it fires, a reload is requested. The set is kept
 * sorted so that a refresh adds and removes only what changed (a shared host may have 100,000
 * folders: recreating every watch after each reload would be wasteful). */
#include "proxy/runtime/watch.h"

#include <dirent.h>
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "proxy/ops/log.h"
#include "proxy/runtime/reload.h"

struct watched {
    char *path;
    char **names;          /* file names that matter in PATH; NULL = every event counts */
    size_t n_names;
    struct watch *owner;
    uv_fs_event_t *handle;
};

struct watch {
    struct server *srv;
    uv_timer_t debounce;
    size_t failed;                /* watches that could not be set up in the last refresh */
    struct watched *items;
    size_t n, cap;
};

/* Wanted watches before merging: (directory, file name or NULL for "anything"). */
struct want {
    char *dir, *name;
};

struct pathset {
    struct want *items;
    size_t n, cap;
};

static void pathset_add(struct pathset *set, const char *dir, const char *name)
{
    if (set->n == set->cap) {
        size_t cap = set->cap ? set->cap * 2 : 64;
        struct want *p = realloc(set->items, cap * sizeof *p);
        if (!p)
            return;
        set->items = p;
        set->cap = cap;
    }
    struct want *w = &set->items[set->n];
    w->dir = strdup(dir);
    w->name = name ? strdup(name) : NULL;
    if (!w->dir || (name && !w->name)) {
        free(w->dir);
        free(w->name);
        return;
    }
    set->n++;
}

static int cmp_want(const void *a, const void *b)
{
    const struct want *x = a, *y = b;
    return strcmp(x->dir, y->dir);
}

static void add_file(struct pathset *set, const char *file)
{
    char copy[PATH_MAX], base[PATH_MAX], real[PATH_MAX];
    if (!file || strlen(file) >= sizeof copy)
        return;
    strcpy(copy, file);
    strcpy(base, file);
    pathset_add(set, dirname(copy), basename(base));
    if (realpath(file, real)) {
        strcpy(base, real);
        pathset_add(set, dirname(real), basename(base));
    }
}

static void add_cert_dir(struct pathset *set, const char *dir)
{
    pathset_add(set, dir, NULL);
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char sub[PATH_MAX];
    struct stat st;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        if ((size_t)snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name) < sizeof sub &&
            stat(sub, &st) == 0 && S_ISDIR(st.st_mode))
            pathset_add(set, sub, NULL);
    }
    closedir(d);
}

/* Gathers what CONF needs watched, merged into one entry per directory, sorted. */
static struct watched *collect(const struct conf *conf, size_t *count)
{
    struct pathset set = { 0 };
    add_file(&set, conf->path);
    for (size_t i = 0; i < conf->n_includes; i++)
        add_file(&set, conf->includes[i]);
    add_file(&set, conf->tls.default_cert);
    add_file(&set, conf->tls.default_key);
    add_file(&set, conf->tls.ticket_keys); /* a rotation reloads on every instance by itself */
    for (size_t i = 0; i < conf->n_certs; i++) {
        add_file(&set, conf->certs[i].cert);
        add_file(&set, conf->certs[i].key);
    }
    for (size_t i = 0; i < conf->n_cert_dirs; i++)
        add_cert_dir(&set, conf->cert_dirs[i]);
    if (set.n)
        qsort(set.items, set.n, sizeof *set.items, cmp_want);
    struct watched *out = calloc(set.n ? set.n : 1, sizeof *out);
    size_t n = 0;
    for (size_t i = 0; out && i < set.n; i++) {
        struct want *w = &set.items[i];
        struct watched *last = n ? &out[n - 1] : NULL;
        if (!last || strcmp(last->path, w->dir) != 0) {
            out[n++] = (struct watched){ w->dir, NULL, 0, NULL, NULL };
            last = &out[n - 1];
            w->dir = NULL;
            if (w->name) {
                last->names = malloc(sizeof *last->names);
                if (last->names)
                    last->names[last->n_names++] = w->name, w->name = NULL;
            }
        } else if (last->names && w->name) {
            char **names = realloc(last->names, (last->n_names + 1) * sizeof *names);
            if (names) {
                last->names = names;
                last->names[last->n_names++] = w->name;
                w->name = NULL;
            }
        } else if (last->names && !w->name) {
            for (size_t k = 0; k < last->n_names; k++)
                free(last->names[k]);
            free(last->names);
            last->names = NULL;
            last->n_names = 0;
        }
        free(w->dir);
        free(w->name);
    }
    if (!out)
        for (size_t i = 0; i < set.n; i++)
            free(set.items[i].dir), free(set.items[i].name);
    free(set.items);
    *count = n;
    return out;
}

static bool matters(const struct watched *item, const char *filename)
{
    if (!item->names || !filename)
        return true;
    for (size_t i = 0; i < item->n_names; i++)
        if (strcmp(item->names[i], filename) == 0)
            return true;
    return false;
}

static void on_debounced(uv_timer_t *t)
{
    struct watch *w = t->data;
    reload_request(w->srv, "files changed");
}

static void on_event(uv_fs_event_t *h, const char *filename, int events, int status)
{
    (void)events;
    struct watched *item = h->data;
    struct watch *w = item->owner;
    if (status < 0 || !matters(item, filename))
        return;
    uv_timer_start(&w->debounce, on_debounced, WATCH_DEBOUNCE_MS, 0);
}

static void on_handle_closed(uv_handle_t *h)
{
    free(h);
}

static void free_names(struct watched *item)
{
    for (size_t k = 0; k < item->n_names; k++)
        free(item->names[k]);
    free(item->names);
    item->names = NULL;
    item->n_names = 0;
}

static void unwatch(struct watched *item)
{
    if (item->handle)
        uv_close((uv_handle_t *)item->handle, on_handle_closed);
    free(item->path);
    free_names(item);
}

/* Starts watching ITEM->path; the handle points at the item through ->data, so the items
 * array must not move while handles live (watch_refresh rebuilds it and re-points them). */
static void start_watch(struct watch *w, struct watched *item)
{
    item->handle = malloc(sizeof(uv_fs_event_t));
    if (!item->handle)
        return;
    uv_fs_event_init(w->srv->loop, item->handle);
    int r = uv_fs_event_start(item->handle, on_event, item->path, 0);
    if (r < 0) {
        if (w->failed++ == 0)
            log_warning("cannot watch %s for changes: %s (SIGHUP still reloads; "
                        "fs.inotify.max_user_watches may be too low)", item->path, uv_strerror(r));
        uv_close((uv_handle_t *)item->handle, on_handle_closed);
        item->handle = NULL;
    }
}

void watch_refresh(struct server *srv, const struct conf *conf)
{
    struct watch *w = srv->watch;
    if (!w)
        return;
    size_t n_next = 0;
    struct watched *next = collect(conf, &n_next);
    w->failed = 0;
    if (!next)
        return;
    /* Merge two sorted lists: keep the handles of directories in both, close those that
     * left, open the new ones. */
    size_t i = 0, j = 0;
    while (i < w->n || j < n_next) {
        int c = i == w->n ? 1 : j == n_next ? -1 : strcmp(w->items[i].path, next[j].path);
        if (c == 0) {
            next[j].handle = w->items[i].handle;
            w->items[i].handle = NULL;
            unwatch(&w->items[i++]);
            if (!next[j].handle)
                start_watch(w, &next[j]); /* it failed before (inotify limit?): try again */
            j++;
        } else if (c < 0) {
            unwatch(&w->items[i++]);
        } else {
            start_watch(w, &next[j++]);
        }
    }
    free(w->items);
    w->items = next;
    w->n = n_next;
    if (w->failed > 1)
        log_warning("%zu of %zu directories are not watched: changes there need a SIGHUP",
                    w->failed, w->n);
    for (size_t k = 0; k < w->n; k++) {
        w->items[k].owner = w;
        if (w->items[k].handle)
            w->items[k].handle->data = &w->items[k];
    }
}

int watch_start(struct server *srv)
{
    struct watch *w = calloc(1, sizeof *w);
    if (!w)
        return -1;
    w->srv = srv;
    uv_timer_init(srv->loop, &w->debounce);
    w->debounce.data = w;
    srv->watch = w;
    watch_refresh(srv, srv->conf);
    log_info("watching %zu directories for certificate and config changes", w->n);
    return 0;
}

static void on_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

void watch_stop(struct server *srv)
{
    struct watch *w = srv->watch;
    if (!w)
        return;
    for (size_t i = 0; i < w->n; i++)
        unwatch(&w->items[i]);
    free(w->items);
    srv->watch = NULL;
    uv_close((uv_handle_t *)&w->debounce, on_timer_closed);
}
