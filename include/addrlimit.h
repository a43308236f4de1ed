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

#endif
