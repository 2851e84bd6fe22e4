package archtest

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "jumpgate.dev/jumpgate"

type pkg struct {
	ImportPath string
	Doc        string
	Imports    []string
	Name       string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", module+"/...")
	cmd.Dir = "../../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	var pkgs []pkg
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	return pkgs
}

func rel(path string) string { return strings.TrimPrefix(strings.TrimPrefix(path, module), "/") }

func under(path, dir string) bool { return path == dir || strings.HasPrefix(path, dir+"/") }

// allowedFromAuth are the auth packages network-facing code may import:
// identities and role evaluation (pure), audit events (local files) and
// the auth API client.
var allowedFromAuth = map[string]bool{"auth/identity": true, "auth/audit": true, "auth/authapi": true}

// networkFacing lists the auth packages that do network I/O themselves.
var networkFacing = map[string]bool{"auth/authapi": true}

func TestImportRules(t *testing.T) {
	for _, p := range listPackages(t) {
		from := rel(p.ImportPath)
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module+"/") {
				continue
			}
			to := rel(imp)
			switch {
			case under(from, "cmd"):
				// cmd/ wires everything together.
			case under(from, "mesh") && under(to, "tunnel"), under(from, "tunnel") && under(to, "mesh"):
				t.Errorf("%s imports %s: mesh/ and tunnel/ must not import each other (join them in cmd/)", from, to)
			case strings.HasSuffix(from, "test") && to == "auth/authtest":
				// Test helper packages (servertest, meshtest) share auth's test CA.
			case (under(from, "mesh") || under(from, "tunnel") || under(from, "node")) && under(to, "auth") && !allowedFromAuth[to]:
				t.Errorf("%s imports %s: network packages may import only auth/identity, auth/audit and auth/authapi from auth/", from, to)
			case under(from, "auth") && !networkFacing[from] && (under(to, "mesh") || under(to, "tunnel") || under(to, "node") || networkFacing[to]):
				t.Errorf("%s imports network-facing %s: auth/ imports nothing network-facing", from, to)
			case !under(from, "cmd") && under(to, "cmd"):
				t.Errorf("%s imports %s: nothing outside cmd/ may import cmd/", from, to)
			}
		}
	}
}

func TestEveryPackageHasDoc(t *testing.T) {
	for _, p := range listPackages(t) {
		if p.Name == "main" {
			continue
		}
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("package %s has no doc comment: add a doc.go saying what it owns", p.ImportPath)
		}
	}
}
