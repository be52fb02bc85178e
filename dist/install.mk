# dist/install.mk — `make install` / `make uninstall` for mailsnid.  Included from the root
# Makefile (`include dist/install.mk`), or used as `make -f Makefile -f dist/install.mk install`.
#
#   make install                        # /usr/local/sbin, /etc/mailsnid, /usr/local/lib/systemd/system
#   make install PREFIX=/usr            # distribution layout: /usr/sbin, /lib/systemd/system
#   make install DESTDIR=/tmp/stage PREFIX=/usr   # staged (packaging); touches nothing outside
#
# Installs the binary, mailsnid.cfg.example (never mailsnid.cfg: an existing one is left alone),
# the systemd unit, mailsnid(8) and mailsnid.cfg(5) gzipped, the certbot deploy hook (0755) and a
# sysusers.d entry for the mailsnid user.  Paths inside the unit, the man pages and the example
# are written for PREFIX=/usr and SYSCONFDIR=/etc and rewritten here for other values.  Without
# DESTDIR the mailsnid user is created with systemd-sysusers, when that exists.
# Uninstall removes what install put there, and leaves mailsnid.cfg and the user.

# Remember the default goal: this fragment must not make `install` the default of `make`,
# wherever it is included.
MAILSNID_SAVED_GOAL := $(.DEFAULT_GOAL)

BUILD      ?= build
PREFIX     ?= /usr/local
SYSCONFDIR ?= /etc
DESTDIR    ?=
INSTALL    ?= install
SBINDIR    ?= $(PREFIX)/sbin
MANDIR     ?= $(PREFIX)/share/man
# systemd looks in /lib/systemd/system (Debian's unit dir; /usr/lib on merged-/usr systems) and
# /usr/local/lib/systemd/system, so a /usr install goes to the former.
SYSTEMDUNITDIR ?= $(if $(filter /usr /usr/,$(PREFIX)),/lib/systemd/system,$(PREFIX)/lib/systemd/system)
# systemd-sysusers reads /usr/lib/sysusers.d and /etc/sysusers.d, not /usr/local/lib.
SYSUSERSDIR ?= $(if $(filter /usr /usr/,$(PREFIX)),/usr/lib/sysusers.d,$(SYSCONFDIR)/sysusers.d)
CERTBOTHOOKDIR ?= $(SYSCONFDIR)/letsencrypt/renewal-hooks/deploy

MAILSNID_CONFDIR = $(SYSCONFDIR)/mailsnid
# The shipped files name /usr/sbin/mailsnid and /etc/mailsnid/…: rewrite them for this install.
MAILSNID_SUBST = sed -e 's|/usr/sbin/mailsnid|$(SBINDIR)/mailsnid|g' \
                     -e 's|/etc/mailsnid/|$(MAILSNID_CONFDIR)/|g' \
                     -e 's|/lib/systemd/system/mailsnid.service|$(SYSTEMDUNITDIR)/mailsnid.service|g' \
                     -e 's|/etc/letsencrypt/renewal-hooks/deploy/mailsnid|$(CERTBOTHOOKDIR)/mailsnid|g'
# $(call mailsnid_subst,SRC,DEST): SRC with the paths rewritten, mode 0644, replaced atomically.
mailsnid_subst = @echo "  $(1) -> $(2)"; $(MAILSNID_SUBST) $(1) > $(2).tmp && chmod 0644 $(2).tmp && mv -f $(2).tmp $(2)

.PHONY: install uninstall

install: $(BUILD)/mailsnid
	$(INSTALL) -d -m 0755 $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MAILSNID_CONFDIR) \
	  $(DESTDIR)$(SYSTEMDUNITDIR) $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(MANDIR)/man5 \
	  $(DESTDIR)$(CERTBOTHOOKDIR) $(DESTDIR)$(SYSUSERSDIR)
	$(INSTALL) -m 0755 $(BUILD)/mailsnid $(DESTDIR)$(SBINDIR)/mailsnid
	$(call mailsnid_subst,dist/mailsnid.cfg.example,$(DESTDIR)$(MAILSNID_CONFDIR)/mailsnid.cfg.example)
	$(call mailsnid_subst,dist/mailsnid.service,$(DESTDIR)$(SYSTEMDUNITDIR)/mailsnid.service)
	$(call mailsnid_subst,dist/mailsnid.8,$(DESTDIR)$(MANDIR)/man8/mailsnid.8)
	$(call mailsnid_subst,dist/mailsnid.cfg.5,$(DESTDIR)$(MANDIR)/man5/mailsnid.cfg.5)
	gzip -9nf $(DESTDIR)$(MANDIR)/man8/mailsnid.8 $(DESTDIR)$(MANDIR)/man5/mailsnid.cfg.5
	$(INSTALL) -m 0755 dist/certbot-deploy-hook $(DESTDIR)$(CERTBOTHOOKDIR)/mailsnid
	$(INSTALL) -m 0644 dist/mailsnid.sysusers $(DESTDIR)$(SYSUSERSDIR)/mailsnid.conf
	@if [ -z "$(DESTDIR)" ] && command -v systemd-sysusers >/dev/null 2>&1; then \
	  echo "systemd-sysusers $(SYSUSERSDIR)/mailsnid.conf"; \
	  systemd-sysusers $(SYSUSERSDIR)/mailsnid.conf; fi
	@test -e $(DESTDIR)$(MAILSNID_CONFDIR)/mailsnid.cfg || \
	  echo "next: cp $(MAILSNID_CONFDIR)/mailsnid.cfg.example $(MAILSNID_CONFDIR)/mailsnid.cfg," \
	       "edit it, check it with: $(SBINDIR)/mailsnid -t -c $(MAILSNID_CONFDIR)/mailsnid.cfg"
	@echo "then: systemctl daemon-reload && systemctl enable --now mailsnid"

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/mailsnid \
	  $(DESTDIR)$(MAILSNID_CONFDIR)/mailsnid.cfg.example \
	  $(DESTDIR)$(SYSTEMDUNITDIR)/mailsnid.service \
	  $(DESTDIR)$(MANDIR)/man8/mailsnid.8.gz $(DESTDIR)$(MANDIR)/man5/mailsnid.cfg.5.gz \
	  $(DESTDIR)$(CERTBOTHOOKDIR)/mailsnid \
	  $(DESTDIR)$(SYSUSERSDIR)/mailsnid.conf
	rmdir $(DESTDIR)$(MAILSNID_CONFDIR) 2>/dev/null || true
	@test ! -e $(DESTDIR)$(MAILSNID_CONFDIR)/mailsnid.cfg || \
	  echo "kept $(MAILSNID_CONFDIR)/mailsnid.cfg; the mailsnid user is kept too"

.DEFAULT_GOAL := $(MAILSNID_SAVED_GOAL)
