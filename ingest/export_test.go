package ingest

// WithXZ returns a copy of in sharing its index and store but decoding xz with impl.
func WithXZ(in *Ingester, impl XZDecoder) *Ingester {
	o := in.opts
	o.XZ = impl
	n, _ := New(in.up, in.ix, in.chunks, o)
	return n
}
