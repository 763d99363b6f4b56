# ngx_http_mtls_identity_module
#
#   make            build the dynamic module: build/ngx_http_mtls_identity_module.so
#   make test       unit tests (Catch2) and nginx tests (t/, prove)
#   make demo       build, start a private nginx, show the module at work
#
# The module is built the way packagers build modules: nginx's configure,
# from Debian's nginx-dev sources with Debian's own flags (so Debian's
# nginx binary accepts the module), runs on a copy of that tree with this
# repository as --add-dynamic-module; then `make modules`.

NGINX_SRC    ?= /usr/share/nginx/src
NGINX_BIN    ?= /usr/sbin/nginx
BUILD        := build
NGX_TREE     := $(BUILD)/nginx
MODULE       := $(BUILD)/ngx_http_mtls_identity_module.so

CXX          ?= c++
CXXFLAGS     ?= -O1 -g
WARNINGS     := -Wall -Wextra -Wpedantic -Wshadow -Werror
PQ_INCLUDE   := $(shell pg_config --includedir 2>/dev/null \
                  || echo /usr/include/postgresql)
UNIT_FLAGS   := -std=c++17 $(WARNINGS) -Isrc -Itests -I$(PQ_INCLUDE) \
                -DMTLS_FIXTURE_DIR='"$(CURDIR)/tests/fixtures"'
UNIT_LIBS    := -lpq -lssl -lcrypto

CORE_SRCS    := $(wildcard src/*.cpp)
CORE_HDRS    := $(wildcard src/*.hpp)
TEST_SRCS    := $(wildcard tests/*.cpp)
TEST_HDRS    := $(wildcard tests/*.hpp)
UNIT_OBJS    := $(patsubst %.cpp,$(BUILD)/unit/%.o,$(CORE_SRCS) $(TEST_SRCS))
UNIT_TESTS   := $(BUILD)/unit-tests

.PHONY: all deps module unit test demo fixtures check-config clean

all: module

module: $(NGX_TREE)/objs/Makefile
	$(MAKE) -C $(NGX_TREE) -f objs/Makefile modules \
	    MTLS_IDENTITY_CXXFLAGS="-std=c++17 $(WARNINGS)"
	@# a new file, renamed into place: a running nginx keeps the old one
	cp $(NGX_TREE)/objs/ngx_http_mtls_identity_module.so $(MODULE).new
	mv -f $(MODULE).new $(MODULE)

# nginx's configure, run again when the module's build description or
# its list of sources changes
$(NGX_TREE)/objs/Makefile: config config.make $(CORE_SRCS) $(CORE_HDRS)
	@test -f $(NGINX_SRC)/configure || { echo "no nginx sources in" \
	    "$(NGINX_SRC): install nginx-dev or set NGINX_SRC" >&2; exit 1; }
	rm -rf $(NGX_TREE)
	mkdir -p $(BUILD)
	cp -r $(NGINX_SRC) $(NGX_TREE)
	cd $(NGX_TREE) && bash -c '. ./conf_flags && exec ./configure \
	    "$${NGX_CONF_FLAGS[@]}" --add-dynamic-module="$(CURDIR)"' \
	    > configure.log || { cat configure.log; exit 1; }

unit: $(UNIT_TESTS)

$(UNIT_TESTS): $(UNIT_OBJS)
	$(CXX) $(CXXFLAGS) -o $@ $^ $(UNIT_LIBS)

$(BUILD)/unit/%.o: %.cpp $(CORE_HDRS) $(TEST_HDRS)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) $(UNIT_FLAGS) -c -o $@ $<

# the Debian packages the build, the tests and the demo need
deps:
	@scripts/install-deps

test: deps
	$(MAKE) module unit
	@NGINX_BIN=$(NGINX_BIN) MTLS_MODULE=$(CURDIR)/$(MODULE) \
	    perl t/run-tests.pl $(UNIT_TESTS) t/*.t

demo: deps
	@echo "building the module (quiet; the first build takes a minute)"
	@$(MAKE) -s --no-print-directory module
	@NGINX_BIN=$(NGINX_BIN) MTLS_MODULE=$(CURDIR)/$(MODULE) scripts/demo

# audit an existing nginx configuration: make check-config CONF=/etc/...
CONF ?= /etc/nginx/nginx.conf

check-config: module
	@NGINX_BIN=$(NGINX_BIN) MTLS_MODULE=$(CURDIR)/$(MODULE) \
	    contrib/mtls-identity-check-config $(CONF)

# the demo's nginx, Django and PostgreSQL, kept up until Ctrl-C
.PHONY: run
run: deps
	@echo "building the module (quiet; the first build takes a minute)"
	@$(MAKE) -s --no-print-directory module
	@NGINX_BIN=$(NGINX_BIN) MTLS_MODULE=$(CURDIR)/$(MODULE) scripts/run

# measure the module against stock nginx, side by side (bench/README.md);
# BENCH_QUICK=1 for a smoke run of under a minute
.PHONY: bench
bench:
	bench/run

# regenerate the committed fixture certificates (new keys, new values)
fixtures:
	tests/fixtures/make-fixtures.sh

clean:
	rm -rf $(BUILD)
