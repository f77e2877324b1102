package main

import (
	"fmt"
	"strings"
)

// goal is one of the targets the issue sets, judged against this run's figures.
type goal struct {
	what, target, figure string
	met                  bool
}

func (b *bench) goal(what, target string, met bool, figure string) {
	b.goals = append(b.goals, goal{what: what, target: target, figure: figure, met: met})
}

// goalsSection summarizes the goals at the top of the report; each scenario adds its own.
func (b *bench) goalsSection() string {
	if len(b.goals) == 0 {
		return ""
	}
	var s strings.Builder
	s.WriteString("## Goals\n\n| goal | target | this run | |\n| --- | --- | ---: | --- |\n")
	for _, g := range b.goals {
		verdict := "not met"
		if g.met {
			verdict = "met"
		}
		fmt.Fprintf(&s, "| %s | %s | %s | **%s** |\n", g.what, g.target, g.figure, verdict)
	}
	s.WriteString("\n")
	return s.String()
}
