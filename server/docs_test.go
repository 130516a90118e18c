package server

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/config"
)

// The manual: README.md is its front door, docs/ holds the rest. These tests
// keep what it says true: each reads the page that holds the text it checks.

// docPages returns README.md and every Markdown file under docs/, as paths
// relative to this package's directory.
func docPages(t *testing.T) []string {
	t.Helper()
	pages := []string{"../README.md"}
	err := filepath.WalkDir("../docs", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(path, ".md") {
			pages = append(pages, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return pages
}

func readDoc(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// outsideFences returns the lines of a Markdown text that are not inside a
// fenced code block, with their line numbers (from 1); the others are "".
func outsideFences(doc string) []string {
	lines := strings.Split(doc, "\n")
	fence := ""
	for i, l := range lines {
		trimmed := strings.TrimLeft(l, " ")
		switch {
		case fence == "" && (strings.HasPrefix(trimmed, "```") || strings.HasPrefix(trimmed, "~~~")):
			fence = trimmed[:3]
			lines[i] = ""
		case fence != "":
			if strings.HasPrefix(trimmed, fence) {
				fence = ""
			}
			lines[i] = ""
		}
	}
	return lines
}

var (
	headingRE  = regexp.MustCompile(`^#{1,6} +(.*?) *#*$`)
	linkRE     = regexp.MustCompile(`\[([^\]]*)\]\(([^)\s]+)(?: +"[^"]*")?\)`)
	codeSpanRE = regexp.MustCompile("`[^`]*`")
)

// headingAnchors returns the anchors GitHub makes for a Markdown text's
// headings: the heading's text as rendered (links as their text, no code
// marks), lower-cased, every character but letters, digits, spaces, '-' and
// '_' dropped, spaces made '-'; a repeated anchor gets -1, -2, ...
func headingAnchors(doc string) map[string]bool {
	anchors := map[string]bool{}
	seen := map[string]int{}
	for _, l := range outsideFences(doc) {
		m := headingRE.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		text := linkRE.ReplaceAllString(m[1], "$1")
		var b strings.Builder
		for _, r := range strings.ToLower(text) {
			switch {
			case r == ' ':
				b.WriteByte('-')
			case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
				b.WriteRune(r)
			}
		}
		slug := b.String()
		if n := seen[slug]; n > 0 {
			anchors[slug+"-"+strconv.Itoa(n)] = true
		} else {
			anchors[slug] = true
		}
		seen[slug]++
	}
	return anchors
}

// TestDocsLinks fails on a broken relative link in README.md or docs/: a
// Markdown link whose file does not exist, or whose #anchor names no heading
// of the Markdown file it points into.
func TestDocsLinks(t *testing.T) {
	anchors := map[string]map[string]bool{}
	anchorsOf := func(path string) map[string]bool {
		if a, ok := anchors[path]; ok {
			return a
		}
		a := headingAnchors(readDoc(t, path))
		anchors[path] = a
		return a
	}
	links := 0
	for _, page := range docPages(t) {
		for i, l := range outsideFences(readDoc(t, page)) {
			l = codeSpanRE.ReplaceAllString(l, "code")
			for _, m := range linkRE.FindAllStringSubmatch(l, -1) {
				target := m[2]
				if strings.HasPrefix(target, "http://") || strings.HasPrefix(target, "https://") ||
					strings.HasPrefix(target, "mailto:") {
					continue
				}
				links++
				where := page + ":" + strconv.Itoa(i+1)
				path, anchor, _ := strings.Cut(target, "#")
				file := page
				if path != "" {
					if filepath.IsAbs(path) {
						t.Errorf("%s: %s: a link must be relative", where, target)
						continue
					}
					file = filepath.Join(filepath.Dir(page), filepath.FromSlash(path))
					if _, err := os.Stat(file); err != nil {
						t.Errorf("%s: %s: no such file", where, target)
						continue
					}
				}
				if anchor != "" && strings.HasSuffix(file, ".md") && !anchorsOf(file)[anchor] {
					t.Errorf("%s: %s: no heading of %s has the anchor #%s", where, target, file, anchor)
				}
			}
		}
	}
	if links == 0 {
		t.Fatal("no relative links found: the test reads nothing")
	}
}

// readmeTestCommand is the command README.md gives a newcomer to run the
// tests: vakt's module, then test/deploy, a module of its own.
const readmeTestCommand = "go test -race ./... && go -C test/deploy test -race ./..."

// TestDocsReadme keeps README.md a front door: at most 300 lines, the
// newcomer's commands (the test command the one .ci/run names as the
// README's), and a link to every page of docs/.
func TestDocsReadme(t *testing.T) {
	readme := readDoc(t, "../README.md")
	if n := strings.Count(strings.TrimSuffix(readme, "\n"), "\n") + 1; n > 300 {
		t.Errorf("README.md has %d lines, want at most 300: move the detail to docs/", n)
	}
	for _, cmd := range []string{"go run ./cmd/vakt serve", "go run ./cmd/vakt demo", readmeTestCommand} {
		if !strings.Contains(readme, "\n"+cmd+" ") && !strings.Contains(readme, "\n"+cmd+"\n") {
			t.Errorf("README.md does not give the command %q", cmd)
		}
	}
	ci := readDoc(t, "../.ci/run")
	for _, part := range []string{"(the README's test command)", "\ngo test -race -timeout 8m ./...\n", "\ngo -C test/deploy test -race -timeout 8m ./...\n"} {
		if !strings.Contains(ci, part) {
			t.Errorf(".ci/run no longer runs the README's test command (%s): %q is gone; change both", readmeTestCommand, part)
		}
	}
	linked := map[string]bool{}
	for _, m := range linkRE.FindAllStringSubmatch(codeSpanRE.ReplaceAllString(readme, "code"), -1) {
		path, _, _ := strings.Cut(m[2], "#")
		linked[filepath.Clean(path)] = true
	}
	for _, page := range docPages(t)[1:] {
		rel, err := filepath.Rel("..", page)
		if err != nil {
			t.Fatal(err)
		}
		if !linked[rel] {
			t.Errorf("README.md does not link to %s", filepath.ToSlash(rel))
		}
	}
}

// TestDocsMinimalConfiguration loads the README's minimal configuration, as
// `vakt check-config` would: it loads, and draws no warning.
func TestDocsMinimalConfiguration(t *testing.T) {
	readme := readDoc(t, "../README.md")
	start := strings.Index(readme, "\n## A minimal configuration\n")
	if start < 0 {
		t.Fatal("README has no section \"A minimal configuration\"")
	}
	section := readme[start:]
	open := strings.Index(section, "\n```yaml\n")
	if open < 0 {
		t.Fatal("the minimal configuration has no yaml block")
	}
	body := section[open+len("\n```yaml\n"):]
	end := strings.Index(body, "\n```")
	if end < 0 {
		t.Fatal("the minimal configuration's yaml block does not end")
	}
	c, err := config.Load([]byte(body[:end+1]), t.TempDir())
	if err != nil {
		t.Fatalf("README's minimal configuration does not load:\n%v", err)
	}
	if len(c.Warnings) > 0 {
		t.Errorf("README's minimal configuration draws warnings: %v", c.Warnings)
	}
}

// TestDocsReasons checks the Reasons table of docs/reasons.md against the
// answers table: every reason in exactly one row, and that row giving the
// HTTP status, gRPC code and error code the faces answer.
func TestDocsReasons(t *testing.T) {
	const page = "../docs/reasons.md"
	doc := readDoc(t, page)
	if !strings.HasPrefix(doc, "# Reasons\n") {
		t.Fatalf("%s does not start with its heading, # Reasons", page)
	}
	section := doc
	if end := strings.Index(section, "\n#"); end >= 0 {
		section = section[:end]
	}
	var rows [][]string
	for _, line := range strings.Split(section, "\n") {
		if strings.HasPrefix(line, "| `") || strings.HasPrefix(line, "| **outages**") {
			cols := strings.Split(strings.Trim(line, "|"), " | ")
			if len(cols) != 5 {
				t.Fatalf("row has %d columns, want 5: %s", len(cols), line)
			}
			rows = append(rows, cols)
		}
	}
	for _, r := range authz.Reasons() {
		var found [][]string
		for _, cols := range rows {
			if strings.Contains(cols[0], "`"+r.String()+"`") {
				found = append(found, cols)
			}
		}
		if len(found) != 1 {
			t.Errorf("%s: in %d rows of the Reasons table (%s), want 1", r, len(found), page)
			continue
		}
		cols, a := found[0], answerFor(r)
		if !strings.HasPrefix(strings.TrimSpace(cols[1]), strconv.Itoa(a.http)) {
			t.Errorf("%s: %s says HTTP %q, the table answers %d", r, page, cols[1], a.http)
		}
		if !strings.HasPrefix(strings.TrimSpace(cols[2]), grpcName(a.grpc)) {
			t.Errorf("%s: %s says gRPC %q, the table answers %s", r, page, cols[2], grpcName(a.grpc))
		}
		wantCode := "`" + a.code + "`"
		if a.code == "" {
			wantCode = "none"
		}
		if r == authz.ReasonUpstreamRefused {
			wantCode = "the upstream's code"
		}
		if !strings.HasPrefix(strings.TrimSpace(cols[3]), wantCode) {
			t.Errorf("%s: %s says error code %q, the table answers %s", r, page, cols[3], wantCode)
		}
		if outage := strings.Contains(cols[0], "**outages**"); outage != r.Outage() {
			t.Errorf("%s: %s lists it as an outage: %v; it is one: %v", r, page, outage, r.Outage())
		}
	}
}

// TestDocsArchitectureMap keeps the layout of docs/architecture.md a true
// map: every directory it names exists, and every directory of the
// repository is named, itself or through each of its subdirectories
// (internal/ by internal/cache/, internal/devidp/, ...).
func TestDocsArchitectureMap(t *testing.T) {
	const page = "../docs/architecture.md"
	doc := readDoc(t, page)
	start := strings.Index(doc, "\n## Layout\n")
	if start < 0 {
		t.Fatalf("%s has no section Layout", page)
	}
	block := doc[start:]
	open := strings.Index(block, "\n```\n")
	if open < 0 {
		t.Fatalf("%s: the layout has no code block", page)
	}
	block = block[open+len("\n```\n"):]
	block = block[:strings.Index(block, "\n```")]
	named := map[string]bool{}
	for _, l := range strings.Split(block, "\n") {
		if l == "" || l[0] == ' ' {
			continue
		}
		dir := strings.Fields(l)[0]
		if !strings.HasSuffix(dir, "/") {
			t.Errorf("%s: the layout's entry %q is no directory (it must end in /)", page, dir)
			continue
		}
		dir = strings.TrimSuffix(dir, "/")
		named[dir] = true
		if fi, err := os.Stat(filepath.Join("..", filepath.FromSlash(dir))); err != nil || !fi.IsDir() {
			t.Errorf("%s: the layout names %s/, which is not a directory of the repository", page, dir)
		}
	}
	// missing returns the directories under dir, dir itself or the
	// deepest ones, that the layout does not name: dir is named, or has
	// subdirectories and each of them is.
	var missing func(dir string) []string
	missing = func(dir string) []string {
		if named[dir] {
			return nil
		}
		entries, err := os.ReadDir(filepath.Join("..", filepath.FromSlash(dir)))
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		subdirs := 0
		for _, e := range entries {
			if e.IsDir() {
				subdirs++
				out = append(out, missing(dir+"/"+e.Name())...)
			}
		}
		if subdirs == 0 {
			return []string{dir}
		}
		return out
	}
	entries, err := os.ReadDir("..")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		name := e.Name()
		if !e.IsDir() || (strings.HasPrefix(name, ".") && !named[name]) {
			continue
		}
		for _, dir := range missing(name) {
			t.Errorf("%s: the layout does not name %s/", page, dir)
		}
	}
}
