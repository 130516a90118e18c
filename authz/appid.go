package authz

import (
	"errors"
	"strings"
)

// AppID identifies an application: cluster:namespace:name, as NAIS writes
// it. Its parts are never empty and never contain ':'.
type AppID struct {
	Cluster, Namespace, Name string
}

var errAppID = errors.New("an application id is cluster:namespace:name, each part non-empty")

// ParseAppID reads cluster:namespace:name. It does not allocate: the parts
// point into s.
func ParseAppID(s string) (AppID, error) {
	cluster, rest, ok1 := strings.Cut(s, ":")
	namespace, name, ok2 := strings.Cut(rest, ":")
	if !ok1 || !ok2 || cluster == "" || namespace == "" || name == "" || strings.IndexByte(name, ':') >= 0 {
		return AppID{}, errAppID
	}
	return AppID{Cluster: cluster, Namespace: namespace, Name: name}, nil
}

// String returns cluster:namespace:name.
func (id AppID) String() string { return id.Cluster + ":" + id.Namespace + ":" + id.Name }

// isApplicationID reports whether s has the shape of an AppID.
func isApplicationID(s string) bool {
	_, err := ParseAppID(s)
	return err == nil
}
