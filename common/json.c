/*
 * json.c - the strict JSON reader (json.h): a recursive descent over the
 * input, depth-bounded, writing values in document order.
 *
 * Owns the document it builds (values and strings); the input is only
 * read during json_parse.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

struct json_parser {
	const char *s;
	size_t len, pos;
	const struct json_limits *lim;
	struct json_doc *doc;
	uint32_t cap;
	size_t nstr;             /* bytes used in doc->strings */
	const char *why;
};

static int json_fail(struct json_parser *p, const char *why)
{
	if (!p->why)
		p->why = why;
	return -1;
}

static void json_ws(struct json_parser *p)
{
	while (p->pos < p->len && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' ||
				   p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
		p->pos++;
}

/* Steps over c if it comes next. */
static bool json_eat(struct json_parser *p, char c)
{
	if (p->pos >= p->len || p->s[p->pos] != c)
		return false;
	p->pos++;
	return true;
}

/* A new value; its index, or -1. */
static int64_t json_new(struct json_parser *p, enum json_type type)
{
	struct json_doc *d = p->doc;

	if (d->n == p->lim->max_values)
		return json_fail(p, "more values than the limit");
	if (d->n == p->cap) {
		uint32_t cap = p->cap ? p->cap * 2 : 16;
		struct json_value *v;

		if (cap > p->lim->max_values)
			cap = p->lim->max_values;
		v = realloc(d->v, cap * sizeof(*v));
		if (!v)
			return json_fail(p, "out of memory");
		d->v = v;
		p->cap = cap;
	}
	memset(&d->v[d->n], 0, sizeof(d->v[0]));
	d->v[d->n].type = (uint8_t)type;
	return d->n++;
}

static int json_literal(struct json_parser *p, const char *word, enum json_type type)
{
	size_t n = strlen(word);

	if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0)
		return json_fail(p, "not a JSON value");
	p->pos += n;
	if (json_new(p, type) < 0)
		return -1;
	p->doc->v[p->doc->n - 1].end = p->doc->n;
	return 0;
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static int json_number(struct json_parser *p)
{
	size_t start = p->pos;
	int64_t i;

	if (p->pos < p->len && p->s[p->pos] == '-')
		p->pos++;
	if (p->pos >= p->len || !is_digit(p->s[p->pos]))
		return json_fail(p, "a number without digits");
	if (p->s[p->pos] == '0')
		p->pos++;
	else
		while (p->pos < p->len && is_digit(p->s[p->pos]))
			p->pos++;
	if (p->pos < p->len && p->s[p->pos] == '.') {
		p->pos++;
		if (p->pos >= p->len || !is_digit(p->s[p->pos]))
			return json_fail(p, "a number with no digit after '.'");
		while (p->pos < p->len && is_digit(p->s[p->pos]))
			p->pos++;
	}
	if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
		p->pos++;
		if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-'))
			p->pos++;
		if (p->pos >= p->len || !is_digit(p->s[p->pos]))
			return json_fail(p, "a number with no digit in its exponent");
		while (p->pos < p->len && is_digit(p->s[p->pos]))
			p->pos++;
	}
	i = json_new(p, JSON_NUMBER);
	if (i < 0)
		return -1;
	p->doc->v[i].str = (uint32_t)p->nstr;
	p->doc->v[i].len = (uint32_t)(p->pos - start);
	p->doc->v[i].end = (uint32_t)i + 1;
	memcpy(p->doc->strings + p->nstr, p->s + start, p->pos - start);
	p->nstr += p->pos - start;
	p->doc->strings[p->nstr++] = '\0';
	return 0;
}

static int hex4(const char *s, uint32_t *out)
{
	uint32_t v = 0;

	for (int i = 0; i < 4; i++) {
		char c = s[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (uint32_t)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (uint32_t)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (uint32_t)(c - 'A' + 10);
		else
			return -1;
	}
	*out = v;
	return 0;
}

static size_t utf8_put(char *o, uint32_t cp)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xc0 | (cp >> 6));
		o[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xe0 | (cp >> 12));
		o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		o[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	o[0] = (char)(0xf0 | (cp >> 18));
	o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
	o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
	o[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0: no overlongs, surrogates or > U+10FFFF. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
	uint32_t cp;
	size_t len;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		len = 2;
		cp = s[0] & 0x1f;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		len = 3;
		cp = s[0] & 0x0f;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		len = 4;
		cp = s[0] & 0x07;
	} else {
		return 0;
	}
	if (n < len)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

/* One escape after the backslash at p->pos - 1; the decoded bytes go to o. */
static int json_escape(struct json_parser *p, char *o, size_t *n)
{
	uint32_t cp, lo;
	char c;

	if (p->pos >= p->len)
		return json_fail(p, "a string ends in an escape");
	c = p->s[p->pos++];
	switch (c) {
	case '"': case '\\': case '/': o[0] = c; *n = 1; return 0;
	case 'b': o[0] = '\b'; *n = 1; return 0;
	case 'f': o[0] = '\f'; *n = 1; return 0;
	case 'n': o[0] = '\n'; *n = 1; return 0;
	case 'r': o[0] = '\r'; *n = 1; return 0;
	case 't': o[0] = '\t'; *n = 1; return 0;
	case 'u': break;
	default: return json_fail(p, "an unknown escape");
	}
	if (p->len - p->pos < 4 || hex4(p->s + p->pos, &cp) < 0)
		return json_fail(p, "\\u without four hex digits");
	p->pos += 4;
	if (cp == 0)
		return json_fail(p, "\\u0000 in a string");
	if (cp >= 0xdc00 && cp <= 0xdfff)
		return json_fail(p, "a lone low surrogate");
	if (cp >= 0xd800 && cp <= 0xdbff) {
		if (p->len - p->pos < 6 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u' ||
		    hex4(p->s + p->pos + 2, &lo) < 0 || lo < 0xdc00 || lo > 0xdfff)
			return json_fail(p, "a high surrogate without its low one");
		p->pos += 6;
		cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
	}
	*n = utf8_put(o, cp);
	return 0;
}

/* A string at p->pos (its opening quote); its index, or -1. */
static int64_t json_string(struct json_parser *p)
{
	char *o = p->doc->strings + p->nstr;
	size_t n = 0;
	int64_t i;

	p->pos++; /* '"' */
	for (;;) {
		unsigned char c;
		size_t k;

		if (p->pos >= p->len)
			return json_fail(p, "a string without its closing quote");
		c = (unsigned char)p->s[p->pos];
		if (c == '"')
			break;
		if (c < 0x20)
			return json_fail(p, "a control character in a string");
		if (c == '\\') {
			p->pos++;
			if (json_escape(p, o + n, &k) < 0)
				return -1;
			n += k;
			continue;
		}
		k = utf8_len((const unsigned char *)p->s + p->pos, p->len - p->pos);
		if (k == 0)
			return json_fail(p, "invalid UTF-8 in a string");
		memcpy(o + n, p->s + p->pos, k);
		n += k;
		p->pos += k;
	}
	p->pos++;
	i = json_new(p, JSON_STRING);
	if (i < 0)
		return -1;
	p->doc->v[i].str = (uint32_t)p->nstr;
	p->doc->v[i].len = (uint32_t)n;
	p->doc->v[i].end = (uint32_t)i + 1;
	o[n] = '\0';
	p->nstr += n + 1;
	return i;
}

static int json_value(struct json_parser *p, uint32_t depth);

/* Is the key just read (index k) already a key of the object at index obj? */
static bool json_key_seen(const struct json_parser *p, int64_t obj, int64_t k)
{
	const struct json_doc *d = p->doc;
	const struct json_value *key = &d->v[k];

	for (uint32_t i = (uint32_t)obj + 1; i < k; i = d->v[i + 1].end) {
		if (d->v[i].len == key->len &&
		    memcmp(d->strings + d->v[i].str, d->strings + key->str, key->len) == 0)
			return true;
	}
	return false;
}

/* An object member's key and its ':'. */
static int json_key(struct json_parser *p, int64_t obj)
{
	int64_t k;

	json_ws(p);
	if (p->pos >= p->len || p->s[p->pos] != '"')
		return json_fail(p, "an object key that is not a string");
	k = json_string(p);
	if (k < 0)
		return -1;
	if (json_key_seen(p, obj, k))
		return json_fail(p, "a key named twice in one object");
	json_ws(p);
	if (!json_eat(p, ':'))
		return json_fail(p, "an object key without ':'");
	return 0;
}

/* An array, or an object (its members' keys too): members at depth + 1. */
static int json_members(struct json_parser *p, uint32_t depth, enum json_type type)
{
	bool object = type == JSON_OBJECT;
	char close = object ? '}' : ']';
	int64_t c = json_new(p, type);
	uint32_t n = 0;

	if (c < 0)
		return -1;
	p->pos++; /* '[' or '{' */
	json_ws(p);
	if (!json_eat(p, close)) {
		do {
			if (object && json_key(p, c) < 0)
				return -1;
			if (json_value(p, depth + 1) < 0)
				return -1;
			n++;
			json_ws(p);
		} while (json_eat(p, ','));
		if (!json_eat(p, close))
			return json_fail(p, object ? "an object without ',' or '}'" :
						     "an array without ',' or ']'");
	}
	p->doc->v[c].len = n;
	p->doc->v[c].end = p->doc->n;
	return 0;
}

static int json_value(struct json_parser *p, uint32_t depth)
{
	json_ws(p);
	if (p->pos >= p->len)
		return json_fail(p, "a value missing");
	switch (p->s[p->pos]) {
	case '{':
	case '[':
		if (depth >= p->lim->max_depth)
			return json_fail(p, "nested deeper than the limit");
		return json_members(p, depth, p->s[p->pos] == '{' ? JSON_OBJECT : JSON_ARRAY);
	case '"':
		return json_string(p) < 0 ? -1 : 0;
	case 't':
		return json_literal(p, "true", JSON_TRUE);
	case 'f':
		return json_literal(p, "false", JSON_FALSE);
	case 'n':
		return json_literal(p, "null", JSON_NULL);
	default:
		return json_number(p);
	}
}

int json_parse(const char *text, size_t len, const struct json_limits *lim,
	       struct json_doc *doc, char *err, size_t errlen)
{
	struct json_parser p = { .s = text, .len = len, .lim = lim, .doc = doc };

	memset(doc, 0, sizeof(*doc));
	if (len > lim->max_bytes || len > UINT32_MAX / 2) {
		snprintf(err, errlen, "larger than %zu bytes", lim->max_bytes);
		return -1;
	}
	/* Decoded text is never longer than its source, and each value's NUL has a byte of source too. */
	doc->strings = malloc(2 * len + 1);
	if (!doc->strings) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (json_value(&p, 0) == 0) {
		json_ws(&p);
		if (p.pos == len)
			return 0;
		json_fail(&p, "more after the value");
	}
	snprintf(err, errlen, "offset %zu: %s", p.pos, p.why);
	json_free(doc);
	return -1;
}

void json_free(struct json_doc *doc)
{
	free(doc->v);
	free(doc->strings);
	memset(doc, 0, sizeof(*doc));
}

const struct json_value *json_get(const struct json_doc *d, const struct json_value *obj,
				  const char *key)
{
	size_t klen = strlen(key);
	uint32_t i;

	if (!obj || obj->type != JSON_OBJECT)
		return NULL;
	for (i = (uint32_t)(obj - d->v) + 1; i < obj->end; i = d->v[i + 1].end)
		if (d->v[i].len == klen && memcmp(d->strings + d->v[i].str, key, klen) == 0)
			return &d->v[i + 1];
	return NULL;
}

const struct json_value *json_item(const struct json_doc *d, const struct json_value *arr,
				   const struct json_value *prev)
{
	uint32_t i;

	if (!arr || arr->type != JSON_ARRAY)
		return NULL;
	i = prev ? prev->end : (uint32_t)(arr - d->v) + 1;
	return i < arr->end ? &d->v[i] : NULL;
}

const char *json_text(const struct json_doc *d, const struct json_value *v)
{
	if (!v || (v->type != JSON_STRING && v->type != JSON_NUMBER))
		return NULL;
	return d->strings + v->str;
}

bool json_int64(const struct json_doc *d, const struct json_value *v, int64_t *out)
{
	const char *t = json_text(d, v);
	char *end;
	double x;

	if (!t || v->type != JSON_NUMBER)
		return false;
	if (!strpbrk(t, ".eE")) {
		long long n;

		errno = 0;
		n = strtoll(t, &end, 10);
		if (errno || *end)
			return false;
		*out = n;
		return true;
	}
	errno = 0;
	x = strtod(t, &end);
	/* 2^63 is exact as a double; anything at or past it does not fit. */
	if (*end || !isfinite(x) || x >= 9223372036854775808.0 || x < -9223372036854775808.0)
		return false;
	*out = (int64_t)x;
	return true;
}
