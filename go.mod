module github.com/narstore/narstore

go 1.26.8

require (
	github.com/jotfs/fastcdc-go v0.2.0
	lukechampine.com/blake3 v1.4.1
)

require (
	github.com/klauspost/compress v1.20.3 // indirect
	github.com/klauspost/cpuid/v2 v2.0.9 // indirect
	github.com/nix-community/go-nix v0.0.0-20250101154619-4bdde671e0a1 // indirect
)
