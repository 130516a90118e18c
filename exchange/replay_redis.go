package exchange

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisReplay is a ReplayStore shared by every replica through Redis.
type RedisReplay struct {
	client *redis.Client
	now    func() time.Time
}

// RedisOptions locate the Redis server.
type RedisOptions struct {
	Address  string
	Username string
	Password string
	DB       int
}

// NewRedisReplay returns a store on Redis. Timeouts are short: an exchange
// waits for Redis, and an unreachable Redis must refuse quickly.
func NewRedisReplay(o RedisOptions, now func() time.Time) *RedisReplay {
	if now == nil {
		now = time.Now
	}
	return &RedisReplay{
		client: redis.NewClient(&redis.Options{
			Addr:          o.Address,
			Username:      o.Username,
			Password:      o.Password,
			DB:            o.DB,
			DialTimeout:   time.Second,
			DialerRetries: 1,
			ReadTimeout:   500 * time.Millisecond,
			WriteTimeout:  500 * time.Millisecond,
			MaxRetries:    1,
		}),
		now: now,
	}
}

// Claim implements ReplayStore with SET NX and an expiry at the assertion's
// exp, so Redis forgets ids once they could no longer be replayed anyway.
func (r *RedisReplay) Claim(ctx context.Context, key string, expires time.Time) (bool, error) {
	ttl := expires.Sub(r.now())
	if ttl < time.Second {
		ttl = time.Second
	}
	sum := sha256.Sum256([]byte(key))
	ok, err := r.client.SetNX(ctx, "vakt:jti:"+hex.EncodeToString(sum[:]), 1, ttl).Result()
	if err != nil {
		return false, fmt.Errorf("redis: %w", err)
	}
	return ok, nil
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
