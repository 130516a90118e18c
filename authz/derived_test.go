package authz

import (
	"math/rand/v2"
	"reflect"
	"testing"
)

// with and find against a model: random keys and sizes; a value found is
// always the one set for that key; the size is the sum; more than one
// value only within the allowance; at most maxDerived.
func TestDerivedModel(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	type val struct {
		key  int
		size int
	}
	for run := range 2000 {
		var d derived
		model := map[int]*val{}
		for range 50 {
			k := r.IntN(7)
			if v := d.find(k); v != nil {
				if v.(*val).key != k || model[k] != v.(*val) {
					t.Fatalf("run %d: key %d found %+v, model %+v", run, k, v, model[k])
				}
				continue
			}
			size := r.IntN(2200)
			if r.IntN(4) == 0 {
				size = r.IntN(200)
			}
			v := &val{k, size}
			old := d
			var before derivedMore
			if old.more != nil {
				before = *old.more
			}
			d = d.with(k, v, size)
			if old.more != nil && (*old.more != before || d.more == old.more && d != old) {
				t.Fatal("with modified a published derivedMore")
			}
			// model
			if size > DerivedAllowance {
				if d != old {
					t.Fatal("a value past the allowance was kept")
				}
				continue
			}
			if d.more == nil {
				model = map[int]*val{k: v}
			} else {
				model[k] = v
			}
			n, sum := 1, d.value.(*val).size
			if d.more != nil {
				sum += derivedMoreSize
			}
			if d.key != d.value.(*val).key {
				t.Fatal("first pair mixed")
			}
			if d.more != nil {
				for _, p := range d.more.pairs[:d.more.n] {
					if p.key != p.value.(*val).key {
						t.Fatal("pair mixed")
					}
					n++
					sum += p.value.(*val).size
				}
				for _, p := range d.more.pairs[d.more.n:] {
					if p.key != nil || p.value != nil {
						t.Fatal("stale pair past n")
					}
				}
			}
			if n != len(model) || sum != d.size || n > maxDerived || (n > 1 && sum > DerivedAllowance) {
				t.Fatalf("run %d: n %d model %d sum %d size %d", run, n, len(model), sum, d.size)
			}
		}
	}
}

// derivedMoreSize is no less than derivedMore's allocation.
func TestDerivedMoreSize(t *testing.T) {
	var sink *derivedMore
	allocs := testing.AllocsPerRun(10, func() { sink = &derivedMore{} })
	_ = sink
	if n := reflect.TypeFor[derivedMore]().Size(); n > derivedMoreSize || allocs != 1 {
		t.Fatalf("derivedMore is %d bytes (%v allocs), derivedMoreSize %d", n, allocs, derivedMoreSize)
	}
	// Its size class: the smallest of Go's classes that holds it.
	classes := []uintptr{8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160}
	for _, c := range classes {
		if c >= reflect.TypeFor[derivedMore]().Size() {
			if c != derivedMoreSize {
				t.Fatalf("derivedMore's class is %d, derivedMoreSize %d", c, derivedMoreSize)
			}
			return
		}
	}
}
