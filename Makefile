# Jumpgate. `make demo` runs a cluster on this machine; `make test` runs the tests.
GO      ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
BIN     := bin
FUZZTIME ?= 30s

.PHONY: all build demo test test-short deps fuzz bench bench-go benchcmp vet clean
BENCH   ?= quick

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/jumpgate ./cmd/jg ./cmd/jgctl

demo: build
	$(BIN)/jumpgate demo

# deps installs what the tests need on a fresh Debian machine (root or sudo): OpenSSH, SoftHSM2,
# Prometheus (promtool and the server), Chromium (headless, for the mesh page). Node.js and npm
# run the OpenID Connect provider of TestSSO (its npm modules are cached in ~/.cache/jumpgate-e2e).
deps:
	@need=""; \
	for p in ssh:openssh-client sshd:openssh-server softhsm2-util:softhsm2 pkcs11-tool:opensc node:nodejs npm:npm promtool:prometheus chromium:chromium; do \
	  b=$${p%%:*}; pkg=$${p#*:}; \
	  command -v $$b >/dev/null 2>&1 || [ -x /usr/sbin/$$b ] || [ -x /usr/bin/$$b ] || need="$$need $$pkg"; \
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

# bench runs the performance suite against OpenSSH baselines started in the same run and
# writes benchmarks/RESULTS.md. BENCH=full repeats more. See benchmarks/README.md.
bench: deps build
	$(GO) run ./benchmarks -bin $(BIN) -mode $(BENCH) -out benchmarks/RESULTS.md

# bench-go runs the Go micro-benchmarks: the data path many times, the mesh scenarios
# (gossip convergence and failure detection for 10-100 proxies, directory bandwidth) once each.
bench-go:
	$(GO) test -run '^$$' -bench . -skip IdleTunnels -benchtime 200x ./tunnel/... ./mesh/peer/...
	$(GO) test -run '^$$' -bench IdleTunnels -benchtime 1x -timeout 20m ./tunnel/server/
	$(GO) test -run '^$$' -bench . -benchtime 3000x ./auth/raftnode/ ./auth/ca/
	$(GO) test -run '^$$' -bench . ./mesh/route/ ./mesh/geo/ ./mesh/ingress/ ./mesh/ingress/realip/ ./cmd/jumpgate/
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 20m ./mesh/meshtest/...

# benchcmp compares the Go micro-benchmarks of two commits with benchstat:
# make benchcmp OLD=v1.2.0 NEW=HEAD [PKGS="./tunnel/resume/ ./mesh/route/"] [COUNT=6] [BENCH=regexp]
benchcmp:
	@test -n "$(OLD)" -a -n "$(NEW)" || { echo 'usage: make benchcmp OLD=<commit> NEW=<commit> [PKGS="./pkg/ ..."] [COUNT=6] [BENCH=regexp]'; exit 2; }
	bash benchmarks/benchcmp.sh $(OLD) $(NEW) $(PKGS)

vet:
	$(GO) vet ./...

clean:
	rm -rf $(BIN) .demo
