# iotd - build, test, install, bench and fuzz.
#
#   make               optimised daemon at build/iotd
#   make test          unit + end-to-end tests, again under ASan+UBSan, then every fuzzer
#   make unit          cmocka unit tests only (build/)
#   make e2e           end-to-end tests only (build/)
#   make check-san     unit + end-to-end tests on the sanitizer build (build-san/)
#   make fuzz          each libFuzzer harness for FUZZ_SECONDS (clang)
#   make fuzz-coverage line and branch coverage each harness reaches on its corpus
#   make systemd-test  iotd under a real systemd (systemd-sandbox) and as root
#   make install       PREFIX=/usr/local DESTDIR=  (uninstall: the same): iotd, iotd-passwd,
#                      the units, the man pages, /etc/iotd/iotd.conf

CC       ?= cc
BUILD    ?= build
PREFIX   ?= /usr/local
SYSCONFDIR ?= /etc
FUZZ_SECONDS ?= 60
# Each harness in `make test`, which CI runs.
TEST_FUZZ_SECONDS ?= 35
PYTHON   ?= /usr/bin/python3

PKGS     := libconfuse libsystemd libseccomp lmdb libssl libcrypto libargon2
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
# Debian's libwslay-dev ships no pkg-config file.
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lwslay

# Warnings are errors in development and CI builds (contrib/dev.sh sets
# WERROR=1); a user's newer compiler may warn of new things without failing.
WARN     := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
	    -Wpointer-arith -Wno-unused-parameter
ifeq ($(WERROR),1)
WARN     += -Werror
endif
# Each object and program records the headers it read (-MMD -MP, *.d).
DEPFLAGS  = -MMD -MP -MF $@.d
OPT      ?= -O2 -g
CFLAGS   += -std=c17 -D_GNU_SOURCE $(OPT) $(WARN) -Iinclude $(PKG_CFLAGS) $(EXTRA_CFLAGS)
LDFLAGS  += $(EXTRA_LDFLAGS)
LDLIBS   += $(PKG_LIBS)

SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

COMMON_SRC := $(wildcard common/*.c)
DAEMON_SRC := $(filter-out daemon/main.c,$(wildcard daemon/*.c))
LIB_OBJ    := $(patsubst %.c,$(BUILD)/%.o,$(COMMON_SRC) $(DAEMON_SRC))
UNIT_SRC   := $(wildcard tests/unit/test_*.c)
UNIT_BIN   := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))
CONTRIB_SRC := $(wildcard contrib/*.c)
CONTRIB_BIN := $(patsubst contrib/%.c,$(BUILD)/contrib/%,$(CONTRIB_SRC))

.PHONY: all unit e2e test check-san fuzz fuzz-coverage bench install uninstall clean run tools systemd-test

all: $(BUILD)/iotd tools

tools: $(CONTRIB_BIN)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPFLAGS) -c -o $@ $<

$(BUILD)/libiotd.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/iotd: $(BUILD)/daemon/main.o $(BUILD)/libiotd.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libiotd.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPFLAGS) -Wno-missing-prototypes $(LDFLAGS) -o $@ $< $(BUILD)/libiotd.a $(LDLIBS) -lcmocka

$(BUILD)/contrib/%: contrib/%.c $(BUILD)/libiotd.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libiotd.a $(LDLIBS)

# The benchmark's clients speak TLS too: only iotd-bench links libssl.
$(BUILD)/contrib/iotd-bench: private LDLIBS += $(shell pkg-config --libs libssl 2>/dev/null)

# test_qos makes chosen allocations fail: the link wraps malloc and its kin.
$(BUILD)/tests/test_qos: private LDFLAGS += -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=reallocarray

# A compromised worker played against a running daemon (tests/e2e/test_hostile_worker.py).
HOSTILE_BIN := $(BUILD)/tests/hostile

$(HOSTILE_BIN): tests/hostile/hostile.c $(BUILD)/libiotd.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPFLAGS) $(LDFLAGS) -pthread -o $@ $< $(BUILD)/libiotd.a $(LDLIBS)

# test_passwd runs the iotd-passwd it finds beside it (build/contrib).
unit: $(UNIT_BIN) $(BUILD)/contrib/iotd-passwd
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t; done

e2e: $(BUILD)/iotd tools $(HOSTILE_BIN)
	IOTD_BIN=$(abspath $(BUILD)/iotd) IOTD_TOOLS=$(abspath $(BUILD)/contrib) \
	    IOTD_HOSTILE=$(abspath $(HOSTILE_BIN)) \
	    $(PYTHON) -m pytest -q -p no:cacheprovider tests/e2e $(PYTEST_ARGS)

check-san:
	$(MAKE) BUILD=build-san OPT="-O1 -g" EXTRA_CFLAGS="$(SAN_FLAGS)" \
	    EXTRA_LDFLAGS="$(SAN_FLAGS)" unit e2e

test: all
	$(MAKE) unit
	$(MAKE) e2e
	$(MAKE) check-san
	$(MAKE) systemd-test
	$(MAKE) fuzz FUZZ_SECONDS=$(TEST_FUZZ_SECONDS)

FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN := $(patsubst tests/fuzz/%.c,build-fuzz/%,$(FUZZ_SRC))
FUZZ_FLAGS := -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -g -O1

build-fuzz/%: tests/fuzz/%.c $(COMMON_SRC) $(DAEMON_SRC) $(wildcard include/*.h) $(wildcard common/*.h) $(wildcard daemon/*.h) $(wildcard tests/fuzz/*.h)
	@mkdir -p build-fuzz
	clang -std=c17 -D_GNU_SOURCE -Iinclude $(PKG_CFLAGS) $(FUZZ_FLAGS) -o $@ $< \
	    $(COMMON_SRC) $(DAEMON_SRC) $(LDLIBS)

# Each harness grows build-fuzz/corpus-<name> from tests/fuzz/corpus/<name>;
# a summary line per harness (seconds, executions, cov/ft, corpus) ends the run.
fuzz: $(FUZZ_BIN)
	tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_BIN)

# Line and branch coverage each harness reaches on its seed corpus plus the
# corpus `make fuzz` grew (clang source-based coverage, llvm-profdata/llvm-cov).
FUZZ_COV_BIN := $(patsubst tests/fuzz/%.c,build-fuzz/cov/%,$(FUZZ_SRC))
FUZZ_COV_FLAGS := -fsanitize=fuzzer -fprofile-instr-generate -fcoverage-mapping -g -O1

build-fuzz/cov/%: tests/fuzz/%.c $(COMMON_SRC) $(DAEMON_SRC) $(wildcard include/*.h) $(wildcard common/*.h) $(wildcard daemon/*.h) $(wildcard tests/fuzz/*.h)
	@mkdir -p build-fuzz/cov
	clang -std=c17 -D_GNU_SOURCE -Iinclude $(PKG_CFLAGS) $(FUZZ_COV_FLAGS) -o $@ $< \
	    $(COMMON_SRC) $(DAEMON_SRC) $(LDLIBS)

fuzz-coverage: $(FUZZ_COV_BIN)
	tests/fuzz/coverage.sh $(FUZZ_COV_BIN)

bench: all
	contrib/bench.sh

# Time from kill -9 of each role until routing works again (contrib/recovery.sh;
# RECOVERY_KILLS, RECOVERY_LOOP, RECOVERY_WORKERS, RECOVERY_TARGET_MS, RECOVERY_NO_FAIL).
.PHONY: recovery
recovery: $(BUILD)/iotd
	IOTD_BIN=$(abspath $(BUILD)/iotd) PYTHON=$(PYTHON) contrib/recovery.sh

run: all
	$(BUILD)/iotd

# Where `make install` puts things (PREFIX, DESTDIR and each of these honoured).
BINDIR      ?= $(PREFIX)/sbin
TOOLDIR     ?= $(PREFIX)/bin
UNITDIR     ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
MANDIR      ?= $(PREFIX)/share/man
CONFDIR     := $(SYSCONFDIR)/iotd

# An existing iotd.conf is kept; the unit is rewritten for BINDIR and CONFDIR.
install: all
	install -D -m 0755 $(BUILD)/iotd $(DESTDIR)$(BINDIR)/iotd
	install -D -m 0755 $(BUILD)/contrib/iotd-passwd $(DESTDIR)$(TOOLDIR)/iotd-passwd
	@if [ -e $(DESTDIR)$(CONFDIR)/iotd.conf ]; then \
	    echo "keeping the existing $(DESTDIR)$(CONFDIR)/iotd.conf"; \
	else install -D -m 0644 contrib/iotd.conf $(DESTDIR)$(CONFDIR)/iotd.conf; fi
	install -d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR) \
	    $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8
	sed -e 's|/usr/local/sbin/iotd|$(BINDIR)/iotd|' -e 's|/etc/iotd/iotd.conf|$(CONFDIR)/iotd.conf|' \
	    systemd/iotd.service > $(DESTDIR)$(UNITDIR)/iotd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/iotd.service
	install -m 0644 systemd/iotd.socket $(DESTDIR)$(UNITDIR)/iotd.socket
	install -m 0644 systemd/iotd-websocket.socket $(DESTDIR)$(UNITDIR)/iotd-websocket.socket
	install -m 0644 systemd/iotd-mqtts.socket $(DESTDIR)$(UNITDIR)/iotd-mqtts.socket
	install -m 0644 systemd/iotd-websocket-tls.socket \
	    $(DESTDIR)$(UNITDIR)/iotd-websocket-tls.socket
	install -m 0644 systemd/iotd.sysusers.conf $(DESTDIR)$(SYSUSERSDIR)/iotd.conf
	install -m 0644 systemd/iotd.tmpfiles.conf $(DESTDIR)$(TMPFILESDIR)/iotd.conf
	install -m 0644 docs/iotd.8 $(DESTDIR)$(MANDIR)/man8/iotd.8
	install -m 0644 docs/iotd.conf.5 $(DESTDIR)$(MANDIR)/man5/iotd.conf.5
	@echo "installed; on a live system then run: systemd-sysusers; systemd-tmpfiles --create;" \
	    "systemctl daemon-reload; systemctl enable --now iotd.socket"

# iotd.conf is removed only while it is still the shipped file.
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/iotd $(DESTDIR)$(TOOLDIR)/iotd-passwd \
	    $(DESTDIR)$(UNITDIR)/iotd.service \
	    $(DESTDIR)$(UNITDIR)/iotd.socket $(DESTDIR)$(UNITDIR)/iotd-websocket.socket \
	    $(DESTDIR)$(UNITDIR)/iotd-mqtts.socket $(DESTDIR)$(UNITDIR)/iotd-websocket-tls.socket \
	    $(DESTDIR)$(SYSUSERSDIR)/iotd.conf \
	    $(DESTDIR)$(TMPFILESDIR)/iotd.conf $(DESTDIR)$(MANDIR)/man8/iotd.8 \
	    $(DESTDIR)$(MANDIR)/man5/iotd.conf.5
	@if cmp -s contrib/iotd.conf $(DESTDIR)$(CONFDIR)/iotd.conf; then \
	    rm -f $(DESTDIR)$(CONFDIR)/iotd.conf; rmdir $(DESTDIR)$(CONFDIR) 2>/dev/null || true; \
	elif [ -e $(DESTDIR)$(CONFDIR)/iotd.conf ]; then \
	    echo "keeping the modified $(DESTDIR)$(CONFDIR)/iotd.conf"; fi

# iotd under a real systemd (../shared/tools/systemd-sandbox; skipped when
# absent or not root), the unit checks, and privilege separation as root.
SYSTEMD_STAGE := $(abspath $(BUILD))/systemd-stage

systemd-test: all
	rm -rf $(SYSTEMD_STAGE)
	$(MAKE) --no-print-directory install DESTDIR=$(SYSTEMD_STAGE) PREFIX=/usr/local SYSCONFDIR=/etc
	IOTD_BIN=$(abspath $(BUILD)/iotd) IOTD_STAGE=$(SYSTEMD_STAGE) tests/systemd/run.sh

# The end-to-end tests with every daemon process under valgrind memcheck
# (`make valgrind`; not part of `make test`: ten times slower). Each process writes
# $(VALGRIND_DIR)/vg.<pid>.log; the target fails when pytest fails or any
# log reports an error or a definite leak. As root the tests (and the daemon)
# run as VALGRIND_USER, so that no child changes its user under valgrind;
# iotd detects valgrind and leaves its children out of chroot, Landlock and
# seccomp. VALGRIND_TESTS picks a subset, PYTEST_ARGS passes on.
# One record is suppressed: the environment copy proctitle_init() keeps for
# the process's life, which valgrind's final __libc_freeres (clearenv) leaves
# unreferenced and so reports as definitely lost. --vgdb=no: no gdbserver
# files in /tmp (a stale one of another user stops valgrind from starting).
VALGRIND_DIR   ?= $(BUILD)/valgrind
VALGRIND_USER  ?= nobody
VALGRIND_SCALE ?= 10
VALGRIND_TESTS ?= tests/e2e
VALGRIND_OPTS  := --tool=memcheck --error-exitcode=99 --leak-check=full \
	--errors-for-leak-kinds=definite --trace-children=yes --child-silent-after-fork=no \
	--vgdb=no

.PHONY: valgrind
valgrind: $(BUILD)/iotd tools
	rm -rf $(VALGRIND_DIR)
	mkdir -p $(VALGRIND_DIR)
	printf '%s\n' '{' '   iotd-proctitle-environ-cleared-by-libc-freeres' '   Memcheck:Leak' \
	    '   match-leak-kinds: definite' '   fun:calloc' '   ...' '   fun:proctitle_init' \
	    '   fun:main' '}' > $(VALGRIND_DIR)/iotd.supp
	@set -u; runas=; \
	if [ "$$(id -u)" = 0 ]; then \
	    chown -R $(VALGRIND_USER) $(VALGRIND_DIR); \
	    runas="setpriv --reuid=$(VALGRIND_USER) --regid=$$(id -g $(VALGRIND_USER)) --clear-groups"; \
	fi; \
	vdir=$(abspath $(VALGRIND_DIR)); \
	echo "== e2e under valgrind ($(VALGRIND_TESTS)), logs in $$vdir"; \
	$$runas env HOME=$$vdir PYTHONDONTWRITEBYTECODE=1 E2E_TIMEOUT_SCALE=$(VALGRIND_SCALE) \
	    IOTD_BIN=$(abspath $(BUILD)/iotd) IOTD_TOOLS=$(abspath $(BUILD)/contrib) \
	    IOTD_WRAPPER="valgrind $(VALGRIND_OPTS) --suppressions=$$vdir/iotd.supp --log-file=$$vdir/vg.%p.log" \
	    $(PYTHON) -m pytest -q -p no:cacheprovider $(VALGRIND_TESTS) $(PYTEST_ARGS); rc=$$?; \
	logs=$$(ls $$vdir/vg.*.log 2>/dev/null | wc -l); \
	bad=$$(grep -l 'ERROR SUMMARY: [1-9]' $$vdir/vg.*.log 2>/dev/null); \
	cut=$$(grep -L 'ERROR SUMMARY' $$vdir/vg.*.log 2>/dev/null | wc -l); \
	echo "== valgrind: $$logs process logs, $$(echo $$bad | wc -w) with errors or definite" \
	    "leaks, $$cut without a summary (killed)"; \
	for f in $$bad; do echo "--- $$f"; grep -E '^==[0-9]+== ([A-Z]|   (at|by) )' $$f | head -40; done; \
	if [ $$logs -eq 0 ]; then echo "valgrind: no logs written"; exit 1; fi; \
	if [ -n "$$bad" ]; then exit 1; fi; \
	exit $$rc

clean:
	rm -rf build build-san build-fuzz

-include $(shell find $(BUILD) -type f -name '*.d' 2>/dev/null)
