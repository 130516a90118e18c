package server

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/vakt-dev/vakt/authz"
)

// TestReadmeReasons checks the README's Reasons table against the answers
// table: every reason in exactly one row, and that row giving the HTTP
// status, gRPC code and error code the faces answer.
func TestReadmeReasons(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	start := strings.Index(doc, "\n## Reasons\n")
	if start < 0 {
		t.Fatal("README has no Reasons section")
	}
	section := doc[start+1:]
	if end := strings.Index(section[3:], "\n## "); end >= 0 {
		section = section[:end+3]
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
			t.Errorf("%s: in %d rows of the README's Reasons table, want 1", r, len(found))
			continue
		}
		cols, a := found[0], answerFor(r)
		if !strings.HasPrefix(strings.TrimSpace(cols[1]), strconv.Itoa(a.http)) {
			t.Errorf("%s: README says HTTP %q, the table answers %d", r, cols[1], a.http)
		}
		if !strings.HasPrefix(strings.TrimSpace(cols[2]), grpcName(a.grpc)) {
			t.Errorf("%s: README says gRPC %q, the table answers %s", r, cols[2], grpcName(a.grpc))
		}
		wantCode := "`" + a.code + "`"
		if a.code == "" {
			wantCode = "none"
		}
		if r == authz.ReasonUpstreamRefused {
			wantCode = "the upstream's code"
		}
		if !strings.HasPrefix(strings.TrimSpace(cols[3]), wantCode) {
			t.Errorf("%s: README says error code %q, the table answers %s", r, cols[3], wantCode)
		}
		if outage := strings.Contains(cols[0], "**outages**"); outage != r.Outage() {
			t.Errorf("%s: README lists it as an outage: %v; it is one: %v", r, outage, r.Outage())
		}
	}
}
