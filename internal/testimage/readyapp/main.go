// Command readyapp is a test app that accepts connections before it can answer them, as a
// Rails app does while it boots behind a listening server: it listens on :8080 at once,
// and for BOOT_DELAY (default 1s) answers every request 503 "booting". Afterwards it
// answers 200 with what it saw: "ready early_clients=N", N being the requests other than
// the health path /healthz that it had to answer 503. A client of an app sact calls
// ready must never be among them.
//
// Environment: BOOT_DELAY (a Go duration), HOLD_MB (allocate and keep this many MiB,
// touched, so that its memory use is known).
//
// `readyapp health` is its HEALTHCHECK command: exit 0 if /healthz answers 200.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// held keeps HOLD_MB alive for the process's life.
var held []byte

func main() {
	if len(os.Args) > 1 && os.Args[1] == "health" {
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get("http://127.0.0.1:8080/healthz")
		if err != nil || resp.StatusCode != 200 {
			os.Exit(1)
		}
		os.Exit(0)
	}
	if mb, _ := strconv.Atoi(os.Getenv("HOLD_MB")); mb > 0 {
		held = make([]byte, mb<<20)
		for i := 0; i < len(held); i += 4096 {
			held[i] = 1 // touched pages count; untouched ones would not
		}
	}
	boot := time.Second
	if d, err := time.ParseDuration(os.Getenv("BOOT_DELAY")); err == nil {
		boot = d
	}
	ln, err := net.Listen("tcp", ":8080")
	if err != nil {
		fmt.Fprintln(os.Stderr, "readyapp:", err)
		os.Exit(1)
	}
	upAt := time.Now().Add(boot)
	fmt.Fprintf(os.Stderr, "readyapp: listening, answering from %s (in %v)\n", upAt.Format(time.RFC3339Nano), boot)
	var early atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if time.Now().Before(upAt) {
			if r.URL.Path != "/healthz" {
				early.Add(1)
				fmt.Fprintf(os.Stderr, "readyapp: early request %s %s\n", r.Method, r.URL)
			}
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "booting")
			return
		}
		fmt.Fprintf(w, "ready early_clients=%d\n", early.Load())
	})
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		srv.Close()
	}()
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, "readyapp:", err)
		os.Exit(1)
	}
	_ = held
}
