// Package waittest waits, in tests, for a condition that comes true in its
// own time: a process started, a server answering over a real network, a
// real API server's watch. It polls, at growing intervals, until a
// deadline.
//
// It is for conditions that become true and stay so. What a test can wait
// on as an event (a channel, a hook, testing/synctest) it waits on as one;
// and a poll never shows that something did not happen: wait for what
// would have made it happen, then check.
package waittest

import (
	"testing"
	"time"
)

// Until checks cond until it holds, and fails t if it does not within d,
// saying what never happened.
func Until(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !poll(d, cond) {
		t.Fatalf("after %v: %s", d, what)
	}
}

// UntilNil calls f until it returns nil, and fails t with f's last error if
// it has not within d.
func UntilNil(t testing.TB, d time.Duration, what string, f func() error) {
	t.Helper()
	var last error
	if !poll(d, func() bool { last = f(); return last == nil }) {
		t.Fatalf("after %v: %s: %v", d, what, last)
	}
}

// poll checks cond, again 1 ms later, then at doubling intervals of at
// most 50 ms, until it holds (true) or d has passed (false).
func poll(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	interval := time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
		interval = min(2*interval, 50*time.Millisecond)
	}
	return true
}
