package main

import "testing"

func TestMetricLine(t *testing.T) {
	for _, c := range []struct {
		line, name, app, path string
		value                 float64
		ok                    bool
	}{
		{`sact_relayed_connections_total{app="a-1",path="kernel"} 9488`, "sact_relayed_connections_total", "a-1", "kernel", 9488, true},
		{`go_goroutines 42`, "go_goroutines", "", "", 42, true},
		{`# TYPE go_goroutines gauge`, "", "", "", 0, false},
		{``, "", "", "", 0, false},
		{`broken{app="a"}`, "", "", "", 0, false},
	} {
		name, labels, v, ok := metricLine(c.line)
		if ok != c.ok || name != c.name || v != c.value || labels["app"] != c.app || labels["path"] != c.path {
			t.Errorf("metricLine(%q) = %q, %v, %v, %v", c.line, name, labels, v, ok)
		}
	}
}
