/*
 * acl_codec.c - the ACL and a client's view as bytes, and back (the
 * format: acl.h).
 *
 * Owns nothing that lives on: encoding reads a struct acl or a view,
 * decoding makes new ones. The decoder is the receiving side of a process
 * boundary and treats its input as hostile: a count is taken only when
 * the bytes left could hold that many rules or names, so nothing is
 * allocated for bytes that are not there, and the first fault ends the
 * decoding with a message naming where it was.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acl_int.h"
#include "rec.h"

#define RULE_MIN_BYTES 3  /* access, length (a substituted pattern may be empty) */
#define NAME_MIN_BYTES 7  /* length, one byte of name, an empty rule count */

/*
 * A rule's filter as the format takes it: a valid filter; a client's
 * substituted pattern may also be empty ("%c" for a server-named client),
 * which acl_client_new keeps and which matches no topic.
 */
static bool filter_ok(const char *f, size_t len, bool substituted)
{
	return (substituted && len == 0) || acl_filter_valid(f, len);
}

/* ---- encoding ---------------------------------------------------------- */

static int encode_rules(struct recw *w, const struct acl_section *s, bool substituted)
{
	size_t n = s ? s->n : 0;

	recw_u32(w, (uint32_t)n);
	for (size_t i = 0; i < n; i++) {
		if (!filter_ok(s->rules[i].filter, s->rules[i].len, substituted))
			return -1;
		recw_u8(w, s->rules[i].access);
		recw_str(w, s->rules[i].filter, (uint16_t)s->rules[i].len);
	}
	return w->oom ? -1 : 0;
}

int acl_encode(const struct acl *acl, struct recw *w)
{
	recw_u32(w, ACL_WIRE_ACL);
	if (encode_rules(w, &acl->anon, false) < 0)
		return -1;
	recw_u32(w, (uint32_t)acl->nusers);
	for (size_t i = 0; i < acl->nusers; i++) {
		recw_str(w, acl->users[i].name, (uint16_t)acl->users[i].name_len);
		if (encode_rules(w, &acl->users[i], false) < 0)
			return -1;
	}
	return encode_rules(w, &acl->patterns, false);
}

int acl_client_encode(struct acl_client *c, struct recw *w)
{
	if (!acl_client_ready(c))
		return -1;
	recw_u32(w, ACL_WIRE_CLIENT);
	recw_u8(w, c->patterns_refused);
	if (encode_rules(w, c->topics, false) < 0)
		return -1;
	return encode_rules(w, c->patterns, true);
}

int acl_patterns_encode(const struct acl *acl, uint64_t generation, struct recw *w)
{
	recw_u32(w, ACL_WIRE_PATTERNS);
	recw_u64(w, generation);
	return encode_rules(w, &acl->patterns, false);
}

int acl_view_encode(const struct acl *acl, uint64_t generation, const char *user, size_t ulen,
		    const char *client_id, size_t clen, struct recw *w)
{
	bool patterns = acl->patterns.n > 0 && !acl_names_widen(user, ulen, client_id, clen);

	recw_u32(w, ACL_WIRE_VIEW);
	recw_u64(w, generation);
	recw_u8(w, patterns);
	if (encode_rules(w, acl_user_section(acl, user, ulen), false) < 0)
		return -1;
	return patterns;
}

/* ---- decoding ---------------------------------------------------------- */

struct acl_dec {
	struct recr r;
	const uint8_t *start;
	size_t rules_left;        /* the limit on rules still to take */
	char *err;
	size_t errlen;
};

static int dec_fail(struct acl_dec *d, const char *what)
{
	size_t at = d->r.err ? (size_t)(d->r.end - d->start) : (size_t)(d->r.p - d->start);

	snprintf(d->err, d->errlen, "ACL bytes, offset %zu: %s", at, what);
	return -1;
}

/* A count of items of at least min bytes each, which the bytes left must be able to hold. */
static int dec_count(struct acl_dec *d, size_t min, size_t *n, const char *what)
{
	*n = recr_u32(&d->r);
	if (d->r.err)
		return dec_fail(d, "truncated");
	if (*n > recr_left(&d->r) / min)
		return dec_fail(d, what);
	return 0;
}

/* A section's rules; its trie built when build says (a view's is built at its first check). */
static int dec_rules(struct acl_dec *d, struct acl_section *s, bool substituted, bool build)
{
	size_t n;

	if (dec_count(d, RULE_MIN_BYTES, &n, "more rules than bytes") < 0)
		return -1;
	if (n > d->rules_left)
		return dec_fail(d, "more rules than the limit");
	d->rules_left -= n;
	for (size_t i = 0; i < n; i++) {
		uint8_t access = recr_u8(&d->r);
		const uint8_t *f;
		uint16_t len;

		recr_str(&d->r, &f, &len);
		if (d->r.err)
			return dec_fail(d, "truncated rule");
		if (access > (ACL_READ | ACL_WRITE))
			return dec_fail(d, "unknown access");
		if (!filter_ok((const char *)f, len, substituted))
			return dec_fail(d, "a filter that is not valid");
		if (acl_section_add(s, (const char *)f, len, access) < 0)
			return dec_fail(d, "out of memory");
	}
	if (build && acl_section_build(s) < 0)
		return dec_fail(d, "out of memory");
	return 0;
}

static int dec_begin(struct acl_dec *d, const void *buf, size_t len, uint32_t tag)
{
	recr_init(&d->r, buf, len);
	d->start = d->r.p;
	if (recr_u32(&d->r) != tag || d->r.err)
		return dec_fail(d, "not what was expected (wrong tag)");
	return 0;
}

static int dec_end(struct acl_dec *d)
{
	return recr_left(&d->r) ? dec_fail(d, "bytes after the end") : 0;
}

static int dec_user(struct acl_dec *d, struct acl *acl)
{
	struct acl_section *s = &acl->users[acl->nusers];
	const uint8_t *name;
	uint16_t len;

	recr_str(&d->r, &name, &len);
	if (d->r.err)
		return dec_fail(d, "truncated user name");
	if (!len || memchr(name, '\0', len))
		return dec_fail(d, "an empty user name, or one with a NUL");
	if (acl->nusers && acl_name_cmp(acl->users[acl->nusers - 1].name,
					acl->users[acl->nusers - 1].name_len,
					(const char *)name, len) >= 0)
		return dec_fail(d, "user names not in strictly ascending order");
	memset(s, 0, sizeof(*s));
	s->name = malloc((size_t)len + 1);
	if (!s->name)
		return dec_fail(d, "out of memory");
	memcpy(s->name, name, len);
	s->name[len] = '\0';
	s->name_len = len;
	acl->nusers++;
	return dec_rules(d, s, false, true);
}

int acl_decode(const void *buf, size_t len, const struct acl_limits *lim, struct acl **out,
	       char *err, size_t errlen)
{
	struct acl_dec d = { .rules_left = lim->max_rules, .err = err, .errlen = errlen };
	struct acl *acl;
	size_t nusers;

	*out = NULL;
	if (len > lim->max_bytes) {
		snprintf(err, errlen, "ACL bytes: %zu, more than the limit (%zu)", len, lim->max_bytes);
		return -1;
	}
	acl = calloc(1, sizeof(*acl));
	if (!acl) {
		snprintf(err, errlen, "ACL bytes: out of memory");
		return -1;
	}
	if (dec_begin(&d, buf, len, ACL_WIRE_ACL) < 0 || dec_rules(&d, &acl->anon, false, true) < 0 ||
	    dec_count(&d, NAME_MIN_BYTES, &nusers, "more users than bytes") < 0)
		goto fail;
	if (nusers && !(acl->users = calloc(nusers, sizeof(*acl->users)))) {
		dec_fail(&d, "out of memory");
		goto fail;
	}
	acl->cap_users = nusers;
	for (size_t i = 0; i < nusers; i++)
		if (dec_user(&d, acl) < 0)
			goto fail;
	if (dec_rules(&d, &acl->patterns, false, false) < 0 || dec_end(&d) < 0)
		goto fail;
	*out = acl;
	return 0;
fail:
	acl_free(acl);
	return -1;
}

struct acl_client *acl_client_decode(const void *buf, size_t len, char *err, size_t errlen)
{
	struct acl_dec d = { .rules_left = SIZE_MAX, .err = err, .errlen = errlen };
	struct acl_client *c = calloc(1, sizeof(*c));
	uint8_t refused;

	if (!c) {
		snprintf(err, errlen, "ACL bytes: out of memory");
		return NULL;
	}
	c->own = calloc(1, sizeof(*c->own));
	c->patterns = calloc(1, sizeof(*c->patterns));
	if (!c->own || !c->patterns) {
		snprintf(err, errlen, "ACL bytes: out of memory");
		goto fail;
	}
	c->topics = c->own;
	if (dec_begin(&d, buf, len, ACL_WIRE_CLIENT) < 0)
		goto fail;
	refused = recr_u8(&d.r);
	if (d.r.err || refused > 1) {
		dec_fail(&d, "a patterns flag that is neither 0 nor 1");
		goto fail;
	}
	c->patterns_refused = refused;
	if (dec_rules(&d, c->own, false, false) < 0 ||
	    dec_rules(&d, c->patterns, true, false) < 0 ||
	    dec_end(&d) < 0)
		goto fail;
	if (c->patterns_refused && c->patterns->n) {
		dec_fail(&d, "patterns for a client they were refused to");
		goto fail;
	}
	return c;
fail:
	acl_client_free(c);
	return NULL;
}

/* A worker's generation: counted from 1 (0 is none). */
static int dec_generation(struct acl_dec *d, uint64_t *generation)
{
	*generation = recr_u64(&d->r);
	if (d->r.err)
		return dec_fail(d, "truncated");
	return *generation ? 0 : dec_fail(d, "generation 0");
}

int acl_templates_decode(const void *buf, size_t len, struct acl_templates *t, char *err,
			 size_t errlen)
{
	struct acl_dec d = { .rules_left = SIZE_MAX, .err = err, .errlen = errlen };

	if (dec_begin(&d, buf, len, ACL_WIRE_PATTERNS) < 0 || dec_generation(&d, &t->generation) < 0 ||
	    dec_rules(&d, &t->rules, false, false) < 0 || dec_end(&d) < 0) {
		acl_section_free(&t->rules);
		return -1;
	}
	return 0;
}

int acl_view_decode(const void *buf, size_t len, uint64_t *generation, bool *patterns,
		    struct acl_section *topics, char *err, size_t errlen)
{
	struct acl_dec d = { .rules_left = SIZE_MAX, .err = err, .errlen = errlen };
	uint8_t flag;

	if (dec_begin(&d, buf, len, ACL_WIRE_VIEW) < 0 || dec_generation(&d, generation) < 0)
		return -1;
	flag = recr_u8(&d.r);
	if (d.r.err || flag > 1)
		return dec_fail(&d, "a patterns flag that is neither 0 nor 1");
	*patterns = flag;
	if (dec_rules(&d, topics, false, false) < 0 || dec_end(&d) < 0) {
		acl_section_free(topics);
		return -1;
	}
	return 0;
}
