# moongate -- build, run and test. `make run` and `make test` install what is
# missing (Debian 12 packages, as root), build, and run.
CC ?= cc
LLHTTP_SRC ?= /usr/share/llhttp
LLHTTP_INC ?= /usr/share/include/llhttp
# what building and running need; what the specs and checks need on top
PKGS = gcc make pkg-config libluajit2-5.1-dev luajit2 libevent-dev libwslay-dev libssl-dev \
       lua-cjson node-llhttp zlib1g-dev libnghttp2-dev
TEST_PKGS = lua-busted lua-check luarocks lua-socket curl openssl python3 python3-websockets \
       nodejs node-ws chromium clang-format valgrind pebble prometheus util-linux \
       python3-yaml nghttp2-client python3-h2 redis-server
# what make bench needs on top: the peers it measures against (nginx with
# nchan and lua, h2o) and the load generators
BENCH_PKGS = nginx libnginx-mod-nchan libnginx-mod-http-lua wrk h2o nghttp2-client openssl \
       python3 curl
DEPS_STAMP = .deps-ok
TEST_STAMP = .deps-test-ok
BENCH_STAMP = .deps-bench-ok

# recursive (=) on purpose: pkg-config runs when a recipe needs it, after
# the packages are installed, not when a fresh machine first reads this file
CFLAGS_BASE = -std=c11 -O2 -g -Wall -Wextra -Werror -D_GNU_SOURCE -Icore -I$(LLHTTP_INC) \
              -I/usr/include/luajit-2.1 $(shell pkg-config --cflags luajit libevent libnghttp2 2>/dev/null)
LIBS = $(shell pkg-config --libs luajit libevent libevent_openssl libnghttp2 2>/dev/null) -lwslay -lssl \
       -lcrypto -lz -lm -ldl
SAN ?=
CFLAGS_ALL = $(CFLAGS_BASE) $(SAN) $(CFLAGS)
# llhttp's generated C is not ours: build it with its own, relaxed flags
# SSE 4.2 (llhttp's own pcmpestri scans of header names and values) only
# when the building machine has it, as the binary runs where it is built;
# LLHTTP_SIMD= builds the portable byte loops
LLHTTP_SIMD ?= $(shell grep -qw sse4_2 /proc/cpuinfo 2>/dev/null && echo -msse4.2)
LLHTTP_CFLAGS = -O2 -g -w -DLLHTTP_STRICT_MODE=1 $(LLHTTP_SIMD) -I$(LLHTTP_INC) $(SAN)

SRCS = $(wildcard core/*/*.c)
BUILD ?= build
OBJS = $(SRCS:core/%.c=$(BUILD)/%.o) $(BUILD)/llhttp.o $(BUILD)/llhttp_api.o $(BUILD)/llhttp_http.o
BIN ?= moongate
# C unit tests (spec/c/test_*.c): one binary each, linked against the real
# objects; main.o goes in with its main renamed, so its globals are the real ones
CT_SRCS = $(wildcard spec/c/test_*.c)
CT_BINS = $(CT_SRCS:spec/c/%.c=$(BUILD)/ct/%)
CT_OBJS = $(filter-out $(BUILD)/app/main.o,$(OBJS)) $(BUILD)/main_ct.o
BUSTED = busted --lua=luajit -m "'lib/?.lua;lib/?/init.lua'"

.PHONY: all run test unit integration ctest asan deps fmt fmt-check lint layers bench fuzz clean \
        install

all: $(BIN)

define install_missing
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi
endef

$(DEPS_STAMP):
	$(call install_missing,$(PKGS))
	@touch $@

$(TEST_STAMP): $(DEPS_STAMP)
	$(call install_missing,$(TEST_PKGS))
	@touch $@

$(BENCH_STAMP): $(TEST_STAMP)
	$(call install_missing,$(BENCH_PKGS))
	@touch $@

deps:
	@rm -f $(DEPS_STAMP) $(TEST_STAMP) $(BENCH_STAMP); $(MAKE) --no-print-directory $(BENCH_STAMP)

$(BIN): $(DEPS_STAMP) $(OBJS)
	$(CC) $(CFLAGS_ALL) -o $@ $(OBJS) $(LIBS) -Wl,-E

$(BUILD)/%.o: core/%.c $(wildcard core/*/*.h) Makefile | $(BUILD) $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_ALL) -c -o $@ $<

$(BUILD)/llhttp.o: Makefile | $(BUILD) $(DEPS_STAMP)
	$(CC) $(LLHTTP_CFLAGS) -c -o $@ $(LLHTTP_SRC)/llhttp.c
$(BUILD)/llhttp_api.o: Makefile | $(BUILD) $(DEPS_STAMP)
	$(CC) $(LLHTTP_CFLAGS) -c -o $@ $(LLHTTP_SRC)/api.c
$(BUILD)/llhttp_http.o: Makefile | $(BUILD) $(DEPS_STAMP)
	$(CC) $(LLHTTP_CFLAGS) -c -o $@ $(LLHTTP_SRC)/http.c

$(BUILD):
	@mkdir -p $@

$(BUILD)/main_ct.o: $(BUILD)/app/main.o
	objcopy --redefine-sym main=mg_main_unused $< $@

$(BUILD)/ct/%: spec/c/%.c spec/c/ct.h spec/c/ct_req.h $(CT_OBJS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_ALL) -Ispec/c -o $@ $< $(CT_OBJS) $(LIBS)

# the demo (conf/moongate.lua: demo = true); moongate.pid is the master's,
# so that `kill -HUP $$(cat moongate.pid)` reloads (removed at exit)
run: $(BIN)
	./$(BIN) -c conf/moongate.lua -p moongate.pid

# make install [PREFIX=/usr/local] [SYSCONFDIR=$(PREFIX)/etc] [DESTDIR=]:
#   PREFIX/bin/moongate, the Lua modules in PREFIX/share/moongate/lib (the
#   binary finds them from its own place; MOONGATE_LIB overrides), the
#   bundled plugins in PREFIX/share/moongate/plugins, and the site (conf,
#   scripts, public) in SYSCONFDIR/moongate with conf/default.lua as its
#   conf/moongate.lua (demo off). The site goes in on a first install only:
#   an operator's edited conf and scripts are never overwritten.
PREFIX ?= /usr/local
SYSCONFDIR ?= $(PREFIX)/etc
MG_SHARE = $(DESTDIR)$(PREFIX)/share/moongate
MG_SITE = $(DESTDIR)$(SYSCONFDIR)/moongate
install: $(BIN)
	install -d $(DESTDIR)$(PREFIX)/bin $(MG_SHARE)/lib/moongate
	install -m 755 $(BIN) $(DESTDIR)$(PREFIX)/bin/moongate
	install -m 644 lib/moongate/*.lua $(MG_SHARE)/lib/moongate/
	rm -rf $(MG_SHARE)/plugins && cp -R plugins $(MG_SHARE)/plugins
	@if [ -e $(MG_SITE)/conf/moongate.lua ]; then \
	  echo "install: $(MG_SITE) exists: conf, scripts and public left as they are"; \
	else \
	  install -d $(MG_SITE)/conf && cp -R scripts public $(MG_SITE)/ && \
	  install -m 644 conf/default.lua $(MG_SITE)/conf/moongate.lua && \
	  install -m 644 conf/compose.lua $(MG_SITE)/conf/compose.lua; \
	fi

# Every spec and the C unit tests; the last line is "N passed, N failed".
test: $(TEST_STAMP) $(BIN) $(CT_BINS)
	@MOONGATE_CTESTS="$(CT_BINS)" MOONGATE_BIN=$(CURDIR)/$(BIN) sh tools/run-specs.sh \
	  spec/01-unit spec/02-integration $(wildcard spec/03-plugins)

unit: $(TEST_STAMP) $(CT_BINS)
	@MOONGATE_CTESTS="$(CT_BINS)" sh tools/run-specs.sh spec/01-unit

# the C unit tests alone
ctest: $(CT_BINS)
	@MOONGATE_CTESTS="$(CT_BINS)" sh tools/run-specs.sh

integration: $(TEST_STAMP) $(BIN)
	@MOONGATE_BIN=$(CURDIR)/$(BIN) sh tools/run-specs.sh spec/02-integration

# ASan + UBSan build in its own folder, running the integration specs.
asan: $(TEST_STAMP)
	@$(MAKE) --no-print-directory BUILD=build-asan BIN=moongate-asan \
	  SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -O1" moongate-asan \
	  $(CT_SRCS:spec/c/%.c=build-asan/ct/%)
	@ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  MOONGATE_CTESTS="$(CT_SRCS:spec/c/%.c=build-asan/ct/%)" \
	  MOONGATE_BIN=$(CURDIR)/moongate-asan MOONGATE_ASAN=1 sh tools/run-specs.sh spec/02-integration \
	  $(wildcard spec/03-plugins)

fmt:
	clang-format -i core/*/*.c core/*/*.h spec/c/*.c spec/c/*.h

# includes and calls in core/ go downward only (tools/layers.py says how)
layers: $(BIN)
	python3 tools/layers.py $(BUILD)

fmt-check: $(TEST_STAMP)
	@clang-format --dry-run --Werror core/*/*.c core/*/*.h spec/c/*.c spec/c/*.h && \
	  echo "clang-format: clean"

lint: $(TEST_STAMP)
	@luacheck -q lib scripts conf spec $(wildcard plugins examples) && echo "luacheck: clean"
	@sh tools/check-indent.sh lib scripts conf $(wildcard plugins examples)
	@for r in $(wildcard *.rockspec); do luarocks lint $$r && echo "$$r: lint ok"; done

# the long fuzz run (bounded: 50 000 cases or 10 minutes)
fuzz: $(TEST_STAMP) $(BIN)
	@MOONGATE_BIN=$(CURDIR)/$(BIN) MOONGATE_FUZZ_N=50000 MOONGATE_FUZZ_SECS=600 \
	  sh tools/run-specs.sh spec/02-integration/15-fuzz_spec.lua

# the bounded hostile suite (tools/chaos/chaos.py; about a minute): one-shot
# clients, a descriptor flood, slow bodies, misbehaving upstreams, WebSocket
# upstreams that end in one edge, a reload storm. The short version (--short)
# runs in make test (45-chaos_spec.lua).
.PHONY: chaos
chaos: $(TEST_STAMP) $(BIN)
	@/usr/bin/python3 tools/chaos/chaos.py --bin $(CURDIR)/$(BIN)

bench: $(BENCH_STAMP) $(BIN)
	@sh bench/run.sh
	@sh bench/plugins.sh
	@bash bench/tls.sh
	@bash bench/h2.sh
	@sh bench/metrics.sh
	@sh bench/fanout.sh

# issue 15's fan-out round alone (bench/fanout.sh: moongate x3 + Redis
# against nginx + nchan x3 + Redis, 10 000 WebSocket subscribers)
.PHONY: bench-fanout
bench-fanout: $(BENCH_STAMP) $(BIN)
	@sh bench/fanout.sh

# issue 16's HTTP/2 round alone: h2load against moongate, nginx and h2o (bench/h2.sh)
.PHONY: bench-h2
bench-h2: $(BENCH_STAMP) $(BIN)
	@bash bench/h2.sh

# issue 13's metrics + access-log round alone (bench/metrics.sh)
.PHONY: bench-metrics
bench-metrics: $(BIN)
	@sh bench/metrics.sh

# the same budget counted in instructions under callgrind (bench/metrics-ir.sh):
# what a busy machine does not change
.PHONY: bench-metrics-ir
bench-metrics-ir: $(TEST_STAMP) $(BIN)
	@sh bench/metrics-ir.sh

# bench/plugins.sh's routes (/plain, /hook, /api) counted in instructions per
# request under callgrind (bench/plugins-ir.sh)
.PHONY: bench-plugins-ir
bench-plugins-ir: $(TEST_STAMP) $(BIN)
	@sh bench/plugins-ir.sh

# moongate under valgrind memcheck over a short TLS + WSS session
.PHONY: valgrind-tls
valgrind-tls: $(TEST_STAMP) $(BIN)
	@sh tools/valgrind-tls.sh

clean:
	rm -rf build build-asan build-nometrics moongate moongate-asan moongate-nometrics
