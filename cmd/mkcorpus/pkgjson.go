package main

import "encoding/json"

// binsOf returns package.json's "bin" as name -> relative path.
func binsOf(pkgJSON []byte) map[string]string {
	var p struct {
		Name string          `json:"name"`
		Bin  json.RawMessage `json:"bin"`
	}
	if json.Unmarshal(pkgJSON, &p) != nil || len(p.Bin) == 0 {
		return nil
	}
	var m map[string]string
	if json.Unmarshal(p.Bin, &m) == nil {
		return m
	}
	var s string
	if json.Unmarshal(p.Bin, &s) == nil {
		return map[string]string{p.Name: s}
	}
	return nil
}
