/*
 * addrlimit.c - per-address keys, connection counts and connection rates
 * (see addrlimit.h).
 *
 * Owns the count table's memory (the others are fixed arrays their
 * owners hold). The count table is linear probing with
 * deletion by backward shift (no tombstones), so that a long-running
 * listener never degrades, at a load of at most 3/4; it halves once it is
 * less than 1/8 full.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "addrlimit.h"
#include "hidx.h"

#define COUNTS_MIN_SLOTS 64u

/* ---- keys ---- */

static void key_v4(struct addr_key *k, const void *a4)
{
	memset(k, 0, sizeof(*k));
	k->b[10] = k->b[11] = 0xff;
	memcpy(&k->b[12], a4, 4);
}

static void key_v6(struct addr_key *k, const struct in6_addr *a6)
{
	if (IN6_IS_ADDR_V4MAPPED(a6)) {
		key_v4(k, &a6->s6_addr[12]);
		return;
	}
	memset(k, 0, sizeof(*k));
	memcpy(k->b, a6->s6_addr, 8);
}

bool addr_key_from_sockaddr(const struct sockaddr_storage *ss, struct addr_key *k)
{
	if (ss->ss_family == AF_INET) {
		key_v4(k, &((const struct sockaddr_in *)ss)->sin_addr);
		return true;
	}
	if (ss->ss_family == AF_INET6) {
		key_v6(k, &((const struct sockaddr_in6 *)ss)->sin6_addr);
		return true;
	}
	return false;
}

/* The address of "1.2.3.4:port" or "[v6]:port": AF_INET or AF_INET6, 0 for anything else. */
static int remote_parse(const char *remote, struct in_addr *a4, struct in6_addr *a6)
{
	char host[INET6_ADDRSTRLEN];
	bool v6 = remote[0] == '[';
	const char *start = remote + v6, *end = v6 ? strchr(remote, ']') : strrchr(remote, ':');
	size_t len = end ? (size_t)(end - start) : 0;

	if (len == 0 || len >= sizeof(host))
		return 0;
	memcpy(host, start, len);
	host[len] = '\0';
	if (v6)
		return inet_pton(AF_INET6, host, a6) == 1 ? AF_INET6 : 0;
	return inet_pton(AF_INET, host, a4) == 1 ? AF_INET : 0;
}

bool addr_key_from_remote(const char *remote, struct addr_key *k)
{
	struct in_addr a4;
	struct in6_addr a6;

	switch (remote_parse(remote, &a4, &a6)) {
	case AF_INET:
		key_v4(k, &a4);
		return true;
	case AF_INET6:
		key_v6(k, &a6);
		return true;
	}
	return false;
}

bool addr_remote_is_loopback(const char *remote)
{
	struct in_addr a4;
	struct in6_addr a6;

	switch (remote_parse(remote, &a4, &a6)) {
	case AF_INET:
		return (ntohl(a4.s_addr) >> 24) == 127;
	case AF_INET6:
		return IN6_IS_ADDR_LOOPBACK(&a6) ||
		       (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
	}
	return false;
}

void addr_key_format(const struct addr_key *k, char *out, size_t cap)
{
	static const uint8_t v4_prefix[12] = { [10] = 0xff, [11] = 0xff };
	char host[INET6_ADDRSTRLEN];

	if (memcmp(k->b, v4_prefix, sizeof(v4_prefix)) == 0) {
		inet_ntop(AF_INET, &k->b[12], host, sizeof(host));
		snprintf(out, cap, "%s", host);
	} else {
		inet_ntop(AF_INET6, k->b, host, sizeof(host));
		snprintf(out, cap, "%s/64", host);
	}
}

static uint32_t key_hash(const struct addr_key *k)
{
	return hidx_hash_bytes(k->b, sizeof(k->b));
}

static bool key_eq(const struct addr_key *a, const struct addr_key *b)
{
	return memcmp(a->b, b->b, sizeof(a->b)) == 0;
}

/* ---- counts ---- */

/* The slot holding k, or -1. */
static long counts_find(const struct addr_counts *t, const struct addr_key *k)
{
	if (t->slots == NULL)
		return -1;
	for (uint32_t i = key_hash(k) & t->mask;; i = (i + 1) & t->mask) {
		if (t->slots[i].n == 0)
			return -1;
		if (key_eq(&t->slots[i].key, k))
			return (long)i;
	}
}

/* Put an entry known to be absent into a table with a free slot. */
static void counts_put(struct addr_counts *t, const struct addr_count *e)
{
	uint32_t i = key_hash(&e->key) & t->mask;

	while (t->slots[i].n != 0)
		i = (i + 1) & t->mask;
	t->slots[i] = *e;
	t->used++;
}

/* Rehash into nslots (a power of 2 with room for every entry); false when out of memory. */
static bool counts_resize(struct addr_counts *t, uint32_t nslots)
{
	struct addr_counts n = { .mask = nslots - 1 };

	n.slots = calloc(nslots, sizeof(*n.slots));
	if (n.slots == NULL)
		return false;
	for (uint32_t i = 0; t->slots != NULL && i <= t->mask; i++)
		if (t->slots[i].n != 0)
			counts_put(&n, &t->slots[i]);
	free(t->slots);
	*t = n;
	return true;
}

uint32_t addr_counts_get(const struct addr_counts *t, const struct addr_key *k)
{
	long i = counts_find(t, k);

	return i < 0 ? 0 : t->slots[i].n;
}

bool addr_counts_add(struct addr_counts *t, const struct addr_key *k, uint32_t max_used)
{
	long i = counts_find(t, k);
	uint32_t nslots = t->slots ? t->mask + 1 : 0;

	if (i >= 0) {
		if (t->slots[i].n < UINT32_MAX)
			t->slots[i].n++;
		return true;
	}
	if (t->used >= max_used)
		return false;
	if ((t->used + 1) * 4 > nslots * 3 &&
	    !counts_resize(t, nslots ? nslots * 2 : COUNTS_MIN_SLOTS))
		return false;
	counts_put(t, &(struct addr_count){ .key = *k, .n = 1 });
	return true;
}

void addr_counts_sub(struct addr_counts *t, const struct addr_key *k)
{
	long found = counts_find(t, k);
	uint32_t hole, j;

	if (found < 0 || --t->slots[found].n > 0)
		return;
	/* Backward shift: move up each later entry of the run that may fill the hole. */
	hole = (uint32_t)found;
	for (j = (hole + 1) & t->mask; t->slots[j].n != 0; j = (j + 1) & t->mask) {
		uint32_t home = key_hash(&t->slots[j].key) & t->mask;

		/* Entry j may move to the hole unless its home lies in (hole, j]. */
		if (((j - home) & t->mask) >= ((j - hole) & t->mask)) {
			t->slots[hole] = t->slots[j];
			t->slots[j].n = 0;
			hole = j;
		}
	}
	t->slots[hole].n = 0;
	t->used--;
	if (t->used == 0)
		addr_counts_clear(t);
	else if (t->mask + 1 > COUNTS_MIN_SLOTS && t->used * 8 < t->mask + 1)
		(void)counts_resize(t, (t->mask + 1) / 2);  /* out of memory: stays as it is */
}

void addr_counts_clear(struct addr_counts *t)
{
	free(t->slots);
	memset(t, 0, sizeof(*t));
}

/* ---- rates ---- */

/* Add what the time since the last refill gave, up to the bucket's size. */
static void rate_refill(struct addr_rate *e, uint64_t now_ms, long rate)
{
	uint64_t full = (uint64_t)rate * 1000, elapsed = now_ms - e->seen_ms;
	uint64_t milli = e->milli;

	/* A second refills any bucket: keeps the product below 2^40. */
	if (elapsed > 1000)
		elapsed = 1000;
	milli += elapsed * (uint64_t)rate;
	e->milli = (uint32_t)(milli < full ? milli : full);
	e->seen_ms = now_ms;
}

struct addr_rate *addr_rates_get(struct addr_rates *r, const struct addr_key *k,
				 uint64_t now_ms, long rate)
{
	struct addr_rate *set = &r->e[(key_hash(k) & (ADDR_RATE_SETS - 1)) * ADDR_RATE_WAYS];
	struct addr_rate *victim = &set[0];

	for (unsigned i = 0; i < ADDR_RATE_WAYS; i++) {
		if (set[i].seen_ms != 0 && key_eq(&set[i].key, k))
			return &set[i];
		if (set[i].seen_ms < victim->seen_ms)
			victim = &set[i];
	}
	victim->key = *k;
	victim->seen_ms = now_ms;
	victim->milli = (uint32_t)((uint64_t)rate * 1000);
	victim->logged = 0;
	return victim;
}

bool addr_rate_take(struct addr_rate *e, uint64_t now_ms, long rate)
{
	rate_refill(e, now_ms, rate);
	if (e->milli < 1000)
		return false;
	e->milli -= 1000;
	return true;
}

/* ---- recent authentication failures ---- */

static struct addr_fail *fails_find(struct addr_fails *t, const struct addr_key *k,
				    uint64_t now_ms)
{
	struct addr_fail *set = &t->e[(key_hash(k) & (ADDR_FAIL_SETS - 1)) * ADDR_FAIL_WAYS];

	for (unsigned i = 0; i < ADDR_FAIL_WAYS; i++)
		if (set[i].last_ms != 0 && key_eq(&set[i].key, k)) {
			/* Failures long ago are forgotten. */
			if (now_ms - set[i].last_ms >= ADDR_FAIL_FORGET_MS)
				set[i].n = 0;
			return &set[i];
		}
	return NULL;
}

uint32_t addr_fail_delay(struct addr_fails *t, const struct addr_key *k, uint64_t now_ms,
			 uint32_t max_ms)
{
	struct addr_fail *e = fails_find(t, k, now_ms);
	uint64_t ms;

	if (e == NULL || e->n == 0)
		return 0;
	ms = (uint64_t)ADDR_FAIL_BASE_MS << (e->n - 1 < 20 ? e->n - 1 : 20);
	return ms < max_ms ? (uint32_t)ms : max_ms;
}

void addr_fail_count(struct addr_fails *t, const struct addr_key *k, uint64_t now_ms)
{
	struct addr_fail *e = fails_find(t, k, now_ms);

	if (e == NULL) {
		struct addr_fail *set = &t->e[(key_hash(k) & (ADDR_FAIL_SETS - 1)) * ADDR_FAIL_WAYS];

		/* A full set gives up the entry that failed longest ago. */
		e = &set[0];
		for (unsigned i = 1; i < ADDR_FAIL_WAYS; i++)
			if (set[i].last_ms < e->last_ms)
				e = &set[i];
		*e = (struct addr_fail){ .key = *k };
	}
	if (e->n < UINT32_MAX)
		e->n++;
	e->last_ms = now_ms;
}

void addr_fail_clear(struct addr_fails *t, const struct addr_key *k)
{
	struct addr_fail *e = fails_find(t, k, 0);

	if (e != NULL)
		*e = (struct addr_fail){ 0 };
}
