# mailsnid build.  `make` → build/mailsnid.  `make SANITIZE=1` → build-san/ with ASan+UBSan and
# libc malloc (jemalloc would hide heap errors from ASan).  `make test` installs what is missing,
# builds, and runs the unit and integration tests.
CC      ?= cc
SHELL   := /bin/bash
PKGS    := openssl libuv libconfig libcurl jansson
SANITIZE ?= 0

CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -I.
LDLIBS  := -lpthread

ifeq ($(SANITIZE),1)
BUILD   ?= build-san
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
else
BUILD   ?= build
PKGS    += jemalloc
CFLAGS  += -DMAILSNID_JEMALLOC
endif

# pkg-config is evaluated lazily so that `make deps` works before the -dev packages exist.
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS))
PKG_LIBS   = $(shell pkg-config --libs $(PKGS))

CONF_OBJ  := $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard conf/*.c))
CS_OBJ    := $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard certstore/*.c))
ACME_OBJ  := $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard acme/*.c))
TLS13_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard tls13/*.c))
PROXY_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(filter-out proxy/runtime/main.c,$(wildcard proxy/*/*.c)))
LIB_OBJ   := $(PROXY_OBJ) $(TLS13_OBJ) $(ACME_OBJ) $(CS_OBJ) $(CONF_OBJ)
MAIN_OBJ := $(BUILD)/obj/proxy/runtime/main.o
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
BENCH_SRC := $(wildcard bench/*.c)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)
TOOL_SRC := $(wildcard tests/tools/*.c)
TOOL_BIN := $(TOOL_SRC:tests/tools/%.c=$(BUILD)/tools/%)

.PHONY: all deps test unit integration clean fuzz soak bench
all: $(BUILD)/mailsnid $(BENCH_BIN) $(TOOL_BIN)

deps:
	@scripts/deps.sh test

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/mailsnid: $(MAIN_OBJ) $(LIB_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) $(LDLIBS)

# Each unit test links only the rooms it tests, so one room's tests build while another is
# being changed: test_conf needs conf/, test_certstore certstore/ and conf/, test_tls13 tls13/,
# the rest everything.
$(BUILD)/tests/test_conf: tests/unit/test_conf.c $(CONF_OBJ) tests/unit/check.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) $(LDFLAGS) -o $@ $< $(CONF_OBJ) $(PKG_LIBS) $(LDLIBS)

$(BUILD)/tests/test_certstore: tests/unit/test_certstore.c tests/unit/certgen.h $(CS_OBJ) $(CONF_OBJ) tests/unit/check.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) $(LDFLAGS) -o $@ $< $(CS_OBJ) $(CONF_OBJ) $(PKG_LIBS) $(LDLIBS)

$(BUILD)/tests/test_tls13: tests/unit/test_tls13.c tests/unit/certgen.h $(TLS13_OBJ) tests/unit/check.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) $(LDFLAGS) -o $@ $< $(TLS13_OBJ) $(PKG_LIBS) $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(LIB_OBJ) tests/unit/check.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) $(LDFLAGS) -o $@ $< $(LIB_OBJ) $(PKG_LIBS) $(LDLIBS)

$(BUILD)/bench/%: bench/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) $(LDFLAGS) -o $@ $< $(PKG_LIBS) $(LDLIBS)

# Hostile clients the integration tests drive (tests/tools/).
$(BUILD)/tools/%: tests/tools/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) $(LDFLAGS) -o $@ $< $(PKG_LIBS) $(LDLIBS)

# The tests: dependencies first (a fresh machine needs no manual step), then unit, then
# integration against the real binary, real clients and real Dovecot/Postfix.
test: deps
	$(MAKE) all unit-bins
	$(MAKE) unit
	$(MAKE) integration
	dist/test_install.sh
	$(MAKE) fuzz FUZZ_TIME=$(TEST_FUZZ_TIME)

# `make test` gives each fuzz target a short run: enough to catch a regression on the seeds and
# their neighbours; `make fuzz` is the long run.
TEST_FUZZ_TIME ?= 10

unit-bins: $(UNIT_BIN)
.PHONY: unit-bins

unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; (cd tests/unit && ../../$$t); done

# libconfig 1.5 leaks inside its lexer on some malformed configs (the -t tests feed it some);
# that one frame is suppressed, and slow unwinding is needed to see it (libconfig has no frame
# pointers).
SAN_ENV := ASAN_OPTIONS=fast_unwind_on_malloc=0:detect_leaks=1 \
	LSAN_OPTIONS=suppressions=$(abspath tests/fuzz/lsan.supp):print_suppressions=0

# The TLS audit in `make test` runs testssl's reduced set (protocols, ciphers, vulnerabilities,
# server defaults, headers); `make audit` runs the full one (tests/audit/SUMMARY.md).
MAILSNID_AUDIT ?= quick

integration: $(BUILD)/mailsnid $(BENCH_BIN) $(TOOL_BIN)
	$(if $(filter 1,$(SANITIZE)),$(SAN_ENV)) MAILSNID_AUDIT=$(MAILSNID_AUDIT) MAILSNID=$(abspath $(BUILD)/mailsnid) BENCHBIN=$(abspath $(BUILD)/bench) SANITIZE=$(SANITIZE) \
	  python3 -m unittest discover -s tests/integration -p 'test_*.py' -v

clean:
	rm -rf build build-san

include dist/install.mk
-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

# ---- fuzzing: libFuzzer targets built with clang; each runs FUZZ_TIME seconds. Seeds live in
# tests/fuzz/corpus/NAME; what the fuzzer learns goes to build-fuzz/corpus-NAME (not the repo).
FUZZ_TIME ?= 60
FUZZ_CC   := clang-14
FUZZ_FLAGS := -g -O1 -std=c11 -D_GNU_SOURCE -I. -fno-omit-frame-pointer \
	-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZ_TARGETS := conf sni proxyproto starttls http acme tls13
FUZZ_SRC_conf := $(wildcard conf/*.c)
FUZZ_SRC_sni := $(wildcard certstore/*.c)
FUZZ_SRC_proxyproto := proxy/conn/proxyproto.c
FUZZ_SRC_starttls := proxy/mail/st_engine.c proxy/mail/st_imap.c proxy/mail/st_pop3.c proxy/mail/st_smtp.c
FUZZ_SRC_http := proxy/http/http_parse.c proxy/http/http_setup.c proxy/http/http_reply.c
FUZZ_SRC_acme := acme/parse.c acme/ari.c acme/jws.c acme/storage.c acme/pace.c
FUZZ_SRC_tls13 := tls13/record.c tls13/keys.c

.SECONDEXPANSION:
build-fuzz/fuzz_%: tests/fuzz/fuzz_%.c $$(FUZZ_SRC_$$*)
	@mkdir -p build-fuzz
	$(FUZZ_CC) $(FUZZ_FLAGS) $< $(FUZZ_SRC_$*) -o $@ $(shell pkg-config --cflags --libs libconfig openssl jansson) -lpthread

fuzz:
	@scripts/deps.sh fuzz
	$(MAKE) $(FUZZ_TARGETS:%=build-fuzz/fuzz_%)
	@set -e; for t in $(FUZZ_TARGETS); do \
	  echo "== fuzz_$$t for $(FUZZ_TIME) s"; mkdir -p build-fuzz/corpus-$$t; \
	  ASAN_OPTIONS=fast_unwind_on_malloc=0 LSAN_OPTIONS=suppressions=$(abspath tests/fuzz/lsan.supp) \
	  build-fuzz/fuzz_$$t -max_total_time=$(FUZZ_TIME) -max_len=20000 -print_final_stats=1 \
	    -artifact_prefix=build-fuzz/ \
	    build-fuzz/corpus-$$t tests/fuzz/corpus/$$t 2>&1 | grep -E "^(Done|stat::number_of_executed_units|==.*ERROR)|SUMMARY" ; \
	  test $${PIPESTATUS[0]} -eq 0; done

# ---- the full TLS audit with testssl (a few minutes).
audit: all
	@scripts/deps.sh audit
	MAILSNID=$(abspath $(BUILD)/mailsnid) python3 tests/audit/run_testssl.py --markdown tests/audit/SUMMARY.md

# ---- soak: mixed traffic on every protocol, a reload every second, backends restarted now and
# then; checks failures, fds and RSS at the end (tests/soak/soak.py). make test runs 30 s of it.
SOAK_TIME ?= 600
soak: all
	@scripts/deps.sh test
	$(if $(filter 1,$(SANITIZE)),$(SAN_ENV)) SANITIZE=$(SANITIZE) MAILSNID=$(abspath $(BUILD)/mailsnid) \
	  python3 tests/soak/soak.py --duration $(SOAK_TIME) --strict-unavailable

# ---- the fleet (issue 12): HAProxy in front of two mailsnid instances, real Dovecot/Postfix
# behind, pebble validating ACME through the balancer, each in its own network namespace
# (needs root; ~45 s). `make test` runs it too, and prints a SKIP line with the reason where
# namespaces cannot be made; here that is a failure.
fleet: deps
	$(MAKE) $(BUILD)/mailsnid
	$(if $(filter 1,$(SANITIZE)),$(SAN_ENV)) MAILSNID_FLEET_REQUIRED=1 SANITIZE=$(SANITIZE) \
	  MAILSNID=$(abspath $(BUILD)/mailsnid) \
	  python3 -m unittest discover -s tests/integration -p test_fleet.py -v

# ---- the demo: real Dovecot/Postfix behind mailsnid with demo certificates (see README).
demo:
	@scripts/demo.sh

# The demo's own check: start it, run every command it prints, stop; fails if any does.
demo-check:
	@scripts/demo.sh --check

# ---- the two commands above on a fresh Debian 12 chroot with the clone in /root (long; needs
# root and the Debian mirror; not part of `make test`). See tests/fresh/chroot_check.sh.
fresh-check:
	tests/fresh/chroot_check.sh $(FRESH_ARGS)

# ---- benchmarks against hitch, haproxy and stunnel (see bench/RESULTS.md).
bench: all
	@scripts/deps.sh bench
	bench/run

.PHONY: demo demo-check fresh-check audit soak fleet
