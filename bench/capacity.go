package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/client"
)

// capacity: a crawler over many sleeping apps with max_running, and a paused app's wake
// against a cold start.
func (b *bench) capacity() error {
	n, maxRunning := 250, 20
	if b.quick {
		n = 40
	}
	prefix := fmt.Sprintf("bench-crawl-%d-", os.Getpid())
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "pool:\n  max_running: %d\napps:\n", maxRunning)
	// One call for all: a port freed by freeAddrs may come back from a later freeAddr.
	addrs := freeAddrs(n + 1)
	for i := range n {
		fmt.Fprintf(&cfg, "  %s%d:\n    image: %s\n    env: {NAME: c%d, LISTEN: \"tcp:0.0.0.0:8080\"}\n    listen: [\"tcp:%s\"]\n    port: 8080\n    idle: 10m\n    stop_timeout: 2s\n", prefix, i, b.image, i, addrs[i])
	}
	pause := prefix + "paused"
	pauseAddr := addrs[n]
	fmt.Fprintf(&cfg, "  %s:\n    image: %s\n    env: {NAME: paused, LISTEN: \"tcp:0.0.0.0:8080\"}\n    listen: [\"tcp:%s\"]\n    port: 8080\n    pause_after: 1s\n    idle: 1h\n    stop_timeout: 2s\n", pause, b.image, pauseAddr)
	defer b.removeApps(prefix)
	d, err := b.startSact(cfg.String())
	if err != nil {
		return err
	}
	defer d.stop()

	// Peak of running containers, sampled.
	var peak int
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if k, err := b.countRunning(prefix); err == nil {
				peak = max(peak, k)
			}
			select {
			case <-stopSampling:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	type pass struct {
		name         string
		took         time.Duration
		failed, done int
	}
	crawl := func(name string, parallel int) pass {
		p := pass{name: name}
		began := time.Now()
		sem := make(chan struct{}, parallel)
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, a := range addrs {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				err := firstByte("tcp", a)
				mu.Lock()
				defer mu.Unlock()
				p.done++
				if err != nil {
					p.failed++
				}
			})
		}
		wg.Wait()
		p.took = time.Since(began)
		return p
	}
	fmt.Fprintf(os.Stderr, "crawler: sequential pass over %d apps\n", n)
	seq := crawl("sequential", 1)
	fmt.Fprintf(os.Stderr, "crawler: 16 at a time\n")
	par := crawl("16 at a time", 16)
	close(stopSampling)
	<-sampled

	fmt.Fprintf(&b.md, "## Capacity: a crawler over %d sleeping apps, max_running %d\n\n", n, maxRunning)
	fmt.Fprintf(&b.md, "Each app is a container of the test image on its own TCP listener; the crawler sends one `GET /` to each, in order. start_concurrency is the default (number of CPUs). The first pass creates the containers; the second finds them created, with up to %d running.\n\n", maxRunning)
	fmt.Fprintf(&b.md, "| pass | requests | failed | total time | per app |\n| --- | ---: | ---: | ---: | ---: |\n")
	for _, p := range []pass{seq, par} {
		fmt.Fprintf(&b.md, "| %s | %d | %d | %.1f s | %s |\n", p.name, p.done, p.failed, p.took.Seconds(), ms(p.took/time.Duration(n)))
	}
	fmt.Fprintf(&b.md, "\nPeak running containers (sampled every 200 ms): **%d** (max_running %d).\n\n", peak, maxRunning)

	// A paused app's wake against a cold start of the same image.
	rounds := 7
	if b.quick {
		rounds = 3
	}
	var wake, cold []time.Duration
	if err := firstByte("tcp", pauseAddr); err != nil {
		return err
	}
	for i := range rounds {
		if err := d.waitLog(`msg="paused app" app=`+pause+" ", i+1, 30*time.Second); err != nil {
			return err
		}
		began := time.Now()
		if err := firstByte("tcp", pauseAddr); err != nil {
			return err
		}
		wake = append(wake, time.Since(began))
	}
	for i := range rounds {
		a := addrs[i]
		name := fmt.Sprintf("%s%d", prefix, i)
		timeout := 2
		// Stop it behind sact's back and wait for sact to see the exit, so the next
		// request is a plain cold start.
		b.dc.ContainerStop(b.ctx, "sact-"+name, client.ContainerStopOptions{Timeout: &timeout})
		time.Sleep(time.Second)
		began := time.Now()
		if err := firstByte("tcp", a); err != nil {
			return err
		}
		cold = append(cold, time.Since(began))
	}
	fmt.Fprintf(&b.md, "| first byte | median | min | max |\n| --- | ---: | ---: | ---: |\n")
	fmt.Fprintf(&b.md, "| paused app (pause_after), woken by the request | %s | %s | %s |\n", ms(median(wake)), ms(slices.Min(wake)), ms(slices.Max(wake)))
	fmt.Fprintf(&b.md, "| stopped app, cold start | %s | %s | %s |\n\n", ms(median(cold)), ms(slices.Min(cold)), ms(slices.Max(cold)))
	fmt.Fprintf(&b.md, "A paused wake takes %.2f× the time of a cold start.\n\n", float64(median(wake))/float64(median(cold)))
	return nil
}
