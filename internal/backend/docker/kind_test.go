package docker

import "testing"

func TestCheckVolume(t *testing.T) {
	valid := []string{"/data", "/host:/container", "/host:/container:ro", "name:/data", "my_vol.1:/data:rw,z"}
	for _, s := range valid {
		if err := checkVolume(s); err != nil {
			t.Errorf("checkVolume(%q) = %v, want nil", s, err)
		}
	}
	invalid := []string{"data", "./data:/data", "~/data:/data", "/a:rel", "/a:/b:", "/a:/b:ro:x", "a:/data"}
	for _, s := range invalid {
		if err := checkVolume(s); err == nil {
			t.Errorf("checkVolume(%q) = nil, want an error", s)
		}
	}
}
