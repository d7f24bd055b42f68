package store

// DisableTmpfile makes Put take the named-temp-file-and-rename path, as on a
// filesystem without O_TMPFILE.
func (d *Dir) DisableTmpfile() { d.noTmpfile.Store(true) }

// UsesTmpfile reports whether Put still uses O_TMPFILE.
func (d *Dir) UsesTmpfile() bool { return !d.noTmpfile.Load() }

// Root returns the directory the store lives in.
func (d *Dir) Root() string { return d.root }
