# ngx_http_mtls_identity_module
#
#   make            build the dynamic module into build/
#   make test       unit tests (Catch2) and nginx tests (t/, prove)
#   make demo       build, start a private stack, show the module at work
#
# The module is built the way packagers build it: nginx's own configure
# (from Debian's nginx-dev sources, with Debian's flags, so the binary
# accepts the module) run on a copy of the source tree, with this
# repository as --add-dynamic-module, then `make modules`.

NGINX_SRC    ?= /usr/share/nginx/src
NGINX_BIN    ?= /usr/sbin/nginx
BUILD        := build
NGX_TREE     := $(BUILD)/nginx
MODULE       := $(BUILD)/ngx_http_mtls_identity_module.so

CXX          ?= g++
CXXFLAGS     ?= -O1 -g
CXXFLAGS     += -std=c++17 -Wall -Wextra -Wpedantic -Wshadow -Werror -Isrc
LDLIBS       := -lpq -lssl -lcrypto

CORE_SRCS    := $(wildcard src/*.cpp)
CORE_HDRS    := $(wildcard src/*.hpp)
TEST_SRCS    := $(wildcard tests/*.cpp)
UNIT_OBJS    := $(patsubst %.cpp,$(BUILD)/unit/%.o,$(CORE_SRCS) $(TEST_SRCS))
UNIT_TESTS   := $(BUILD)/unit-tests

.PHONY: all module unit test demo clean

all: module

module: $(NGX_TREE)/objs/Makefile
	$(MAKE) -C $(NGX_TREE) -f objs/Makefile modules
	cp $(NGX_TREE)/objs/ngx_http_mtls_identity_module.so $(MODULE)

# nginx's configure, rerun when the module's build description changes
$(NGX_TREE)/objs/Makefile: config
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
	$(CXX) $(CXXFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/unit/%.o: %.cpp $(CORE_HDRS)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c -o $@ $<

test: module unit
	NGINX_BIN=$(NGINX_BIN) MTLS_MODULE=$(CURDIR)/$(MODULE) \
	    perl t/run-tests.pl $(UNIT_TESTS) t/*.t

clean:
	rm -rf $(BUILD)
