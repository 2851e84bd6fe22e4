// Package softhsmtest gives tests real PKCS#11 tokens, backed by SoftHSM2.
//
//	func TestMain(m *testing.M) { softhsmtest.Main(m) }
//
//	func TestSomething(t *testing.T) {
//		module, pin := softhsmtest.Token(t, "test")
//		ks, err := keystore.NewPKCS11(keystore.PKCS11Config{Module: module, TokenLabel: "test", PIN: pin})
//		...
//	}
//
// Each token is private to its test: its own token directory and its own
// copy of the SoftHSM2 library, so tests may run in parallel and a test may
// create several tokens (one per auth server, say). Why it takes this much:
//
//   - SoftHSM2 reads its configuration file (named by the environment
//     variable SOFTHSM2_CONF) and lists the tokens of the configured token
//     directory when the library is initialized, and only then. A token
//     created later stays invisible to a process that has the library
//     initialized.
//   - One library instance is not safe for concurrent token management:
//     C_GetSlotList modifies the slot table without a lock.
//   - Two instances sharing a token directory race on its files: SoftHSM2's
//     fcntl locks exclude other processes, not other instances in the same
//     process.
//
// So Token creates the token in a fresh directory with softhsm2-util,
// copies the library into the test's temporary directory (the dynamic
// loader loads each copy as a separate library, with its own state), points
// the process's SOFTHSM2_CONF file at the new directory and initializes the
// copy, all under one lock. To keep that copy from being initialized again
// later, when the file may point elsewhere, Token holds it open until the
// test ends through a session on a second, "anchor" token in the same
// directory. The anchor session does not log in and is not on the test's
// token, so logins behave as in production: closing the last keystore on a
// token logs out of it.
//
// softhsm2-util and the SoftHSM2 library must be installed (`make deps`);
// without them Token fails the test rather than skipping it, so that a
// machine that cannot run the HSM tests does not pass them silently.
package softhsmtest

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ThalesGroup/crypto11"
)

// PINs of every token Token creates.
const (
	PIN   = "1234-user"
	SOPIN = "5678-officer"
)

// anchorLabel labels the token that keeps each library copy initialized.
const anchorLabel = "softhsmtest-anchor"

// modulePaths are where distributions install the SoftHSM2 library.
var modulePaths = []string{
	"/usr/lib/softhsm/libsofthsm2.so",                  // Debian, Ubuntu
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so", // Debian, Ubuntu (multiarch)
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib64/pkcs11/libsofthsm2.so", // Fedora, RHEL
	"/usr/lib/pkcs11/libsofthsm2.so",   // Arch
	"/usr/local/lib/softhsm/libsofthsm2.so",
	"/opt/homebrew/lib/softhsm/libsofthsm2.so", // macOS, Homebrew
}

// state is package-level because what it stands for is process-wide: the
// SOFTHSM2_CONF environment variable and the file it names, read by every
// SoftHSM2 instance that initializes in this process.
var state struct {
	once   sync.Once
	err    error
	dir    string // holds conf
	conf   string // the file SOFTHSM2_CONF names
	module string // the installed library, copied by Token

	mu   sync.Mutex        // guards conf's content, envs, and every library copy's initialization
	envs map[string]string // module copy -> its token's own configuration file
}

// Main sets up SoftHSM2 for the package's tests, runs them, removes the
// process-wide configuration and exits; it does not return. Call it from
// TestMain. Without it, Token still works but sets SOFTHSM2_CONF when first
// called (possibly while other tests run) and leaves a small directory in
// the system's temporary directory.
func Main(m *testing.M) {
	state.once.Do(func() { state.err = setup() })
	// A set-up error is reported by Token, to the tests that need SoftHSM2.
	code := m.Run()
	if state.dir != "" {
		os.RemoveAll(state.dir)
	}
	os.Exit(code)
}

// setup finds SoftHSM2 and sets SOFTHSM2_CONF, once per process.
func setup() error {
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		return fmt.Errorf("softhsm2-util not found (%v): the PKCS#11 tests need SoftHSM2; run `make deps` to install it", err)
	}
	for _, p := range modulePaths {
		if _, err := os.Stat(p); err == nil {
			state.module = p
			break
		}
	}
	if state.module == "" {
		return fmt.Errorf("the SoftHSM2 PKCS#11 library is in none of %s: run `make deps` to install it", strings.Join(modulePaths, ", "))
	}
	dir, err := os.MkdirTemp("", "jumpgate-softhsm-")
	if err != nil {
		return err
	}
	state.dir = dir
	state.conf = filepath.Join(dir, "softhsm2.conf")
	state.envs = map[string]string{}
	// Set once; Token changes the file's content, never the variable:
	// setenv while other threads may call getenv is unsafe in C.
	return os.Setenv("SOFTHSM2_CONF", state.conf)
}

// Token creates an empty SoftHSM2 token labelled label (at most 32 bytes),
// with user PIN PIN and security officer PIN SOPIN, and returns the PKCS#11
// module to open it with (a copy of the SoftHSM2 library private to the
// token) and the user PIN. Everything is removed when t ends; close what
// uses the token before then (t.Cleanup functions registered after Token
// run before its own).
//
// To run SoftHSM2's tools (pkcs11-tool, softhsm2-util) on the token, give
// them the environment Env(module).
func Token(t testing.TB, label string) (module, pin string) {
	t.Helper()
	state.once.Do(func() { state.err = setup() })
	if state.err != nil {
		t.Fatalf("softhsmtest: %v", state.err)
	}
	if label == "" || len(label) > 32 || label == anchorLabel {
		t.Fatalf("softhsmtest: token label %q: must be 1 to 32 bytes, and not %q", label, anchorLabel)
	}

	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		t.Fatalf("softhsmtest: %v", err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	text := "directories.tokendir = " + tokens + "\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatalf("softhsmtest: %v", err)
	}
	env := append(os.Environ(), "SOFTHSM2_CONF="+conf)
	for _, l := range []string{anchorLabel, label} {
		cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", l, "--so-pin", SOPIN, "--pin", PIN)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("softhsmtest: create token %q: softhsm2-util: %v\n%s", l, err, out)
		}
	}
	module = filepath.Join(dir, "libsofthsm2.so")
	if err := copyFile(module, state.module); err != nil {
		t.Fatalf("softhsmtest: copy the SoftHSM2 library: %v", err)
	}
	// The path keystore.NewPKCS11 and crypto11 will use: both key their
	// shared state on it, and the anchor must share it.
	module, err := filepath.EvalSymlinks(module)
	if err != nil {
		t.Fatalf("softhsmtest: %v", err)
	}

	state.mu.Lock()
	defer state.mu.Unlock()
	tmp := state.conf + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		t.Fatalf("softhsmtest: %v", err)
	}
	if err := os.Rename(tmp, state.conf); err != nil {
		t.Fatalf("softhsmtest: %v", err)
	}
	anchor, err := crypto11.Configure(&crypto11.Config{Path: module, TokenLabel: anchorLabel, LoginNotSupported: true, MaxSessions: 2})
	if err != nil {
		t.Fatalf("softhsmtest: open the SoftHSM2 library copy %s: %v", module, err)
	}
	state.envs[module] = conf
	t.Cleanup(func() {
		state.mu.Lock()
		delete(state.envs, module)
		state.mu.Unlock()
		if err := anchor.Close(); err != nil {
			t.Errorf("softhsmtest: close the anchor token: %v", err)
		}
	})
	return module, PIN
}

// Env returns the environment in which SoftHSM2's tools see the token whose
// module Token returned: the process's, with SOFTHSM2_CONF naming the
// token's own configuration. Run them with --module module too.
func Env(t testing.TB, module string) []string {
	t.Helper()
	state.mu.Lock()
	conf, ok := state.envs[module]
	state.mu.Unlock()
	if !ok {
		t.Fatalf("softhsmtest: %s is not a module returned by Token in a running test", module)
	}
	return append(os.Environ(), "SOFTHSM2_CONF="+conf)
}

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
