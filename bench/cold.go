package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"golang.org/x/sys/unix"
)

// cold measures a cold request through sact against the engine's own start-to-ready time.
func (b *bench) cold() error {
	n := 15
	if b.quick {
		n = 5
	}
	// The floor: a created container started through the Engine API and polled.
	name := fmt.Sprintf("sact-bench-floor-%d", os.Getpid())
	cr, err := b.dc.ContainerCreate(b.ctx, client.ContainerCreateOptions{
		Name:   name,
		Config: &container.Config{Image: b.image, Env: []string{"LISTEN=tcp:0.0.0.0:8080", "NAME=floor"}},
	})
	if err != nil {
		return fmt.Errorf("creating the floor's container: %w", err)
	}
	defer b.dc.ContainerRemove(context.Background(), cr.ID, client.ContainerRemoveOptions{Force: true})

	app := fmt.Sprintf("bench-cold-%d", os.Getpid())
	hand := fmt.Sprintf("bench-cold-handoff-%d", os.Getpid())
	defer exec.Command("docker", "rm", "-f", "sact-"+app, "sact-"+hand).Run()
	addr, handAddr := freeAddr(), freeAddr()
	d, err := b.startSact(fmt.Sprintf(`apps:
  %[1]s:
    image: %[2]s
    env: {NAME: cold, LISTEN: "tcp:0.0.0.0:8080"}
    listen: ["tcp:%[3]s"]
    port: 8080
    idle: 1s
    stop_timeout: 2s
  %[4]s:
    image: %[2]s
    env: {NAME: cold-handoff}
    listen: ["tcp:%[5]s"]
    handoff: true
    network: none
    idle: 1s
    stop_timeout: 2s
`, app, b.image, addr, hand, handAddr))
	if err != nil {
		return err
	}
	defer d.stop()

	// The first requests create the containers; the runs measure starts only.
	for _, a := range []string{addr, handAddr} {
		if err := firstByte("tcp", a); err != nil {
			return fmt.Errorf("creating the container through sact: %w", err)
		}
	}
	g, err := b.newGlue()
	if err != nil {
		return err
	}
	defer g.close()
	var floor, engine, through, handed, glued []time.Duration
	glueFailed := 0
	for i := range n {
		fmt.Fprintf(os.Stderr, "cold %d/%d\n", i+1, n)
		// Interleaved so that drift in the machine's load hits all alike, and each
		// measured while nothing else starts or stops: wait for both apps' stops, as sact
		// sees them (a request during a stop would wait for it and measure it too).
		for _, a := range []string{app, hand} {
			if err := d.waitLog(`msg="stopped app" app=`+a+" ", i+1, 20*time.Second); err != nil {
				return err
			}
		}
		t, e, err := b.floorOnce(cr.ID)
		if err != nil {
			return fmt.Errorf("floor run: %w", err)
		}
		floor, engine = append(floor, t), append(engine, e)
		began := time.Now()
		if err := firstByte("tcp", addr); err != nil {
			return fmt.Errorf("cold request through sact: %w", err)
		}
		through = append(through, time.Since(began))

		if err := d.waitLog(`msg="stopped app" app=`+app+" ", i+2, 20*time.Second); err != nil {
			return err
		}
		began = time.Now()
		if err := firstByte("tcp", handAddr); err != nil {
			return fmt.Errorf("cold request through sact in handoff mode: %w", err)
		}
		handed = append(handed, time.Since(began))

		if err := d.waitLog(`msg="stopped app" app=`+hand+" ", i+2, 20*time.Second); err != nil {
			return err
		}
		t, err = g.coldOnce()
		if err != nil {
			// The glue's fixed sleep is a guess; when the app is not ready by then the
			// request fails, which is part of what is measured.
			fmt.Fprintf(os.Stderr, "glue: %v\n", err)
			glueFailed++
			continue
		}
		glued = append(glued, t)
	}
	return b.coldReport(n, floor, engine, through, handed, glued, glueFailed)
}

// floorOnce starts the container through the API and polls it like sact does, then stops
// it. It returns the time to the first response byte and, within it, the time the Engine
// API's start call took to return (the chart's "engine start").
func (b *bench) floorOnce(id string) (took, engine time.Duration, err error) {
	began := time.Now()
	if _, err := b.dc.ContainerStart(b.ctx, id, client.ContainerStartOptions{}); err != nil {
		return 0, 0, fmt.Errorf("starting the container: %w", err)
	}
	engine = time.Since(began)
	addr, err := b.containerAddr(id)
	if err != nil {
		return 0, 0, err
	}
	delay := time.Millisecond
	for {
		if err := firstByte("tcp", addr); err == nil {
			break
		}
		if time.Since(began) > 30*time.Second {
			return 0, 0, fmt.Errorf("floor container never answered on %s", addr)
		}
		time.Sleep(delay)
		// The same schedule as sact's readiness poll (activator.readyPollMax): a floor
		// that polled coarser would hide sact's own share behind its own wait.
		delay = min(delay*3/2+time.Millisecond, 2*time.Millisecond)
	}
	took = time.Since(began)
	timeout := 2
	if _, err := b.dc.ContainerStop(b.ctx, id, client.ContainerStopOptions{Timeout: &timeout}); err != nil {
		return 0, 0, fmt.Errorf("stopping the container: %w", err)
	}
	return took, engine, nil
}

// coldReport writes the cold-start table, sact's share, the goals and the chart.
func (b *bench) coldReport(n int, floor, engine, through, handed, glued []time.Duration, glueFailed int) error {
	mf, mt, mh := median(floor), median(through), median(handed)
	fmt.Fprintf(&b.md, "## Cold start: time to first response byte\n\n")
	fmt.Fprintf(&b.md, "A stopped, already created container of the test image (a static Go server); %d runs each, interleaved.\n", n)
	fmt.Fprintf(&b.md, "The floor is the Engine API's `start` of that container, then polling its IP until it answers, with no sact involved. ")
	fmt.Fprintf(&b.md, "The glue is what sact replaces, emulated step by step: a held listening socket (the `.socket` unit); on a waiting client, `docker run --rm -p 127.0.0.1:PORT:8080` (the service, `Type=simple`), `sleep 1` (its `ExecStartPost`), then systemd-socket-proxyd takes the socket and relays to the published port. The bench plays systemd's part (it waits for the client without accepting it and runs the commands in order), and tears everything down between runs.\n\n")
	fmt.Fprintf(&b.md, "![cold start: engine start, app boot and what each path adds](%s)\n\n", filepath.Base(chartPath(b.out)))
	fmt.Fprintf(&b.md, "| path | median | min | max | vs floor |\n| --- | ---: | ---: | ---: | ---: |\n")
	row := func(name string, d []time.Duration) {
		if len(d) == 0 {
			fmt.Fprintf(&b.md, "| %s | - | - | - | - |\n", name)
			return
		}
		fmt.Fprintf(&b.md, "| %s | %s | %s | %s | %.2f |\n", name, ms(median(d)), ms(slices.Min(d)), ms(slices.Max(d)), float64(median(d))/float64(mf))
	}
	row("floor: engine start + poll, direct", floor)
	row("(of which the Engine API's start call)", engine)
	row("through sact (proxy mode, tcp)", through)
	row("through sact (handoff mode, tcp, network none)", handed)
	row("glue: docker run --rm, sleep 1, systemd-socket-proxyd", glued)
	fmt.Fprintf(&b.md, "\n")
	if glueFailed > 0 {
		fmt.Fprintf(&b.md, "The glue failed %d of %d cold requests (the app was not ready when its fixed sleep ended).\n\n", glueFailed, n)
	}
	fmt.Fprintf(&b.md, "**sact's own share of a cold start: %s in proxy mode, %s in handoff mode** (median minus the floor's median). ", ms(mt-mf), ms(mh-mf))
	fmt.Fprintf(&b.md, "Handoff vs proxy: %.2f× the time to first byte. A negative share is noise: the floor polls the app from outside, sact's handoff needs no poll at all.", float64(mh)/float64(mt))
	if len(glued) > 0 {
		fmt.Fprintf(&b.md, " The glue takes %.2f× sact's proxy mode.", float64(median(glued))/float64(mt))
	}
	fmt.Fprintf(&b.md, "\n\n")
	b.goal("cold start: sact's overhead over the floor, proxy mode", "≤ 5 ms", mt-mf <= 5*time.Millisecond, ms(mt-mf))
	// "About 0": no more than a few ms above the floor; below it is the floor's polling.
	b.goal("cold start: sact's overhead over the floor, handoff mode", "≈ 0 (≤ 5 ms; below 0 is noise)", mh-mf <= 5*time.Millisecond, ms(mh-mf))

	bars := []chartBar{
		{"floor", mf},
		{"sact proxy", mt},
		{"sact handoff", mh},
	}
	if len(glued) > 0 {
		bars = append(bars, chartBar{"glue", median(glued)})
	}
	if err := coldChart(chartPath(b.out), median(engine), mf, bars); err != nil {
		return fmt.Errorf("drawing the chart: %w", err)
	}
	return nil
}

// chartPath is where the cold-start chart goes: next to the report, named after it.
func chartPath(report string) string {
	return strings.TrimSuffix(report, filepath.Ext(report)) + "-cold-start.png"
}

// glue emulates, per activation, the systemd units sact replaces: a .socket unit holding
// the listening socket; the first client starts the app's service, `docker run --rm` with
// a published port (Type=simple, so ExecStartPost runs as soon as docker is forked),
// ExecStartPost=/bin/sleep 1, and then systemd-socket-proxyd, which takes the listening
// socket (LISTEN_FDS) and relays to the published port.
type glue struct {
	image, name string
	ln          *os.File // the listening socket, as the .socket unit holds it
	addr, port  string   // where clients connect; the published port
}

func (b *bench) newGlue() (*glue, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("binding the glue's socket: %w", err)
	}
	defer ln.Close() // the duplicate below keeps the socket open
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		return nil, fmt.Errorf("duplicating the glue's socket: %w", err)
	}
	_, port, _ := net.SplitHostPort(freeAddr())
	g := &glue{image: b.image, name: fmt.Sprintf("sact-bench-glue-%d", os.Getpid()), ln: f, addr: ln.Addr().String(), port: port}
	exec.Command("docker", "rm", "-f", g.name).Run()
	return g, nil
}

func (g *glue) close() {
	g.ln.Close()
	exec.Command("docker", "rm", "-f", g.name).Run()
}

// coldOnce makes one cold request through the glue and tears it down again.
func (g *glue) coldOnce() (time.Duration, error) {
	activated := make(chan error, 1)
	var teardown func()
	go func() {
		var err error
		teardown, err = g.activate()
		activated <- err
	}()
	began := time.Now()
	err := firstByte("tcp", g.addr)
	took := time.Since(began)
	if aerr := <-activated; aerr != nil {
		return 0, aerr
	}
	teardown()
	if err != nil {
		return 0, fmt.Errorf("cold request through the glue: %w", err)
	}
	return took, nil
}

// activate waits for a client in the socket's backlog, without accepting it (as systemd
// does), then runs the units' commands in their order.
func (g *glue) activate() (teardown func(), err error) {
	fds := []unix.PollFd{{Fd: int32(g.ln.Fd()), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 30_000)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("waiting for a client on the glue's socket: %w", err)
		}
		if n == 0 {
			return nil, fmt.Errorf("no client on the glue's socket in 30 s")
		}
		break
	}
	run := exec.Command("docker", "run", "--rm", "--name", g.name, "-p", "127.0.0.1:"+g.port+":8080", "-e", "NAME=glue", g.image)
	if err := run.Start(); err != nil {
		return nil, fmt.Errorf("docker run: %w", err)
	}
	time.Sleep(time.Second)
	// LISTEN_PID must be proxyd's own pid: the shell's, which exec keeps.
	proxyd := exec.Command("sh", "-c", `export LISTEN_PID=$$; exec /lib/systemd/systemd-socket-proxyd "$0"`, "127.0.0.1:"+g.port)
	proxyd.Env = append(os.Environ(), "LISTEN_FDS=1")
	proxyd.ExtraFiles = []*os.File{g.ln}
	if err := proxyd.Start(); err != nil {
		exec.Command("docker", "rm", "-f", g.name).Run()
		run.Wait()
		return nil, fmt.Errorf("starting systemd-socket-proxyd: %w", err)
	}
	return func() {
		proxyd.Process.Kill()
		proxyd.Wait()
		exec.Command("docker", "rm", "-f", g.name).Run()
		run.Wait()
	}, nil
}
