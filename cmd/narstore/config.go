package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
)

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, " ") }
func (s *stringList) Set(v string) error {
	*s = append(*s, strings.Fields(v)...)
	return nil
}

// secretFlags are never printed in full.
var secretFlags = map[string]bool{"redis-password": true, "upload-password": true, "upload-token": true, "mysql-dsn": true, "database-url": true,
	"to-database-url": true, "s3-secret-access-key": true}

// envName maps a flag name to its environment variable: data -> NARSTORE_DATA.
func envName(flagName string) string {
	return "NARSTORE_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// resolve fills every flag not given on the command line from NARSTORE_*
// environment variables, then from the config file (key = value lines, keys
// are flag names, # starts a comment, list flags may repeat). Flags win over
// the environment, which wins over the file.
func resolve(fs *flag.FlagSet, configFile string) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		if v, ok := os.LookupEnv(envName(f.Name)); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %v", envName(f.Name), v, e)
			}
			set[f.Name] = true
		}
	})
	if err != nil || configFile == "" {
		return err
	}
	f, err := os.Open(configFile)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		k, v, ok := strings.Cut(text, "=")
		k, v = strings.TrimSpace(k), strings.Trim(strings.TrimSpace(v), `"`)
		if !ok {
			return fmt.Errorf("%s:%d: want key = value", configFile, line)
		}
		fl := fs.Lookup(k)
		if fl == nil {
			if knownSettings()[k] {
				continue
			}
			return fmt.Errorf("%s:%d: unknown setting %q for this command (see --help)", configFile, line, k)
		}
		if set[k] {
			continue
		}
		if err := fs.Set(k, v); err != nil {
			return fmt.Errorf("%s:%d: %s: %v", configFile, line, k, err)
		}
	}
	return sc.Err()
}

// knownSettings lists every command's settings: a config file shared by
// several commands may hold settings the running one does not have. Built
// once; commands may run concurrently in one process (tests).
var knownSettings = sync.OnceValue(allFlagNames)

// printConfig writes the effective settings, secrets redacted.
func printConfig(w io.Writer, fs *flag.FlagSet) {
	var lines []string
	fs.VisitAll(func(f *flag.Flag) {
		v := f.Value.String()
		if secretFlags[f.Name] && v != "" {
			v = "<redacted>"
		}
		lines = append(lines, fmt.Sprintf("%s = %s", f.Name, v))
	})
	sort.Strings(lines)
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
}
