package docker

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// The build context holds the Dockerfile and what .dockerignore lets in: the generated
// "*, !Gemfile, !Gemfile.lock" sends two files of an app, never its log/ or .git.
func TestContextTar(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"Gemfile", "Gemfile.lock", "config.ru", "log/production.log", ".git/HEAD", "vendor/bundle/x.rb", "Dockerfile"} {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(f)), 0o755)
		os.WriteFile(filepath.Join(dir, f), []byte(f), 0o644)
	}
	b, err := contextTar(Build{Dockerfile: []byte("FROM scratch\n"), DockerIgnore: []byte("# deps only\n*\n!Gemfile\n!Gemfile.lock\n"), ContextDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Name == "Dockerfile" {
			if body, _ := io.ReadAll(tr); string(body) != "FROM scratch\n" {
				t.Errorf("Dockerfile in the context is %q, want the generated one, not the app's", body)
			}
		}
	}
	slices.Sort(names)
	if want := []string{"Dockerfile", "Gemfile", "Gemfile.lock"}; !slices.Equal(names, want) {
		t.Errorf("context holds %v, want %v", names, want)
	}
}
