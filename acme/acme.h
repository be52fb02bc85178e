/* acme: certificates that come by themselves (SPEC.md, "ACME"; RFC 8555, 8737, 9773).
 *
 * A few background threads per process order, for each listed domain, one certificate covering
 * the acme.names patterns, and renew it. They never run on an event loop: every request to the
 * CA blocks one of them only. What it obtains is written to acme.storage as
 * certs/DOMAIN/{fullchain,privkey}.pem; certstore loads that folder (below the operator's own
 * pairs) at every snapshot build, and the threads name each new pair through the ISSUED
 * callback. Challenge answers are looked up through acme/challenge.h.
 *
 * Ownership: acme_start returns an object the caller frees with acme_stop (which joins the
 * thread). acme_configure copies what it needs out of the conf, so the conf may go right after. */
#ifndef MAILSNID_ACME_H
#define MAILSNID_ACME_H

#include <stdbool.h>
#include <stdio.h>
#include <time.h>

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
    unsigned order_timeout_s;
};

struct acme;

/* What the threads tell their host. ISSUED(ARG, DOMAIN) runs on an ACME thread (several may call
 * it at once) whenever a new pair for DOMAIN lies in storage (ordered here, or by another
 * instance sharing it); it must only hand the news to whoever updates the certificate snapshot,
 * and copy DOMAIN if it keeps it. LOG is the host's logger, called from those threads too. */
struct acme_hooks {
    void (*issued)(void *arg, const char *domain);
    /* Whether the running certificates already serve NAME with a pair valid until NOT_AFTER or
     * later. Asked at the first look at a domain that has a stored pair: another instance
     * sharing the storage may have stored it after this process's certificates were built. */
    bool (*serving)(void *arg, const char *name, time_t not_after);
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
