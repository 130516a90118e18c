// Package authz is vakt's engine: it validates bearer tokens and decides
// requests by the access policy of the applications. It has no gRPC or HTTP
// types; the server package turns requests into its values and its answers
// into responses.
//
// The validation engine is a [Validator] over identity providers. A
// [Provider] trusts one issuer and verifies with that issuer's keys only,
// held in a fixed set ([StaticKeys]) or fetched as a JWK Set and kept fresh
// ([RemoteKeys]). A token that passed is remembered in a verified-token
// cache, so that the same token again costs a hash and a lookup; a hit
// checks exp and nbf again. The cache ([TokenCache]) depends on the
// providers only, and outlives the Validators of successive
// configurations; a provider whose configuration changed is retired, and
// its tokens with it.
//
// The policy engine is a [Policy] of applications: the inbound rules that
// name which applications may call each one, its routes and the scopes they
// need, and the external identity providers whose tokens it accepts.
// [NormalizePath] gives the path that routes are matched against.
//
// A [Checker] decides a request to an application with both.
//
// Every refusal is a [Reason]: a fixed code with a description that a
// client may be shown. Errors of the engine wrap a sentinel (ErrExpired,
// ErrMalformed, ...) that carries its Reason, and [ReasonOf] finds it. A
// Reason whose [Reason.Outage] is true means that vakt could not decide:
// it is never answered as a refusal.
//
// # Token validation
//
// The steps a token must pass, in order, each with the error it gives, are
// written once, in the repository's docs/token-validation.md ("What a token
// must pass"): the first step a token fails gives the error. A change to
// the order or to a step's error changes that page with it.
//
// # Checking a request
//
// [Checker.Check] decides a request by the steps of docs/envoy-istio.md
// ("What is checked"), in that order, with the Reason of the first step
// that refuses it; a public route is allowed without looking at any token.
//
// The identity provider an allow names is [Provider.IdentityProvider]: the
// verifying provider's issuer, or for vakt's own tokens the idp they carry.
package authz
