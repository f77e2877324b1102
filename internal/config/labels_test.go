package config

import (
	"strings"
	"testing"
	"time"
)

func TestAddLabelApps(t *testing.T) {
	base := func() *Config {
		cfg, err := Parse("sact.yaml", []byte("apps:\n  web:\n    image: web:1\n    listen: [\"tcp:127.0.0.1:9001\"]\n    port: 80\n"), testOptions())
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	tests := []struct {
		name    string
		labels  map[string]string
		wantErr string
		check   func(t *testing.T, a *App)
	}{
		{
			name: "a full app",
			labels: map[string]string{"sact.enable": "true", "sact.listen": "tcp:127.0.0.1:9002, unix:/tmp/x.sock",
				"sact.port": "8080", "sact.idle": "2m", "sact.keep_while_open": "true", "com.example.other": "ignored"},
			check: func(t *testing.T, a *App) {
				if a.Name != "shop" || a.Run.Container != "shop" || len(a.Listen) != 2 || a.Port != 8080 || a.Idle != 2*time.Minute || !a.KeepWhileOpen {
					t.Errorf("app %+v", a)
				}
			},
		},
		{
			name:   "named by a label",
			labels: map[string]string{"sact.name": "store", "sact.listen": "tcp:127.0.0.1:9003", "sact.port": "8080"},
			check: func(t *testing.T, a *App) {
				if a.Name != "store" || a.Run.Container != "shop" {
					t.Errorf("app %s of container %s", a.Name, a.Run.Container)
				}
			},
		},
		{
			name:   "ready by label",
			labels: map[string]string{"sact.listen": "tcp:127.0.0.1:9007", "sact.port": "8080", "sact.ready": "{http: {path: /up, status: 200-299}}"},
			check: func(t *testing.T, a *App) {
				if h := a.Ready.HTTP; h == nil || h.Path != "/up" || h.StatusMin != 200 || h.StatusMax != 299 || h.Method != "GET" {
					t.Errorf("ready %+v (http %+v)", a.Ready, a.Ready.HTTP)
				}
			},
		},
		{
			name:   "ready healthcheck by label",
			labels: map[string]string{"sact.listen": "tcp:127.0.0.1:9008", "sact.port": "8080", "sact.ready": "healthcheck"},
			check: func(t *testing.T, a *App) {
				if !a.Ready.Healthcheck {
					t.Errorf("ready %+v", a.Ready)
				}
			},
		},
		{name: "bad ready label", labels: map[string]string{"sact.listen": "tcp:127.0.0.1:9009", "sact.port": "8080", "sact.ready": "{http: up}"}, wantErr: "label sact.ready={http: up}: \"up\" is no absolute path"},
		// A label that tries to add a key beside ready: is one value, and no valid one.
		{name: "ready label injects nothing", labels: map[string]string{"sact.listen": "tcp:127.0.0.1:9010", "sact.port": "8080", "sact.ready": "{http: /up}\n    image: evil"}, wantErr: "sact.ready"},
		{name: "bad duration", labels: map[string]string{"sact.listen": "tcp:127.0.0.1:9004", "sact.port": "8080", "sact.idle": "soon"}, wantErr: "container shop: apps.shop.idle: label sact.idle=soon:"},
		{name: "unknown key", labels: map[string]string{"sact.listen": "tcp:127.0.0.1:9005", "sact.prot": "8080"}, wantErr: "label sact.prot=8080: unknown key; did you mean \"port\"?"},
		{name: "clash with the file", labels: map[string]string{"sact.listen": "tcp:127.0.0.1:9001", "sact.port": "8080"}, wantErr: "is apps.web's already"},
		{name: "name taken", labels: map[string]string{"sact.name": "web", "sact.listen": "tcp:127.0.0.1:9006", "sact.port": "8080"}, wantErr: "an app named web exists already"},
		{name: "hosts without a front door", labels: map[string]string{"sact.hosts": "shop.example.com", "sact.port": "8080"}, wantErr: "needs the http front door"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base()
			err := cfg.AddLabelApps([]LabelApp{{Key: "container", Value: "shop", Labels: tt.labels}})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range cfg.Apps {
				if a.Run.Container == "shop" {
					tt.check(t, a)
					return
				}
			}
			t.Fatal("no app from the labels")
		})
	}
}
