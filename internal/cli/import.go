package cli

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/sact-project/sact/internal/importer"
)

// importCmd is `sact import [-o DIR] NGINX_CONF`: the sact config, Dockerfiles and nginx
// server blocks for every Passenger app of an nginx config (issue 14).
func importCmd(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "import")
	out := fs.String("o", "sact-import", "directory to write sact.yaml, apps.d/, build/, nginx/ and REPORT.md to")
	sockets := fs.String("socket-dir", "/run/sact", "directory of the apps' sockets that nginx connects to")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errUsage{"give the main nginx config file (like /etc/nginx/nginx.conf), or a file holding the output of nginx -T"}
	}
	res, err := importer.Import(fs.Arg(0), importer.Options{SocketDir: *sockets})
	if err != nil {
		fmt.Fprintln(e.stderr, err)
		return fmt.Errorf("nothing was written; fix the nginx config (nginx -t), or the paths it names")
	}
	outs, err := res.Write(*out)
	if err != nil {
		return fmt.Errorf("writing the import: %w", err)
	}
	res.Table(e.stdout)
	written, kept := 0, 0
	for _, o := range outs {
		switch o.What {
		case "created", "updated":
			written++
		case "kept":
			kept++
			fmt.Fprintf(e.stdout, "\n%s was edited by hand: kept; the import's version is %s.new, and differs so:\n%s", filepath.Join(*out, o.Path), filepath.Join(*out, o.Path), o.Diff)
		}
	}
	fmt.Fprintf(e.stdout, "\n%d apps, %d sites left alone; %d files written to %s, %d kept; see %s\nnext:\n",
		len(res.Apps), len(res.Static), written, *out, kept, filepath.Join(*out, "REPORT.md"))
	for _, c := range res.Commands(*out) {
		fmt.Fprintf(e.stdout, "  %s\n", c)
	}
	return nil
}
