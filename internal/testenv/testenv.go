// Package testenv decides whether tests that need external programs or
// servers run, skip, or fail.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// RequireVar, when set to 1 (as CI does), turns every "missing server or
// program" skip into a failure.
const RequireVar = "NARSTORE_TEST_REQUIRE_SERVERS"

// Missing skips the test with reason, or fails it when RequireVar is set.
func Missing(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv(RequireVar) == "1" {
		t.Fatalf("%s (and %s=1 requires it)", reason, RequireVar)
	}
	t.Skip(reason)
}

// LookPath returns the path of a program, or skips/fails via Missing.
func LookPath(t testing.TB, name, installHint string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, name+" is not installed ("+installHint+")")
	}
	return p
}
