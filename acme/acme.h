/* acme: certificates that come by themselves (SPEC.md, "ACME"; RFC 8555, 8737, 9773).
 *
 * One background thread per process orders, for each listed domain, one certificate covering
 * the acme.names patterns, and renews it. It never runs on an event loop: every request to the
 * CA blocks that thread only. What it obtains is written to acme.storage as
 * certs/DOMAIN/{fullchain,privkey}.pem; certstore loads that folder (below the operator's own
 * pairs) at every snapshot build, and the thread asks for such a build through the ISSUED
 * callback. Challenge answers are looked up through acme/challenge.h.
 *
 * Ownership: acme_start returns an object the caller frees with acme_stop (which joins the
 * thread). acme_configure copies what it needs out of the conf, so the conf may go right after. */
#ifndef MAILSNID_ACME_H
#define MAILSNID_ACME_H

#include <stdbool.h>
#include <stdio.h>

#include "conf/conf.h"

/* What the thread works from: conf's acme block and domains, copied. */
struct acme_settings {
    char *directory, *contact, *storage, *ca_file;
    enum conf_acme_challenge challenges[CONF_ACME_CHALLENGES];
    size_t n_challenges;
    char **names;
    size_t n_names;
    enum conf_acme_key key_type;
    unsigned pace_orders, pace_window_s, renew_before_days, backoff_min_s, backoff_max_s;
};

struct acme;

/* What the thread tells its host. ISSUED(ARG) runs on the ACME thread whenever a new pair lies
 * in storage (ordered here, or by another instance sharing it); it must only hand the news to
 * whoever rebuilds the certificate snapshot. LOG is the host's logger. */
struct acme_hooks {
    void (*issued)(void *arg);
    void *arg;
    void (*log)(enum conf_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
};

/* Starts the thread for CONF; NULL when CONF has no acme block (nothing to do) or on failure
 * (logged). HOOKS is copied. */
struct acme *acme_start(const struct conf *conf, const struct acme_hooks *hooks);
/* A new configuration generation: domains, names and CA settings apply from the next order.
 * ACME may be switched on or off by reload: returns the object to keep (maybe new, maybe NULL). */
struct acme *acme_configure(struct acme *acme, const struct conf *conf, const struct acme_hooks *hooks);
void acme_stop(struct acme *acme);

/* /metrics: mailsnid_acme_orders_total{result=...} and mailsnid_acme_renewals_total. */
void acme_metrics_render(FILE *out);

/* --certs: one line per listed domain's ACME names: "name acme valid until DATE", "... pending"
 * or "... failing: REASON", read from storage (works without a running process). */
void acme_status_print(const struct conf *conf, FILE *out);

#endif
