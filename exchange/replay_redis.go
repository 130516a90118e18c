package exchange

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/vakt-dev/vakt/internal/cache"
)

// RedisReplay is a ReplayStore shared by every replica through Redis. Ids
// expire by TTL; each client's unexpired ids are also counted in a sorted
// set (score: expiry) whose expired members are trimmed by score on every
// claim, so that one client's share is bounded without any scan.
type RedisReplay struct {
	client    *redis.Client
	now       func() time.Time
	maxClient int
}

// RedisOptions locate the Redis server.
type RedisOptions struct {
	Address  string
	Username string
	Password string
	DB       int
	// TLS, when set, is how vakt speaks TLS to Redis.
	TLS *tls.Config
	// Credentials, when set, is asked for the username and password on
	// each new connection (instead of Username and Password): a password
	// rotated in its file reaches connections made after the reload.
	Credentials func() (username, password string)
	// MaxPerClient is how many unexpired ids one client may hold
	// (DefaultRedisPerClient when zero).
	MaxPerClient int
}

// DefaultRedisPerClient bounds one client's share of the Redis store.
const DefaultRedisPerClient = 100_000

// claimScript records a jti once, within the client's share. Both keys
// share a hash tag (the client's digest), so it runs on Redis Cluster too.
// It answers 1 (new), 0 (seen) or -1 (the client's share is full).
var claimScript = redis.NewScript(`
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return -1 end
redis.call('SET', KEYS[1], 1, 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], KEYS[1])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return 1
`)

// NewRedisReplay returns a store on Redis. Timeouts are short: an exchange
// waits for Redis, and an unreachable Redis must refuse quickly.
func NewRedisReplay(o RedisOptions, now func() time.Time) *RedisReplay {
	if now == nil {
		now = time.Now
	}
	return &RedisReplay{
		client: redis.NewClient(&redis.Options{
			Addr:                o.Address,
			Username:            o.Username,
			Password:            o.Password,
			DB:                  o.DB,
			TLSConfig:           o.TLS,
			CredentialsProvider: o.Credentials,
			DialTimeout:         time.Second,
			DialerRetries:       1,
			ReadTimeout:         500 * time.Millisecond,
			WriteTimeout:        500 * time.Millisecond,
			MaxRetries:          1,
		}),
		now:       now,
		maxClient: cmp.Or(o.MaxPerClient, DefaultRedisPerClient),
	}
}

// AddHook adds a go-redis hook to the store's client (tracing, say),
// before it is used.
func (r *RedisReplay) AddHook(h redis.Hook) { r.client.AddHook(h) }

// Claim implements ReplayStore: the id is kept until the assertion's exp
// (at least a second), so Redis forgets ids once they could no longer be
// replayed anyway. Client and jti are hashed: neither reaches Redis as sent.
func (r *RedisReplay) Claim(ctx context.Context, client, jti string, expires time.Time) (bool, error) {
	now := r.now()
	ttl := max(expires.Sub(now), time.Second)
	keys := r.keys(client, jti)
	res, err := claimScript.Run(ctx, r.client, keys, now.UnixMilli(), ttl.Milliseconds(), r.maxClient, now.Add(ttl).UnixMilli()).Int()
	if err != nil {
		return false, fmt.Errorf("redis: %w", err)
	}
	switch res {
	case 1:
		return true, nil
	case 0:
		return false, nil
	default:
		return false, ErrReplayQuota
	}
}

// keys are the Redis keys of a client's jti and of its set of ids, under
// one hash tag (the client's digest).
func (r *RedisReplay) keys(client, jti string) []string {
	c := sha256.Sum256([]byte(client))
	k := cache.KeyOf(client, jti)
	tag := hex.EncodeToString(c[:16])
	return []string{"vakt:{" + tag + "}:jti:" + hex.EncodeToString(k[:]), "vakt:{" + tag + "}:ids"}
}

// releaseScript forgets a jti and its place in the client's set.
var releaseScript = redis.NewScript(`
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
return 1
`)

// Release implements ReplayStore.
func (r *RedisReplay) Release(ctx context.Context, client, jti string) error {
	if err := releaseScript.Run(ctx, r.client, r.keys(client, jti)).Err(); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	return nil
}

// RedisLogger routes go-redis's own log lines (connection failures) to slog.
// go-redis keeps its logger in a package variable: set it once, in main,
// with redis.SetLogger.
type RedisLogger struct{ Log *slog.Logger }

// Printf implements go-redis's logging interface.
func (l RedisLogger) Printf(_ context.Context, format string, v ...any) {
	l.Log.Warn("redis", "message", fmt.Sprintf(format, v...))
}

// Close closes the connection pool.
func (r *RedisReplay) Close() error { return r.client.Close() }
