package server

import (
	"crypto/tls"
	"errors"

	"github.com/vakt-dev/vakt/config"
)

// WithTLS serves gRPC and HTTP over TLS (1.2 at least), before the services
// are served. Each handshake takes the certificate and client CAs that
// tlsOf returns then: the configuration in force, so that a reload renews
// them. With client CAs a client certificate is verified when presented,
// and refused when absent if the configuration requires one.
func (s *Services) WithTLS(tlsOf func() *config.TLS) *Services {
	s.grpcTLS = serverTLS(tlsOf, []string{"h2"})
	s.httpTLS = serverTLS(tlsOf, []string{"h2", "http/1.1"})
	return s
}

func serverTLS(tlsOf func() *config.TLS, protos []string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: protos,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			t := tlsOf()
			if t == nil || t.Certificate() == nil {
				// Turning TLS off needs a restart (a reload refuses it).
				return nil, errors.New("the configuration in force has no certificate")
			}
			c := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: protos, Certificates: []tls.Certificate{*t.Certificate()}}
			if cas := t.ClientCAs(); cas != nil {
				c.ClientCAs = cas
				c.ClientAuth = tls.VerifyClientCertIfGiven
				if t.RequireClientCert {
					c.ClientAuth = tls.RequireAndVerifyClientCert
				}
			}
			return c, nil
		},
	}
}
