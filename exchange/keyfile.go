package exchange

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// Key rotation never leaves a verifier with an unknown kid. In steps:
//  1. AddKey: the new key is published (every key in the file is) but the
//     first key still signs. Wait until relying parties have fetched the new
//     key set (vakt's /jwks says max-age=300: five minutes).
//  2. PromoteKey: the new key moves first and signs from now on. The old
//     key stays published, so tokens it signed still verify.
//  3. RetireKey: once every token the old key signed has expired (the token
//     lifetime after step 2), the old key is removed.
//
// vakt reloads the keys file when it changes; no restart is needed.

// AddKey returns keys with k appended: published, not signing.
func AddKey(keys []*SigningKey, k *SigningKey) ([]*SigningKey, error) {
	if slices.ContainsFunc(keys, func(x *SigningKey) bool { return x.ID == k.ID }) {
		return nil, fmt.Errorf("kid %q is already in the key set", k.ID)
	}
	return append(slices.Clone(keys), k), nil
}

// PromoteKey returns keys with kid moved first, so that it signs.
func PromoteKey(keys []*SigningKey, kid string) ([]*SigningKey, error) {
	i := slices.IndexFunc(keys, func(x *SigningKey) bool { return x.ID == kid })
	if i < 0 {
		return nil, fmt.Errorf("kid %q is not in the key set", kid)
	}
	out := append([]*SigningKey{keys[i]}, slices.Delete(slices.Clone(keys), i, i+1)...)
	return out, nil
}

// RetireKey returns keys without kid. The signing key cannot be retired.
func RetireKey(keys []*SigningKey, kid string) ([]*SigningKey, error) {
	i := slices.IndexFunc(keys, func(x *SigningKey) bool { return x.ID == kid })
	switch {
	case i < 0:
		return nil, fmt.Errorf("kid %q is not in the key set", kid)
	case i == 0:
		return nil, fmt.Errorf("kid %q signs; promote another key first", kid)
	}
	return slices.Delete(slices.Clone(keys), i, i+1), nil
}

// WriteKeysFile writes keys as a private JWK Set, readable by the owner
// only. The file is replaced atomically, so a reload never reads half.
func WriteKeysFile(path string, keys []*SigningKey) error {
	data, err := MarshalPrivateKeys(keys)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".keys-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
