# Jumpgate. `make demo` runs a cluster on this machine; `make test` runs the tests.
GO      ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
BIN     := bin
FUZZTIME ?= 30s

.PHONY: all build demo test test-short deps fuzz bench vet clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/jumpgate ./cmd/jg ./cmd/jgctl

demo: build
	$(BIN)/jumpgate demo

# deps installs what the tests need on a fresh Debian machine (root or sudo).
deps:
	@need=""; \
	for p in ssh:openssh-client sshd:openssh-server; do \
	  b=$${p%%:*}; pkg=$${p#*:}; \
	  command -v $$b >/dev/null 2>&1 || [ -x /usr/sbin/$$b ] || need="$$need $$pkg"; \
	done; \
	if [ -n "$$need" ]; then \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  echo "installing:$$need"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$need; \
	fi

test: deps build
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 10m ./...

test-short: build
	$(GO) test -short -count=1 ./...

# fuzz runs every fuzz target for FUZZTIME each.
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

# bench runs the Go micro-benchmarks that exist so far (tunnel throughput vs raw loopback TCP).
# The OpenSSH-baseline suite (direct ssh, ProxyJump, via Jumpgate) is not written yet: see benchmarks/README.md.
bench: deps build
	$(GO) test -run '^$$' -bench . -benchtime 3x ./tunnel/...

vet:
	$(GO) vet ./...

clean:
	rm -rf $(BIN) .demo
