package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/docker"
	"github.com/sact-project/sact/internal/config"
	"github.com/sact-project/sact/internal/importer"
)

// baseFlag is --base ruby:2.4=registry.example/ruby:2.4, repeated.
type baseFlag map[string]string

func (b baseFlag) String() string {
	var out []string
	for k, v := range b {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return strings.Join(out, ",")
}

func (b baseFlag) Set(s string) error {
	from, to, ok := strings.Cut(s, "=")
	if !ok || from == "" || to == "" {
		return fmt.Errorf("%q: write IMAGE=REPLACEMENT, like ruby:2.4=registry.example/ruby:2.4", s)
	}
	b[from] = to
	return nil
}

// build is `sact build [NAME...]`: the images of the apps `sact import` wrote, from the
// build/NAME/ directories next to the config, through the engine.
func build(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "build")
	path := configFlag(fs)
	bases := baseFlag{}
	fs.Var(bases, "base", "use another base image, as IMAGE=REPLACEMENT (like ruby:2.4=registry.example/ruby:2.4); repeat for several")
	verbose := fs.Bool("v", false, "print every line of the builds' output, not only their steps")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dir := filepath.Join(filepath.Dir(*path), "build")
	specs, err := filepath.Glob(filepath.Join(dir, "*", "build.json"))
	if err != nil || len(specs) == 0 {
		return fmt.Errorf("no build/*/build.json next to %s: run sact import first, or give its sact.yaml with -c", *path)
	}
	want := fs.Args()
	type result struct {
		app, image, base, outcome string
		took                      time.Duration
	}
	var results []result
	failed := 0
	for _, p := range specs {
		var spec importer.BuildSpec
		b, err := os.ReadFile(p)
		if err == nil {
			err = json.Unmarshal(b, &spec)
		}
		if err != nil {
			return fmt.Errorf("reading %s: %w", p, err)
		}
		if len(want) > 0 && !slices.Contains(want, spec.App) {
			continue
		}
		appDir := filepath.Dir(p)
		df, err := os.ReadFile(filepath.Join(appDir, "Dockerfile"))
		if err != nil {
			return err
		}
		ignore, _ := os.ReadFile(filepath.Join(appDir, ".dockerignore"))
		base := spec.Base
		args := map[string]string{}
		if to, ok := bases[spec.Base]; ok {
			base, args["BASE"] = to, to
		}
		r := result{app: spec.App, image: spec.Image, base: base}
		fmt.Fprintf(e.stdout, "[%s] building %s from %s, context %s\n", spec.App, spec.Image, base, spec.Context)
		began := time.Now()
		err = docker.BuildImage(ctx, docker.Build{Tag: spec.Image, Dockerfile: df, DockerIgnore: ignore, ContextDir: spec.Context, Args: args},
			func(line string) {
				if *verbose || strings.HasPrefix(line, "Step ") {
					fmt.Fprintf(e.stdout, "[%s] %s\n", spec.App, line)
				}
			})
		r.took = time.Since(began).Round(100 * time.Millisecond)
		if err != nil {
			failed++
			r.outcome = "FAILED: " + err.Error()
			fmt.Fprintf(e.stdout, "[%s] %s\n", spec.App, r.outcome)
		} else {
			r.outcome = "built"
		}
		results = append(results, r)
	}
	for _, name := range want {
		if !slices.ContainsFunc(results, func(r result) bool { return r.app == name }) {
			return fmt.Errorf("no app %s in %s; the apps are those sact import wrote", name, dir)
		}
	}
	fmt.Fprintln(e.stdout)
	tw := tabwriter.NewWriter(e.stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "APP\tIMAGE\tBASE\tTOOK\tRESULT")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.app, r.image, r.base, r.took, shortLine(r.outcome, 80))
	}
	tw.Flush()
	if failed > 0 {
		return fmt.Errorf("%d of %d images failed to build; an old Ruby may need --base ruby:X=IMAGE", failed, len(results))
	}
	fmt.Fprintf(e.stdout, "%d images built; next: sact check --deep -c %s\n", len(results), *path)
	return nil
}

func shortLine(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > n {
		return s[:n-3] + "..."
	}
	return s
}

// deepCheck asks, for each app whose kind can tell (backend.Checker: an image exists, its
// user exists in it, its port is exposed), what would otherwise fail at the app's first
// request, maybe weeks later.
func deepCheck(ctx context.Context, e *env, cfg *config.Config) error {
	problems := 0
	for _, a := range cfg.Apps {
		c, ok := a.Kind().(backend.Checker)
		if !ok {
			continue
		}
		bad, notes, err := c.Check(ctx, a.Spec())
		if err != nil {
			return err
		}
		for _, n := range notes {
			fmt.Fprintf(e.stdout, "note: apps.%s: %s\n", a.Name, n)
		}
		for _, b := range bad {
			problems++
			fmt.Fprintf(e.stderr, "%s: apps.%s: %s\n", where(cfg, a), a.Name, b)
		}
	}
	if problems > 0 {
		return fmt.Errorf("%d problem(s) found by asking the engine", problems)
	}
	fmt.Fprintf(e.stdout, "deep: every image exists, with its users and ports\n")
	return nil
}

func where(cfg *config.Config, a *config.App) string {
	f := cfg.File
	if a.File != "" {
		f = a.File
	}
	return f + ":" + strconv.Itoa(a.Line)
}
