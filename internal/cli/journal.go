package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
)

// toJournal reports whether stderr is connected to systemd's journal.
func toJournal() bool { return isJournal(2) }

// isJournal reports whether fd is the journal's stream: systemd sets JOURNAL_STREAM to
// the device and inode of the stream it gives a service (systemd.exec(5)), and a child
// whose stderr was redirected has another.
func isJournal(fd int) bool {
	v := os.Getenv("JOURNAL_STREAM")
	if v == "" {
		return false
	}
	var dev, ino uint64
	if _, err := fmt.Sscanf(v, "%d:%d", &dev, &ino); err != nil {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return false
	}
	return uint64(st.Dev) == dev && st.Ino == ino
}

// journalHandler writes logfmt lines for the journal: no timestamp (the journal has its
// own), and the level as a syslog priority prefix ("<3>" for errors, sd-daemon(3)), so
// that `journalctl -p err -u sact` shows only errors and warnings are highlighted.
type journalHandler struct {
	inner slog.Handler // a TextHandler writing into out.buf
	out   *journalOut
}

type journalOut struct {
	mu  sync.Mutex
	buf bytes.Buffer
	w   io.Writer
}

func newJournalHandler(w io.Writer, o *slog.HandlerOptions) *journalHandler {
	out := &journalOut{w: w}
	opts := *o
	replace := o.ReplaceAttr
	opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		if replace != nil {
			return replace(groups, a)
		}
		return a
	}
	return &journalHandler{inner: slog.NewTextHandler(&out.buf, &opts), out: out}
}

func (h *journalHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	h.out.mu.Lock()
	defer h.out.mu.Unlock()
	h.out.buf.Reset()
	fmt.Fprintf(&h.out.buf, "<%d>", priority(r.Level))
	if err := h.inner.Handle(ctx, r); err != nil {
		return err
	}
	_, err := h.out.w.Write(h.out.buf.Bytes())
	return err
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &journalHandler{inner: h.inner.WithAttrs(as), out: h.out}
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	return &journalHandler{inner: h.inner.WithGroup(name), out: h.out}
}

// priority is the syslog priority of a level: err, warning, info, debug.
func priority(l slog.Level) int {
	switch {
	case l >= slog.LevelError:
		return 3
	case l >= slog.LevelWarn:
		return 4
	case l >= slog.LevelInfo:
		return 6
	}
	return 7
}

// logFormat is the format -log-format "" (the default) means: journal when stderr is
// the journal, else text.
func logFormat(format string) string {
	if format != "" {
		return strings.ToLower(format)
	}
	if toJournal() {
		return "journal"
	}
	return "text"
}

// errPrefixer gives each line written to the journal without a priority prefix the
// error priority ("<3>"): what sact's commands print on stderr is why they failed, and
// `systemctl reload sact` (ExecReload=sact reload) should show as an error in the journal.
type errPrefixer struct {
	mu      sync.Mutex
	w       io.Writer
	midLine bool
}

func (p *errPrefixer) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []byte
	for rest := b; len(rest) > 0; {
		if !p.midLine && rest[0] != '<' {
			out = append(out, "<3>"...)
		}
		line, after, found := bytes.Cut(rest, []byte{'\n'})
		out = append(out, line...)
		if found {
			out = append(out, '\n')
		}
		p.midLine = !found
		rest = after
	}
	if _, err := p.w.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}
