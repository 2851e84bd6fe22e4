package keystore_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"jumpgate.dev/jumpgate/auth/keystore"
)

func TestLoadSecretFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		// Chmod: WriteFile's mode is filtered by the umask.
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name    string
		path    string
		want    string
		wantErr string
	}{
		{"0600 with newline", write("pin", "1234-user\n", 0o600), "1234-user", ""},
		{"0400 with CRLF and spaces", write("ro", "pass phrase \r\n", 0o400), "pass phrase", ""},
		{"leading space kept", write("lead", "  x\n", 0o600), "  x", ""},
		{"group readable", write("g", "1234\n", 0o640), "", "has mode 0640, so other users may read it: run `chmod 600 " + filepath.Join(dir, "g") + "`"},
		{"world readable", write("o", "1234\n", 0o604), "", "run `chmod 600 " + filepath.Join(dir, "o") + "`"},
		{"group writable", write("gw", "1234\n", 0o620), "", "chmod 600"},
		{"empty", write("empty", "", 0o600), "", "is empty"},
		{"only a newline", write("nl", " \n", 0o600), "", "is empty"},
		{"too large", write("big", strings.Repeat("x", 5000), 0o600), "", "larger than 4096 bytes"},
		{"directory", dir, "", "is not a regular file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := keystore.LoadSecret(tt.path, "")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("LoadSecret(%s) = %q, %v; want error containing %q", tt.path, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("LoadSecret(%s) = %q, %v; want %q", tt.path, got, err, tt.want)
			}
		})
	}

	t.Run("missing", func(t *testing.T) {
		_, err := keystore.LoadSecret(filepath.Join(dir, "nope"), "")
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("err = %v, want a not-exist error", err)
		}
	})
}

func TestLoadSecretEnv(t *testing.T) {
	t.Setenv("JG_TEST_PIN", "1234-user\n")
	t.Setenv("JG_TEST_EMPTY", "")
	t.Setenv("JG_TEST_UNSET", "") // restored at the end of the test...
	os.Unsetenv("JG_TEST_UNSET")  // ...but unset during it

	if got, err := keystore.LoadSecret("", "JG_TEST_PIN"); err != nil || got != "1234-user" {
		t.Errorf("LoadSecret(env) = %q, %v; want 1234-user", got, err)
	}
	for env, want := range map[string]string{
		"JG_TEST_EMPTY": "environment variable JG_TEST_EMPTY is empty",
		"JG_TEST_UNSET": "environment variable JG_TEST_UNSET is not set",
	} {
		if got, err := keystore.LoadSecret("", env); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("LoadSecret(%s) = %q, %v; want error containing %q", env, got, err, want)
		}
	}
}

func TestLoadSecretNeedsExactlyOneSource(t *testing.T) {
	if _, err := keystore.LoadSecret("", ""); err == nil || !strings.Contains(err.Error(), "no secret source") {
		t.Errorf("no source: err = %v", err)
	}
	p := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(p, []byte("1234"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("JG_TEST_PIN", "1234")
	if _, err := keystore.LoadSecret(p, "JG_TEST_PIN"); err == nil || !strings.Contains(err.Error(), "give only one") {
		t.Errorf("two sources: err = %v", err)
	}
}
