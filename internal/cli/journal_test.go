package cli

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestJournalLines(t *testing.T) {
	var b bytes.Buffer
	log := slog.New(newJournalHandler(&b, &slog.HandlerOptions{Level: slog.LevelDebug, ReplaceAttr: readableDurations}))
	log.With("app", "web").Info("app ready", "duration", 1500*time.Millisecond)
	log.Error("cannot start app", "app", "api", "reason", errors.New("no such image"))
	log.Warn("w")
	log.Debug("d")
	want := []string{
		`<6>level=INFO msg="app ready" app=web duration=1.5s`,
		`<3>level=ERROR msg="cannot start app" app=api reason="no such image"`,
		`<4>level=WARN msg=w`,
		`<7>level=DEBUG msg=d`,
	}
	got := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("journal lines:\n%s\nwant:\n%s", b.String(), strings.Join(want, "\n"))
	}
}

func TestIsJournal(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "stream")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	fd := int(f.Fd())
	t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino))
	if !isJournal(fd) {
		t.Errorf("JOURNAL_STREAM names this stream, but isJournal is false")
	}
	t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino+1))
	if isJournal(fd) {
		t.Errorf("JOURNAL_STREAM names another stream (stderr redirected), but isJournal is true")
	}
	t.Setenv("JOURNAL_STREAM", "")
	if isJournal(fd) || logFormat("") != "text" || logFormat("JSON") != "json" {
		t.Errorf("without JOURNAL_STREAM: isJournal %v, default format %q", isJournal(fd), logFormat(""))
	}
}

func TestErrPrefixer(t *testing.T) {
	var b bytes.Buffer
	p := &errPrefixer{w: &b}
	fmt.Fprint(p, "sact.yaml:3: apps.x: unknown key\nsact reload: ")
	fmt.Fprint(p, "1 problem(s)\n<6>level=INFO msg=already\n")
	want := "<3>sact.yaml:3: apps.x: unknown key\n<3>sact reload: 1 problem(s)\n<6>level=INFO msg=already\n"
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}
