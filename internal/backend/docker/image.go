package docker

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
)

// Build is one image to build: a Dockerfile and the files of a context directory that
// its .dockerignore lets in.
type Build struct {
	Tag          string
	Dockerfile   []byte
	DockerIgnore []byte
	ContextDir   string
	// Args are build arguments, like BASE=registry.example/ruby:2.4.
	Args map[string]string
}

// BuildImage builds b with the engine (docker build through its API, the context sent as
// a tar), calling progress with each line of the build's output. The error of a failed
// step is the engine's message.
func BuildImage(ctx context.Context, b Build, progress func(line string)) error {
	ctxTar, err := contextTar(b)
	if err != nil {
		return fmt.Errorf("making the build context of %s: %w", b.ContextDir, err)
	}
	cli, err := client.New(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return err
	}
	defer cli.Close()
	args := map[string]*string{}
	for k, v := range b.Args {
		args[k] = &v
	}
	res, err := cli.ImageBuild(ctx, bytes.NewReader(ctxTar), client.ImageBuildOptions{
		Tags: []string{b.Tag}, Dockerfile: "Dockerfile", BuildArgs: args, Remove: true, ForceRemove: true,
	})
	if err != nil {
		return fmt.Errorf("building %s: %w", b.Tag, err)
	}
	defer res.Body.Close()
	dec := json.NewDecoder(res.Body)
	for {
		var msg struct {
			Stream      string `json:"stream"`
			Status      string `json:"status"`
			Error       string `json:"error"`
			ErrorDetail struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&msg); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("reading the output of the build of %s: %w", b.Tag, err)
		}
		if msg.Error != "" {
			return fmt.Errorf("building %s: %s", b.Tag, cmpOr(msg.ErrorDetail.Message, msg.Error))
		}
		for _, line := range strings.Split(strings.TrimRight(msg.Stream+msg.Status, "\n"), "\n") {
			if line != "" && progress != nil {
				progress(line)
			}
		}
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// contextTar is the build context: the Dockerfile, and the files of b.ContextDir that
// b.DockerIgnore lets in (its patterns in order, the last match deciding, ! letting in).
// Symbolic links are sent as links.
func contextTar(b Build) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, data []byte, mode int64) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := add("Dockerfile", b.Dockerfile, 0o644); err != nil {
		return nil, err
	}
	rules := ignoreRules(b.DockerIgnore)
	err := filepath.WalkDir(b.ContextDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(b.ContextDir, p)
		if rel == "." || rel == "Dockerfile" {
			return nil
		}
		if ignored(rules, rel) {
			if d.IsDir() && !rules.mayLetIn(rel) {
				return filepath.SkipDir
			}
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if fi.Mode()&fs.ModeSymlink != 0 {
			if hdr.Linkname, err = os.Readlink(p); err != nil {
				return err
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			if _, err := io.Copy(tw, f); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

type rule struct {
	pattern string
	letIn   bool
}

type rules []rule

func ignoreRules(data []byte) rules {
	var rs rules
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		r := rule{}
		if r.letIn = strings.HasPrefix(line, "!"); r.letIn {
			line = line[1:]
		}
		r.pattern = filepath.Clean(strings.TrimPrefix(line, "/"))
		rs = append(rs, r)
	}
	return rs
}

// ignored reports whether rel (or a directory it is in) matches the rules' last match
// as ignored.
func ignored(rs rules, rel string) bool {
	out := false
	for _, r := range rs {
		if matchPath(r.pattern, rel) {
			out = !r.letIn
		}
	}
	return out
}

func matchPath(pattern, rel string) bool {
	for p := rel; p != "." && p != "/"; p = filepath.Dir(p) {
		if ok, _ := filepath.Match(pattern, p); ok {
			return true
		}
	}
	return false
}

// mayLetIn reports whether a ! rule may let in something under dir.
func (rs rules) mayLetIn(dir string) bool {
	for _, r := range rs {
		if r.letIn && strings.HasPrefix(r.pattern, dir+"/") {
			return true
		}
	}
	return false
}

// ImageFacts are what `sact check --deep` asks of an image.
type ImageFacts struct {
	// Exists: the engine has the image.
	Exists bool
	// User is the image's own user; Exposed its EXPOSEd TCP ports.
	User    string
	Exposed []int
	// Passwd and Group are the image's /etc/passwd and /etc/group, nil if it has none.
	Passwd, Group []byte
}

// InspectImage returns what the engine knows of ref, and its account files (read from a
// container created, never started, and removed).
func InspectImage(ctx context.Context, ref string) (ImageFacts, error) {
	var f ImageFacts
	cli, err := client.New(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return f, err
	}
	defer cli.Close()
	ins, err := cli.ImageInspect(ctx, ref)
	if cerrdefs.IsNotFound(err) {
		return f, nil
	} else if err != nil {
		return f, fmt.Errorf("inspecting image %s: %w", ref, err)
	}
	f.Exists = true
	if ins.Config != nil {
		f.User = ins.Config.User
		for p := range ins.Config.ExposedPorts {
			port, proto, _ := strings.Cut(p, "/")
			if n, err := strconv.Atoi(port); err == nil && (proto == "" || proto == "tcp") {
				f.Exposed = append(f.Exposed, n)
			}
		}
	}
	c, err := cli.ContainerCreate(ctx, client.ContainerCreateOptions{Config: &container.Config{Image: ref, Cmd: []string{"/nonexistent"}, Entrypoint: []string{}}})
	if err != nil {
		return f, fmt.Errorf("creating a container of %s to read its users: %w", ref, err)
	}
	defer cli.ContainerRemove(context.WithoutCancel(ctx), c.ID, client.ContainerRemoveOptions{Force: true})
	read := func(path string) []byte {
		res, err := cli.CopyFromContainer(ctx, c.ID, client.CopyFromContainerOptions{SourcePath: path})
		if err != nil {
			return nil
		}
		defer res.Content.Close()
		tr := tar.NewReader(res.Content)
		if _, err := tr.Next(); err != nil {
			return nil
		}
		b, _ := io.ReadAll(io.LimitReader(tr, 4<<20))
		return b
	}
	f.Passwd, f.Group = read("/etc/passwd"), read("/etc/group")
	return f, nil
}

// ImportImage makes the image ref, unless the engine has it already, from a root holding
// files (executables at /, by name) and /tmp, with the Dockerfile instructions changes
// (ENTRYPOINT, EXPOSE): an image made offline, with no registry and no build. Tag ref
// with the files' content hash, and it is made once.
func ImportImage(ctx context.Context, ref string, files map[string][]byte, changes []string) error {
	cli, err := client.New(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return fmt.Errorf("making a Docker client: %w", err)
	}
	defer cli.Close()
	if _, err := cli.ImageInspect(ctx, ref); err == nil {
		return nil
	} else if !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("looking for image %s: %w", ref, err)
	}
	layer, err := rootfs(files)
	if err != nil {
		return err
	}
	rc, err := cli.ImageImport(ctx, client.ImageImportSource{Source: bytes.NewReader(layer), SourceName: "-"}, ref,
		client.ImageImportOptions{Message: "made offline by sact", Changes: changes})
	if err != nil {
		return fmt.Errorf("importing image %s: %w", ref, err)
	}
	defer rc.Close()
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return fmt.Errorf("importing image %s: %w", ref, err)
	}
	return nil
}

// rootfs makes a tar of a minimal root: the given executables at /, and /tmp.
func rootfs(files map[string][]byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0)
	if err := tw.WriteHeader(&tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777, ModTime: mtime}); err != nil {
		return nil, err
	}
	for _, name := range slices.Sorted(maps.Keys(files)) {
		b := files[name]
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(b)), ModTime: mtime}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(b); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
