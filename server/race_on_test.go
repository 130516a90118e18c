//go:build race

package server

// raceEnabled: the race detector is on, and allocation counts run higher.
const raceEnabled = true
