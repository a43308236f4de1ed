/*
 * keyhash.c - SipHash-1-3 under a per-process random key (see keyhash.h).
 *
 * Owns the process's key. SipHash is a keyed function made for hash
 * tables: without the key, nobody can compute which inputs collide. 1-3
 * (one compression round per word, three finalisation rounds) is the
 * variant hash tables use (Python, Rust): cheap enough for the short keys
 * here (a topic level, a client id), at one multiplication-free round per
 * 8 bytes.
 */
#include <endian.h>
#include <errno.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "keyhash.h"
#include "log.h"

static uint64_t key0, key1;

static uint64_t load_le64(const unsigned char *p)
{
	uint64_t v;

	/* One unaligned load on every machine iotd runs on; the byte order fixed. */
	memcpy(&v, p, sizeof(v));
	return le64toh(v);
}

void keyhash_set_key(const uint8_t key[KEYHASH_KEY_LEN])
{
	key0 = load_le64(key);
	key1 = load_le64(key + 8);
}

void keyhash_init(void)
{
	uint8_t key[KEYHASH_KEY_LEN];
	size_t got = 0;

	while (got < sizeof(key)) {
		ssize_t n = getrandom(key + got, sizeof(key) - got, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	if (got < sizeof(key)) {
		/*
		 * No kernel randomness (getrandom missing or refused): a key
		 * from the clocks, the pid and where the stack is, guessable
		 * with effort, is still better than one key for every process.
		 */
		struct timespec mono, real;

		log_warn("getrandom: %s: hash table keys taken from the clocks instead",
			 strerror(errno));
		clock_gettime(CLOCK_MONOTONIC, &mono);
		clock_gettime(CLOCK_REALTIME, &real);
		key0 = ((uint64_t)mono.tv_sec << 30 ^ (uint64_t)mono.tv_nsec) ^ (uint64_t)getpid() << 48;
		key1 = ((uint64_t)real.tv_sec << 30 ^ (uint64_t)real.tv_nsec) ^ (uint64_t)(uintptr_t)&got;
		return;
	}
	keyhash_set_key(key);
}

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

#define SIPROUND                                                       \
	do {                                                           \
		v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32); \
		v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                 \
		v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                 \
		v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32); \
	} while (0)

uint64_t keyhash(const void *data, size_t len)
{
	const unsigned char *p = data, *end = p + (len & ~(size_t)7);
	uint64_t v0 = key0 ^ 0x736f6d6570736575ULL;
	uint64_t v1 = key1 ^ 0x646f72616e646f6dULL;
	uint64_t v2 = key0 ^ 0x6c7967656e657261ULL;
	uint64_t v3 = key1 ^ 0x7465646279746573ULL;
	uint64_t m, b = (uint64_t)len << 56;

	for (; p != end; p += 8) {
		m = load_le64(p);
		v3 ^= m;
		SIPROUND;
		v0 ^= m;
	}
	/*
	 * The last 0 to 7 bytes byte by byte: a memcpy() of a variable length
	 * is a library call that cost as much as the whole hash of a short
	 * topic level.
	 */
	switch (len & 7) {
	case 7: b |= (uint64_t)p[6] << 48; /* fall through */
	case 6: b |= (uint64_t)p[5] << 40; /* fall through */
	case 5: b |= (uint64_t)p[4] << 32; /* fall through */
	case 4: b |= (uint64_t)p[3] << 24; /* fall through */
	case 3: b |= (uint64_t)p[2] << 16; /* fall through */
	case 2: b |= (uint64_t)p[1] << 8;  /* fall through */
	case 1: b |= (uint64_t)p[0];
	}
	v3 ^= b;
	SIPROUND;
	v0 ^= b;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}
