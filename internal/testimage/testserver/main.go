// Command testserver is the app sact's tests and demo run in a container: a small HTTP
// server whose behaviour the environment sets, so that one image plays every kind of app.
//
// Environment:
//
//	LISTEN       tcp:HOST:PORT or unix:/path (default tcp:0.0.0.0:8080); ignored when
//	             LISTEN_FDS hands it a socket (systemd's protocol, as sact's handoff does)
//	NAME         what / answers with
//	READY_DELAY  wait this long before listening (a slow boot)
//	EXIT_CODE    print "exiting with code N" to stderr and exit with N at once
//	NEVER_READY  never listen (a hung boot)
//	TERM_DELAY   on SIGTERM keep serving this long before exiting (a slow shutdown)
//	GRACEFUL     on SIGTERM (after TERM_DELAY) stop accepting and finish the requests
//	             under way before exiting, instead of closing every connection at once
//	HANDOFF_FLOOD=N  instead of serving, connect N peers at once to the handoff socket
//	             and print what they got (handoff.go; for `docker exec` of a second process)
//	HANDOFF_PROBE=1  instead of serving, try to change the handoff directory and print how
//	             each attempt failed
//
// Endpoints: / (name and pid), /pid, /bytes?n=N (N bytes), /slow?d=D&every=E (a byte every E
// for D), /hold?d=D (answers after D), POST /echo (the body back), /headers (the request's
// Host and headers as JSON), /sse?n=N&every=E (N server-sent events), /ws (a websocket
// echo), /alloc?mb=N (touch N MiB of memory, then answer: an OOM kill under a small limit).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "testserver:", err)
		os.Exit(1)
	}
}

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func duration(k string) time.Duration {
	d, err := time.ParseDuration(env(k, "0s"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "testserver: bad %s: %v\n", k, err)
		os.Exit(2)
	}
	return d
}

// states is each open connection's last http.ConnState (GRACEFUL's count).
var states sync.Map

// stopping is set once a graceful stop has closed the listeners.
var stopping atomic.Bool

func run() error {
	if ok, err := handoffMode(); ok {
		return err
	}
	name := env("NAME", "testserver")
	if c := os.Getenv("EXIT_CODE"); c != "" {
		n, _ := strconv.Atoi(c)
		fmt.Fprintf(os.Stderr, "testserver %s: exiting with code %d\n", name, n)
		os.Exit(n)
	}
	if os.Getenv("NEVER_READY") != "" {
		fmt.Fprintf(os.Stderr, "testserver %s: never getting ready\n", name)
		for {
			time.Sleep(time.Hour) // not select{}: the runtime would call that a deadlock
		}
	}
	time.Sleep(duration("READY_DELAY"))
	termDelay := duration("TERM_DELAY")

	lns, err := listeners()
	if err != nil {
		return err
	}
	for _, ln := range lns {
		fmt.Fprintf(os.Stderr, "testserver %s: listening on %s (pid %d)\n", name, ln.Addr(), os.Getpid())
	}

	// busy counts the connections accepted and not idle: a graceful stop waits for them
	// before Shutdown, which closes without an answer a request read after it began.
	var busy atomic.Int64
	srv := &http.Server{Handler: handler(name), ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(c net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				busy.Add(1)
			case http.StateIdle, http.StateHijacked, http.StateClosed:
				if prev, _ := states.Swap(c, st); prev != http.StateIdle && prev != http.StateHijacked {
					busy.Add(-1)
				}
				if st == http.StateClosed {
					states.Delete(c)
				}
				return
			case http.StateActive:
				if prev, _ := states.Swap(c, st); prev == http.StateIdle {
					busy.Add(1)
				}
				return
			}
			states.Store(c, st)
		}}
	sig := make(chan os.Signal, 1)
	shutDown := make(chan struct{}) // closed once a graceful Shutdown has finished
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "testserver %s: got %v, exiting in %v\n", name, s, termDelay)
		time.Sleep(termDelay)
		if os.Getenv("GRACEFUL") != "" {
			// Stop accepting, finish the connections accepted and the requests under
			// way, close idle connections.
			stopping.Store(true)
			for _, ln := range lns {
				ln.Close()
			}
			for busy.Load() > 0 {
				time.Sleep(5 * time.Millisecond)
			}
			srv.Shutdown(context.Background())
			close(shutDown)
			return
		}
		srv.Close()
	}()
	errs := make(chan error, len(lns))
	for _, ln := range lns {
		go func() { errs <- srv.Serve(ln) }()
	}
	err = <-errs
	if stopping.Load() {
		<-shutDown // Serve returns at once; the requests under way have not ended yet
		return nil
	}
	if err != http.ErrServerClosed {
		return err
	}
	return nil
}

// listeners takes the sockets handed over by LISTEN_FDS, or listens on LISTEN.
func listeners() ([]net.Listener, error) {
	if n, err := strconv.Atoi(os.Getenv("LISTEN_FDS")); err == nil && os.Getenv("LISTEN_PID") == strconv.Itoa(os.Getpid()) {
		var lns []net.Listener
		for fd := 3; fd < 3+n; fd++ {
			f := os.NewFile(uintptr(fd), fmt.Sprintf("listen-fd-%d", fd))
			ln, err := net.FileListener(f)
			f.Close()
			if err != nil {
				return nil, fmt.Errorf("LISTEN_FDS: fd %d: %w", fd, err)
			}
			lns = append(lns, ln)
		}
		return lns, nil
	}
	network, addr, ok := strings.Cut(env("LISTEN", "tcp:0.0.0.0:8080"), ":")
	if !ok {
		return nil, fmt.Errorf("LISTEN=%q: want tcp:HOST:PORT or unix:/path", os.Getenv("LISTEN"))
	}
	if network == "unix" {
		os.Remove(addr)
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		os.Chmod(addr, 0o666)
	}
	return []net.Listener{ln}, nil
}

func handler(name string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s (pid %d)\n", name, os.Getpid())
	})
	mux.HandleFunc("/pid", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, os.Getpid())
	})
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		buf := make([]byte, 64<<10)
		for i := range buf {
			buf[i] = byte('a' + i%26)
		}
		for n > 0 {
			k := min(n, int64(len(buf)))
			if _, err := w.Write(buf[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	mux.HandleFunc("/alloc", func(w http.ResponseWriter, r *http.Request) {
		mb, _ := strconv.Atoi(r.URL.Query().Get("mb"))
		b := make([]byte, mb<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1 // touched pages count; untouched ones would not
		}
		fmt.Fprintf(w, "allocated %d MiB\n", len(b)>>20)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		d, _ := time.ParseDuration(r.URL.Query().Get("d"))
		every, _ := time.ParseDuration(r.URL.Query().Get("every"))
		if every <= 0 {
			every = 100 * time.Millisecond
		}
		f, _ := w.(http.Flusher)
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(every) {
			if _, err := w.Write([]byte(".")); err != nil {
				return
			}
			if f != nil {
				f.Flush()
			}
		}
		fmt.Fprintln(w, "done")
	})
	mux.HandleFunc("/hold", func(w http.ResponseWriter, r *http.Request) {
		d, _ := time.ParseDuration(r.URL.Query().Get("d"))
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
		fmt.Fprintln(w, "held", d)
	})
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(w, r.Body)
	})
	mux.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"host": r.Host, "remote": r.RemoteAddr, "header": r.Header})
	})
	mux.HandleFunc("/sse", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		every, _ := time.ParseDuration(r.URL.Query().Get("every"))
		w.Header().Set("Content-Type", "text/event-stream")
		f, _ := w.(http.Flusher)
		for i := range n {
			fmt.Fprintf(w, "data: %d\n\n", i)
			if f != nil {
				f.Flush()
			}
			time.Sleep(every)
		}
	})
	upgrader := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			t, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(t, msg); err != nil {
				return
			}
		}
	})
	return mux
}
