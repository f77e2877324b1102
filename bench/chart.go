package main

import (
	"fmt"
	"image/color"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

type chartBar struct {
	name   string
	median time.Duration
}

// coldChart draws one stacked bar per path: the engine's start call and the app's boot
// (both from the floor runs, so the same in every bar), then what the path adds over the
// floor's median, clamped at 0 (a negative share is noise, not a gain to draw).
func coldChart(path string, engine, floor time.Duration, bars []chartBar) error {
	msOf := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	var eng, boot, added plotter.Values
	var names []string
	for _, b := range bars {
		names = append(names, b.name)
		eng = append(eng, msOf(engine))
		boot = append(boot, msOf(max(floor-engine, 0)))
		added = append(added, msOf(max(b.median-floor, 0)))
	}
	p := plot.New()
	p.Title.Text = "Cold start: time to first response byte (medians)"
	p.Y.Label.Text = "ms"
	p.X.Label.Text = "path to a cold app"
	p.Y.Min = 0
	w := vg.Points(40)
	layers := []struct {
		name string
		v    plotter.Values
		c    color.RGBA
	}{
		{"engine start (Engine API start call)", eng, color.RGBA{R: 0x4c, G: 0x72, B: 0xb0, A: 0xff}},
		{"app boot (rest of the floor)", boot, color.RGBA{R: 0x55, G: 0xa8, B: 0x68, A: 0xff}},
		{"added over the floor (sact's share; the glue's own)", added, color.RGBA{R: 0xc4, G: 0x4e, B: 0x52, A: 0xff}},
	}
	var below *plotter.BarChart
	for _, l := range layers {
		bc, err := plotter.NewBarChart(l.v, w)
		if err != nil {
			return err
		}
		bc.Color = l.c
		bc.LineStyle.Width = 0
		if below != nil {
			bc.StackOn(below)
		}
		p.Add(bc)
		p.Legend.Add(l.name, bc)
		below = bc
	}
	// Each bar's total, the path's median, written above it.
	var xys plotter.XYs
	var texts []string
	for i, b := range bars {
		xys = append(xys, plotter.XY{X: float64(i), Y: msOf(max(b.median, floor))})
		texts = append(texts, fmt.Sprintf("%.0f ms", msOf(b.median)))
	}
	labels, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: texts})
	if err != nil {
		return err
	}
	for i := range labels.TextStyle {
		labels.TextStyle[i].XAlign = draw.XCenter
		labels.TextStyle[i].YAlign = draw.YBottom
	}
	p.Add(labels)
	p.Legend.Top = true
	p.Legend.Left = true
	p.NominalX(names...)
	// Half a bar slot of margin on each side, or the outer bars are cut in half.
	p.X.Min, p.X.Max = -0.5, float64(len(bars))-0.5
	// Room above the tallest bar for the legend.
	p.Y.Max = p.Y.Max * 1.45
	return p.Save(7*vg.Inch, 4.5*vg.Inch, path)
}
