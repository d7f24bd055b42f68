package ingest_test

import (
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/narstore/narstore/internal/testservers"
)

func runtimeGosched() { runtime.Gosched(); time.Sleep(time.Millisecond) }

func TestMain(m *testing.M) {
	code := m.Run()
	testservers.StopAll()
	os.Exit(code)
}
