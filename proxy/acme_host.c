/* acme_host.c: see acme_host.h. */
#include "proxy/acme_host.h"

#include <stdlib.h>

#include "acme/acme.h"
#include "proxy/log.h"
#include "proxy/reload.h"

struct acme_host {
    struct server *srv;
    struct acme *acme;
    uv_async_t issued;                    /* ACME thread → control loop */
    struct acme_hooks hooks;
};

static void on_issued(uv_async_t *a)
{
    struct acme_host *h = a->data;
    reload_request(h->srv, "acme certificate");
}

/* On the ACME thread: uv_async_send is the one libuv call that is safe there. */
static void issued(void *arg)
{
    struct acme_host *h = arg;
    uv_async_send(&h->issued);
}

int acme_host_start(struct server *srv)
{
    struct acme_host *h = calloc(1, sizeof *h);
    if (!h)
        return -1;
    h->srv = srv;
    h->hooks = (struct acme_hooks){ .issued = issued, .arg = h, .log = log_msg };
    if (uv_async_init(srv->loop, &h->issued, on_issued) < 0) {
        free(h);
        return -1;
    }
    h->issued.data = h;
    srv->acme = h;
    h->acme = acme_start(srv->conf, &h->hooks);
    return 0;
}

void acme_host_configure(struct server *srv, const struct conf *conf)
{
    struct acme_host *h = srv->acme;
    if (h)
        h->acme = acme_configure(h->acme, conf, &h->hooks);
}

static void on_closed(uv_handle_t *handle)
{
    free(handle->data);
}

void acme_host_stop(struct server *srv)
{
    struct acme_host *h = srv->acme;
    if (!h)
        return;
    srv->acme = NULL;
    /* Joins the thread, which aborts a transfer in progress at once. */
    acme_stop(h->acme);
    h->acme = NULL;
    uv_close((uv_handle_t *)&h->issued, on_closed);
}
