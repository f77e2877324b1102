//go:build linux

package testimage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	cerrdefs "github.com/containerd/errdefs"
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
	cli, err := client.New(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return "", fmt.Errorf("making a Docker client: %w", err)
	}
	defer cli.Close()
	exists := func() (bool, error) {
		if _, err := cli.ImageInspect(ctx, ref); err == nil {
			return true, nil
		} else if !cerrdefs.IsNotFound(err) {
			return false, fmt.Errorf("looking for image %s: %w", ref, err)
		}
		return false, nil
	}
	if ok, err := exists(); ok || err != nil {
		return ref, err
	}
	unlock, err := lockFile(ctx, filepath.Join(os.TempDir(), "sact-ruby-base-"+suite+".lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if ok, err := exists(); ok || err != nil {
		return ref, err
	}
	err = debootstrapImage(ctx, cli, ref, debootstrapSpec{
		suite: suite, variant: rackVariant, packages: rubyBasePackages,
		message: "sact offline Ruby base (Debian " + suite + "'s Ruby " + version + ", bundler, rack, unicorn)",
		changes: []string{`CMD ["irb"]`},
	})
	if err != nil {
		return "", fmt.Errorf("building image %s: %w", ref, err)
	}
	return ref, nil
}
