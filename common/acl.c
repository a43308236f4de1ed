/*
 * acl.c - the ACL file (acl.h): parsing, the tries of rules, a client's
 * view and its checks.
 *
 * Owns the parsed file (struct acl: the anonymous section, the user
 * sections sorted by name, the patterns) and each client view (its
 * substituted patterns and their trie). A section keeps its rules as a
 * list, for the SUBSCRIBE question, and as a trie, for the per-message
 * one. The structs are in acl_int.h, shared with acl_codec.c, which turns
 * them into bytes and back.
 *
 * The trie: one node per filter level, literal children in an array
 * sorted by (length, bytes) and found by binary search, '+' as a child of
 * its own, and "#" folded into its parent as hash_bits, since it matches
 * there and everywhere below. A node's bits say which kinds of rule end
 * there: deny, read, write. A check ORs the bits of every node its topic
 * reaches; each node is reached at most once per check (one path leads to
 * it), and the walk goes no deeper than the trie (ACL_MAX_LEVELS).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acl.h"
#include "acl_int.h"
#include "textfile.h"

/* ---- filters ---- */

enum level_kind { LEVEL_LITERAL, LEVEL_PLUS, LEVEL_HASH };

/* Offsets are level starts; a start past len means every level is consumed. */
static size_t level_end(const char *s, size_t len, size_t off)
{
	const char *slash = off < len ? memchr(s + off, '/', len - off) : NULL;

	return slash ? (size_t)(slash - s) : len;
}

static enum level_kind level_kind(const char *s, size_t start, size_t end)
{
	if (end - start == 1 && s[start] == '+')
		return LEVEL_PLUS;
	if (end - start == 1 && s[start] == '#')
		return LEVEL_HASH;
	return LEVEL_LITERAL;
}

bool acl_filter_valid(const char *f, size_t len)
{
	size_t off = 0, levels = 0;

	if (len == 0 || len > ACL_FILTER_MAX || memchr(f, '\0', len))
		return false;
	while (off <= len) {
		size_t end = level_end(f, len, off);
		enum level_kind k = level_kind(f, off, end);

		if (++levels > ACL_MAX_LEVELS)
			return false;
		if (k == LEVEL_LITERAL && (memchr(f + off, '+', end - off) || memchr(f + off, '#', end - off)))
			return false;
		if (k == LEVEL_HASH && end != len)
			return false;
		off = end + 1;
	}
	return true;
}

/* A first-level literal that starts with '$' is one no first-level wildcard matches. */
static bool level_is_dollar(const char *s, size_t start, size_t end, bool first)
{
	return first && end > start && s[start] == '$';
}

/*
 * Does every topic inner matches also match outer? Both valid filters.
 */
static bool filter_covers(const char *o, size_t olen, const char *in, size_t ilen)
{
	size_t oo = 0, io = 0;
	bool first = true;

	for (;;) {
		size_t oe, ie;
		enum level_kind ok, ik;

		if (oo > olen)
			return io > ilen;
		oe = level_end(o, olen, oo);
		ok = level_kind(o, oo, oe);
		if (io > ilen)
			return ok == LEVEL_HASH; /* "a/#" matches "a" */
		ie = level_end(in, ilen, io);
		ik = level_kind(in, io, ie);
		if (ok == LEVEL_HASH)
			return !(ik == LEVEL_LITERAL && level_is_dollar(in, io, ie, first));
		if (ik == LEVEL_HASH)
			return false;
		if (ok == LEVEL_PLUS) {
			if (ik == LEVEL_LITERAL && level_is_dollar(in, io, ie, first))
				return false;
		} else if (ik != LEVEL_LITERAL || oe - oo != ie - io ||
			   memcmp(o + oo, in + io, oe - oo) != 0) {
			return false;
		}
		oo = oe + 1;
		io = ie + 1;
		first = false;
	}
}

/*
 * The filter that matches exactly the topics both a and b match, written
 * to out (room for alen + blen + 1 bytes); false when no topic matches both.
 */
static bool filter_intersect(const char *a, size_t alen, const char *b, size_t blen,
			     char *out, size_t *olen)
{
	size_t ao = 0, bo = 0, n = 0;
	bool first = true;

	for (;;) {
		size_t ae, be;
		enum level_kind ak, bk;
		const char *lv;
		size_t lvlen;

		if (ao > alen && bo > blen) {
			*olen = n - 1; /* the last '/' */
			return true;
		}
		if (ao > alen || bo > blen) {
			/* One ended: the other matches that parent only through a last "#". */
			const char *r = ao > alen ? b : a;
			size_t ro = ao > alen ? bo : ao, rlen = ao > alen ? blen : alen;

			if (level_kind(r, ro, level_end(r, rlen, ro)) != LEVEL_HASH)
				return false;
			*olen = n - 1;
			return true;
		}
		ae = level_end(a, alen, ao);
		be = level_end(b, blen, bo);
		ak = level_kind(a, ao, ae);
		bk = level_kind(b, bo, be);
		if (ak == LEVEL_HASH || bk == LEVEL_HASH) {
			/* The rest of the other one, which "#" matches whole (but for '$' at the start). */
			const char *r = ak == LEVEL_HASH ? b : a;
			size_t ro = ak == LEVEL_HASH ? bo : ao, rlen = ak == LEVEL_HASH ? blen : alen;
			size_t re = ak == LEVEL_HASH ? be : ae;

			if (level_kind(r, ro, re) == LEVEL_LITERAL && level_is_dollar(r, ro, re, first))
				return false;
			memcpy(out + n, r + ro, rlen - ro);
			*olen = n + rlen - ro;
			return true;
		}
		if (ak == LEVEL_LITERAL && bk == LEVEL_LITERAL) {
			if (ae - ao != be - bo || memcmp(a + ao, b + bo, ae - ao) != 0)
				return false;
			lv = a + ao;
			lvlen = ae - ao;
		} else if (ak == LEVEL_LITERAL || bk == LEVEL_LITERAL) {
			lv = ak == LEVEL_LITERAL ? a + ao : b + bo;
			lvlen = ak == LEVEL_LITERAL ? ae - ao : be - bo;
			if (first && lvlen > 0 && lv[0] == '$')
				return false;
		} else {
			lv = "+";
			lvlen = 1;
		}
		memcpy(out + n, lv, lvlen);
		n += lvlen;
		out[n++] = '/';
		ao = ae + 1;
		bo = be + 1;
		first = false;
	}
}

/* ---- the trie ---- */

static void trie_free(struct acl_node *n)
{
	if (!n)
		return;
	for (uint32_t i = 0; i < n->nkids; i++)
		trie_free(n->kids[i]);
	trie_free(n->plus);
	free(n->kids);
	free(n);
}

static struct acl_node *node_new(const char *level, size_t len)
{
	struct acl_node *n = calloc(1, sizeof(*n) + len);

	if (n) {
		memcpy(n->level, level, len);
		n->len = (uint32_t)len;
	}
	return n;
}

static int level_cmp(const char *a, size_t alen, const struct acl_node *n)
{
	if (alen != n->len)
		return alen < n->len ? -1 : 1;
	return memcmp(a, n->level, alen);
}

/* Index of the kid for this level, or where it would go (*found false). */
static uint32_t kid_find(const struct acl_node *n, const char *level, size_t len, bool *found)
{
	uint32_t lo = 0, hi = n->nkids;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		int r = level_cmp(level, len, n->kids[mid]);

		if (r == 0) {
			*found = true;
			return mid;
		}
		if (r < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	*found = false;
	return lo;
}

static struct acl_node *kid_get(struct acl_node *n, const char *level, size_t len)
{
	bool found;
	uint32_t i = kid_find(n, level, len, &found);
	struct acl_node *k;

	if (found)
		return n->kids[i];
	if (n->nkids == n->cap) {
		uint32_t cap = n->cap ? n->cap * 2 : 4;
		struct acl_node **kids = realloc(n->kids, cap * sizeof(*kids));

		if (!kids)
			return NULL;
		n->kids = kids;
		n->cap = cap;
	}
	k = node_new(level, len);
	if (!k)
		return NULL;
	memmove(n->kids + i + 1, n->kids + i, (n->nkids - i) * sizeof(*n->kids));
	n->kids[i] = k;
	n->nkids++;
	return k;
}

static int trie_add(struct acl_node **root, const char *f, size_t len, uint8_t bit)
{
	struct acl_node *n;
	size_t off = 0;

	if (!*root && !(*root = node_new("", 0)))
		return -1;
	n = *root;
	while (off <= len) {
		size_t end = level_end(f, len, off);

		switch (level_kind(f, off, end)) {
		case LEVEL_HASH:
			n->hash_bits |= bit;
			return 0;
		case LEVEL_PLUS:
			if (!n->plus && !(n->plus = node_new("+", 1)))
				return -1;
			n = n->plus;
			break;
		case LEVEL_LITERAL:
			n = kid_get(n, f + off, end - off);
			if (!n)
				return -1;
			break;
		}
		off = end + 1;
	}
	n->bits |= bit;
	return 0;
}

/* The bits of every rule in n's subtree that matches the topic's levels from off on. */
static uint8_t trie_walk(const struct acl_node *n, const char *t, size_t len, size_t off)
{
	uint8_t bits = n->hash_bits;
	size_t end;
	bool found;
	uint32_t i;

	if (off > len)
		return bits | n->bits;
	end = level_end(t, len, off);
	i = kid_find(n, t + off, end - off, &found);
	if (found)
		bits |= trie_walk(n->kids[i], t, len, end + 1);
	if (n->plus)
		bits |= trie_walk(n->plus, t, len, end + 1);
	return bits;
}

static uint8_t trie_match(const struct acl_node *root, const char *t, size_t len)
{
	size_t end;
	bool found;
	uint32_t i;

	if (!root)
		return 0;
	if (len == 0 || t[0] != '$')
		return trie_walk(root, t, len, 0);
	/* A '$' topic: the root's "#" and "+" do not match it. */
	end = level_end(t, len, 0);
	i = kid_find(root, t, end, &found);
	return found ? trie_walk(root->kids[i], t, len, end + 1) : 0;
}

/* ---- sections ---- */

static uint8_t rule_bits(uint8_t access)
{
	return access ? access : BIT_DENY;
}

int acl_section_add(struct acl_section *s, const char *f, size_t len, uint8_t access)
{
	struct acl_rule *r;

	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 8;

		r = realloc(s->rules, cap * sizeof(*r));
		if (!r)
			return -1;
		s->rules = r;
		s->cap = cap;
	}
	r = &s->rules[s->n];
	r->filter = malloc(len + 1);
	if (!r->filter)
		return -1;
	memcpy(r->filter, f, len);
	r->filter[len] = '\0';
	r->len = (uint32_t)len;
	r->access = access;
	s->n++;
	return 0;
}

int acl_section_build(struct acl_section *s)
{
	for (size_t i = 0; s && i < s->n; i++)
		if (trie_add(&s->trie, s->rules[i].filter, s->rules[i].len,
			     rule_bits(s->rules[i].access)) < 0)
			return -1;
	return 0;
}

void acl_section_free(struct acl_section *s)
{
	if (!s)
		return;
	for (size_t i = 0; i < s->n; i++)
		free(s->rules[i].filter);
	free(s->rules);
	free(s->name);
	trie_free(s->trie);
	memset(s, 0, sizeof(*s));
}

int acl_name_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
	int r = memcmp(a, b, alen < blen ? alen : blen);

	if (r != 0)
		return r;
	return alen < blen ? -1 : alen > blen;
}

static int section_cmp(const void *a, const void *b)
{
	const struct acl_section *x = a, *y = b;

	return acl_name_cmp(x->name, x->name_len, y->name, y->name_len);
}

/* Move from's rules to the end of to's. */
static int section_merge(struct acl_section *to, struct acl_section *from)
{
	if (from->n > 0 && to->n + from->n > to->cap) {
		struct acl_rule *r = realloc(to->rules, (to->n + from->n) * sizeof(*r));

		if (!r)
			return -1;
		to->rules = r;
		to->cap = to->n + from->n;
	}
	if (from->n > 0)
		memcpy(to->rules + to->n, from->rules, from->n * sizeof(*from->rules));
	to->n += from->n;
	from->n = 0;
	acl_section_free(from);
	return 0;
}

/* One section per name, sorted; then each section's trie. */
static int acl_build(struct acl *acl)
{
	size_t w = 0;

	if (acl->nusers)
		qsort(acl->users, acl->nusers, sizeof(*acl->users), section_cmp);
	for (size_t i = 0; i < acl->nusers; i++) {
		if (w > 0 && section_cmp(&acl->users[w - 1], &acl->users[i]) == 0) {
			if (section_merge(&acl->users[w - 1], &acl->users[i]) < 0)
				return -1;
			continue;
		}
		acl->users[w++] = acl->users[i];
	}
	for (size_t i = w; i < acl->nusers; i++)
		memset(&acl->users[i], 0, sizeof(acl->users[i]));
	acl->nusers = w;
	if (acl_section_build(&acl->anon) < 0)
		return -1;
	for (size_t i = 0; i < acl->nusers; i++)
		if (acl_section_build(&acl->users[i]) < 0)
			return -1;
	return 0;
}

const struct acl_section *acl_user_section(const struct acl *acl, const char *user, size_t ulen)
{
	size_t lo = 0, hi = acl->nusers;

	if (user == NULL)
		return &acl->anon;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int r = acl_name_cmp(user, ulen, acl->users[mid].name, acl->users[mid].name_len);

		if (r == 0)
			return &acl->users[mid];
		if (r < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

/* ---- the file ---- */

struct acl_parse {
	const struct acl_limits *lim;
	struct acl *acl;
	size_t cur_index;         /* the user section topic lines go to; SIZE_MAX: anonymous */
	size_t rules;
	char *err;
	size_t errlen;
};

static int parse_fail(struct acl_parse *p, size_t line, const char *why)
{
	snprintf(p->err, p->errlen, "line %zu: %s", line, why);
	return -1;
}

/* why has one "%.*s": the word, cut at 40 bytes. */
static int parse_fail_word(struct acl_parse *p, size_t line, const char *why,
			   const char *w, size_t wlen)
{
	char msg[160];

	snprintf(msg, sizeof(msg), why, (int)(wlen > 40 ? 40 : wlen), w);
	return parse_fail(p, line, msg);
}

static bool is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* The word at s (up to a blank) and where the next one starts. */
static size_t word(const char *s, size_t len, size_t *next)
{
	size_t n = 0;

	while (n < len && !is_blank(s[n]))
		n++;
	*next = n;
	while (*next < len && is_blank(s[*next]))
		(*next)++;
	return n;
}

static bool word_is(const char *w, size_t n, const char *lit)
{
	return n == strlen(lit) && memcmp(w, lit, n) == 0;
}

static struct acl_section *parse_current(struct acl_parse *p)
{
	return p->cur_index == SIZE_MAX ? &p->acl->anon : &p->acl->users[p->cur_index];
}

static int parse_user(struct acl_parse *p, size_t line, const char *name, size_t len)
{
	struct acl *acl = p->acl;
	struct acl_section *s;

	if (len == 0)
		return parse_fail(p, line, "a user line without a name");
	if (len > ACL_NAME_MAX)
		return parse_fail(p, line, "a user name longer than 65535 bytes");
	if (acl->nusers == acl->cap_users) {
		size_t cap = acl->cap_users ? acl->cap_users * 2 : 8;

		s = realloc(acl->users, cap * sizeof(*s));
		if (!s)
			return parse_fail(p, line, "out of memory");
		acl->users = s;
		acl->cap_users = cap;
	}
	s = &acl->users[acl->nusers];
	memset(s, 0, sizeof(*s));
	s->name = malloc(len + 1);
	if (!s->name)
		return parse_fail(p, line, "out of memory");
	memcpy(s->name, name, len);
	s->name[len] = '\0';
	s->name_len = (uint32_t)len;
	p->cur_index = acl->nusers++;
	return 0;
}

static int parse_rule(struct acl_parse *p, size_t line, bool pattern, const char *s, size_t len)
{
	const char *w = s, *filter;
	size_t wlen, next, flen;
	uint8_t access;

	if (len == 0)
		return parse_fail(p, line, "no topic filter");
	wlen = word(s, len, &next);
	if (next == len) {
		filter = w;
		flen = wlen;
		access = ACL_READ | ACL_WRITE;
	} else {
		filter = s + next;
		flen = len - next;
		if (word_is(w, wlen, "read"))
			access = ACL_READ;
		else if (word_is(w, wlen, "write"))
			access = ACL_WRITE;
		else if (word_is(w, wlen, "readwrite"))
			access = ACL_READ | ACL_WRITE;
		else if (word_is(w, wlen, "deny"))
			access = 0;
		else
			return parse_fail_word(p, line, "unknown access '%.*s' (read, write, readwrite or deny)",
					  w, wlen);
	}
	if (!acl_filter_valid(filter, flen))
		return parse_fail_word(p, line, "'%.*s' is not a valid topic filter", filter, flen);
	if (p->rules == p->lim->max_rules)
		return parse_fail(p, line, "more rules than the limit");
	p->rules++;
	if (acl_section_add(pattern ? &p->acl->patterns : parse_current(p), filter, flen, access) < 0)
		return parse_fail(p, line, "out of memory");
	return 0;
}

static int parse_line(void *arg, size_t line, const char *s, size_t len)
{
	struct acl_parse *p = arg;
	size_t klen, next;

	while (len > 0 && is_blank(s[len - 1]))
		len--;
	while (len > 0 && is_blank(s[0])) {
		s++;
		len--;
	}
	if (len == 0 || s[0] == '#')
		return 0;
	if (memchr(s, '\0', len))
		return parse_fail(p, line, "a NUL byte");
	klen = word(s, len, &next);
	if (word_is(s, klen, "user"))
		return parse_user(p, line, s + next, len - next);
	if (word_is(s, klen, "topic"))
		return parse_rule(p, line, false, s + next, len - next);
	if (word_is(s, klen, "pattern"))
		return parse_rule(p, line, true, s + next, len - next);
	return parse_fail_word(p, line, "unknown keyword '%.*s' (user, topic or pattern)", s, klen);
}

int acl_parse(const char *buf, size_t len, const struct acl_limits *lim, struct acl **out,
	      char *err, size_t errlen)
{
	struct acl_parse p = { .lim = lim, .cur_index = SIZE_MAX, .err = err, .errlen = errlen };

	p.acl = calloc(1, sizeof(*p.acl));
	if (!p.acl)
		goto oom;
	if (textfile_lines(buf, len, lim->max_bytes, lim->max_line, parse_line, &p, err,
			   errlen) < 0)
		goto fail;
	if (acl_build(p.acl) < 0)
		goto oom;
	*out = p.acl;
	return 0;
oom:
	snprintf(err, errlen, "out of memory");
fail:
	acl_free(p.acl);
	return -1;
}

int acl_load(const char *path, const struct acl_limits *lim, struct acl **out,
	     char *err, size_t errlen)
{
	struct textfile f;

	if (textfile_open(&f, path, lim->max_bytes, err, errlen) < 0)
		return -1;
	return textfile_close(&f, acl_parse(f.text, f.len, lim, out, f.err, sizeof(f.err)),
			      err, errlen);
}

void acl_free(struct acl *acl)
{
	if (!acl)
		return;
	acl_section_free(&acl->anon);
	for (size_t i = 0; i < acl->nusers; i++)
		acl_section_free(&acl->users[i]);
	free(acl->users);
	acl_section_free(&acl->patterns);
	free(acl);
}

/* ---- a client's view ---- */

static bool name_widens(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (s[i] == '+' || s[i] == '#' || s[i] == '/')
			return true;
	return false;
}

bool acl_names_widen(const char *user, size_t ulen, const char *client_id, size_t clen)
{
	return (user && name_widens(user, ulen)) || name_widens(client_id, clen);
}

static bool has_user_mark(const struct acl_rule *r)
{
	for (uint32_t i = 0; i + 1 < r->len; i++)
		if (r->filter[i] == '%' && r->filter[i + 1] == 'u')
			return true;
	return false;
}

/* The pattern with %u and %c replaced, Mosquitto's way (left to right, "%%c" is '%' then %c). */
static int substitute(struct acl_section *out, const struct acl_rule *r, const char *user,
		      size_t ulen, const char *cid, size_t clen)
{
	size_t cap = r->len, n = 0;
	char *f;
	int rc;

	for (uint32_t i = 0; i + 1 < r->len; i++)
		if (r->filter[i] == '%' && (r->filter[i + 1] == 'u' || r->filter[i + 1] == 'c'))
			cap += r->filter[i + 1] == 'u' ? ulen : clen;
	f = malloc(cap + 1);
	if (!f)
		return -1;
	for (uint32_t i = 0; i < r->len; i++) {
		if (r->filter[i] == '%' && i + 1 < r->len && r->filter[i + 1] == 'c') {
			memcpy(f + n, cid, clen);
			n += clen;
			i++;
		} else if (r->filter[i] == '%' && i + 1 < r->len && r->filter[i + 1] == 'u' && user) {
			memcpy(f + n, user, ulen);
			n += ulen;
			i++;
		} else {
			f[n++] = r->filter[i];
		}
	}
	rc = acl_section_add(out, f, n, r->access);
	free(f);
	return rc;
}

/*
 * A view starts as the names its patterns need: substituting them costs
 * an allocation per pattern, and most connections never publish or
 * subscribe again after their first few packets, or at all.
 */
struct acl_client *acl_view_new(const struct acl_section *topics, const struct acl_section *patterns,
				const char *user, size_t ulen, const char *client_id, size_t clen)
{
	bool pending = patterns && patterns->n > 0 && !acl_names_widen(user, ulen, client_id, clen);
	struct acl_client *c = calloc(1, sizeof(*c) + (pending ? ulen + clen + 2 : 0));

	if (!c)
		return NULL;
	c->topics = topics;
	c->patterns_refused = patterns && patterns->n > 0 && !pending;
	if (!pending)
		return c;
	if (user)
		memcpy(c->who, user, ulen);
	c->who[ulen] = '\0';
	memcpy(c->who + ulen + 1, client_id, clen);
	c->who[ulen + 1 + clen] = '\0';
	c->who_user = user != NULL;
	c->pending = patterns;
	return c;
}

struct acl_client *acl_client_new(const struct acl *acl, const char *user, size_t ulen,
				  const char *client_id, size_t clen)
{
	return acl_view_new(acl_user_section(acl, user, ulen), &acl->patterns, user, ulen,
			    client_id, clen);
}

bool acl_client_ready(struct acl_client *c)
{
	const struct acl_section *patterns = c->pending;
	const char *user = c->who_user ? c->who : NULL;
	size_t ulen, clen;
	const char *cid;

	if (!patterns)
		return true;
	if (!c->patterns && !(c->patterns = calloc(1, sizeof(*c->patterns))))
		return false;
	ulen = strlen(c->who);
	cid = c->who + ulen + 1;
	clen = strlen(cid);
	for (size_t i = 0; i < patterns->n; i++) {
		const struct acl_rule *r = &patterns->rules[i];

		if (!user && has_user_mark(r))
			continue;
		if (substitute(c->patterns, r, user, ulen, cid, clen) < 0) {
			acl_section_free(c->patterns);
			return false;
		}
	}
	c->pending = NULL;
	return true;
}

struct acl_client *acl_client_from_lists(const char *const *read, size_t nread,
					 const char *const *write, size_t nwrite)
{
	struct acl_client *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	if (!(c->own = calloc(1, sizeof(*c->own))))
		goto fail;
	for (size_t i = 0; i < nread; i++)
		if (acl_section_add(c->own, read[i], strlen(read[i]), ACL_READ) < 0)
			goto fail;
	for (size_t i = 0; i < nwrite; i++)
		if (acl_section_add(c->own, write[i], strlen(write[i]), ACL_WRITE) < 0)
			goto fail;
	c->topics = c->own;
	return c;
fail:
	acl_client_free(c);
	return NULL;
}

void acl_client_free(struct acl_client *c)
{
	if (!c)
		return;
	acl_section_free(c->own);
	free(c->own);
	acl_section_free(c->patterns);
	free(c->patterns);
	free(c->memo);
	if (c->shared)
		acl_shared_unref(c->shared);
	free(c);
}

/*
 * A view's own tries are built at its first check, not when it is made:
 * most connections are idle most of the time, and a view that answers
 * no message costs its rule lists alone. A view whose tries cannot be
 * built (out of memory) allows nothing.
 */
static bool view_built(struct acl_client *c)
{
	if (!c->built && acl_client_ready(c) && (!c->shared || acl_shared_build(c->shared)) &&
	    acl_section_build(c->own) == 0 && acl_section_build(c->patterns) == 0)
		c->built = true;
	return c->built;
}

bool acl_client_check(struct acl_client *c, const char *topic, size_t len,
		      enum acl_access access)
{
	uint8_t bits;

	if (!view_built(c))
		return false;
	bits = c->topics ? trie_match(c->topics->trie, topic, len) : 0;

	if (bits & BIT_DENY)
		return false;
	if (bits & access)
		return true;
	if (c->patterns_refused)
		return false;
	bits = c->patterns ? trie_match(c->patterns->trie, topic, len) : 0;
	return !(bits & BIT_DENY) && (bits & access);
}

/*
 * The memo's slot, from a few of the topic's bytes: a hash of them all
 * cost as much as the walk it saves. Topics that differ only elsewhere
 * share a slot, which costs a walk, not an error: the slot's topic is
 * compared whole.
 */
static unsigned memo_slot(const char *topic, size_t len, enum acl_access access)
{
	uint32_t h = (uint32_t)len ^ access ^ ((uint32_t)(uint8_t)topic[len - 1] << 1) ^
		     ((uint32_t)(uint8_t)topic[len - 2 < len ? len - 2 : 0] << 2) ^
		     ((uint32_t)(uint8_t)topic[len / 2] << 3);

	return (h ^ (h >> 3) ^ (h >> 6)) % ACL_MEMO_SLOTS;
}

bool acl_client_may(struct acl_client *c, const char *topic, size_t len,
		    enum acl_access access)
{
	struct acl_memo *m;
	bool yes;

	if (len == 0 || len > ACL_MEMO_TOPIC)
		return acl_client_check(c, topic, len, access);
	if (!c->memo && !(c->memo = calloc(ACL_MEMO_SLOTS, sizeof(*c->memo))))
		return acl_client_check(c, topic, len, access);
	m = &c->memo[memo_slot(topic, len, access)];
	if (m->len == len && m->access == access && memcmp(m->topic, topic, len) == 0)
		return m->yes;
	yes = acl_client_check(c, topic, len, access);
	m->len = (uint16_t)len;
	m->access = (uint8_t)access;
	m->yes = yes;
	memcpy(m->topic, topic, len);
	return yes;
}

/* Is the overlap inside one of s's deny rules? */
static bool denied_whole(const struct acl_section *s, const char *f, size_t len)
{
	if (!s)
		return false;
	for (size_t i = 0; i < s->n; i++)
		if (s->rules[i].access == 0 && filter_covers(s->rules[i].filter, s->rules[i].len, f, len))
			return true;
	return false;
}

static size_t longest_rule(const struct acl_section *s)
{
	size_t m = 0;

	for (size_t i = 0; s && i < s->n; i++)
		if (s->rules[i].len > m)
			m = s->rules[i].len;
	return m;
}

/* Some read rule of s whose overlap with the filter is not wholly denied (by s's or also's denies). */
static bool readable_overlap(const struct acl_section *s, const struct acl_section *also,
			     const char *f, size_t len, char *buf)
{
	for (size_t i = 0; s && i < s->n; i++) {
		const struct acl_rule *r = &s->rules[i];
		size_t olen;

		if (!(r->access & ACL_READ) || !filter_intersect(f, len, r->filter, r->len, buf, &olen))
			continue;
		if (!denied_whole(s, buf, olen) && !denied_whole(also, buf, olen))
			return true;
	}
	return false;
}

bool acl_client_may_subscribe(struct acl_client *c, const char *filter, size_t len)
{
	size_t longest = longest_rule(c->topics);
	char *buf;
	bool yes;

	if (!acl_client_ready(c))
		return false;
	if (!c->patterns_refused && longest_rule(c->patterns) > longest)
		longest = longest_rule(c->patterns);
	buf = malloc(len + longest + 1);
	if (!buf)
		return false;
	yes = readable_overlap(c->topics, NULL, filter, len, buf) ||
	      (!c->patterns_refused && readable_overlap(c->patterns, c->topics, filter, len, buf));
	free(buf);
	return yes;
}

bool acl_check(const struct acl *acl, const char *user, const char *client_id,
	       const char *topic, enum acl_access access)
{
	struct acl_client *c = acl_client_new(acl, user, user ? strlen(user) : 0,
					      client_id, strlen(client_id));
	bool yes = c && acl_client_check(c, topic, strlen(topic), access);

	acl_client_free(c);
	return yes;
}
