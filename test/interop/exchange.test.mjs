// Token exchange with clients no one at vakt wrote: openid-client (v6)
// discovers vakt, authenticates with private_key_jwt and exchanges a user's
// token; jose verifies the issued token against vakt's /jwks. Run by
// server/interop_test.go, which starts vakt and passes what it needs in
// the environment.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as client from 'openid-client'
import * as jose from 'jose'

const env = (name) => {
  const v = process.env[name]
  if (!v) throw new Error(`${name} is not set; run this through server/interop_test.go`)
  return v
}
const issuer = env('VAKT_ISSUER')
const clientId = env('VAKT_CLIENT_ID')
const jwk = JSON.parse(env('VAKT_CLIENT_JWK'))
const subjectToken = env('VAKT_SUBJECT_TOKEN')
const target = env('VAKT_TARGET')
const forbiddenTarget = env('VAKT_FORBIDDEN_TARGET')
const tokenExchange = 'urn:ietf:params:oauth:grant-type:token-exchange'

async function discover() {
  const key = await jose.importJWK(jwk, jwk.alg)
  return client.discovery(new URL(issuer), clientId, undefined, client.PrivateKeyJwt({ key, kid: jwk.kid }), {
    // vakt publishes RFC 8414 metadata: it is no OpenID Provider.
    algorithm: 'oauth2',
    execute: [client.allowInsecureRequests], // vakt listens on plain http on loopback in this test
  })
}

test('openid-client discovers vakt and exchanges a token; jose verifies it', async () => {
  const config = await discover()
  const meta = config.serverMetadata()
  assert.equal(meta.issuer, issuer)
  assert.equal(meta.token_endpoint, `${issuer}/token`)
  assert.ok(meta.token_endpoint_auth_methods_supported.includes('private_key_jwt'))

  const tokens = await client.genericGrantRequest(config, tokenExchange, {
    subject_token: subjectToken,
    subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
    audience: target,
  })
  assert.equal(tokens.token_type.toLowerCase(), 'bearer')
  assert.equal(tokens.issued_token_type, 'urn:ietf:params:oauth:token-type:access_token')
  assert.ok(tokens.expires_in > 0)

  const jwks = jose.createRemoteJWKSet(new URL(`${issuer}/jwks`))
  const { payload, protectedHeader } = await jose.jwtVerify(tokens.access_token, jwks, {
    issuer,
    audience: target,
    typ: 'at+jwt',
  })
  assert.equal(payload.client_id, clientId)
  assert.equal(payload.sub, 'user-1')
  assert.ok(protectedHeader.kid)
})

test('a refused exchange arrives as an RFC 8693 error', async () => {
  const config = await discover()
  await assert.rejects(
    client.genericGrantRequest(config, tokenExchange, {
      subject_token: subjectToken,
      subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
      audience: forbiddenTarget,
    }),
    (err) => {
      assert.equal(err.error, 'invalid_target')
      assert.equal(err.error_description, 'token exchange audience is invalid')
      return true
    },
  )
})
