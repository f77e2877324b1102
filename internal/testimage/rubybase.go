//go:build linux

package testimage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/moby/moby/client"
)

// RubyBaseRepo is the repository of the offline Ruby base image.
const RubyBaseRepo = "sact-ruby-base"

const rubyBasePackages = "ruby,ruby-rack,unicorn,bundler"

// RubySuites are the Debian suites RubyBase builds, by the Ruby each has.
var RubySuites = map[string]string{"2.7": "bullseye", "3.1": "bookworm", "3.3": "trixie"}

// RubyBase returns an image that stands for ruby:VERSION where no registry is reachable
// (issue 14's `sact build --base ruby:3.1=IMAGE`): the Debian suite of RubySuites with its
// Ruby, bundler, rack and unicorn installed as system gems, no app. Built like RackUnicorn
// (debootstrap, root, the Debian mirror apt uses) and cached by a hash of its packages.
func RubyBase(ctx context.Context, version string) (string, error) {
	suite, ok := RubySuites[version]
	if !ok {
		return "", fmt.Errorf("no Debian suite here has Ruby %s; use one of 2.7, 3.1, 3.3", version)
	}
	h := sha256.New()
	fmt.Fprintf(h, "version 1\nsuite %s\nvariant %s\npackages %s\n", suite, rackVariant, rubyBasePackages)
	ref := RubyBaseRepo + ":" + version + "-" + hex.EncodeToString(h.Sum(nil)[:6])
	return ref, cachedImage(ctx, ref, "sact-ruby-base-"+suite+".lock", func(cli *client.Client) error {
		return debootstrapImage(ctx, cli, ref, debootstrapSpec{
			suite: suite, variant: rackVariant, packages: rubyBasePackages,
			message: "sact offline Ruby base (Debian " + suite + "'s Ruby " + version + ", bundler, rack, unicorn)",
			changes: []string{`CMD ["irb"]`},
		})
	})
}
