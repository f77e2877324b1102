package config

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

const oneApp = "apps:\n  web:\n    image: web:1\n    hosts: [web.test]\n    port: 8080\n"

func TestTrustedProxiesUnix(t *testing.T) {
	cfg := parse(t, "http:\n  listen: [\":8080\"]\n  trusted_proxies: [10.0.0.0/8, unix, 127.0.0.1]\n"+oneApp)
	if !cfg.HTTP.TrustUnix {
		t.Error("trusted_proxies: [unix] did not set TrustUnix")
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.1/32")}
	if !slices.Equal(cfg.HTTP.TrustedProxies, want) {
		t.Errorf("TrustedProxies = %v, want %v", cfg.HTTP.TrustedProxies, want)
	}
	if cfg := parse(t, "http:\n  listen: [\":8080\"]\n"+oneApp); cfg.HTTP.TrustUnix {
		t.Error("TrustUnix set without trusted_proxies: [unix]")
	}
	errs := parseErrors(t, "http:\n  listen: [\":8080\"]\n  trusted_proxies: [Unix]\n"+oneApp)
	if !strings.Contains(errs.Error(), "or unix") {
		t.Errorf("error %q does not say unix is accepted", errs.Error())
	}
}
