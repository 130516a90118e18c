// RFC 9068 with a resource server no one at vakt wrote: oauth4webapi
// discovers vakt's RFC 8414 metadata, exchanges a subject token that
// carries claims with protocol meaning (cnf, an array scope, act, azp), and
// validates the issued token with validateJwtAccessToken, as a resource
// server would. Run by server/interop_test.go.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as oauth from 'oauth4webapi'
import * as jose from 'jose'

const env = (name) => {
  const v = process.env[name]
  if (!v) throw new Error(`${name} is not set; run this through server/interop_test.go`)
  return v
}
const issuer = new URL(env('VAKT_ISSUER'))
const clientId = env('VAKT_CLIENT_ID')
const jwk = JSON.parse(env('VAKT_CLIENT_JWK'))
const richSubject = env('VAKT_RICH_SUBJECT_TOKEN')
const target = env('VAKT_TARGET')
const insecure = { [oauth.allowInsecureRequests]: true } // vakt on plain http, on loopback

async function authorizationServer() {
  const res = await oauth.discoveryRequest(issuer, { algorithm: 'oauth2', ...insecure })
  return oauth.processDiscoveryResponse(issuer, res)
}

async function exchange(as, params) {
  const key = await jose.importJWK(jwk, jwk.alg)
  const client = { client_id: clientId }
  const res = await oauth.genericTokenEndpointRequest(
    as,
    client,
    oauth.PrivateKeyJwt({ key, kid: jwk.kid }),
    'urn:ietf:params:oauth:grant-type:token-exchange',
    new URLSearchParams(params),
    insecure,
  )
  return oauth.processGenericTokenEndpointResponse(as, client, res)
}

test('oauth4webapi validates an issued token as an RFC 9068 resource server', async () => {
  const as = await authorizationServer()
  assert.equal(as.issuer, issuer.href.replace(/\/$/, ''))

  const tokens = await exchange(as, {
    subject_token: richSubject,
    subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
    audience: target,
  })
  assert.equal(tokens.token_type, 'bearer')

  // A resource server receiving the token: no cnf means no DPoP is asked
  // for; sub, client_id, iat, jti and a string scope are what RFC 9068 §2.2
  // requires.
  const request = new Request('https://app-b.example/read', {
    headers: { authorization: `Bearer ${tokens.access_token}` },
  })
  const claims = await oauth.validateJwtAccessToken(as, request, target, insecure)
  assert.equal(claims.client_id, clientId)
  assert.equal(claims.sub, 'user-1')
  assert.equal(typeof claims.scope, 'string')
  assert.equal(claims.scope, 'read:users write:users')
  for (const name of ['cnf', 'act', 'azp', 'may_act']) {
    assert.equal(claims[name], undefined, `${name} was copied from the subject token`)
  }
  // The response tells the scope the token carries, as none was asked for.
  assert.equal(tokens.scope, 'read:users write:users')
})

test('a requested subset of scopes is what the token carries', async () => {
  const as = await authorizationServer()
  const tokens = await exchange(as, {
    subject_token: richSubject,
    subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
    audience: target,
    scope: 'read:users',
  })
  const request = new Request('https://app-b.example/read', {
    headers: { authorization: `Bearer ${tokens.access_token}` },
  })
  const claims = await oauth.validateJwtAccessToken(as, request, target, insecure)
  assert.equal(claims.scope, 'read:users')
  assert.equal(tokens.scope, undefined) // as requested: not repeated
})

test('a scope the subject token does not hold is invalid_scope', async () => {
  const as = await authorizationServer()
  await assert.rejects(
    exchange(as, {
      subject_token: richSubject,
      subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
      audience: target,
      scope: 'admin',
    }),
    (err) => {
      assert.equal(err.error, 'invalid_scope')
      return true
    },
  )
})
