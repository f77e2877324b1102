package bpfwatch

import (
	"fmt"
	"maps"
	"slices"

	"github.com/cilium/ebpf/btf"
)

// CheckLayout compares the offsets a program written as instructions uses for the
// members of a context struct (name, in the kernel's BTF spec) with the kernel's own: the
// tests of every package with such a program call it. Members of anonymous unions (as
// __bpf_md_ptr makes them) count at their place in the struct.
func CheckLayout(spec *btf.Spec, name string, want map[string]int) error {
	var s *btf.Struct
	if err := spec.TypeByName(name, &s); err != nil {
		return err
	}
	want = maps.Clone(want)
	var errs []string
	var walk func(members []btf.Member, base uint32)
	walk = func(members []btf.Member, base uint32) {
		for _, m := range members {
			off := base + m.Offset.Bytes()
			if u, ok := m.Type.(*btf.Union); ok && m.Name == "" {
				walk(u.Members, off)
				continue
			}
			if w, ok := want[m.Name]; ok {
				if int(off) != w {
					errs = append(errs, fmt.Sprintf("%s.%s at %d, want %d", name, m.Name, off, w))
				}
				delete(want, m.Name)
			}
		}
	}
	walk(s.Members, 0)
	for _, m := range slices.Sorted(maps.Keys(want)) {
		errs = append(errs, fmt.Sprintf("%s has no member %s", name, m))
	}
	if len(errs) > 0 {
		return fmt.Errorf("context layout: %v", errs)
	}
	return nil
}
