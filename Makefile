# The README's two commands are `go run ./cmd/sact demo` and `make test`.
GO ?= go

.PHONY: test build bench vet
# Static (CGO_ENABLED=0): in handoff mode the same binary runs inside containers as the
# shim, in images that may have no C library.
build:
	CGO_ENABLED=0 $(GO) build -o sact ./cmd/sact

vet:
	gofmt -l . | (! grep .) || (echo "gofmt needed on the files above" && false)
	$(GO) vet ./...

# Unit tests with the race detector, then the end-to-end tests against the real engine
# (set SACT_REQUIRE_DOCKER=1 to make a missing engine a failure instead of a skip).
test: vet
	$(GO) test -race -timeout 15m ./...

bench:
	$(GO) run ./bench
