package activator

import (
	"fmt"
	"os"
	"testing"
)

// TestMain fails the package if any test made a move outside the transition table.
func TestMain(m *testing.M) {
	code := m.Run()
	if n := illegalTransitions.Load(); n > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: %d state transitions not in the table\n", n)
		code = 1
	}
	os.Exit(code)
}

// Every state but Broken (the daemon's) has a way out, and every move leads to a state of
// the table: the diagram of the package doc has no dead end.
func TestTransitionTable(t *testing.T) {
	for s := Stopped; s <= Waking; s++ {
		if len(transitions[s]) == 0 {
			t.Errorf("%s has no transition out", s)
		}
		for _, to := range transitions[s] {
			if _, ok := transitions[to]; !ok {
				t.Errorf("%s -> %s: %s is not in the table", s, to, to)
			}
		}
	}
}
