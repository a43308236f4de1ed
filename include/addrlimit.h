/*
 * addrlimit.h - what the listener keeps per remote address, for
 * max_connections_per_address and max_connect_rate_per_address.
 *
 * An address is an IPv4 address, or the /64 prefix of an IPv6 one (a
 * single host is given a /64, so one client could otherwise take a fresh
 * address per connection); an IPv4-mapped IPv6 address is its IPv4
 * address. Other sockets (unix) have none and are not limited.
 *
 * Two tables, both bounded:
 *  - struct addr_counts: connections held per address, exact (an entry
 *    goes when its count reaches 0), open addressing with entries inline;
 *    it grows with the addresses it holds, up to a number of entries its
 *    caller gives, and shrinks again;
 *  - struct addr_rates: a fixed-size, 4-way set-associative table of
 *    token buckets, one per address seen recently. A full set gives up
 *    the entry seen longest ago, whose bucket has usually refilled: that
 *    only lets that address start again with a full bucket.
 */
#ifndef IOTD_ADDRLIMIT_H
#define IOTD_ADDRLIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct addr_key {
	uint8_t b[16];               /* IPv4: ::ffff:a.b.c.d; IPv6: the /64 prefix, the rest zero */
};

/* false for a socket without an IP address (nothing to limit). */
bool addr_key_from_sockaddr(const struct sockaddr_storage *ss, struct addr_key *k);
/*
 * The same key from the remote address as the listener prints it
 * ("1.2.3.4:port", "[v6]:port"): how a worker names the address of a
 * connection it closes. false for anything else ("local").
 */
bool addr_key_from_remote(const char *remote, struct addr_key *k);
/* Is the remote address (as the listener prints it) 127.0.0.0/8, ::1 or ::ffff:127.x? */
bool addr_remote_is_loopback(const char *remote);
/* "1.2.3.4" or "2001:db8:1:2::/64", for log lines; out has room for 64 bytes. */
void addr_key_format(const struct addr_key *k, char *out, size_t cap);

/* ---- connections held per address ---- */

struct addr_count {
	struct addr_key key;
	uint32_t n;                  /* 0: a free slot */
};

struct addr_counts {
	struct addr_count *slots;    /* NULL while empty */
	uint32_t mask;               /* slots - 1 */
	uint32_t used;               /* entries (addresses) held */
};

/* A zeroed struct addr_counts is an empty table. */
uint32_t addr_counts_get(const struct addr_counts *t, const struct addr_key *k);
/*
 * One more connection from k. A new address is refused (false) when the
 * table holds max_used addresses already, or when out of memory.
 */
bool addr_counts_add(struct addr_counts *t, const struct addr_key *k, uint32_t max_used);
/* One fewer; an address the table does not hold is ignored. */
void addr_counts_sub(struct addr_counts *t, const struct addr_key *k);
/* Empty it, giving its memory back. */
void addr_counts_clear(struct addr_counts *t);

/* ---- recent connection rate per address ---- */

#define ADDR_RATE_SETS 1024
#define ADDR_RATE_WAYS 4

/* What a refusal was for: each logged once per address until it is admitted again. */
enum { ADDR_LOGGED_RATE = 1, ADDR_LOGGED_COUNT = 2 };

struct addr_rate {
	struct addr_key key;
	uint64_t seen_ms;            /* last refill; 0: a free entry */
	uint32_t milli;              /* tokens x 1000 */
	uint8_t logged;              /* ADDR_LOGGED_* */
};

struct addr_rates {
	struct addr_rate e[ADDR_RATE_SETS * ADDR_RATE_WAYS];
};

/*
 * The entry of k, made (with a full bucket) when there is none. now_ms
 * must be above 0 and never go back (CLOCK_MONOTONIC).
 */
struct addr_rate *addr_rates_get(struct addr_rates *r, const struct addr_key *k,
				 uint64_t now_ms, long rate);
/*
 * Take one token from a bucket that holds rate tokens and refills rate a
 * second (a burst of one second's worth); false when it is empty.
 */
bool addr_rate_take(struct addr_rate *e, uint64_t now_ms, long rate);

/* ---- recent authentication failures per address (the auth role) ---- */

/*
 * An address whose credentials failed recently waits before its next
 * verdicts: ADDR_FAIL_BASE_MS after one failure, doubling with each
 * further one, up to a maximum the caller gives (auth.max_failure_delay_ms).
 * A success forgets the address; so do ADDR_FAIL_FORGET_MS without a
 * failure. The table is fixed (4,096 entries, 128 KiB), 4-way set-
 * associative like the rates': a full set gives up the entry that failed
 * longest ago, which only lets that address start again without a delay.
 */
#define ADDR_FAIL_SETS 1024
#define ADDR_FAIL_WAYS 4
#define ADDR_FAIL_BASE_MS 100u
#define ADDR_FAIL_FORGET_MS (10u * 60 * 1000)

struct addr_fail {
	struct addr_key key;
	uint64_t last_ms;            /* the last failure; 0: a free entry */
	uint32_t n;                  /* failures since the last success */
	uint32_t reserved;
};

struct addr_fails {
	struct addr_fail e[ADDR_FAIL_SETS * ADDR_FAIL_WAYS];
};

/* How long the verdict of an attempt from k made now waits. now_ms > 0, never going back. */
uint32_t addr_fail_delay(struct addr_fails *t, const struct addr_key *k, uint64_t now_ms,
			 uint32_t max_ms);
/* One more failure from k. */
void addr_fail_count(struct addr_fails *t, const struct addr_key *k, uint64_t now_ms);
/* A success from k: its failures are forgotten. */
void addr_fail_clear(struct addr_fails *t, const struct addr_key *k);

#endif
