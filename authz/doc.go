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
// A token must pass these steps, in this order; the first it fails gives
// the error:
//
//  1. at most the Validator's MaxTokenSize bytes (ErrTooLarge);
//  2. the compact JWS serialization, not JWS JSON or JWE (ErrUnsupported),
//     of three dot-separated segments in the base64url alphabet without
//     padding (ErrMalformed);
//  3. a header that is canonical base64url of a JSON object repeating no
//     member name, with a string alg (ErrMalformed) other than none
//     (ErrAlgorithmNotAllowed), and no crit, b64, jku, x5u or jwk member
//     (ErrHeaderNotAllowed); then a signature segment that is not empty
//     (ErrSignatureInvalid);
//  4. a payload and signature in canonical base64url, the payload a JSON
//     object repeating no member name and holding no number a float64
//     cannot (ErrMalformed), with exp present and
//     exp, nbf and iat JSON numbers, iss and sub strings, and aud a string or
//     an array of strings (ErrClaimInvalid);
//  5. alg on the provider's allowlist, which never holds none or an HMAC
//     algorithm (ErrAlgorithmNotAllowed);
//  6. iss equal to the provider's issuer, byte for byte
//     (ErrIssuerNotTrusted);
//  7. exp and nbf, with the provider's leeway (ErrExpired, ErrNotYetValid),
//     and iat no later than now plus the leeway (ErrNotYetValid); typ, when
//     the provider requires one (at+jwt for vakt's own tokens) or refuses
//     one (at+jwt in a client assertion) (ErrTypeNotAllowed);
//  8. aud containing one of the provider's audiences, when it has some or
//     requires one (ErrAudienceInvalid);
//  9. a key with the token's kid in this provider's key set, and no other's
//     (ErrKeyNotFound; ErrKeysUnavailable, an outage, while the provider has
//     no keys at all);
//  10. alg one that key may verify (ErrAlgorithmNotAllowed);
//  11. the signature (ErrSignatureInvalid).
//
// A provider whose answers must not tell a prober what exists moves checks
// after the signature: vakt's own provider its audience, which must be a
// registered application (ProviderConfig.ApplicationAudience: the
// Validator's applications, asked of every token, cached or not), a
// client's assertions steps 6 to 8 (ProviderConfig.SignatureFirst).
//
// [Validator.Validate] names the provider, before step 1
// (ErrUnknownProvider if it has none of that name).
// [Validator.ValidateByIssuer] and the Checker choose it by iss after step
// 4: an iss that no provider has is ErrIssuerNotTrusted. A token found in
// the cache after step 1 skips the other steps but for exp and nbf, which
// are checked again.
//
// # Checking a request
//
// [Checker.Check] decides a request in this order, with the Reason of the
// first step that refuses it:
//
//  1. the path, normalized, with ';' refused or stripped as the application
//     says (ReasonPathInvalid);
//  2. the route: when the application has routes, the first that matches
//     method and path (ReasonRouteNotFound); a public route is allowed
//     without looking at any token;
//  3. the Authorization header: one bearer token (ReasonTokenMissing,
//     ReasonAuthorizationInvalid), valid as above (the Reason of its error;
//     ReasonKeysUnavailable is an outage);
//  4. whose token: vakt's own, for this application (ReasonTokenAudience),
//     or of an identity provider that the application lists
//     (ReasonTokenIssuer), for an audience it lists with it
//     (ReasonTokenAudience);
//  5. the caller the token names (client_id, else azp): when it is an
//     application id, the inbound rules must allow it (ReasonCallerDenied);
//     vakt's own tokens must name one (ReasonCallerMissing);
//  6. every scope of the route (ReasonScopeInsufficient, with the route's
//     scopes in Decision.Scope);
//  7. every claim the allow response forwards as a header value (sub, the
//     scopes, idp of vakt's own tokens, the application's forwardClaims)
//     can be one as it is (ReasonClaimNotForwardable).
//
// The identity provider an allow names is [Provider.IdentityProvider]: the
// verifying provider's issuer, or for vakt's own tokens the idp they carry.
package authz
