package bench

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
)

// WriteTable prints the final bump of every configuration, then the
// stored/upstream ratio per bump.
func WriteTable(w io.Writer, rows []Row) {
	last := lastRows(rows)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "config\tNARs\tupstream\tNAR\tstored\tstored/upstream\tstored/NAR\tobjects\tindex rows\tindex\tPUT $\tstorage $/mo\tingest MB/s\trecompress MB/s\treassembly MB/s\t")
	for _, r := range last {
		rc := "-"
		if r.Recompress > 0 {
			rc = fmt.Sprintf("%.1f", r.RecompressMBps)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%.3f\t%.3f\t%d\t%d\t%s\t%.4f\t%.4f\t%.0f\t%s\t%.0f\t\n", r.Config, r.NARs, mb(r.UpstreamBytes), mb(r.NARBytes),
			mb(r.StoredBytes), r.StoredUpstream, r.StoredNAR, r.Objects, r.IndexRows, mb(uint64(r.IndexBytes)), r.PutCost, r.StorageCost, r.IngestMBps, rc, r.ReassemblyMBps)
	}
	tw.Flush()
	fmt.Fprintln(w)
	bumps := map[int]string{}
	byCfg := map[string]map[int]float64{}
	for _, r := range rows {
		bumps[r.Bump] = r.BumpName
		if byCfg[r.Config] == nil {
			byCfg[r.Config] = map[int]float64{}
		}
		byCfg[r.Config][r.Bump] = r.StoredUpstream
	}
	fmt.Fprint(tw, "stored/upstream after bump\t")
	for b := 1; b <= len(bumps); b++ {
		fmt.Fprintf(tw, "%s\t", bumps[b])
	}
	fmt.Fprintln(tw)
	for _, r := range last {
		fmt.Fprintf(tw, "%s\t", r.Config)
		for b := 1; b <= len(bumps); b++ {
			fmt.Fprintf(tw, "%.3f\t", byCfg[r.Config][b])
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}

func mb(n uint64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }

func lastRows(rows []Row) []Row {
	var out []Row
	for i, r := range rows {
		if i+1 == len(rows) || rows[i+1].Config != r.Config {
			out = append(out, r)
		}
	}
	return out
}

// WriteFiles writes results.csv, results.json and the SVG charts into dir.
func WriteFiles(dir string, rows []Row) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	js, _ := json.MarshalIndent(rows, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "results.csv"))
	if err != nil {
		return err
	}
	cw := csv.NewWriter(f)
	t := reflect.TypeOf(Row{})
	var header []string
	for i := range t.NumField() {
		header = append(header, strings.Split(t.Field(i).Tag.Get("json"), ",")[0])
	}
	cw.Write(header)
	for _, r := range rows {
		v := reflect.ValueOf(r)
		var rec []string
		for i := range v.NumField() {
			switch x := v.Field(i).Interface().(type) {
			case float64:
				rec = append(rec, strconv.FormatFloat(x, 'f', 6, 64))
			default:
				rec = append(rec, fmt.Sprint(x))
			}
		}
		cw.Write(rec)
	}
	cw.Flush()
	if err := f.Close(); err != nil {
		return err
	}
	if err := cw.Error(); err != nil {
		return err
	}
	charts := map[string]string{
		"ratio_by_bump.svg":            ratioChart(rows),
		"throughput_by_chunk_size.svg": throughputChart(rows),
		"objects_by_chunk_size.svg":    objectsChart(rows),
	}
	for name, svg := range charts {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(svg), 0o644); err != nil {
			return err
		}
	}
	return nil
}

type series struct {
	name string
	xs   []float64
	ys   []float64
}

func ratioChart(rows []Row) string {
	var ss []series
	idx := map[string]int{}
	var labels []string
	for _, r := range rows {
		i, ok := idx[r.Config]
		if !ok {
			i = len(ss)
			idx[r.Config] = i
			ss = append(ss, series{name: r.Config})
		}
		ss[i].xs = append(ss[i].xs, float64(r.Bump))
		ss[i].ys = append(ss[i].ys, r.StoredUpstream)
		if r.Bump > len(labels) {
			labels = append(labels, r.BumpName)
		}
	}
	return lineChart("Stored bytes / upstream (xz) bytes, cumulative, after each bump", "bump", "stored / upstream", ss, labels, false, true)
}

// perPreset plots a metric of each configuration's final row against the
// average chunk size, one series per variant (zstd level, normalization,
// delta) across presets.
func perPreset(rows []Row, metric func(Row) float64) []series {
	byVariant := map[string]*series{}
	var names []string
	for _, r := range lastRows(rows) {
		_, variant, _ := strings.Cut(r.Config, "/")
		s := byVariant[variant]
		if s == nil {
			s = &series{name: variant}
			byVariant[variant] = s
			names = append(names, variant)
		}
		s.xs = append(s.xs, float64(r.AvgChunk)/1024)
		s.ys = append(s.ys, metric(r))
	}
	sort.Strings(names)
	var out []series
	for _, n := range names {
		out = append(out, *byVariant[n])
	}
	return out
}

func throughputChart(rows []Row) string {
	ss := perPreset(rows, func(r Row) float64 { return r.IngestMBps })
	for i := range ss {
		ss[i].name = "ingest, " + ss[i].name
	}
	rs := perPreset(rows, func(r Row) float64 { return r.ReassemblyMBps })
	for i := range rs {
		rs[i].name = "reassembly, " + rs[i].name
	}
	return lineChart("Throughput (last bump) against average chunk size", "average chunk size (KiB, log scale)", "MB/s", append(ss, rs...), nil, true, false)
}

func objectsChart(rows []Row) string {
	ss := perPreset(rows, func(r Row) float64 { return float64(r.Objects) })
	return lineChart("Stored objects (chunks) after the last bump against average chunk size", "average chunk size (KiB, log scale)", "objects", ss, nil, true, false)
}

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"}

// lineChart renders a self-contained SVG line chart.
func lineChart(title, xlabel, ylabel string, ss []series, xticks []string, logX, refLine bool) string {
	const W, H, L, R, T, B = 900.0, 520.0, 80.0, 300.0, 50.0, 60.0
	xmin, xmax, ymin, ymax := math.Inf(1), math.Inf(-1), 0.0, math.Inf(-1)
	tx := func(x float64) float64 {
		if logX {
			return math.Log2(x)
		}
		return x
	}
	for _, s := range ss {
		for i := range s.xs {
			xmin, xmax = math.Min(xmin, tx(s.xs[i])), math.Max(xmax, tx(s.xs[i]))
			ymax = math.Max(ymax, s.ys[i])
		}
	}
	if refLine {
		ymax = math.Max(ymax, 1.05)
	}
	if math.IsInf(xmin, 0) || xmax == xmin {
		xmin, xmax = xmin-1, xmin+1
	}
	if ymax <= 0 || math.IsInf(ymax, 0) {
		ymax = 1
	}
	ymax = niceCeil(ymax * 1.05)
	px := func(x float64) float64 { return L + (tx(x)-xmin)/(xmax-xmin)*(W-L-R) }
	py := func(y float64) float64 { return H - B - (y-ymin)/(ymax-ymin)*(H-T-B) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n", W, H, W, H)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="%.0f" y="28" font-size="16" font-weight="bold">%s</text>`+"\n", L, esc(title))
	// axes and grid
	for i := 0; i <= 5; i++ {
		y := ymin + (ymax-ymin)*float64(i)/5
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/><text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n",
			L, py(y), W-R, py(y), L-6, py(y)+4, fmtNum(y))
	}
	xs := map[float64]bool{}
	for _, s := range ss {
		for _, x := range s.xs {
			xs[x] = true
		}
	}
	for x := range xs {
		label := fmtNum(x)
		if xticks != nil && int(x)-1 < len(xticks) && int(x) >= 1 {
			label = xticks[int(x)-1]
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee"/><text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n",
			px(x), T, px(x), H-B, px(x), H-B+16, esc(label))
	}
	fmt.Fprintf(&b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="black"/><line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="black"/>`+"\n", L, H-B, W-R, H-B, L, T, L, H-B)
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="middle">%s</text>`+"\n", (L+W-R)/2, H-B+40, esc(xlabel))
	fmt.Fprintf(&b, `<text transform="translate(20 %.0f) rotate(-90)" text-anchor="middle">%s</text>`+"\n", (T+H-B)/2, esc(ylabel))
	if refLine {
		fmt.Fprintf(&b, `<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="black" stroke-dasharray="6 4"/><text x="%.0f" y="%.1f">upstream xz = 1.0</text>`+"\n", L, py(1), W-R, py(1), W-R-110, py(1)-5)
	}
	for i, s := range ss {
		col := palette[i%len(palette)]
		var pts []string
		order := make([]int, len(s.xs))
		for j := range order {
			order[j] = j
		}
		sort.Slice(order, func(a, c int) bool { return s.xs[order[a]] < s.xs[order[c]] })
		for _, j := range order {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(s.xs[j]), py(s.ys[j])))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", col, strings.Join(pts, " "))
		for _, p := range pts {
			xy := strings.Split(p, ",")
			fmt.Fprintf(&b, `<circle cx="%s" cy="%s" r="3" fill="%s"/>`, xy[0], xy[1], col)
		}
		ly := T + 10 + float64(i)*18
		fmt.Fprintf(&b, "\n"+`<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="%s" stroke-width="3"/><text x="%.0f" y="%.0f">%s</text>`+"\n", W-R+15, ly, W-R+35, ly, col, W-R+40, ly+4, esc(s.name))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// niceCeil rounds v up to 1, 2, 2.5 or 5 times a power of ten, so that five
// grid steps fall on round numbers.
func niceCeil(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func fmtNum(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.1fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.0fk", v/1e3)
	case v == math.Trunc(v):
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func esc(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

// WritePackages prints per-package totals for each configuration.
func WritePackages(w io.Writer, pkgs []PackageRow) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "config\tpackage\tNARs\tNAR\tupstream\tstored\tstored/upstream\t")
	for _, p := range pkgs {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%.3f\t\n", p.Config, p.Package, p.NARs, mb(p.NARBytes), mb(p.UpstreamBytes), mb(p.StoredBytes), p.Ratio)
	}
	tw.Flush()
}

// WritePackagesCSV writes packages.csv into dir.
func WritePackagesCSV(dir string, pkgs []PackageRow) error {
	f, err := os.Create(filepath.Join(dir, "packages.csv"))
	if err != nil {
		return err
	}
	cw := csv.NewWriter(f)
	cw.Write([]string{"config", "package", "nars", "nar_bytes", "upstream_bytes", "stored_bytes", "stored_per_upstream"})
	for _, p := range pkgs {
		cw.Write([]string{p.Config, p.Package, fmt.Sprint(p.NARs), fmt.Sprint(p.NARBytes), fmt.Sprint(p.UpstreamBytes), fmt.Sprint(p.StoredBytes), strconv.FormatFloat(p.Ratio, 'f', 4, 64)})
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
