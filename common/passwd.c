/*
 * passwd.c - the password file (passwd.h): parsing, the table of users,
 * verification, a user's SCRAM verifier, and new Argon2id and
 * SCRAM-SHA-256 entries.
 *
 * Owns the table: one array of entries sorted by user name (binary search;
 * no per-process hash key to set up, and lookups cost the same whoever
 * chose the names) and one block of name bytes the entries point into by
 * offset. Salts and hashes are decoded once, when the file is read.
 *
 * The hashing itself is OpenSSL's SHA-512 (PBKDF2 over it below) and
 * libargon2's; Argon2 runs through argon2_ctx with one thread whatever the
 * entry's lane count (the lanes, not the threads, make the hash), so that
 * verifying never starts a thread.
 */
/* SHA512_Init and its kin: deprecated in OpenSSL 3, and the only way to copy a hash state without an allocation. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <ctype.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <argon2.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "b64.h"
#include "passwd.h"
#include "scram.h"
#include "textfile.h"

#define PW_SALT_MAX 64
#define PW_HASH_MAX 64
#define PW_USER_MAX 65535
#define SHA512_LEN 64

enum pw_scheme { PW_SHA512, PW_PBKDF2, PW_ARGON2ID, PW_SCRAM };

struct pw_entry {
	uint32_t user_off;           /* into the table's names */
	uint32_t user_len;
	uint32_t line;               /* where it was read: the later of two wins */
	uint8_t scheme;              /* enum pw_scheme */
	uint8_t salt_len;
	uint8_t hash_len;
	uint32_t cost;               /* $7$ iterations, Argon2 passes */
	uint32_t m_kib;              /* Argon2 */
	uint32_t lanes;              /* Argon2 */
	uint8_t salt[PW_SALT_MAX];
	uint8_t hash[PW_HASH_MAX];
};

struct passwd_table {
	struct pw_entry *e;
	size_t n;
	char *names;
	size_t names_len;
	/* Verified against for a user not in the file: the first entry's kind, random salt and hash. */
	struct pw_entry stand_in;
	bool has_stand_in;
	/* An unknown user's SCRAM salt is an HMAC of its name under this (RFC 5802, 5.1). */
	uint8_t scram_secret[32];
	uint32_t scram_iterations;   /* the first SCRAM entry's, or PASSWD_SCRAM_ITERATIONS */
};

/* ---- one hash ---- */

/* A decimal number in 1..max, digits only. */
static bool pw_number(const char *s, size_t len, uint32_t max, uint32_t *out)
{
	uint64_t v = 0;

	if (len == 0 || len > 10 || (s[0] == '0'))
		return false;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (v > max)
		return false;
	*out = (uint32_t)v;
	return true;
}

static bool pw_b64(enum b64_form form, const char *s, size_t len, uint8_t *out,
		   size_t min, size_t max, uint8_t *out_len)
{
	uint8_t buf[PW_HASH_MAX + 4];
	ssize_t n;

	if (len > (PW_HASH_MAX + 2) / 3 * 4)
		return false;
	n = b64_decode(form, s, len, buf, sizeof(buf));
	if (n < 0 || (size_t)n < min || (size_t)n > max)
		return false;
	memcpy(out, buf, (size_t)n);
	*out_len = (uint8_t)n;
	return true;
}

/* "m=65536,t=3,p=1", the order libargon2 writes. */
static bool pw_argon2_params(const char *s, size_t len, const struct passwd_limits *lim,
			     struct pw_entry *e)
{
	const char *name[3] = { "m=", "t=", "p=" };
	uint32_t max[3] = { lim->max_argon2_m_kib, lim->max_argon2_t, lim->max_argon2_p };
	uint32_t v[3];
	size_t off = 0;

	for (int i = 0; i < 3; i++) {
		const char *comma;
		size_t end = len;

		if (off > len)
			return false;
		comma = memchr(s + off, ',', len - off);
		if (i < 2 && comma)
			end = (size_t)(comma - s);
		if (end - off < 2 || memcmp(s + off, name[i], 2) != 0 ||
		    !pw_number(s + off + 2, end - off - 2, max[i], &v[i]))
			return false;
		off = end + 1;
	}
	if (v[0] < 8 * v[2]) /* libargon2: at least 8 KiB per lane */
		return false;
	e->m_kib = v[0];
	e->cost = v[1];
	e->lanes = v[2];
	return true;
}

/* Parse hash (len bytes, no blanks around it) into e; a reason on failure. */
static const char *pw_parse_hash(const char *s, size_t len, const struct passwd_limits *lim,
				 struct pw_entry *e)
{
	const char *f;
	size_t flen, off = 1;

	if (len < 1 || s[0] != '$' || !text_field(s, len, '$', &off, &f, &flen))
		return "the hash does not start with $6$, $7$, $argon2id$ or $scram-sha-256$";
	if (flen == 1 && f[0] == '6') {
		e->scheme = PW_SHA512;
	} else if (flen == 1 && f[0] == '7') {
		e->scheme = PW_PBKDF2;
		if (!text_field(s, len, '$', &off, &f, &flen) ||
		    !pw_number(f, flen, lim->max_pbkdf2_iterations, &e->cost))
			return "$7$: iterations not a number from 1 to the limit";
	} else if (flen == 8 && memcmp(f, "argon2id", 8) == 0) {
		e->scheme = PW_ARGON2ID;
		if (!text_field(s, len, '$', &off, &f, &flen) || flen != 4 || memcmp(f, "v=19", 4) != 0)
			return "$argon2id$: only version v=19 is understood";
		if (!text_field(s, len, '$', &off, &f, &flen) || !pw_argon2_params(f, flen, lim, e))
			return "$argon2id$: parameters not m=KiB,t=passes,p=lanes within the limits";
	} else if (flen == 13 && memcmp(f, "scram-sha-256", 13) == 0) {
		e->scheme = PW_SCRAM;
		if (!text_field(s, len, '$', &off, &f, &flen) ||
		    !pw_number(f, flen, lim->max_pbkdf2_iterations, &e->cost) ||
		    e->cost < SCRAM_ITERATIONS_MIN)
			return "$scram-sha-256$: iterations not a number from 4096 to the limit";
	} else {
		return "the hash does not start with $6$, $7$, $argon2id$ or $scram-sha-256$";
	}
	if (e->scheme == PW_SCRAM) {
		uint8_t server_len;

		if (!text_field(s, len, '$', &off, &f, &flen) ||
		    !pw_b64(B64_STD, f, flen, e->salt, 1, SCRAM_SALT_MAX, &e->salt_len))
			return "$scram-sha-256$: salt not 1 to 64 bytes of base64";
		if (!text_field(s, len, '$', &off, &f, &flen) ||
		    !pw_b64(B64_STD, f, flen, e->hash, SCRAM_KEY_LEN, SCRAM_KEY_LEN, &e->hash_len))
			return "$scram-sha-256$: StoredKey not 32 bytes of base64";
		if (!text_field(s, len, '$', &off, &f, &flen) ||
		    !pw_b64(B64_STD, f, flen, e->hash + SCRAM_KEY_LEN, SCRAM_KEY_LEN, SCRAM_KEY_LEN,
			    &server_len))
			return "$scram-sha-256$: ServerKey not 32 bytes of base64";
		e->hash_len = 2 * SCRAM_KEY_LEN;
	} else if (e->scheme == PW_ARGON2ID) {
		if (!text_field(s, len, '$', &off, &f, &flen) ||
		    !pw_b64(B64_STD_NOPAD, f, flen, e->salt, ARGON2_MIN_SALT_LENGTH, PW_SALT_MAX, &e->salt_len))
			return "$argon2id$: salt not 8 to 64 bytes of unpadded base64";
		if (!text_field(s, len, '$', &off, &f, &flen) ||
		    !pw_b64(B64_STD_NOPAD, f, flen, e->hash, 16, PW_HASH_MAX, &e->hash_len))
			return "$argon2id$: hash not 16 to 64 bytes of unpadded base64";
	} else {
		if (!text_field(s, len, '$', &off, &f, &flen) ||
		    !pw_b64(B64_STD, f, flen, e->salt, 1, PW_SALT_MAX, &e->salt_len))
			return "salt not 1 to 64 bytes of base64";
		if (!text_field(s, len, '$', &off, &f, &flen) ||
		    !pw_b64(B64_STD, f, flen, e->hash, SHA512_LEN, SHA512_LEN, &e->hash_len))
			return "hash not 64 bytes of base64";
	}
	if (off <= len)
		return "more '$' fields than the hash has";
	return NULL;
}

/*
 * PBKDF2-HMAC-SHA512 (RFC 8018), one 64-byte block: what $7$ entries
 * hold. OpenSSL's PKCS5_PBKDF2_HMAC gives the same bytes (a unit test
 * compares them) but copies an allocated HMAC state twice per round;
 * here the keyed inner and outer states are computed once and copied as
 * plain structs, two SHA-512 blocks a round, which makes a $7$ check
 * about a third cheaper. Every copy of key material is wiped.
 */
static void pw_pbkdf2_sha512(const void *password, size_t pwlen, const uint8_t *salt,
			     size_t salt_len, uint32_t rounds, uint8_t out[SHA512_LEN])
{
	static const uint8_t block_one[4] = { 0, 0, 0, 1 };
	uint8_t key[SHA512_CBLOCK] = { 0 }, pad[SHA512_CBLOCK], u[SHA512_LEN];
	SHA512_CTX inner, outer, c;

	if (pwlen > sizeof(key))
		SHA512(password, pwlen, key);
	else
		memcpy(key, password, pwlen);
	for (size_t i = 0; i < sizeof(pad); i++)
		pad[i] = key[i] ^ 0x36;
	SHA512_Init(&inner);
	SHA512_Update(&inner, pad, sizeof(pad));
	for (size_t i = 0; i < sizeof(pad); i++)
		pad[i] = key[i] ^ 0x5c;
	SHA512_Init(&outer);
	SHA512_Update(&outer, pad, sizeof(pad));
	c = inner;
	SHA512_Update(&c, salt, salt_len);
	SHA512_Update(&c, block_one, sizeof(block_one));
	SHA512_Final(u, &c);
	c = outer;
	SHA512_Update(&c, u, sizeof(u));
	SHA512_Final(u, &c);
	memcpy(out, u, sizeof(u));
	for (uint32_t r = 1; r < rounds; r++) {
		c = inner;
		SHA512_Update(&c, u, sizeof(u));
		SHA512_Final(u, &c);
		c = outer;
		SHA512_Update(&c, u, sizeof(u));
		SHA512_Final(u, &c);
		for (size_t i = 0; i < sizeof(u); i++)
			out[i] ^= u[i];
	}
	OPENSSL_cleanse(key, sizeof(key));
	OPENSSL_cleanse(pad, sizeof(pad));
	OPENSSL_cleanse(u, sizeof(u));
	OPENSSL_cleanse(&inner, sizeof(inner));
	OPENSSL_cleanse(&outer, sizeof(outer));
	OPENSSL_cleanse(&c, sizeof(c));
}

/* The hash of password under e's scheme, salt and costs: e->hash_len bytes into out. */
static bool pw_compute(const struct pw_entry *e, const void *password, size_t pwlen, uint8_t *out)
{
	if (pwlen > INT_MAX)
		return false;
	switch (e->scheme) {
	case PW_SHA512: {
		EVP_MD_CTX *ctx = EVP_MD_CTX_new();
		bool ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha512(), NULL) == 1 &&
			  EVP_DigestUpdate(ctx, password, pwlen) == 1 &&
			  EVP_DigestUpdate(ctx, e->salt, e->salt_len) == 1 &&
			  EVP_DigestFinal_ex(ctx, out, NULL) == 1;

		EVP_MD_CTX_free(ctx);
		return ok;
	}
	case PW_PBKDF2:
		pw_pbkdf2_sha512(password, pwlen, e->salt, e->salt_len, e->cost, out);
		return true;
	case PW_ARGON2ID: {
		argon2_context ctx = {
			.out = out, .outlen = e->hash_len,
			.pwd = (uint8_t *)(uintptr_t)password, .pwdlen = (uint32_t)pwlen,
			.salt = (uint8_t *)(uintptr_t)e->salt, .saltlen = e->salt_len,
			.t_cost = e->cost, .m_cost = e->m_kib, .lanes = e->lanes, .threads = 1,
			.version = ARGON2_VERSION_13, .flags = ARGON2_DEFAULT_FLAGS,
		};

		return argon2_ctx(&ctx, Argon2_id) == ARGON2_OK;
	}
	case PW_SCRAM: {
		/* StoredKey then ServerKey, as the entry holds them: both compared. */
		struct scram_verifier v;
		bool ok = scram_verifier_make(password, pwlen, e->salt, e->salt_len, e->cost, &v);

		memcpy(out, v.stored_key, SCRAM_KEY_LEN);
		memcpy(out + SCRAM_KEY_LEN, v.server_key, SCRAM_KEY_LEN);
		OPENSSL_cleanse(&v, sizeof(v));
		return ok;
	}
	}
	return false;
}

/* ---- the file ---- */

struct pw_parse {
	const struct passwd_limits *lim;
	struct passwd_table *t;
	size_t cap;
	char *err;
	size_t errlen;
};

static int pw_fail(struct pw_parse *p, size_t line, const char *why)
{
	snprintf(p->err, p->errlen, "line %zu: %s", line, why);
	return -1;
}

static bool pw_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r';
}

static int pw_add(struct pw_parse *p, size_t line, const char *user, size_t ulen,
		  const struct pw_entry *proto)
{
	struct passwd_table *t = p->t;
	struct pw_entry *e;
	char *names;

	if (t->n == p->lim->max_entries)
		return pw_fail(p, line, "more users than the limit");
	if (t->n == p->cap) {
		size_t cap = p->cap ? p->cap * 2 : 16;

		e = realloc(t->e, cap * sizeof(*e));
		if (!e)
			return pw_fail(p, line, "out of memory");
		t->e = e;
		p->cap = cap;
	}
	if (t->names_len + ulen > UINT32_MAX)
		return pw_fail(p, line, "too many user name bytes");
	names = realloc(t->names, t->names_len + ulen + 1);
	if (!names)
		return pw_fail(p, line, "out of memory");
	t->names = names;
	memcpy(names + t->names_len, user, ulen);
	e = &t->e[t->n++];
	*e = *proto;
	e->user_off = (uint32_t)t->names_len;
	e->user_len = (uint32_t)ulen;
	e->line = (uint32_t)line;
	t->names_len += ulen;
	return 0;
}

static int pw_line(void *arg, size_t line, const char *s, size_t len)
{
	struct pw_parse *p = arg;
	struct pw_entry e = { 0 };
	const char *colon, *why;
	size_t ulen, hoff, hend;

	while (len > 0 && pw_blank(s[len - 1]))
		len--;
	while (len > 0 && pw_blank(s[0])) {
		s++;
		len--;
	}
	if (len == 0 || s[0] == '#')
		return 0;
	if (memchr(s, '\0', len))
		return pw_fail(p, line, "a NUL byte");
	colon = memchr(s, ':', len);
	if (!colon)
		return pw_fail(p, line, "no ':' between user and hash");
	ulen = (size_t)(colon - s);
	while (ulen > 0 && pw_blank(s[ulen - 1]))
		ulen--;
	if (ulen == 0)
		return pw_fail(p, line, "an empty user name");
	if (ulen > PW_USER_MAX)
		return pw_fail(p, line, "a user name longer than 65535 bytes");
	hoff = (size_t)(colon - s) + 1;
	while (hoff < len && pw_blank(s[hoff]))
		hoff++;
	hend = len;
	if (hoff == hend)
		return pw_fail(p, line, "no hash after the user name");
	if (memchr(s + hoff, ':', hend - hoff))
		return pw_fail(p, line, "a second ':' (user names cannot hold one)");
	why = pw_parse_hash(s + hoff, hend - hoff, p->lim, &e);
	if (why)
		return pw_fail(p, line, why);
	return pw_add(p, line, s, ulen, &e);
}

static int pw_name_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
	int r = memcmp(a, b, alen < blen ? alen : blen);

	if (r != 0)
		return r;
	return alen < blen ? -1 : alen > blen;
}

static int pw_entry_cmp(const void *a, const void *b, void *names)
{
	const struct pw_entry *x = a, *y = b;
	int r = pw_name_cmp((char *)names + x->user_off, x->user_len,
			    (char *)names + y->user_off, y->user_len);

	if (r != 0)
		return r;
	return x->line < y->line ? -1 : x->line > y->line;
}

/* Sort by name and keep each name's last line. */
static void pw_sort(struct passwd_table *t)
{
	size_t w = 0;

	qsort_r(t->e, t->n, sizeof(*t->e), pw_entry_cmp, t->names);
	for (size_t i = 0; i < t->n; i++) {
		if (i + 1 < t->n && t->e[i].user_len == t->e[i + 1].user_len &&
		    memcmp(t->names + t->e[i].user_off, t->names + t->e[i + 1].user_off,
			   t->e[i].user_len) == 0)
			continue;
		t->e[w++] = t->e[i];
	}
	t->n = w;
}

int passwd_parse(const char *buf, size_t len, const struct passwd_limits *lim,
		 struct passwd_table **out, char *err, size_t errlen)
{
	struct pw_parse p = { .lim = lim, .err = err, .errlen = errlen };

	p.t = calloc(1, sizeof(*p.t));
	if (!p.t) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (textfile_lines(buf, len, lim->max_bytes, lim->max_line, pw_line, &p, err, errlen) < 0)
		goto fail;
	if (p.t->n > 0) {
		/* The stand-in: the first line's kind and costs; random salt and hash match nothing. */
		p.t->stand_in = p.t->e[0];
		p.t->has_stand_in = true;
		if (RAND_bytes(p.t->stand_in.salt, sizeof(p.t->stand_in.salt)) != 1 ||
		    RAND_bytes(p.t->stand_in.hash, sizeof(p.t->stand_in.hash)) != 1) {
			snprintf(err, errlen, "no randomness for the unknown-user stand-in");
			goto fail;
		}
		pw_sort(p.t);
	}
	p.t->scram_iterations = PASSWD_SCRAM_ITERATIONS;
	for (size_t i = 0; i < p.t->n; i++)
		if (p.t->e[i].scheme == PW_SCRAM) {
			p.t->scram_iterations = p.t->e[i].cost;
			break;
		}
	/*
	 * The stand-in's salts come from the file's own bytes (its salts and
	 * keys are secrets): the same while the file is, across restarts and
	 * reloads, as a real user's salt is.
	 */
	if (EVP_Digest(buf, len, p.t->scram_secret, NULL, EVP_sha256(), NULL) != 1) {
		snprintf(err, errlen, "cannot hash the file for the unknown-user stand-in");
		goto fail;
	}
	*out = p.t;
	return 0;
fail:
	passwd_free(p.t);
	return -1;
}

int passwd_load(const char *path, const struct passwd_limits *lim,
		struct passwd_table **out, char *err, size_t errlen)
{
	struct textfile f;

	if (textfile_open(&f, path, lim->max_bytes, err, errlen) < 0)
		return -1;
	return textfile_close(&f, passwd_parse(f.text, f.len, lim, out, f.err, sizeof(f.err)),
			      err, errlen);
}

void passwd_free(struct passwd_table *t)
{
	if (!t)
		return;
	free(t->e);
	free(t->names);
	OPENSSL_cleanse(t, sizeof(*t));
	free(t);
}

size_t passwd_count(const struct passwd_table *t)
{
	return t->n;
}

static const struct pw_entry *pw_find(const struct passwd_table *t, const char *user, size_t ulen)
{
	size_t lo = 0, hi = t->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct pw_entry *e = &t->e[mid];
		int r = pw_name_cmp(user, ulen, t->names + e->user_off, e->user_len);

		if (r == 0)
			return e;
		if (r < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

enum passwd_result passwd_verify(const struct passwd_table *t, const char *user, size_t ulen,
				 const void *password, size_t pwlen)
{
	const struct pw_entry *e = pw_find(t, user, ulen);
	uint8_t h[PW_HASH_MAX];
	enum passwd_result r;

	if (!e && !t->has_stand_in)
		return PASSWD_BAD; /* an empty file: nothing to tell apart */
	if (!pw_compute(e ? e : &t->stand_in, password, pwlen, h))
		return PASSWD_ERROR;
	if (!e)
		r = PASSWD_BAD;
	else
		r = CRYPTO_memcmp(h, e->hash, e->hash_len) == 0 ? PASSWD_OK : PASSWD_BAD;
	OPENSSL_cleanse(h, sizeof(h));
	return r;
}

int passwd_hash_argon2id(const void *password, size_t pwlen,
			 const struct passwd_argon2_params *p, char *out, size_t outlen)
{
	uint8_t salt[PASSWD_ARGON2_SALT];
	size_t need;
	int rc;

	if (pwlen > UINT32_MAX || p->lanes < 1 || p->t_cost < 1 || p->m_kib < 8 * p->lanes)
		return -1;
	need = argon2_encodedlen(p->t_cost, p->m_kib, p->lanes, sizeof(salt), PASSWD_ARGON2_HASH,
				 Argon2_id);
	if (need > outlen || RAND_bytes(salt, sizeof(salt)) != 1)
		return -1;
	rc = argon2id_hash_encoded(p->t_cost, p->m_kib, p->lanes, password, pwlen, salt,
				   sizeof(salt), PASSWD_ARGON2_HASH, out, outlen);
	OPENSSL_cleanse(salt, sizeof(salt));
	return rc == ARGON2_OK ? 0 : -1;
}

bool passwd_scram_verifier(const struct passwd_table *t, const char *user, size_t ulen,
			   struct scram_verifier *v)
{
	const struct pw_entry *e = pw_find(t, user, ulen);
	uint8_t mac[EVP_MAX_MD_SIZE];
	unsigned int n = 0;

	if (e != NULL && e->scheme == PW_SCRAM) {
		v->iterations = e->cost;
		v->salt_len = e->salt_len;
		memcpy(v->salt, e->salt, e->salt_len);
		memcpy(v->stored_key, e->hash, SCRAM_KEY_LEN);
		memcpy(v->server_key, e->hash + SCRAM_KEY_LEN, SCRAM_KEY_LEN);
		return true;
	}
	/*
	 * No such user, or one whose hash SCRAM cannot use: the same salt for
	 * the same name every time, keys that no proof matches.
	 */
	v->iterations = t->scram_iterations;
	v->salt_len = PASSWD_SCRAM_SALT;
	if (HMAC(EVP_sha256(), t->scram_secret, sizeof(t->scram_secret), (const uint8_t *)user,
		 ulen, mac, &n) == NULL || RAND_bytes(v->stored_key, SCRAM_KEY_LEN) != 1 ||
	    RAND_bytes(v->server_key, SCRAM_KEY_LEN) != 1)
		memset(mac, 0, sizeof(mac)); /* still no proof matches: the keys were never made */
	memcpy(v->salt, mac, PASSWD_SCRAM_SALT);
	return false;
}

int passwd_hash_scram(const void *password, size_t pwlen, uint32_t iterations, char *out,
		      size_t outlen)
{
	uint8_t salt[PASSWD_SCRAM_SALT];
	char s64[b64_encoded_size(PASSWD_SCRAM_SALT)], k1[b64_encoded_size(SCRAM_KEY_LEN)];
	char k2[sizeof(k1)];
	struct scram_verifier v;
	int n;

	if (iterations < SCRAM_ITERATIONS_MIN || RAND_bytes(salt, sizeof(salt)) != 1 ||
	    !scram_verifier_make(password, pwlen, salt, sizeof(salt), iterations, &v))
		return -1;
	b64_encode(B64_STD, salt, sizeof(salt), s64, sizeof(s64));
	b64_encode(B64_STD, v.stored_key, SCRAM_KEY_LEN, k1, sizeof(k1));
	b64_encode(B64_STD, v.server_key, SCRAM_KEY_LEN, k2, sizeof(k2));
	OPENSSL_cleanse(&v, sizeof(v));
	n = snprintf(out, outlen, "$scram-sha-256$%u$%s$%s$%s", iterations, s64, k1, k2);
	return n < 0 || (size_t)n >= outlen ? -1 : 0;
}
