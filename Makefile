# The README's two commands are `go run ./cmd/sact demo` and `make test`.
GO ?= go

.PHONY: test check-deps build deb bench bench-quick bench-swarm reliability fuzz vet
# Static (CGO_ENABLED=0): in handoff mode the same binary runs inside containers as the
# shim, in images that may have no C library.
build:
	CGO_ENABLED=0 $(GO) build -o sact ./cmd/sact

# The Debian package, $(DIST)/sact_VERSION_amd64.deb (packaging/nfpm.yaml): nfpm is built from
# the Go module proxy into .cache/, at the version pinned here.
NFPM_VERSION = v2.48.0
NFPM = .cache/nfpm-$(NFPM_VERSION)/nfpm
# A Debian version: the latest tag (v1.2.3 -> 1.2.3), or 0.0.0 plus the commit's date and hash.
SACT_VERSION ?= $(shell v=$$(git describe --tags --abbrev=0 2>/dev/null) && echo $${v\#v} || git log -1 --format='0.0.0~git%cd.%h' --date=format:%Y%m%d 2>/dev/null || echo 0.0.0)
DIST ?= dist
deb: $(NFPM)
	mkdir -p $(DIST)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(DIST)/sact ./cmd/sact
	sed 's|@DIST@|$(DIST)|' packaging/nfpm.yaml >$(DIST)/nfpm.yaml
	SACT_VERSION='$(SACT_VERSION)' $(NFPM) package --config $(DIST)/nfpm.yaml --packager deb --target $(DIST)/
$(NFPM):
	GOBIN=$(CURDIR)/$(dir $(NFPM)) $(GO) install github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION)

vet:
	gofmt -l . | (! grep .) || (echo "gofmt needed on the files above" && false)
	$(GO) vet ./...

# What the suite needs (a Docker engine, nginx, curl, debootstrap, chromium...), checked in
# seconds: anything missing is named, with the one command that installs it.
check-deps:
	@scripts/check-deps

# Unit tests with the race detector, then the end-to-end tests against the real engine
# (set SACT_REQUIRE_DOCKER=1 to make a missing engine a failure instead of a skip).
test: check-deps vet
	$(GO) test -race -timeout 30m ./...
# The end-to-end tests that mostly wait (idle timeouts, steady light traffic) run four at
# once after the serial ones (internal/e2e/harness_test.go says which).
# (The end-to-end tests take 8-9 minutes here with their images cached, 12-13 one at a
# time; a fresh machine first builds four Debian images with debootstrap, several minutes
# more: hence the timeout.)

bench:
	$(GO) run ./bench

bench-quick:
	$(GO) run ./bench -quick -out /tmp/BENCHMARKS-quick.md

# Cold start of a Swarm service on a worker node against the same image as a plain
# container, on a real two-node swarm made on this machine (root; internal/swarmtest).
bench-swarm:
	$(GO) run ./scripts/swarm-bench

# The reliability suite (RELIABILITY.md): what `make test` runs of it, plus the long
# tests (250 cold starts at once, a 10-minute soak; SACT_SOAK=30m for longer), with their
# figures (lines marked RELIABILITY).
RELIABILITY_TESTS = TestManyIdleConnections|TestColdStartStorm|TestSoak|TestContainerKilledMidRequest|TestOOMKilled|TestEngineOutage|TestSIGKILLUnderLoad|TestUnusableSocketDir|TestIdleStopRace|TestAdminAndTrafficHammer|TestFrontDoorHostileClients|TestSilentAndHalfClosedConnections|TestWhatAContainerCanReach|TestRefusedConnectionsAreCounted|TestReload|TestConnectionDuringStopIsServed
reliability:
	SACT_LONG=1 $(GO) test -count=1 -timeout 60m -v -run '$(RELIABILITY_TESTS)' ./internal/e2e | tee reliability.log | grep -E 'RELIABILITY|^(---|ok|FAIL|PASS)'

# Each fuzzer for FUZZTIME (default 60s); new crashers land in testdata/fuzz.
FUZZTIME ?= 60s
fuzz:
	cd internal/config && $(GO) test -run XXX -fuzz FuzzParse -fuzztime $(FUZZTIME) .
	cd internal/front && $(GO) test -run XXX -fuzz FuzzLookup -fuzztime $(FUZZTIME) .
