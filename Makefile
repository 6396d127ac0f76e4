# meshca — build, test, lint, demo. Everything the project needs is built
# from pinned Go modules (go.mod, tools/go.mod, tools/lint/go.mod).

GO        ?= go
BIN       := $(CURDIR)/bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X github.com/meshca/meshca/internal/app.Version=$(VERSION)
SANDBOX   ?= $(CURDIR)/.sandbox

.PHONY: all build test unit integration lint vet controlplane demo clean bench

all: build

## build: the meshca binary in bin/, and the sandbox's envoy stand-in (the
## binary the real pilot-agent starts as its envoy)
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/meshca ./cmd/meshca
	$(GO) build -o $(BIN)/envoystub ./internal/sandbox/envoystub

## controlplane: etcd, kube-*, kwok and istiod from tools/ (cold: ~9 min, cached after)
controlplane:
	hack/controlplane.sh

## test: vet + every test, integration tests included (they run on the sandbox)
test: controlplane build vet
	CI=$${CI:-true} MESHCA_BIN_DIR=$(BIN) $(GO) test -count=1 -timeout 60m ./...

## unit: tests that need no control plane (integration tests skip themselves)
unit:
	$(GO) test ./...

vet:
	$(GO) vet ./...

## lint: golangci-lint v2, built from tools/lint
lint: $(BIN)/golangci-lint
	$(BIN)/golangci-lint run ./...

$(BIN)/golangci-lint: tools/lint/go.mod tools/lint/go.sum
	cd tools/lint && $(GO) build -o $(BIN)/golangci-lint github.com/golangci/golangci-lint/v2/cmd/golangci-lint

## bench: Go benchmarks of the CA toolkit (and openssl for comparison) and
## the size of the HTML report of a 1,000-proxy rotation
bench:
	$(GO) test -run '^$$' -bench . -benchtime 10x ./internal/pki/...
	$(GO) test -run '^$$' -bench . -benchtime 5x ./internal/report/htmlreport/

## demo: build everything, start the sandbox and show the mesh
demo: build controlplane
	hack/demo.sh

clean:
	rm -rf $(BIN)
