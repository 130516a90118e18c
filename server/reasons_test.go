package server

import (
	"go/ast"
	"go/build"
	"go/parser"
	"go/token"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/exchange"
)

// Every reason has a row in the one table, and its row says what it means:
// an outage is never answered as a refusal.
func TestEveryReasonHasAnAnswer(t *testing.T) {
	codesSeen := map[string]authz.Reason{}
	for _, r := range authz.Reasons() {
		a := answers[r]
		if int(r) >= len(answers) || a.http == 0 {
			t.Errorf("%v has no row in answers", r)
			continue
		}
		if r.Description() == "" || r.String() == "" || strings.ContainsAny(r.String(), " -") {
			t.Errorf("%d: code %q, description %q", r, r.String(), r.Description())
		}
		if other, dup := codesSeen[r.String()]; dup {
			t.Errorf("%v and %v share the code %q", r, other, r.String())
		}
		codesSeen[r.String()] = r
		if r.Outage() != (a.http >= 500) {
			t.Errorf("%v: outage %v but HTTP %d", r, r.Outage(), a.http)
		}
		if r.Outage() && (a.grpc == codes.PermissionDenied || a.grpc == codes.Unauthenticated || a.grpc == codes.InvalidArgument) {
			t.Errorf("%v is an outage answered as a refusal (%v)", r, a.grpc)
		}
		if publicText(r.Description()) != r.Description() {
			t.Errorf("%v: description %q has characters RFC 6749 §5.2 does not allow", r, r.Description())
		}
	}
	if got := answerFor(authz.Reason(250)); got != answers[authz.ReasonInternal] {
		t.Errorf("a reason outside the table answers %v, not internal", got)
	}
}

// sentinels are the engine's exported errors, by name. The AST check below
// fails when a package declares an Err* variable missing here, so a new
// sentinel cannot skip the table.
var sentinels = map[string]error{
	"authz.ErrMalformed":           authz.ErrMalformed,
	"authz.ErrTooLarge":            authz.ErrTooLarge,
	"authz.ErrUnsupported":         authz.ErrUnsupported,
	"authz.ErrAlgorithmNotAllowed": authz.ErrAlgorithmNotAllowed,
	"authz.ErrHeaderNotAllowed":    authz.ErrHeaderNotAllowed,
	"authz.ErrSignatureInvalid":    authz.ErrSignatureInvalid,
	"authz.ErrKeyNotFound":         authz.ErrKeyNotFound,
	"authz.ErrKeysUnavailable":     authz.ErrKeysUnavailable,
	"authz.ErrIssuerNotTrusted":    authz.ErrIssuerNotTrusted,
	"authz.ErrAudienceInvalid":     authz.ErrAudienceInvalid,
	"authz.ErrExpired":             authz.ErrExpired,
	"authz.ErrNotYetValid":         authz.ErrNotYetValid,
	"authz.ErrClaimInvalid":        authz.ErrClaimInvalid,
	"authz.ErrUnknownProvider":     authz.ErrUnknownProvider,
	"authz.ErrTypeNotAllowed":      authz.ErrTypeNotAllowed,
	"authz.ErrClaimNotForwardable": authz.ErrClaimNotForwardable,
	"authz.ErrBadPath":             authz.ErrBadPath,
	"authz.ErrBadAuthorization":    authz.ErrBadAuthorization,
	"authz.ErrApplicationUnknown":  authz.ErrApplicationUnknown,
	"authz.ErrAccessDenied":        authz.ErrAccessDenied,
	"exchange.ErrReplayStoreFull":  exchange.ErrReplayStoreFull,
	"exchange.ErrReplayQuota":      exchange.ErrReplayQuota,
}

func TestEverySentinelHasARow(t *testing.T) {
	for _, pkg := range []string{"authz", "exchange", "agent"} {
		for _, name := range declaredErrors(t, filepath.Join("..", pkg)) {
			if _, ok := sentinels[pkg+"."+name]; !ok {
				t.Errorf("%s.%s is not in this test's list of sentinels: add it, and give it a reason", pkg, name)
			}
		}
	}
	for name, err := range sentinels {
		r := authz.ReasonOf(err)
		if r == authz.ReasonNone || r == authz.ReasonInternal {
			t.Errorf("%s has no reason of its own (%v)", name, r)
			continue
		}
		if a := answerFor(r); a == answers[authz.ReasonInternal] {
			t.Errorf("%s: reason %v has no row", name, r)
		}
		// Wrapped, a sentinel keeps its reason.
		if got := authz.ReasonOf(wrap(err)); got != r {
			t.Errorf("%s wrapped: %v, want %v", name, got, r)
		}
	}
	if authz.ReasonOf(nil) != authz.ReasonNone || authz.ReasonOf(http.ErrAbortHandler) != authz.ReasonInternal {
		t.Error("ReasonOf of nil or a foreign error")
	}
}

func wrap(err error) error { return &wrapped{err} }

type wrapped struct{ err error }

func (w *wrapped) Error() string { return "context: " + w.err.Error() }
func (w *wrapped) Unwrap() error { return w.err }

// declaredErrors lists the package-level variables named Err* in a package's
// non-test files.
func declaredErrors(t *testing.T, dir string) []string {
	t.Helper()
	pkg, err := build.ImportDir(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, file := range pkg.GoFiles {
		f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(dir, file), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.VAR {
				continue
			}
			for _, spec := range gd.Specs {
				for _, n := range spec.(*ast.ValueSpec).Names {
					if strings.HasPrefix(n.Name, "Err") {
						names = append(names, n.Name)
					}
				}
			}
		}
	}
	return names
}
