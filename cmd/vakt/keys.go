package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/vakt-dev/vakt/config"
	"github.com/vakt-dev/vakt/exchange"
	"github.com/vakt-dev/vakt/kube"
)

const keysUsage = `usage:
  vakt keys generate [--alg RS256|ES256|EdDSA] (--out FILE | --add FILE)
      --out: write a new private key set of one key to FILE (new, mode 0600)
      --add: append a new key to FILE (published, not yet signing)
      neither: print the new key set (to a pipe: it is a private key)
  vakt keys promote FILE KID    make KID the signing key
  vakt keys retire FILE KID     remove KID (once its tokens have expired)
  vakt keys rotate [--kubeconfig FILE] [--jwker] NAMESPACE/NAME
      ask vakt for a new client key for the Application (or Jwker) NAME,
      whose spec.secretName has vakt make its key (Kubernetes-native mode)

Rotation of vakt's own signing keys: generate --add, wait for verifiers to
fetch /jwks (5 minutes), promote, wait one token lifetime, retire the old
key. vakt reloads FILE.

Rotation of a client key: keys rotate sets the annotation
vakt.dev/rotate-key; the elected replica writes a new key into the Secret
and keeps the old one valid for kubernetes.keyOverlap (24h by default).
Restart the application's pods within it: they read the Secret at start.
`

func keys(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, keysUsage)
		return 2
	}
	switch args[0] {
	case "generate":
		fs := flag.NewFlagSet("keys generate", flag.ContinueOnError)
		fs.SetOutput(stderr)
		alg := fs.String("alg", "ES256", "RS256, ES256 or EdDSA")
		add := fs.String("add", "", "append the key to this keys file")
		out := fs.String("out", "", "write a new keys file (mode 0600; it must not exist)")
		if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 0 || (*add != "" && *out != "") {
			fmt.Fprint(stderr, keysUsage)
			return 2
		}
		k, err := exchange.GenerateSigningKey(*alg)
		if err != nil {
			fmt.Fprintf(stderr, "vakt keys: %v\n", err)
			return 1
		}
		if *out != "" {
			if _, err := os.Lstat(*out); err == nil {
				fmt.Fprintf(stderr, "vakt keys: %s exists; use --add to add a key to it\n", *out)
				return 1
			}
			if err := exchange.WriteKeysFile(*out, []*exchange.SigningKey{k}); err != nil {
				fmt.Fprintf(stderr, "vakt keys: %v\n", err)
				return 1
			}
			fmt.Fprintf(stdout, "wrote %s (mode 0600): key %s (%s) signs\n", *out, k.ID, k.Alg)
			return 0
		}
		if *add == "" {
			data, err := exchange.MarshalPrivateKeys([]*exchange.SigningKey{k})
			if err != nil {
				fmt.Fprintf(stderr, "vakt keys: %v\n", err)
				return 1
			}
			fmt.Fprintf(stdout, "%s\n", data)
			return 0
		}
		return editKeys(*add, stdout, stderr, func(ks []*exchange.SigningKey) ([]*exchange.SigningKey, error) {
			return exchange.AddKey(ks, k)
		}, "added "+k.ID+" (published, not signing)")
	case "rotate":
		return rotateClientKey(args[1:], stdout, stderr)
	case "promote", "retire":
		if len(args) != 3 {
			fmt.Fprint(stderr, keysUsage)
			return 2
		}
		file, kid := args[1], args[2]
		if args[0] == "promote" {
			return editKeys(file, stdout, stderr, func(ks []*exchange.SigningKey) ([]*exchange.SigningKey, error) {
				return exchange.PromoteKey(ks, kid)
			}, kid+" signs now")
		}
		return editKeys(file, stdout, stderr, func(ks []*exchange.SigningKey) ([]*exchange.SigningKey, error) {
			return exchange.RetireKey(ks, kid)
		}, kid+" retired")
	default:
		fmt.Fprint(stderr, keysUsage)
		return 2
	}
}

func editKeys(file string, stdout, stderr io.Writer, edit func([]*exchange.SigningKey) ([]*exchange.SigningKey, error), done string) int {
	ks, err := exchange.LoadKeysFile(file)
	if err == nil {
		ks, err = edit(ks)
	}
	if err == nil {
		err = exchange.WriteKeysFile(file, ks)
	}
	if err != nil {
		fmt.Fprintf(stderr, "vakt keys: %s: %v\n", file, err)
		return 1
	}
	fmt.Fprintln(stdout, done)
	return 0
}

// rotateClientKey asks vakt for a new client key: it sets the resource's
// annotation vakt.dev/rotate-key to the time, a value never honoured
// before.
func rotateClientKey(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("keys rotate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kubeconfig := fs.String("kubeconfig", "", "a kubeconfig file ($KUBECONFIG, then ~/.kube/config, when not set)")
	jwker := fs.Bool("jwker", false, "the resource is NAIS's Jwker, not an Application")
	if err := fs.Parse(args); err != nil || fs.NArg() != 1 {
		fmt.Fprint(stderr, keysUsage)
		return 2
	}
	ns, name, ok := strings.Cut(fs.Arg(0), "/")
	if !ok || ns == "" || name == "" {
		fmt.Fprintf(stderr, "vakt keys rotate: %q is not NAMESPACE/NAME\n", fs.Arg(0))
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kind := config.KindApplication
	if *jwker {
		kind = config.KindJwker
	}
	value, err := kube.RotateKey(ctx, *kubeconfig, *jwker, ns, name)
	if err != nil {
		fmt.Fprintf(stderr, "vakt keys rotate: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "asked for a new key for %s %s/%s (%s=%s); the old one stays valid for kubernetes.keyOverlap: restart the application's pods within it\n",
		kind, ns, name, kube.AnnotationRotateKey, value)
	return 0
}
