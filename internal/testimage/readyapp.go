package testimage

import "context"

// ReadyAppRepo and ReadyAppHealthRepo are the repositories of the readyapp images.
const (
	ReadyAppRepo       = "sact-readyapp"
	ReadyAppHealthRepo = "sact-readyapp-hc"
)

// ReadyApp returns the reference of the readyapp image (see the readyapp package): an app
// that accepts connections a while before it can answer them.
func ReadyApp(ctx context.Context) (string, error) {
	return goImage(ctx, ReadyAppRepo, "readyapp", `EXPOSE 8080`)
}

// ReadyAppHealthcheck is ReadyApp's image with a HEALTHCHECK that passes once the app
// answers: `readyapp health`, every 200ms.
func ReadyAppHealthcheck(ctx context.Context) (string, error) {
	return goImage(ctx, ReadyAppHealthRepo, "readyapp", `EXPOSE 8080`,
		`HEALTHCHECK --interval=200ms --timeout=2s --retries=1000 CMD ["/readyapp", "health"]`)
}
