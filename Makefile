GO ?= go
# Tests that need servers or the Nix client skip with a reason when those are
# missing; CI sets NARSTORE_TEST_REQUIRE_SERVERS=1 to make that a failure.
TESTFLAGS ?= -race -timeout 40m

.PHONY: build test bench vet fmt
build:
	$(GO) build -o bin/narstore ./cmd/narstore

test:
	$(GO) vet ./...
	$(GO) test $(TESTFLAGS) ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

vet:
	$(GO) vet ./...

fmt:
	gofmt -w .
