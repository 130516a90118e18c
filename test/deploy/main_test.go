package deploy_test

import (
	"fmt"
	"os"
	"testing"
)

// TestMain runs the tests in deploy/, the directory they check: they read its
// files by paths relative to it. They are a module of their own (test/deploy)
// only so that what they alone need, kustomize and istio.io/api, is no
// dependency of vakt's.
func TestMain(m *testing.M) {
	if err := os.Chdir("../../deploy"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}
