/*
 * json.h - a small, strict JSON reader (RFC 8259) for the JSON iotd reads
 * from others: a JWT's header and claims.
 *
 * Strict: one value and nothing after it but whitespace; no comments, no
 * trailing commas, no leading zeros or '+' in numbers; strings of valid
 * UTF-8 without raw control characters, with escapes decoded (surrogate
 * pairs joined; a lone surrogate is an error); an object may not name a
 * key twice (two readers could each take a different one). "\u0000" is
 * refused as well, so that every decoded string is a C string. Bounded:
 * input size, nesting depth and number of values are the caller's limits.
 *
 * The parsed document is one array of values in document order, each
 * knowing where the values it holds end, and one block of decoded
 * strings; nothing points back into the input.
 */
#ifndef IOTD_JSON_H
#define IOTD_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum json_type { JSON_NULL, JSON_FALSE, JSON_TRUE, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT };

struct json_limits {
	size_t max_bytes;      /* input */
	uint32_t max_depth;    /* arrays and objects inside one another */
	uint32_t max_values;   /* every value, keys included */
};

#define JSON_LIMITS_DEFAULT { .max_bytes = 64u << 10, .max_depth = 16, .max_values = 4096 }

struct json_value {
	uint8_t type;          /* enum json_type */
	uint32_t len;          /* string: bytes; number: characters; array: items; object: members */
	uint32_t str;          /* string, number: offset of its text in the document's strings */
	uint32_t end;          /* index of the first value after this one and all it holds */
};

struct json_doc {
	struct json_value *v;  /* v[0] is the document's value */
	uint32_t n;
	char *strings;         /* each NUL-terminated */
};

/* Returns 0 with doc filled, or -1 with "offset N: ..." in err. */
int json_parse(const char *text, size_t len, const struct json_limits *lim,
	       struct json_doc *doc, char *err, size_t errlen);

void json_free(struct json_doc *doc);

static inline const struct json_value *json_root(const struct json_doc *d)
{
	return &d->v[0];
}

/* The member key of obj, or NULL when obj is not an object or has none. */
const struct json_value *json_get(const struct json_doc *d, const struct json_value *obj,
				  const char *key);

/* arr's item after prev (the first when prev is NULL); NULL at the end or when arr is not an array. */
const struct json_value *json_item(const struct json_doc *d, const struct json_value *arr,
				   const struct json_value *prev);

/* A string's decoded bytes or a number's text (NUL-terminated); NULL for other types. */
const char *json_text(const struct json_doc *d, const struct json_value *v);

/* A number as a whole number (a fraction is cut off); false if not a number or out of range. */
bool json_int64(const struct json_doc *d, const struct json_value *v, int64_t *out);

#endif
