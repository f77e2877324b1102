package config

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse checks that Parse never panics, and returns either a Config or a non-empty
// Errors of located problems. Seeds: testdata/fuzz/FuzzParse and every golden test file.
//
//	go test ./internal/config -run '^$' -fuzz FuzzParse -fuzztime 1m
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*/*.yaml")
	for _, file := range files {
		if data, err := os.ReadFile(file); err == nil {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data, testOptions())
		if err == nil {
			if cfg == nil || len(cfg.Apps) == 0 {
				t.Fatalf("no error and no apps: %+v", cfg)
			}
			for _, a := range cfg.Apps {
				if a.Spec().Hash == "" {
					t.Fatalf("app %s has no hash", a.Name)
				}
			}
			return
		}
		if cfg != nil {
			t.Fatalf("a Config along with errors: %v", err)
		}
		var errs Errors
		if !errors.As(err, &errs) || len(errs) == 0 {
			t.Fatalf("error %T is not a non-empty Errors: %v", err, err)
		}
		for i, e := range errs {
			if e == nil || e.Msg == "" || e.File != "fuzz.yaml" {
				t.Fatalf("bad error %d: %#v", i, e)
			}
			if i > 0 && e.Line < errs[i-1].Line {
				t.Fatalf("errors not sorted by line:\n%v", errs)
			}
		}
		_ = errs.Error()
	})
}
