// Package meshpagetest runs headless Chromium for tests of the mesh page:
// the package's own, and the end-to-end test that loads the page of a
// running mesh. Chromium comes from apt (package chromium); make deps
// installs it.
package meshpagetest

import (
	"context"
	"html"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// FindChromium returns the first of chromium, chromium-browser and
// google-chrome on PATH.
func FindChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium not found: run make deps (apt package chromium)")
	return ""
}

// DumpDOM loads url and returns the DOM after the page's script has run
// for 5 s of virtual time (timers fire at once; network fetches are
// waited for), so that it refreshed from data.json a few times.
func DumpDOM(t *testing.T, bin, url string) string {
	t.Helper()
	dom := Run(t, bin, "--dump-dom", url)
	if !strings.Contains(dom, `id="proxies-body"`) {
		t.Fatalf("chromium dumped no mesh page:\n%s", dom)
	}
	return dom
}

// Run runs headless Chromium with its own profile, bounded by 60
// s, and returns its standard output. Chromium starts helper processes; it
// runs in its own process group, which is killed when it ends or times out
// so that no helper outlives the test.
func Run(t *testing.T, bin string, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	all := append([]string{
		"--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--user-data-dir=" + filepath.Join(dir, "profile"),
		"--no-first-run", "--no-default-browser-check", "--disable-extensions",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-default-apps", "--no-pings", "--metrics-recording-only", "--mute-audio",
		"--hide-scrollbars", "--virtual-time-budget=5000",
	}, args...)
	cmd := exec.CommandContext(ctx, bin, all...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// Files, not pipes: Wait then returns when Chromium exits, whatever
	// its helpers still hold open.
	stdout, err := os.Create(filepath.Join(dir, "stdout"))
	if err != nil {
		t.Fatal(err)
	}
	defer stdout.Close()
	stderr, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	cmd.Stdout, cmd.Stderr = stdout, stderr
	err = cmd.Run()
	if cmd.Process != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // helpers left behind, if any
	}
	out, _ := os.ReadFile(stdout.Name())
	if err != nil {
		errOut, _ := os.ReadFile(stderr.Name())
		t.Fatalf("chromium %s: %v\nstderr:\n%s", strings.Join(args, " "), err, Tail(string(errOut), 4000))
	}
	return string(out)
}

func Tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// Element is an element found in a dumped DOM.
type Element struct {
	Attrs map[string]string
	Inner string // its HTML
	Text  string // its text, tags removed and entities decoded
}

// CellText returns the text of the element's <td> of the given class.
func (e Element) CellText(class string) string {
	for _, c := range FindElements(e.Inner, "td", class) {
		return c.Text
	}
	return ""
}

var (
	attrRE = regexp.MustCompile(`([a-zA-Z_:][-a-zA-Z0-9_:.]*)="([^"]*)"`)
	tagRE  = regexp.MustCompile(`<[^>]*>`)
)

// FindElements returns the elements <tag> whose class attribute contains
// class. Chromium serializes the DOM regularly (attributes double-quoted,
// every element closed), and the elements looked for hold none of their own
// tag, so each ends at the next </tag>.
func FindElements(dom, tag, class string) []Element {
	open := regexp.MustCompile(`<` + tag + `(\s[^>]*)?>`)
	end := "</" + tag + ">"
	var out []Element
	for _, m := range open.FindAllStringSubmatchIndex(dom, -1) {
		e := Element{Attrs: map[string]string{}}
		if m[2] >= 0 {
			for _, a := range attrRE.FindAllStringSubmatch(dom[m[2]:m[3]], -1) {
				e.Attrs[a[1]] = html.UnescapeString(a[2])
			}
		}
		if !slices.Contains(strings.Fields(e.Attrs["class"]), class) {
			continue
		}
		n := strings.Index(dom[m[1]:], end)
		if n < 0 {
			continue
		}
		e.Inner = dom[m[1] : m[1]+n]
		e.Text = strings.Join(strings.Fields(html.UnescapeString(tagRE.ReplaceAllString(e.Inner, " "))), " ")
		out = append(out, e)
	}
	return out
}
