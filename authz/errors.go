package authz

// Rejections of a token. Each kind of rejection has one sentinel, and each
// sentinel carries its Reason, so adapters map them to gRPC codes, HTTP
// statuses and OAuth error codes in one table (ReasonOf). Errors returned by
// the engine wrap one of these with %w; the wrapped message adds detail for
// people ("token is malformed: header is not a JSON object") and is written
// by vakt, never copied from a library or a remote server, so Introspect may
// show it. The exception is ErrKeysUnavailable, whose wrapped message names
// the failed fetch (URLs included) and goes to the log only.
var (
	ErrMalformed           error = &rejection{ReasonTokenMalformed}
	ErrTooLarge            error = &rejection{ReasonTokenTooLarge}
	ErrUnsupported         error = &rejection{ReasonTokenUnsupported}
	ErrAlgorithmNotAllowed error = &rejection{ReasonTokenAlgorithm}
	ErrHeaderNotAllowed    error = &rejection{ReasonTokenHeader}
	ErrSignatureInvalid    error = &rejection{ReasonTokenSignature}
	ErrKeyNotFound         error = &rejection{ReasonTokenKeyNotFound}
	ErrKeysUnavailable     error = &rejection{ReasonKeysUnavailable}
	ErrIssuerNotTrusted    error = &rejection{ReasonTokenIssuer}
	ErrAudienceInvalid     error = &rejection{ReasonTokenAudience}
	ErrExpired             error = &rejection{ReasonTokenExpired}
	ErrNotYetValid         error = &rejection{ReasonTokenNotYetValid}
	ErrClaimInvalid        error = &rejection{ReasonTokenClaim}
	ErrUnknownProvider     error = &rejection{ReasonProviderUnknown}
	ErrTypeNotAllowed      error = &rejection{ReasonTokenType}
	ErrClaimNotForwardable error = &rejection{ReasonClaimNotForwardable}

	// Request and policy rejections.
	ErrBadPath            error = &rejection{ReasonPathInvalid}
	ErrBadAuthorization   error = &rejection{ReasonAuthorizationInvalid}
	ErrApplicationUnknown error = &rejection{ReasonApplicationUnknown}
	ErrAccessDenied       error = &rejection{ReasonCallerDenied}
)
