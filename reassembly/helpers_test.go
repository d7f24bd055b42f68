package reassembly_test

import (
	"crypto/sha256"
	"encoding/base64"
)

func sha256Of(b []byte) [32]byte { return sha256.Sum256(b) }

func basic(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
}
