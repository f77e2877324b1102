package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// load drives addr (host:port, or unix:/path) the way wrk does: conns keep-alive
// connections, each sending `GET /` and reading the answer in a loop, for d. It returns
// requests/s and the median and 99th percentile latency in ms.
func load(addr string, conns int, d time.Duration) (rps, p50, p99 float64, err error) {
	network, dial := "tcp", addr
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, dial = "unix", p
	}
	var mu sync.Mutex
	var lat []time.Duration
	var firstErr error
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for range conns {
		wg.Go(func() {
			mine, err := loadConn(network, dial, deadline)
			mu.Lock()
			defer mu.Unlock()
			lat = append(lat, mine...)
			if err != nil && firstErr == nil {
				firstErr = err
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return 0, 0, 0, firstErr
	}
	if len(lat) == 0 {
		return 0, 0, 0, fmt.Errorf("no request answered in %v", d)
	}
	slices.Sort(lat)
	inMS := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return float64(len(lat)) / d.Seconds(), inMS(lat[len(lat)/2]), inMS(lat[len(lat)*99/100]), nil
}

func loadConn(network, addr string, deadline time.Time) ([]time.Duration, error) {
	c, err := net.Dial(network, addr)
	if err != nil {
		return nil, fmt.Errorf("connecting: %w", err)
	}
	defer c.Close()
	c.SetDeadline(deadline.Add(10 * time.Second))
	r := bufio.NewReader(c)
	req := []byte("GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
	var lat []time.Duration
	for time.Now().Before(deadline) {
		began := time.Now()
		if _, err := c.Write(req); err != nil {
			return lat, fmt.Errorf("sending a request: %w", err)
		}
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			return lat, fmt.Errorf("reading a response: %w", err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil {
			return lat, fmt.Errorf("reading a response: %w", err)
		}
		if resp.StatusCode != http.StatusOK {
			return lat, fmt.Errorf("status %s", resp.Status)
		}
		lat = append(lat, time.Since(began))
	}
	return lat, nil
}
