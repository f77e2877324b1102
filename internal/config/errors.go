package config

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
)

// Error is one problem in a config file, located precisely enough for an editor to jump to.
type Error struct {
	File   string
	Line   int // 1-based; 0 when the problem concerns the whole file
	Column int // 1-based; 0 when unknown
	// Path names the setting, like "apps.web.listen[0]"; "" for the file as a whole.
	Path string
	// Msg says what is wrong and, after a semicolon, how to fix it.
	Msg string
}

// Error formats e as "sact.yaml:12: apps.web.listen[0]: what is wrong; how to fix it".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":")
		b.WriteString(strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in one config file, sorted by line. Load and Parse return
// it as their error, never empty; find it with errors.As.
type Errors []*Error

// Error returns one problem per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// sorted sorts es by file (the main file, whose problems come first, then included files
// by name) and position, keeping the order problems were found in on one line, and
// drops exact repeats (a value inherited from defaults can trip the same check twice).
func (es Errors) sorted(main string) Errors {
	slices.SortStableFunc(es, func(a, b *Error) int {
		return cmp.Or(compareFiles(a.File, b.File, main), cmp.Compare(a.Line, b.Line), cmp.Compare(a.Column, b.Column))
	})
	seen := make(map[Error]bool, len(es))
	return slices.DeleteFunc(es, func(e *Error) bool {
		dup := seen[*e]
		seen[*e] = true
		return dup
	})
}

// compareFiles orders main before every other file, and the others by name.
func compareFiles(a, b, main string) int {
	switch {
	case a == b:
		return 0
	case a == main:
		return -1
	case b == main:
		return 1
	}
	return cmp.Compare(a, b)
}
