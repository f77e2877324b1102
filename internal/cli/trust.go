package cli

import "github.com/sact-project/sact/internal/config"

// trustedConfigFiles refuses a config made from a file (include:, env_file:) that a user
// other than root (or sact's own) may change, as trustedConfigFile does the main file:
// an included app file runs its commands and containers as root just the same.
func trustedConfigFiles(cfg *config.Config) error {
	for _, f := range cfg.Files {
		if err := trustedConfigFile(f); err != nil {
			return err
		}
	}
	return nil
}
