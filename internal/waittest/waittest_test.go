package waittest

import (
	"sync/atomic"
	"testing"
	"time"
)

// Until returns once the condition holds, however many checks it takes.
func TestUntilReturnsOnceTrue(t *testing.T) {
	var calls atomic.Int32
	Until(t, 10*time.Second, "never true", func() bool { return calls.Add(1) == 3 })
	if n := calls.Load(); n != 3 {
		t.Fatalf("%d checks, want 3", n)
	}
}

// A condition that never holds fails the test past the deadline, with the
// last error of UntilNil's.
func TestUntilFailsPastTheDeadline(t *testing.T) {
	for name, wait := range map[string]func(testing.TB){
		"Until":    func(tb testing.TB) { Until(tb, time.Millisecond, "never true", func() bool { return false }) },
		"UntilNil": func(tb testing.TB) { UntilNil(tb, time.Millisecond, "never nil", func() error { return errNever }) },
	} {
		f := &fatalT{TB: t}
		func() {
			defer func() { _ = recover() }()
			wait(f)
		}()
		if f.msg == "" {
			t.Errorf("%s: no failure", name)
		}
	}
}

type never struct{}

func (never) Error() string { return "never" }

var errNever error = never{}

// fatalT records Fatalf instead of ending the test.
type fatalT struct {
	testing.TB
	msg string
}

func (f *fatalT) Helper() {}
func (f *fatalT) Fatalf(format string, args ...any) {
	f.msg = format
	panic("fatal")
}
