package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/vakt-dev/vakt/exchange"
)

const keysUsage = `usage:
  vakt keys generate [--alg RS256|ES256|EdDSA] (--out FILE | --add FILE)
      --out: write a new private key set of one key to FILE (new, mode 0600)
      --add: append a new key to FILE (published, not yet signing)
      neither: print the new key set (to a pipe: it is a private key)
  vakt keys promote FILE KID    make KID the signing key
  vakt keys retire FILE KID     remove KID (once its tokens have expired)

Rotation: generate --add, wait for verifiers to fetch /jwks (5 minutes),
promote, wait one token lifetime, retire the old key. vakt reloads FILE.
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
