package keystore

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// maxSecretSize bounds what LoadSecret reads: PINs and passphrases are
// short, so a larger file is a mistake (a key, a log) rather than a secret.
const maxSecretSize = 4096

// LoadSecret reads a PIN or passphrase from exactly one of file and the
// environment variable envVar; the other must be "".
//
// A file must not be readable or writable by group or others (mode 0600 or
// 0400): a secret that every local user can read protects nothing. Trailing
// whitespace, such as the newline an editor adds, is trimmed from either
// source, and an empty secret is an error.
//
// There is deliberately no way to pass a secret as a command-line flag:
// flags are visible to every local user in ps(1) and /proc/PID/cmdline.
func LoadSecret(file, envVar string) (string, error) {
	switch {
	case file == "" && envVar == "":
		return "", errors.New("keystore: no secret source: give a file (mode 0600) or an environment variable")
	case file != "" && envVar != "":
		return "", fmt.Errorf("keystore: secret given both in file %s and in environment variable %s: give only one", file, envVar)
	case envVar != "":
		v, ok := os.LookupEnv(envVar)
		if !ok {
			return "", fmt.Errorf("keystore: environment variable %s is not set: set it to the secret, or use a file instead", envVar)
		}
		v = strings.TrimRight(v, " \t\r\n")
		if v == "" {
			return "", fmt.Errorf("keystore: environment variable %s is empty: set it to the secret", envVar)
		}
		return v, nil
	}
	f, err := os.Open(file)
	if err != nil {
		return "", fmt.Errorf("keystore: read secret file: %w", err)
	}
	defer f.Close()
	// Stat the open file, not the name, so the mode checked is the mode of
	// the file read.
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("keystore: read secret file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("keystore: secret file %s is not a regular file", file)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("keystore: secret file %s has mode %04o, so other users may read it: run `chmod 600 %s`", file, perm, file)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSecretSize+1))
	if err != nil {
		return "", fmt.Errorf("keystore: read secret file %s: %w", file, err)
	}
	if len(b) > maxSecretSize {
		return "", fmt.Errorf("keystore: secret file %s is larger than %d bytes: is it the right file?", file, maxSecretSize)
	}
	s := strings.TrimRight(string(b), " \t\r\n")
	if s == "" {
		return "", fmt.Errorf("keystore: secret file %s is empty: write the PIN or passphrase into it", file)
	}
	return s, nil
}
