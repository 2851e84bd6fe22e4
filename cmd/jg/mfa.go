package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/pquerna/otp/totp"
	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/cmd/internal/creds"
)

// Per-session MFA: roles with require_session_mfa make every new session
// need a TOTP code. jg mfa add enrolls an authenticator app; jg ssh then
// asks for a code and gets a certificate good for that one session.

func mfaCmd() *cobra.Command {
	m := &cobra.Command{Use: "mfa", Short: "Manage your MFA devices (TOTP authenticator apps)"}
	var name, secret string
	var codeStdin bool
	add := &cobra.Command{Use: "add [--name=phone]", Short: "Enroll a TOTP authenticator app", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, cl, err := userClient()
			if err != nil {
				return err
			}
			defer cl.Close()
			if secret == "" {
				key, err := totp.Generate(totp.GenerateOpts{Issuer: "Jumpgate " + id.Meta.Cluster, AccountName: id.Meta.Name})
				if err != nil {
					return err
				}
				secret = key.Secret()
				fmt.Printf("Add this to your authenticator app (it takes the URL as a QR code, or the secret by hand):\n  URL:    %s\n  Secret: %s\n", key.URL(), secret)
			}
			in := codeReader(codeStdin)
			req := authapi.AddMFADeviceRequest{Name: name, Secret: secret}
			if devs, err := cl.MFADevices(cmd.Context()); err == nil && len(devs) > 0 {
				if req.ExistingCode, err = in("Code from a device you have already (" + devs[0].Name + "): "); err != nil {
					return err
				}
			}
			if req.Code, err = in("Code the app shows for the new secret: "); err != nil {
				return err
			}
			dev, err := cl.AddMFADevice(cmd.Context(), req)
			if err != nil {
				return fmt.Errorf("mfa add: %w", err)
			}
			fmt.Printf("MFA device %s added.\n", dev.Name)
			return nil
		}}
	add.Flags().StringVar(&name, "name", "totp", "a name for the device")
	add.Flags().StringVar(&secret, "secret", "", "use this base32 secret instead of a new one (moving an existing authenticator)")
	add.Flags().BoolVar(&codeStdin, "code-stdin", false, "read the codes from standard input, one per line (scripts)")
	ls := &cobra.Command{Use: "ls", Short: "List your MFA devices", Args: cobra.NoArgs, RunE: func(cmd *cobra.Command, _ []string) error {
		_, cl, err := userClient()
		if err != nil {
			return err
		}
		defer cl.Close()
		devs, err := cl.MFADevices(cmd.Context())
		if err != nil {
			return err
		}
		if len(devs) == 0 {
			fmt.Println("No MFA devices: jg mfa add enrolls one.")
		}
		for _, d := range devs {
			fmt.Printf("%s\tadded %s\n", d.Name, d.Added.Local().Format(time.DateTime))
		}
		return nil
	}}
	m.AddCommand(add, ls)
	return m
}

// codeReader returns a function that asks for a code on the terminal, or
// reads lines from stdin.
func codeReader(stdin bool) func(prompt string) (string, error) {
	if stdin {
		br := bufio.NewReader(os.Stdin)
		return func(string) (string, error) {
			line, err := br.ReadString('\n')
			if err != nil && line == "" {
				return "", fmt.Errorf("read a code from stdin: %w", err)
			}
			return strings.TrimSpace(line), nil
		}
	}
	return func(prompt string) (string, error) {
		tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
		if err != nil {
			return "", errors.New("no terminal to ask for a TOTP code: use --code-stdin (jg mfa), --mfa-code (jg ssh) or $JG_MFA_CODE (jg proxy ssh, under OpenSSH)")
		}
		defer tty.Close()
		fmt.Fprint(tty, prompt)
		line, err := bufio.NewReader(tty).ReadString('\n')
		if err != nil && line == "" {
			return "", err
		}
		return strings.TrimSpace(line), nil
	}
}

// sessionSigner returns the SSH signer for a new session: the login's
// certificate, or, when the roles require MFA, a certificate for this
// session only, after a TOTP code.
func sessionSigner(ctx context.Context, id *creds.Identity, node, login, code string) (ssh.Signer, error) {
	if !id.Meta.RequireMFA {
		return id.CertSigner()
	}
	cert, _, err := sessionCert(ctx, id, node, login, code)
	if err != nil {
		return nil, err
	}
	return ssh.NewCertSigner(cert, id.SSHKey)
}

// proxyMFACert is jg proxy ssh's per-session MFA certificate for OpenSSH:
// OpenSSH presents the login's certificate, and this one travels with the
// dial to the node ("" when the roles require no MFA). The code comes from
// $JG_MFA_CODE or the terminal.
func proxyMFACert(ctx context.Context, id *creds.Identity, node, login string) (string, error) {
	if !id.Meta.RequireMFA {
		return "", nil
	}
	if login == "" {
		return "", errors.New("MFA: give the login (login@node): the per-session certificate is for one login")
	}
	_, line, err := sessionCert(ctx, id, node, login, os.Getenv("JG_MFA_CODE"))
	return line, err
}

// sessionCert asks (for a code on the terminal, if code is "") for a
// per-session MFA certificate for node and login.
func sessionCert(ctx context.Context, id *creds.Identity, node, login, code string) (*ssh.Certificate, string, error) {
	if code == "" {
		var err error
		if code, err = codeReader(false)(fmt.Sprintf("MFA code for %s@%s: ", login, node)); err != nil {
			return nil, "", err
		}
	}
	cl, err := proxyClient(id)
	if err != nil {
		return nil, "", err
	}
	defer cl.Close()
	pub := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(id.SSHKey.PublicKey())))
	sc, err := cl.SessionCert(ctx, authapi.SessionCertRequest{Node: node, Login: login, Code: code, SSHPublic: pub})
	if err != nil {
		return nil, "", fmt.Errorf("MFA: %w", err)
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(sc.SSHCert))
	if err != nil {
		return nil, "", err
	}
	cert, ok := k.(*ssh.Certificate)
	if !ok {
		return nil, "", errors.New("MFA: the auth server answered with no certificate")
	}
	return cert, strings.TrimSpace(sc.SSHCert), nil
}
