// Command sact gives Docker containers socket activation: a container starts on the first
// connection that arrives for it and stops when it has been idle. See the README.
package main

import (
	"context"
	"os"

	"github.com/sact-project/sact/internal/cli"
)

func main() {
	os.Exit(cli.Run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
