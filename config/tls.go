package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
)

// TLS is the TLS of vakt's gRPC and HTTP listeners: a certificate and its
// key, read again on every reload (a renewed certificate, or Kubernetes'
// swap of a Secret's files, needs no restart), and optionally the CAs of
// clients' certificates (mutual TLS). TLS 1.2 is the least vakt speaks.
type TLS struct {
	CertFile string `yaml:"certFile"`
	KeyFile  string `yaml:"keyFile"`
	// ClientCAFile, when set, holds the CAs (PEM) that client
	// certificates are verified against; a client that presents none is
	// still served unless RequireClientCert.
	ClientCAFile      string `yaml:"clientCAFile"`
	RequireClientCert bool   `yaml:"requireClientCert"`

	cert      *tls.Certificate
	clientCAs *x509.CertPool
}

// Certificate is the certificate and key read from CertFile and KeyFile.
func (t *TLS) Certificate() *tls.Certificate { return t.cert }

// ClientCAs are the CAs read from ClientCAFile; nil without one.
func (t *TLS) ClientCAs() *x509.CertPool { return t.clientCAs }

// RedisTLS is TLS to Redis: the CAs that verify the server (the system's
// when CAFile is empty), and a client certificate when Redis asks for one.
type RedisTLS struct {
	CAFile     string `yaml:"caFile"`
	CertFile   string `yaml:"certFile"`
	KeyFile    string `yaml:"keyFile"`
	ServerName string `yaml:"serverName"` // default: the address's host

	config *tls.Config
}

// Config is the client TLS configuration read from the files.
func (t *RedisTLS) Config() *tls.Config { return t.config.Clone() }

// loadSecrets reads the files the listeners and Redis need: certificates,
// keys, CAs and the Redis password. Paths were resolved by applyDefaults.
func (c *Config) loadSecrets(v *validator) {
	if t := c.Listen.TLS; t != nil {
		switch {
		case t.CertFile == "" || t.KeyFile == "":
			v.fail("listen.tls", "needs certFile and keyFile")
		default:
			cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
			if err != nil {
				v.fail("listen.tls", "%v", cleanTLSError(err))
			} else {
				t.cert = &cert
			}
		}
		if t.ClientCAFile != "" {
			pool, err := readCAs(t.ClientCAFile)
			if err != nil {
				v.fail("listen.tls.clientCAFile", "%v", err)
			}
			t.clientCAs = pool
		} else if t.RequireClientCert {
			v.fail("listen.tls.requireClientCert", "needs clientCAFile, the CAs to verify client certificates against")
		}
	}
	r := c.Replay.Redis
	if r == nil {
		return
	}
	given := 0
	for _, s := range []string{r.Password, r.PasswordFile, r.PasswordEnv} {
		if s != "" {
			given++
		}
	}
	switch {
	case given > 1:
		v.fail("replay.redis", "give at most one of password, passwordFile and passwordEnv")
	case r.PasswordFile != "":
		data, err := os.ReadFile(r.PasswordFile)
		if err != nil {
			v.fail("replay.redis.passwordFile", "%v", errors.Unwrap(err))
		}
		// A file written by hand or by kubectl often ends with a newline
		// that is no part of the password.
		r.secret = strings.TrimRight(string(data), "\r\n")
		if err == nil && r.secret == "" {
			v.fail("replay.redis.passwordFile", "%s is empty", r.PasswordFile)
		}
	case r.PasswordEnv != "":
		r.secret = os.Getenv(r.PasswordEnv)
		if r.secret == "" {
			v.fail("replay.redis.passwordEnv", "environment variable %s is empty or not set", r.PasswordEnv)
		}
	case r.Password != "":
		r.secret = r.Password
		v.warn("replay.redis.password is written in the configuration; prefer passwordFile (a mounted Secret) or passwordEnv")
	}
	if t := r.TLS; t != nil {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
		if t.CAFile != "" {
			pool, err := readCAs(t.CAFile)
			if err != nil {
				v.fail("replay.redis.tls.caFile", "%v", err)
			}
			cfg.RootCAs = pool
		}
		switch {
		case (t.CertFile == "") != (t.KeyFile == ""):
			v.fail("replay.redis.tls", "give certFile and keyFile together, or neither")
		case t.CertFile != "":
			cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
			if err != nil {
				v.fail("replay.redis.tls", "%v", cleanTLSError(err))
			} else {
				cfg.Certificates = []tls.Certificate{cert}
			}
		}
		t.config = cfg
	}
}

// readCAs reads a PEM file of one or more CA certificates.
func readCAs(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, errors.Unwrap(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}

// cleanTLSError drops the "tls: " prefix crypto/tls puts on its errors,
// and says which file an open failed on.
func cleanTLSError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %v", pe.Path, pe.Err)
	}
	return errors.New(strings.TrimPrefix(err.Error(), "tls: "))
}

// resolveSecretPaths resolves the TLS and Redis file names against dir.
func (c *Config) resolveSecretPaths(dir string) {
	if t := c.Listen.TLS; t != nil {
		t.CertFile, t.KeyFile, t.ClientCAFile = resolvePath(dir, t.CertFile), resolvePath(dir, t.KeyFile), resolvePath(dir, t.ClientCAFile)
	}
	if r := c.Replay.Redis; r != nil {
		r.PasswordFile = resolvePath(dir, r.PasswordFile)
		if t := r.TLS; t != nil {
			t.CAFile, t.CertFile, t.KeyFile = resolvePath(dir, t.CAFile), resolvePath(dir, t.CertFile), resolvePath(dir, t.KeyFile)
		}
	}
}

// Files are the files the configuration names, resolved: what a reload
// must follow besides the configuration file itself.
func (c *Config) Files() []string {
	var files []string
	add := func(f string) {
		if f != "" {
			files = append(files, f)
		}
	}
	add(c.Signing.KeysFile)
	for i := range c.Applications {
		if f := c.Applications[i].JWKSFile; f != "" {
			add(resolvePath(c.dir, f))
		}
	}
	if t := c.Listen.TLS; t != nil {
		add(t.CertFile)
		add(t.KeyFile)
		add(t.ClientCAFile)
	}
	if r := c.Replay.Redis; r != nil {
		add(r.PasswordFile)
		if t := r.TLS; t != nil {
			add(t.CAFile)
			add(t.CertFile)
			add(t.KeyFile)
		}
	}
	return files
}
