// Package browsertest opens meshca's HTML reports in headless Chromium
// (Debian's chromium package, installed by hack/chromium.sh) for tests: it
// drives the browser over the DevTools protocol with chromedp, collects the
// console errors, counts the timeline's phase bands and takes a screenshot.
package browsertest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
)

// NeedTool returns the path of the first of names found on PATH: missing,
// the test skips, except under CI=true where it fails (hack/deps.sh installs
// them there).
func NeedTool(tb testing.TB, names ...string) string {
	tb.Helper()
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	msg := strings.Join(names, " or ") + " not installed: run hack/chromium.sh (as root)"
	if os.Getenv("CI") == "true" {
		tb.Fatal(msg)
	}
	tb.Skip(msg)
	return ""
}

// Page is what headless Chromium saw of a report.
type Page struct {
	// Bands counts the phase bands of each cluster's timeline in the DOM.
	Bands map[string]int
	// Errors are the console errors, exceptions and browser-log errors
	// (failed loads among them).
	Errors []string
	// Screenshot is a PNG of the whole page; Width and Height the page's
	// size in CSS pixels.
	Screenshot    []byte
	Width, Height int64
}

// Open loads the HTML file at path in headless Chromium, 1200 px wide, in
// the light or the dark color scheme (prefers-color-scheme).
func Open(ctx context.Context, chromium, path string, dark bool) (*Page, error) {
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.WindowSize(1200, 900))
	actx, cancel := chromedp.NewExecAllocator(ctx, opts...)
	defer cancel()
	bctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	bctx, cancel = context.WithTimeout(bctx, 2*time.Minute)
	defer cancel()
	out := &Page{Bands: map[string]int{}}
	// Console errors, read until the page is done with.
	cctx, stopConsole := context.WithCancel(bctx)
	var mu sync.Mutex
	var wg sync.WaitGroup
	messages := chromedp.Console(cctx)
	wg.Go(func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.IsException() {
				mu.Lock()
				out.Errors = append(out.Errors, fmt.Sprintf("%s (%s:%d)", m, m.URL, m.Line))
				mu.Unlock()
			}
		}
	})
	scheme := "light"
	if dark {
		scheme = "dark"
	}
	if _, err := chromedp.Call(bctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
		Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}}}); err != nil {
		stopConsole()
		return nil, fmt.Errorf("chromium: emulate prefers-color-scheme %s: %w", scheme, err)
	}
	err := chromedp.Do(bctx, chromedp.Navigate("file://"+path), chromedp.WaitVisible(chromedp.CSS("svg.timeline")))
	type band struct {
		Cluster string `json:"cluster"`
		N       int    `json:"n"`
	}
	var bands []band
	if err == nil {
		bands, err = chromedp.Run(bctx, chromedp.Evaluate[[]band](`[...document.querySelectorAll("svg.timeline g.cluster")].map(g => ({cluster: g.dataset.cluster, n: g.querySelectorAll("g.band").length}))`))
	}
	if err == nil {
		out.Width, err = chromedp.Run(bctx, chromedp.Evaluate[int64](`document.documentElement.scrollWidth`))
	}
	if err == nil {
		out.Height, err = chromedp.Run(bctx, chromedp.Evaluate[int64](`document.documentElement.scrollHeight`))
	}
	if err == nil {
		out.Screenshot, err = chromedp.Run(bctx, chromedp.FullScreenshot(100))
	}
	stopConsole()
	wg.Wait()
	if err != nil {
		return nil, fmt.Errorf("open %s in chromium: %w", path, err)
	}
	for _, b := range bands {
		out.Bands[b.Cluster] = b.N
	}
	return out, nil
}

// Check fails tb when the page had console errors, or when a cluster's
// timeline does not have the bands want gives it (one per phase), or the
// screenshot is not a PNG.
func Check(tb testing.TB, got *Page, want map[string]int) {
	tb.Helper()
	if len(got.Errors) > 0 {
		tb.Errorf("console errors: %s", strings.Join(got.Errors, "; "))
	}
	for cluster, n := range want {
		if got.Bands[cluster] != n || n == 0 {
			tb.Errorf("cluster %s: %d bands in the SVG, want one per phase (%d)", cluster, got.Bands[cluster], n)
		}
	}
	if !bytes.HasPrefix(got.Screenshot, []byte("\x89PNG")) {
		tb.Errorf("the screenshot is not a PNG (%d bytes)", len(got.Screenshot))
	}
}
