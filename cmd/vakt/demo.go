package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/vakt-dev/vakt/agent"
	"github.com/vakt-dev/vakt/authz"
	"github.com/vakt-dev/vakt/cmd/vakt/internal/devidp"
	"github.com/vakt-dev/vakt/deploy/examples"
	"github.com/vakt-dev/vakt/exchange"
	vaktv1 "github.com/vakt-dev/vakt/gen/vakt/v1"
	"github.com/vakt-dev/vakt/server"
)

const (
	demoApp1 = "dev-gcp:team-a:app-1"
	demoApp3 = "dev-gcp:team-c:app-3"
	demoAppB = "dev-gcp:team-b:app-b"
	// What the printed commands talk to: vakt serve on its defaults.
	serveHTTP = "http://127.0.0.1:8080"
	serveGRPC = "127.0.0.1:9000"
)

// demoPrinter tells the story and keeps the score.
type demoPrinter struct {
	w      io.Writer
	failed []string
	step   string
}

func (p *demoPrinter) title(s string) {
	p.step = s
	fmt.Fprintf(p.w, "\n== %s\n", s)
}
func (p *demoPrinter) cmd(s string)                { fmt.Fprintf(p.w, "$ %s\n", s) }
func (p *demoPrinter) say(format string, a ...any) { fmt.Fprintf(p.w, "  "+format+"\n", a...) }
func (p *demoPrinter) expect(ok bool, what string) {
	if ok {
		fmt.Fprintf(p.w, "  ✓ %s\n", what)
		return
	}
	fmt.Fprintf(p.w, "  ✗ %s: NOT as expected\n", what)
	p.failed = append(p.failed, p.step+": "+what)
}

// demo runs vakt on the development defaults, on free loopback ports, and
// plays the story of the NAIS documentation step by step. It exits 0 only
// if every step gave the expected answer.
func demo(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		fmt.Fprint(stderr, "usage: vakt demo\n")
		return 2
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	// The demo never hangs: every step shares one deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	ls, err := server.Listen("127.0.0.1:0", "127.0.0.1:0", "")
	if err != nil {
		fmt.Fprintf(stderr, "vakt demo: %v\n", err)
		return 1
	}
	issuer := "http://" + ls.HTTP.Addr().String()
	idp, err := devidp.New(issuer, nil)
	if err != nil {
		fmt.Fprintf(stderr, "vakt demo: %v\n", err)
		return 1
	}
	loader := &server.Loader{Config: developmentConfig(idp, issuer), Replay: exchange.NewMemoryReplay(exchange.MemoryReplayConfig{}), Logger: log}
	cfg, err := loader.Config()
	if err != nil {
		fmt.Fprintf(stderr, "vakt demo: %v\n", err)
		return 1
	}
	if loader.Ephemeral, err = newEphemeralSigner(cfg, log); err != nil {
		fmt.Fprintf(stderr, "vakt demo: %v\n", err)
		return 1
	}
	var cur server.Current
	rt, err := loader.Build(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "vakt demo: %v\n", err)
		return 1
	}
	cur.Store(rt)
	served := make(chan error, 1)
	go func() {
		services := server.AuthorityServices(&cur, server.NewMetrics(), log)
		services.Mount(devidp.PathPrefix, idp.Handler())
		served <- server.Serve(ctx, services, ls)
	}()
	defer func() { cancel(); <-served }()
	conn, err := grpc.NewClient(ls.GRPC.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintf(stderr, "vakt demo: %v\n", err)
		return 1
	}
	defer conn.Close()
	xc := vaktv1.NewTokenExchangeServiceClient(conn)
	ic := vaktv1.NewIntrospectionServiceClient(conn)
	ac := authv3.NewAuthorizationClient(conn)

	p := &demoPrinter{w: stdout}
	fmt.Fprintf(stdout, "vakt demo: vakt on its development defaults, at %s (gRPC %s).\n", issuer, ls.GRPC.Addr())
	fmt.Fprintf(stdout, "The development identity provider at %s%s stands in for ID-porten: it issues tokens to anyone, and exists only here.\n", issuer, devidp.PathPrefix)
	fmt.Fprintf(stdout, "Each step shows the command that repeats it by hand against `go run ./cmd/vakt serve` (%s, gRPC %s).\n", serveHTTP, serveGRPC)

	// 1. A citizen's token.
	p.title("1. A citizen logs in: a token from the development identity provider")
	p.cmd(`CITIZEN=$(curl -s '` + serveHTTP + `/devidp/token?sub=citizen-1&pid=12345678910&scope=read:users' | jq -r .access_token)`)
	citizen, err := fetchDevToken(issuer + devidp.PathPrefix + "/token?sub=citizen-1&pid=12345678910&scope=read:users")
	p.expect(err == nil && strings.Count(citizen, ".") == 2, "a signed token for sub citizen-1, scope read:users")

	// 2. app-1 exchanges it for a token aimed at app-b.
	p.title("2. app-1 exchanges the citizen's token for one aimed at app-b (app-b's rule: - application: app-1)")
	p.cmd(`ASSERTION=$(go run ./cmd/vakt assertion --key deploy/examples/keys/app-1.jwk --client ` + demoApp1 + ` --audience ` + serveHTTP + `/token)`)
	p.cmd(`TOKEN=$(curl -s ` + serveHTTP + `/token -d grant_type=` + exchange.GrantTypeTokenExchange + ` -d client_assertion_type=` + exchange.ClientAssertionTypeJWT + ` -d client_assertion=$ASSERTION -d subject_token_type=` + exchange.TokenTypeJWT + ` -d subject_token=$CITIZEN -d audience=` + demoAppB + ` | jq -r .access_token)`)
	key1, _ := privateJWK(examples.App1Key)
	key3, _ := privateJWK(examples.App3Key)
	assert := func(client string, key *exchange.SigningKey) string {
		a, err := (&agent.AssertionBuilder{ClientID: client, TokenEndpoint: issuer + "/token", Key: key, Now: time.Now}).Build()
		if err != nil {
			p.say("cannot build an assertion: %v", err)
		}
		return a
	}
	xreq := func(client string, key *exchange.SigningKey) *vaktv1.ExchangeRequest {
		return &vaktv1.ExchangeRequest{
			GrantType: exchange.GrantTypeTokenExchange, ClientAssertionType: exchange.ClientAssertionTypeJWT,
			ClientAssertion: assert(client, key), SubjectTokenType: exchange.TokenTypeJWT, SubjectToken: citizen, Audience: demoAppB,
		}
	}
	xres, err := xc.Exchange(ctx, xreq(demoApp1, key1))
	var exchanged string
	if err == nil {
		exchanged = xres.AccessToken
		p.say("→ token_type %s, expires_in %d, issued_token_type %s", xres.TokenType, xres.ExpiresIn, xres.IssuedTokenType)
	} else {
		p.say("→ %v", err)
	}
	p.expect(err == nil && exchanged != "", "app-1 gets a token for app-b")

	// 3. An application no rule names.
	p.title("3. app-3, which no rule of app-b names, tries the same")
	p.cmd(`go run ./cmd/vakt assertion --key deploy/examples/keys/app-3.jwk --client ` + demoApp3 + ` --audience ` + serveHTTP + `/token   # then the same curl`)
	_, err = xc.Exchange(ctx, xreq(demoApp3, key3))
	reason, msg := oauthReason(err)
	p.say("→ %s: %s", reason, msg)
	p.expect(reason == "invalid_target", "refused with invalid_target")

	// 4. Envoy asks vakt about requests to app-b.
	p.title("4. Envoy's Check for requests to app-b")
	check := func(method, path, token string) *authv3.CheckResponse {
		headers := map[string]string{}
		if token != "" {
			headers["authorization"] = "Bearer " + token
		}
		res, err := ac.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			ContextExtensions: map[string]string{server.ContextExtensionApp: demoAppB},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: method, Path: path, Headers: headers,
			}},
		}})
		if err != nil {
			p.say("Check failed: %v", err)
		}
		return res
	}
	p.cmd(`grpcurl -plaintext -d '{"attributes": {"context_extensions": {"vakt_app": "` + demoAppB + `"}, "request": {"http": {"method": "GET", "path": "/read", "headers": {"authorization": "Bearer '$TOKEN'"}}}}}' ` + serveGRPC + ` envoy.service.auth.v3.Authorization/Check`)
	res := check("GET", "/read", exchanged)
	if ok := res.GetOkResponse(); ok != nil {
		for _, h := range ok.GetHeaders() {
			p.say("→ sets %s: %s", h.GetHeader().GetKey(), h.GetHeader().GetValue())
		}
	}
	p.expect(res.GetOkResponse() != nil && setsHeader(res, authz.HeaderClientID, demoApp1), "GET /read is allowed, with the identity headers")
	res = check("POST", "/create", exchanged)
	d := res.GetDeniedResponse()
	p.say("POST /create → %d %s", d.GetStatus().GetCode(), d.GetBody())
	p.expect(d.GetStatus().GetCode() == 403 && strings.Contains(d.GetBody(), "insufficient_scope"), "POST /create without create:users is denied 403 insufficient_scope")
	res = check("GET", "/read", "")
	d = res.GetDeniedResponse()
	p.say("GET /read without a token → %d, WWW-Authenticate: %s", d.GetStatus().GetCode(), headerValue(d, "www-authenticate"))
	p.expect(d.GetStatus().GetCode() == 401, "no token: 401")

	// 5. Introspection.
	p.title("5. Introspect the exchanged token, and an expired one")
	p.cmd(`curl -s ` + serveHTTP + `/api/v1/introspect -d identity_provider=tokenx -d token=$TOKEN`)
	ir, err := ic.Introspect(ctx, &vaktv1.IntrospectRequest{IdentityProvider: "tokenx", Token: exchanged})
	if err == nil && ir.Active {
		c := ir.GetClaims().AsMap()
		p.say("→ active, sub %v, aud %v, client_id %v, idp %v", c["sub"], c["aud"], c["client_id"], c["idp"])
		p.expect(c["client_id"] == demoApp1 && c["idp"] == idp.Issuer() && c["aud"] == demoAppB, "active, with client_id app-1 and idp the citizen's identity provider")
	} else {
		p.expect(false, fmt.Sprintf("active (got %v %v)", ir, err))
	}
	p.cmd(`curl -s ` + serveHTTP + `/api/v1/introspect -d identity_provider=idporten -d token=$(curl -s '` + serveHTTP + `/devidp/token?ttl=-60' | jq -r .access_token)`)
	expired, _ := fetchDevToken(issuer + devidp.PathPrefix + "/token?sub=citizen-1&ttl=-60")
	ir, err = ic.Introspect(ctx, &vaktv1.IntrospectRequest{IdentityProvider: devidp.Name, Token: expired})
	p.say("→ active %v, error %q", ir.GetActive(), ir.GetError())
	p.expect(err == nil && !ir.GetActive() && ir.GetError() == "token is expired", `inactive: "token is expired"`)

	// 6. The agent's cache.
	p.title("6. The agent beside app-1: the second identical exchange comes from its cache")
	p.cmd(`TOKEN_X_CLIENT_ID=` + demoApp1 + ` TOKEN_X_PRIVATE_JWK="$(cat deploy/examples/keys/app-1.jwk)" TOKEN_X_TOKEN_ENDPOINT=` + serveHTTP + `/token TOKEN_X_ISSUER=` + serveHTTP + ` TOKEN_X_JWKS_URI=` + serveHTTP + `/jwks go run ./cmd/vakt agent`)
	p.cmd(`curl -s 127.0.0.1:3000/api/v1/token/exchange -d identity_provider=tokenx -d target=` + demoAppB + ` -d user_token=$CITIZEN   # twice`)
	beside := agent.New(agent.Config{Upstream: &agent.Upstream{
		Endpoint: issuer + "/token", Client: agent.NewHTTPClient(), Retries: 2, Backoff: 100 * time.Millisecond, Timeout: 10 * time.Second,
		Assertion: &agent.AssertionBuilder{ClientID: demoApp1, TokenEndpoint: issuer + "/token", Key: key1, Now: time.Now},
	}})
	t0 := time.Now()
	first, err1 := beside.Exchange(ctx, citizen, demoAppB, false)
	t1 := time.Now()
	second, err2 := beside.Exchange(ctx, citizen, demoAppB, false)
	t2 := time.Now()
	p.say("→ first: upstream exchange in %v; second: %v", t1.Sub(t0).Round(time.Microsecond), t2.Sub(t1).Round(time.Microsecond))
	p.expect(err1 == nil && err2 == nil && first.AccessToken == second.AccessToken && t2.Sub(t1) < t1.Sub(t0), "the second exchange is the cached token, and faster")

	if len(p.failed) > 0 {
		fmt.Fprintf(stdout, "\nvakt demo: %d step(s) did not give the expected answer:\n", len(p.failed))
		for _, f := range p.failed {
			fmt.Fprintf(stdout, "  - %s\n", f)
		}
		return 1
	}
	fmt.Fprintln(stdout, "\nvakt demo: every step gave the expected answer.")
	return 0
}

func fetchDevToken(url string) (string, error) {
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return "", err
	}
	if body.AccessToken == "" {
		return "", errors.New("no token")
	}
	return body.AccessToken, nil
}

func oauthReason(err error) (string, string) {
	st := status.Convert(err)
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.Reason, st.Message()
		}
	}
	return st.Code().String(), st.Message()
}

func setsHeader(res *authv3.CheckResponse, key, value string) bool {
	for _, h := range res.GetOkResponse().GetHeaders() {
		if h.GetHeader().GetKey() == key && h.GetHeader().GetValue() == value {
			return true
		}
	}
	return false
}

func headerValue(d *authv3.DeniedHttpResponse, key string) string {
	for _, h := range d.GetHeaders() {
		if h.GetHeader().GetKey() == key {
			return h.GetHeader().GetValue()
		}
	}
	return ""
}
