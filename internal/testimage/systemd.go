//go:build linux

package testimage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/moby/moby/client"
)

// SystemdRepo is the repository the systemd image is tagged in.
const SystemdRepo = "sact-systemd"

// The systemd image is Debian with systemd as PID 1, dbus and curl: a host to install
// sact's .deb on. Changing these constants changes the image's tag and so rebuilds it.
const (
	systemdVersion  = "1"
	systemdVariant  = "minbase"
	systemdPackages = "systemd,systemd-sysv,dbus,curl"
)

// systemdMasked are units that only slow a container's boot or fail in one.
var systemdMasked = []string{
	"systemd-udevd.service", "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
	"systemd-modules-load.service", "sys-kernel-config.mount", "sys-kernel-debug.mount",
	"sys-kernel-tracing.mount", "systemd-remount-fs.service", "getty.target",
	"console-getty.service", "systemd-firstboot.service", "systemd-timesyncd.service",
	"apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer",
}

// Systemd returns the reference of an image of Debian with systemd as its PID 1, building
// and importing it first if the engine lacks it: debootstrap --variant=minbase
// --include=systemd,systemd-sysv,dbus,curl (about 40 s, needs root and the Debian mirror
// apt uses), tagged with a hash of what goes into it. Run it with
//
//	docker run -d --cap-add SYS_ADMIN --security-opt seccomp=unconfined --tmpfs /run \
//	  --tmpfs /run/lock --tmpfs /tmp -v /sys/fs/cgroup:/sys/fs/cgroup:ro -e container=docker IMAGE
//
// (`--privileged` is not needed).
func Systemd(ctx context.Context) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "version %s\nsuite %s\nvariant %s\npackages %s\nmasked %q\n", systemdVersion, rackSuite, systemdVariant, systemdPackages, systemdMasked)
	ref := SystemdRepo + ":" + hex.EncodeToString(h.Sum(nil)[:6])

	mask := func(root string) error {
		for _, u := range systemdMasked {
			p := filepath.Join(root, "etc", "systemd", "system", u)
			os.Remove(p)
			if err := os.Symlink("/dev/null", p); err != nil {
				return fmt.Errorf("masking %s: %w", u, err)
			}
		}
		// A machine id of its own is made at each boot of a container.
		return os.WriteFile(filepath.Join(root, "etc", "machine-id"), nil, 0o444)
	}
	return ref, cachedImage(ctx, ref, "sact-systemd-image.lock", func(cli *client.Client) error {
		return debootstrapImage(ctx, cli, ref, debootstrapSpec{
			variant: systemdVariant, packages: systemdPackages, prepare: mask,
			message: "sact test host: Debian " + rackSuite + " with systemd as PID 1, built offline",
			changes: []string{`CMD ["/lib/systemd/systemd"]`}, // (import refuses STOPSIGNAL: stop it with docker rm -f)
		})
	})
}
