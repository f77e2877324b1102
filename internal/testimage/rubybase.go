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

// RubyBase returns an image that stands for ruby:3.1 where no registry is reachable
// (issue 14's `sact build --base ruby:3.1=IMAGE`): Debian bookworm's Ruby 3.1 with
// bundler, rack and unicorn installed as system gems, no app. Built like RackUnicorn
// (debootstrap, root, the Debian mirror apt uses) and cached by a hash of its packages.
func RubyBase(ctx context.Context) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "version 1\nsuite %s\nvariant %s\npackages %s\n", rackSuite, rackVariant, rubyBasePackages)
	ref := RubyBaseRepo + ":" + hex.EncodeToString(h.Sum(nil)[:6])
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
	unlock, err := lockFile(ctx, filepath.Join(os.TempDir(), "sact-ruby-base.lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if ok, err := exists(); ok || err != nil {
		return ref, err
	}
	err = debootstrapImage(ctx, cli, ref, debootstrapSpec{
		variant: rackVariant, packages: rubyBasePackages,
		message: "sact offline Ruby base (Debian " + rackSuite + "'s Ruby 3.1, bundler, rack, unicorn)",
		changes: []string{`CMD ["irb"]`},
	})
	if err != nil {
		return "", fmt.Errorf("building image %s: %w", ref, err)
	}
	return ref, nil
}
