package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/vakt-dev/vakt/agent"
	"github.com/vakt-dev/vakt/exchange"
)

// assertion prints a client assertion, as vakt agent builds them: for
// trying token exchange by hand with curl.
func assertion(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("assertion", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keyFile := fs.String("key", "", "the client's private JWK (one key, as in deploy/examples/keys/)")
	client := fs.String("client", "", "the client id, cluster:namespace:name")
	audience := fs.String("audience", "", "the token endpoint")
	if err := fs.Parse(args); err != nil || *keyFile == "" || *client == "" || *audience == "" {
		fmt.Fprint(stderr, "usage: vakt assertion --key FILE --client ID --audience URL\n")
		return 2
	}
	data, err := os.ReadFile(*keyFile)
	if err != nil {
		fmt.Fprintf(stderr, "vakt assertion: %v\n", err)
		return 1
	}
	key, err := privateJWK(data)
	if err != nil {
		fmt.Fprintf(stderr, "vakt assertion: %s: %v\n", *keyFile, err)
		return 1
	}
	b := &agent.AssertionBuilder{ClientID: *client, TokenEndpoint: *audience, Key: key, Now: time.Now}
	a, err := b.Build()
	if err != nil {
		fmt.Fprintf(stderr, "vakt assertion: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, a)
	return 0
}

func privateJWK(data []byte) (*exchange.SigningKey, error) {
	keys, err := exchange.ParsePrivateKeys(append(append([]byte(`{"keys":[`), data...), "]}"...))
	if err != nil {
		return nil, fmt.Errorf("not a private JWK with kid")
	}
	return keys[0], nil
}
