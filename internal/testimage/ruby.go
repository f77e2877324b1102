//go:build linux

package testimage

import (
	"bufio"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"
)

// RackRepo is the repository the Rack/unicorn app image is tagged in.
const RackRepo = "sact-rack-unicorn"

// The Rack/unicorn image is Debian's ruby, rack and unicorn packages plus the app files of
// examples/rack-unicorn. Changing any of these constants, or the app files, changes the
// image's tag and so rebuilds it.
const (
	rackVersion  = "1"
	rackSuite    = "bookworm"
	rackVariant  = "minbase"
	rackPackages = "ruby,ruby-rack,unicorn"
	rackUID      = 1001
)

// rackAppFiles are the files of examples/rack-unicorn copied to /app in the image.
var rackAppFiles = []string{"config.ru", "unicorn.rb"}

// RackUnicorn returns the reference of the image of the classic Rack app served by unicorn
// (examples/rack-unicorn), building and importing it first if the engine lacks it. The
// image is built offline from Debian's packages with debootstrap, which needs root and the
// Debian mirror apt uses (about a minute); it is tagged with a hash of the app files and
// the package list, so later calls return at once. The image runs `unicorn -c unicorn.rb`
// in /app, binding $SOCKET_FILE, or the sockets inherited through LISTEN_FDS.
func RackUnicorn(ctx context.Context) (string, error) {
	dir, err := SourceDir()
	if err != nil {
		return "", err
	}
	appDir := filepath.Join(dir, "examples", "rack-unicorn")
	files := make(map[string][]byte, len(rackAppFiles))
	h := sha256.New()
	fmt.Fprintf(h, "version %s\nsuite %s\nvariant %s\npackages %s\nuid %d\n", rackVersion, rackSuite, rackVariant, rackPackages, rackUID)
	for _, name := range rackAppFiles {
		b, err := os.ReadFile(filepath.Join(appDir, name))
		if err != nil {
			return "", fmt.Errorf("reading the Rack app: %w", err)
		}
		files[name] = b
		fmt.Fprintf(h, "file %s %d\n", name, len(b))
		h.Write(b)
	}
	ref := RackRepo + ":" + hex.EncodeToString(h.Sum(nil)[:6])

	return ref, cachedImage(ctx, ref, "sact-rack-unicorn.lock", func(cli *client.Client) error {
		return buildRack(ctx, cli, ref, files)
	})
}

// cachedImage builds ref with build unless the engine has it. Only one process builds
// (lock names a file in the temp dir); the others wait for it and then find the image.
func cachedImage(ctx context.Context, ref, lock string, build func(*client.Client) error) error {
	cli, err := client.New(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return fmt.Errorf("making a Docker client: %w", err)
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
		return err
	}
	unlock, err := lockFile(ctx, filepath.Join(os.TempDir(), lock))
	if err != nil {
		return err
	}
	defer unlock()
	if ok, err := exists(); ok || err != nil {
		return err
	}
	if err := build(cli); err != nil {
		return fmt.Errorf("building image %s: %w", ref, err)
	}
	return nil
}

// buildRack debootstraps a Debian root with ruby and unicorn, adds the app and imports it
// as ref.
func buildRack(ctx context.Context, cli *client.Client, ref string, files map[string][]byte) error {
	addApp := func(root string) error {
		app := filepath.Join(root, "app")
		for _, d := range []string{app, filepath.Join(app, "tmp"), filepath.Join(app, "tmp", "sockets"), filepath.Join(app, "tmp", "pids")} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
		for name, b := range files {
			if err := os.WriteFile(filepath.Join(app, name), b, 0o644); err != nil {
				return err
			}
		}
		for _, d := range []string{"tmp", "tmp/sockets", "tmp/pids"} {
			p := filepath.Join(app, d)
			if err := os.Chown(p, rackUID, rackUID); err != nil {
				return err
			}
			if err := os.Chmod(p, 0o777); err != nil {
				return err
			}
		}
		return nil
	}
	return debootstrapImage(ctx, cli, ref, debootstrapSpec{
		variant: rackVariant, packages: rackPackages, prepare: addApp,
		message: "sact Rack/unicorn example, built offline from Debian " + rackSuite + " packages",
		changes: []string{`WORKDIR /app`, `CMD ["unicorn","-c","unicorn.rb"]`},
	})
}

// debootstrapSpec is what debootstrapImage builds: a Debian rackSuite root of variant
// with packages, changed by prepare, imported with message and Dockerfile changes.
type debootstrapSpec struct {
	suite             string // "" for rackSuite
	variant, packages string
	prepare           func(root string) error
	message           string
	changes           []string
}

// debootstrapImage debootstraps a Debian root as spec says and imports it as ref.
func debootstrapImage(ctx context.Context, cli *client.Client, ref string, spec debootstrapSpec) error {
	debootstrap, err := exec.LookPath("debootstrap")
	if err != nil {
		for _, d := range []string{"/usr/sbin", "/sbin"} {
			if _, e := os.Stat(filepath.Join(d, "debootstrap")); e == nil {
				debootstrap, err = filepath.Join(d, "debootstrap"), nil
				break
			}
		}
	}
	if err != nil {
		return fmt.Errorf("debootstrap is not installed: install it (`sudo scripts/install-deps`, or `apt-get install debootstrap`), or build image %s from a Dockerfile where a registry is reachable", ref)
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("debootstrap needs root (this process runs as uid %d): run as root, or build the image from a Dockerfile and tag it %s", os.Geteuid(), ref)
	}
	mirror := debianMirror()

	tmp, err := os.MkdirTemp("", "sact-debootstrap-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	root := filepath.Join(tmp, "rootfs")
	suite := cmp.Or(spec.suite, rackSuite)
	cmd := exec.CommandContext(ctx, debootstrap, "--variant="+spec.variant, "--include="+spec.packages, suite, root, mirror)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("debootstrap %s from %s: %v: %s", suite, mirror, err, tail(out, 4000))
	}

	// Drop what the image does not need.
	for _, glob := range []string{"var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_Packages", "var/log/*.log", "var/log/apt/*"} {
		matches, _ := filepath.Glob(filepath.Join(root, glob))
		for _, m := range matches {
			os.RemoveAll(m)
		}
	}
	if spec.prepare != nil {
		if err := spec.prepare(root); err != nil {
			return err
		}
	}

	// Stream the root through tar, which keeps devices, links and ownership as they are.
	tarCmd := exec.CommandContext(ctx, "tar", "--numeric-owner", "-C", root, "-cf", "-", ".")
	var tarErr strings.Builder
	tarCmd.Stderr = &tarErr
	stdout, err := tarCmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := tarCmd.Start(); err != nil {
		return fmt.Errorf("tar: %w", err)
	}
	rc, importErr := cli.ImageImport(ctx, client.ImageImportSource{Source: stdout, SourceName: "-"}, ref,
		client.ImageImportOptions{Message: spec.message, Changes: spec.changes})
	if importErr == nil {
		_, importErr = io.Copy(io.Discard, rc)
		rc.Close()
	}
	io.Copy(io.Discard, stdout) // let tar finish if the import stopped reading
	tarDone := tarCmd.Wait()
	if importErr != nil { // the cause, when tar only lost its reader
		return fmt.Errorf("importing: %w", importErr)
	}
	if tarDone != nil {
		return fmt.Errorf("tar: %v: %s", tarDone, tarErr.String())
	}
	return nil
}

// debianMirror returns the Debian mirror apt uses for rackSuite, from
// /etc/apt/sources.list and /etc/apt/sources.list.d, or deb.debian.org.
func debianMirror() string {
	paths := []string{"/etc/apt/sources.list"}
	more, _ := filepath.Glob("/etc/apt/sources.list.d/*")
	paths = append(paths, more...)
	for _, p := range paths {
		var m string
		switch {
		case strings.HasSuffix(p, ".sources"):
			m = mirrorDeb822(p)
		case strings.HasSuffix(p, ".list"):
			m = mirrorOneLine(p)
		}
		if m != "" {
			return m
		}
	}
	return "http://deb.debian.org/debian"
}

// mirrorOneLine reads "deb [options] URI suite components" lines.
func mirrorOneLine(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		if i, j := strings.IndexByte(line, '['), strings.IndexByte(line, ']'); i >= 0 && j > i {
			line = line[:i] + line[j+1:]
		}
		fields := strings.Fields(line)
		if len(fields) >= 3 && fields[0] == "deb" && fields[2] == rackSuite {
			return fields[1]
		}
	}
	return ""
}

// mirrorDeb822 reads the stanzas of a .sources file.
func mirrorDeb822(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	for _, stanza := range strings.Split(string(b), "\n\n") {
		fields := map[string]string{}
		for _, line := range strings.Split(stanza, "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "#") {
				continue
			}
			if k, v, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, " ") {
				fields[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
			}
		}
		if fields["enabled"] == "no" || !slices.Contains(strings.Fields(fields["types"]), "deb") {
			continue
		}
		if uris := strings.Fields(fields["uris"]); len(uris) > 0 && slices.Contains(strings.Fields(fields["suites"]), rackSuite) {
			return uris[0]
		}
	}
	return ""
}

// lockFile takes an exclusive flock on path, waiting for it until ctx ends, and returns
// its release.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o666)
	if err != nil {
		return nil, fmt.Errorf("opening lock %s: %w", path, err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if err != syscall.EWOULDBLOCK && err != syscall.EINTR {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for another process building the image (lock %s): %w", path, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// tail returns the last n bytes of b, the part of a long log that says what failed.
func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
