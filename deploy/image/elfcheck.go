//go:build ignore

// Elfcheck says whether the ELF files named on its command line are statically
// linked, reading them rather than asking file(1): no program interpreter
// (PT_INTERP) and no shared libraries needed (DT_NEEDED). It exits 1 if one is
// not. deploy/image/build.sh runs it on the binary in the image:
//
//	go run deploy/image/elfcheck.go FILE...
package main

import (
	"debug/elf"
	"fmt"
	"os"
)

func main() {
	code := 0
	for _, path := range os.Args[1:] {
		if err := check(path); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			code = 1
		}
	}
	os.Exit(code)
}

func check(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		switch p.Type {
		case elf.PT_INTERP:
			b := make([]byte, p.Filesz)
			p.ReadAt(b, 0)
			return fmt.Errorf("dynamically linked: program interpreter %q", string(b[:max(len(b)-1, 0)]))
		case elf.PT_DYNAMIC:
			libs, err := f.ImportedLibraries()
			if err != nil {
				return fmt.Errorf("reading its dynamic section: %v", err)
			}
			if len(libs) > 0 {
				return fmt.Errorf("dynamically linked: needs %v", libs)
			}
		}
	}
	fmt.Printf("%s: statically linked ELF %s %s %s (no PT_INTERP, no DT_NEEDED)\n", path, f.Class, f.Type, f.Machine)
	return nil
}
