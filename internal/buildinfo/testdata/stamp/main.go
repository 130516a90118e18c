// Command stamp prints buildinfo.Read(), for TestStampedAtLinkTime.
package main

import (
	"fmt"

	"github.com/vakt-dev/vakt/internal/buildinfo"
)

func main() {
	b := buildinfo.Read()
	fmt.Printf("%s %s %s\n", b.Version, b.Revision, b.GoVersion)
}
