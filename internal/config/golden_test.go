package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sact-project/sact/internal/kinds"
)

var update = flag.Bool("update", false, "rewrite the .golden files from the current output")

// The golden tests parse each testdata/valid/*.yaml and testdata/invalid/*.yaml and compare
// the result (the Config rendered as JSON, or the error text) with the .golden file next
// to it. Regenerate with: go test ./internal/config -run Golden -update
//
// They run with notYetSupported emptied, so that each file tests parsing and validation
// only and does not change when a feature lands; invalid/unsupported.yaml alone runs with
// the real list.
func TestGoldenValid(t *testing.T) {
	opts := fakeMachine(t)
	allFeatures(t)
	for _, path := range yamlFiles(t, "testdata/valid") {
		t.Run(filepath.Base(path), func(t *testing.T) {
			cfg, err := Load(path, opts)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			golden(t, path, render(cfg))
		})
	}
}

func TestGoldenInvalid(t *testing.T) {
	opts := fakeMachine(t)
	for _, path := range yamlFiles(t, "testdata/invalid") {
		t.Run(filepath.Base(path), func(t *testing.T) {
			if !strings.HasPrefix(filepath.Base(path), "unsupported") {
				allFeatures(t)
			}
			cfg, err := Load(path, opts)
			if err == nil {
				t.Fatalf("Load returned no error, and %d apps", len(cfg.Apps))
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Load returned %T, want Errors: %v", err, err)
			}
			if cfg != nil {
				t.Errorf("Load returned a Config along with errors")
			}
			golden(t, path, []byte(err.Error()+"\n"))
		})
	}
}

// TestValidWithRealList checks that the valid files fail, with the real notYetSupported
// list, only for the unsupported settings they use.
func TestValidWithRealList(t *testing.T) {
	opts := fakeMachine(t)
	for _, path := range yamlFiles(t, "testdata/valid") {
		_, err := Load(path, opts)
		var errs Errors
		errors.As(err, &errs)
		for _, e := range errs {
			if !strings.Contains(e.Msg, "not supported by this version of sact yet") {
				t.Errorf("%v", e)
			}
		}
	}
}

// fakeMachine makes the results independent of the machine the test runs on: a fixed
// number of CPUs, and a host on which only /tmp, root and the repository's testdata exist
// (sact's run directory /run/sact exists wherever sact ran; the golden files are written
// as if it did not). It returns the options to parse with.
func fakeMachine(t *testing.T) Options {
	t.Helper()
	numCPU = func() int { return 4 }
	t.Cleanup(func() { numCPU = defaultNumCPU })
	return Options{Kinds: kinds.All, Host: newFakeHost(t)}
}

var defaultNumCPU = numCPU

// allFeatures empties notYetSupported for the test.
func allFeatures(t *testing.T) {
	t.Helper()
	saved := notYetSupported
	notYetSupported = nil
	t.Cleanup(func() { notYetSupported = saved })
}

func yamlFiles(t *testing.T, dir string) []string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no test files in %s: %v", dir, err)
	}
	return paths
}

// golden compares got with the golden file of path, or writes it with -update.
func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	file := strings.TrimSuffix(path, ".yaml") + ".golden"
	if *update {
		if err := os.WriteFile(file, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s differs (-want +got); run with -update if the change is intended:\n%s", file, diff)
	}
}

// render writes cfg as indented JSON, fields in declaration order, zero values left out,
// durations and file modes readable, and each app followed by its Spec().Hash: a change of
// hash recreates containers, so it must show in review.
func render(cfg *Config) []byte {
	var b bytes.Buffer
	writeValue(&b, reflect.ValueOf(cfg), "")
	b.WriteString("\n")
	return b.Bytes()
}

var (
	durationType = reflect.TypeFor[time.Duration]()
	modeType     = reflect.TypeFor[fs.FileMode]()
	appType      = reflect.TypeFor[*App]()
)

func writeValue(b *bytes.Buffer, v reflect.Value, indent string) {
	switch {
	case v.Type() == durationType:
		writeJSON(b, time.Duration(v.Int()).String())
		return
	case v.Type() == modeType:
		writeJSON(b, fmt.Sprintf("%#o", v.Uint()))
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		hash := ""
		if v.Type() == appType {
			hash = v.Interface().(*App).Spec().Hash
		}
		writeStruct(b, v.Elem(), indent, hash)
	case reflect.Struct:
		writeStruct(b, v, indent, "")
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.String {
			writeJSON(b, v.Interface()) // short lists on one line
			return
		}
		b.WriteString("[")
		for i := range v.Len() {
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString("\n" + indent + "  ")
			writeValue(b, v.Index(i), indent+"  ")
		}
		b.WriteString("\n" + indent + "]")
	default:
		writeJSON(b, v.Interface())
	}
}

func writeStruct(b *bytes.Buffer, v reflect.Value, indent, hash string) {
	b.WriteString("{")
	first := true
	field := func(name string) {
		if !first {
			b.WriteString(",")
		}
		first = false
		b.WriteString("\n" + indent + "  " + strconv.Quote(name) + ": ")
	}
	var fields func(v reflect.Value)
	fields = func(v reflect.Value) {
		for i := range v.NumField() {
			if v.Field(i).IsZero() || !v.Type().Field(i).IsExported() {
				continue
			}
			if v.Type() == appType.Elem() && v.Type().Field(i).Name == "Run" {
				// What the kind decoded reads as the app's own settings, as written.
				fields(v.Field(i))
				continue
			}
			field(v.Type().Field(i).Name)
			writeValue(b, v.Field(i), indent+"  ")
		}
	}
	fields(v)
	if hash != "" {
		field("Spec().Hash")
		writeJSON(b, hash)
	}
	b.WriteString("\n" + indent + "}")
}

func writeJSON(b *bytes.Buffer, v any) {
	j, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	b.Write(j)
}
