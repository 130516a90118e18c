package config

import (
	"cmp"
	"path/filepath"
	"time"
)

const defaultTokenLifetime = 15 * time.Minute

// DefaultKeyOverlap is how long a replaced client key stays valid
// (kubernetes.keyOverlap): a day for the application's pods to restart.
const DefaultKeyOverlap = 24 * time.Hour

// Defaults of kubernetes.namespaceLimits.
const (
	DefaultNamespaceResources        = 100
	DefaultNamespaceRoutes           = 1000
	DefaultNamespaceRules            = 1000
	DefaultNamespaceChangesPerMinute = 60
	DefaultNamespaceChangeBurst      = 10
)

// Shutdown defaults: long enough for Kubernetes to take a pod's endpoints
// out of rotation, short enough for its default 30 s termination grace.
const (
	DefaultDrainDelay = 5 * time.Second
	DefaultGrace      = 10 * time.Second
)

// applyDefaults fills in what a configuration may leave out and resolves
// the signing key file against dir. It reports nothing: validate checks
// the result, defaults included.
func (c *Config) applyDefaults(dir string) {
	if c.Listen.GRPC == "" {
		c.Listen.GRPC = DefaultGRPCAddress
	}
	if c.Listen.HTTP == "" {
		c.Listen.HTTP = DefaultHTTPAddress
	}
	if c.Listen.Admin == "" {
		c.Listen.Admin = DefaultAdminAddress
	}
	if c.Log.Decisions == "" {
		c.Log.Decisions = LogDecisionsDeny
	}
	if c.TrustDomain == "" {
		c.TrustDomain = DefaultTrustDomain
	}
	if c.Signing.Algorithm == "" {
		c.Signing.Algorithm = "RS256"
	}
	if !c.Shutdown.DrainDelay.set {
		c.Shutdown.DrainDelay = Duration{d: DefaultDrainDelay, set: true}
	}
	if !c.Shutdown.Grace.set {
		c.Shutdown.Grace = Duration{d: DefaultGrace, set: true}
	}
	nl := &c.Kubernetes.NamespaceLimits
	nl.Resources = cmp.Or(nl.Resources, DefaultNamespaceResources)
	nl.Routes = cmp.Or(nl.Routes, DefaultNamespaceRoutes)
	nl.Rules = cmp.Or(nl.Rules, DefaultNamespaceRules)
	nl.ChangesPerMinute = cmp.Or(nl.ChangesPerMinute, DefaultNamespaceChangesPerMinute)
	nl.ChangeBurst = cmp.Or(nl.ChangeBurst, DefaultNamespaceChangeBurst)
	if !c.Kubernetes.KeyOverlap.set {
		c.Kubernetes.KeyOverlap = Duration{d: DefaultKeyOverlap, set: true}
	}
	if !c.Signing.TokenLifetime.set {
		c.Signing.TokenLifetime = Duration{d: defaultTokenLifetime, set: true}
	}
	c.Signing.KeysFile = resolvePath(dir, c.Signing.KeysFile)
	c.Kubernetes.Kubeconfig = resolvePath(dir, c.Kubernetes.Kubeconfig)
	for i := range c.Applications {
		if a := &c.Applications[i]; a.Cluster == "" {
			a.Cluster = c.Cluster
		}
	}
}

// resolveRules fills in each rule's namespace and cluster from the
// application it belongs to. It runs after validate, which must see the
// rules as written: a cluster without a namespace is an error, and a
// namespace copied from an invalid application is not the rule's fault.
func (c *Config) resolveRules() {
	for i := range c.Applications {
		c.Applications[i].resolveRules()
	}
}

// resolveRules fills in a's rules' namespace and cluster from a's.
func (a *Application) resolveRules() {
	for j := range a.AccessPolicy.Inbound.Rules {
		r := &a.AccessPolicy.Inbound.Rules[j]
		if r.Namespace == "" {
			r.Namespace = a.Namespace
		}
		if r.Cluster == "" {
			r.Cluster = a.Cluster
		}
	}
}

// resolvePath makes a relative file name relative to dir.
func resolvePath(dir, name string) string {
	if name == "" || filepath.IsAbs(name) {
		return name
	}
	return filepath.Join(dir, name)
}
