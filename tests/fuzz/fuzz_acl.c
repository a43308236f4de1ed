/*
 * fuzz_acl.c - libFuzzer harness for the ACL file (acl.h).
 *
 * Input: file NUL user NUL client-id NUL topic NUL topic ... The file goes
 * through acl_parse; when it loads, a client view is made for the user
 * (none when empty) and the client id, and each topic that is a valid
 * topic name is checked for reading and writing. What may be read must
 * not be refused as a SUBSCRIBE filter: neither the topic itself nor, for
 * a topic outside '$', "#". The topics that are valid filters also make a
 * view from lists, where reading and writing must be exactly what the
 * lists say for the filters taken as topics.
 *
 * The bytes as a whole are also decoded as an encoded ACL, an encoded
 * view, a worker's patterns and a worker's view (acl_decode,
 * acl_client_decode, acl_views_set_patterns, acl_views_client: hostile
 * input; the last with patterns of the generation the bytes name), and
 * every ACL and view made goes through its encoding and back, where the
 * copy must answer every question as the original does; so does the view
 * a worker makes from the ACL's patterns and the client's topic rules.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "acl.h"
#include "rec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_TOPICS 16

static const struct acl_limits lim = { .max_bytes = 1 << 16, .max_line = 4096, .max_rules = 256 };

static bool topic_name(const char *t, size_t len)
{
	return len > 0 && !memchr(t, '+', len) && !memchr(t, '#', len) && !memchr(t, '\0', len);
}

static void check_view(struct acl_client *c, char **topics, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(topics[i]);

		if (!topic_name(topics[i], len))
			continue;
		acl_client_check(c, topics[i], len, ACL_WRITE);
		if (!acl_client_check(c, topics[i], len, ACL_READ))
			continue;
		if (acl_filter_valid(topics[i], len) && !acl_client_may_subscribe(c, topics[i], len))
			__builtin_trap();
		if (topics[i][0] != '$' && !acl_client_may_subscribe(c, "#", 1))
			__builtin_trap();
	}
}

/* The remembered answers (acl_client_may) are acl_client_check's, asked twice over. */
static void memo_agrees(struct acl_client *c, char **topics, size_t n)
{
	for (int round = 0; round < 2; round++)
		for (size_t i = 0; i < n; i++) {
			size_t len = strlen(topics[i]);

			if (topic_name(topics[i], len))
				for (int a = ACL_READ; a <= ACL_WRITE; a++)
					if (acl_client_may(c, topics[i], len, a) !=
					    acl_client_check(c, topics[i], len, a))
						__builtin_trap();
		}
}

/* Views c and d answer every question about the topics alike. */
static void same_answers(struct acl_client *c, struct acl_client *d, char **topics,
			 size_t n)
{
	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(topics[i]);

		if (topic_name(topics[i], len))
			for (int a = ACL_READ; a <= ACL_WRITE; a++)
				if (acl_client_check(c, topics[i], len, a) != acl_client_check(d, topics[i], len, a))
					__builtin_trap();
		if (acl_filter_valid(topics[i], len) &&
		    acl_client_may_subscribe(c, topics[i], len) != acl_client_may_subscribe(d, topics[i], len))
			__builtin_trap();
	}
}

/* The view the ACL gives the user (NULL: anonymous) and client id. */
static struct acl_client *view_of(const struct acl *acl, const char *user, const char *cid)
{
	return acl_client_new(acl, user, user ? strlen(user) : 0, cid, strlen(cid));
}

/* The view's copy through its bytes (when it can be encoded) answers like the view. */
static void check_copy(struct acl_client *c, char **topics, size_t n)
{
	struct acl_client *d;
	struct recw w;
	char err[256];

	recw_init(&w);
	if (acl_client_encode(c, &w) == 0) {
		d = acl_client_decode(w.buf, w.len, err, sizeof(err));
		if (!d)
			__builtin_trap();
		same_answers(c, d, topics, n);
		acl_client_free(d);
	}
	recw_free(&w);
}

/* The ACL's copy through its bytes (when it can be encoded) gives the user the same view. */
static void check_acl_copy(const struct acl *acl, const char *user, const char *cid,
			   char **topics, size_t n)
{
	struct acl *back = NULL;
	struct acl_client *c, *d;
	struct recw w;
	char err[256];

	recw_init(&w);
	if (acl_encode(acl, &w) == 0) {
		if (acl_decode(w.buf, w.len, &lim, &back, err, sizeof(err)) != 0)
			__builtin_trap();
		c = view_of(acl, user, cid);
		d = view_of(back, user, cid);
		if (c && d)
			same_answers(c, d, topics, n);
		acl_client_free(c);
		acl_client_free(d);
		acl_free(back);
	}
	recw_free(&w);
}

/* A view decoded from bytes: refused with a message (in err), or taken and usable. */
static void view_usable(struct acl_client *c, const char *err)
{
	if (c) {
		acl_client_check(c, "u/c/x", 5, ACL_WRITE);
		acl_client_may_subscribe(c, "#", 1);
		acl_client_free(c);
	} else if (!err[0]) {
		__builtin_trap();
	}
}

/* A view from a worker's store. */
static void worker_view_usable(struct acl_views *views, const uint8_t *data, size_t size)
{
	char err[256] = "";

	view_usable(acl_views_client(views, data, size, "u", 1, "c", 1, err, sizeof(err)), err);
}

/*
 * Arbitrary bytes as a worker's patterns and view: the view is made with
 * patterns of the generation its bytes name (when they name one), so that
 * its rules are reached.
 */
static void decode_worker_bytes(const uint8_t *data, size_t size)
{
	static struct acl *patterns;
	struct acl_views *views = acl_views_new();
	char err[256] = "";
	uint64_t gen = 0;
	struct recw w;

	if (!views)
		return;
	if (!patterns && acl_parse("pattern write %u/%c/#\n", 22, &lim, &patterns, err,
				   sizeof(err)) != 0)
		__builtin_trap();
	if (acl_views_set_patterns(views, data, size, err, sizeof(err)) < 0 && !err[0])
		__builtin_trap();
	worker_view_usable(views, data, size);
	if (size >= 12)
		memcpy(&gen, data + 4, sizeof(gen));
	recw_init(&w);
	if (gen && acl_patterns_encode(patterns, gen, &w) == 0 &&
	    acl_views_set_patterns(views, w.buf, w.len, err, sizeof(err)) < 0)
		__builtin_trap();
	recw_free(&w);
	worker_view_usable(views, data, size);
	acl_views_free(views);
}

/* Arbitrary bytes as an encoded ACL and view: refused with a message, or taken and usable. */
static void decode_bytes(const uint8_t *data, size_t size)
{
	struct acl *acl = NULL;
	char err[256] = "";

	if (acl_decode(data, size, &lim, &acl, err, sizeof(err)) == 0) {
		acl_check(acl, "u", "c", "a/b", ACL_READ);
		acl_free(acl);
	} else if (acl || !err[0]) {
		__builtin_trap();
	}
	err[0] = '\0';
	view_usable(acl_client_decode(data, size, err, sizeof(err)), err);
	decode_worker_bytes(data, size);
}

/*
 * The view a worker makes of the client (the ACL's patterns, sent once,
 * and the client's topic rules) answers like the router's.
 */
static void check_worker_view(const struct acl *acl, struct acl_client *c, const char *user,
			      const char *cid, char **topics, size_t n)
{
	size_t ulen = user ? strlen(user) : 0;
	struct acl_views *views = acl_views_new();
	struct acl_client *d = NULL;
	struct recw p, w;
	char err[256];

	recw_init(&p);
	recw_init(&w);
	if (views && acl_patterns_encode(acl, 3, &p) == 0 && !p.oom &&
	    acl_views_set_patterns(views, p.buf, p.len, err, sizeof(err)) == 0 &&
	    acl_view_encode(acl, 3, user, ulen, cid, strlen(cid), &w) >= 0 && !w.oom) {
		d = acl_views_client(views, w.buf, w.len, user, ulen, cid, strlen(cid), err,
				     sizeof(err));
		if (!d)
			__builtin_trap();
		same_answers(c, d, topics, n);
		memo_agrees(d, topics, n);
		acl_client_free(d);
	}
	recw_free(&p);
	recw_free(&w);
	acl_views_free(views);
}

/* A view from the valid filters among the topics: half read, half write. */
static void check_lists(char **topics, size_t n)
{
	const char *read[MAX_TOPICS], *write[MAX_TOPICS];
	size_t nr = 0, nw = 0;
	struct acl_client *c;

	for (size_t i = 0; i < n; i++) {
		if (!acl_filter_valid(topics[i], strlen(topics[i])))
			continue;
		if (i % 2)
			write[nw++] = topics[i];
		else
			read[nr++] = topics[i];
	}
	c = acl_client_from_lists(read, nr, write, nw);
	if (!c)
		return;
	for (size_t i = 0; i < nr; i++)
		if (topic_name(read[i], strlen(read[i])) && !acl_client_check(c, read[i], strlen(read[i]), ACL_READ))
			__builtin_trap();
	for (size_t i = 0; i < nw; i++)
		if (topic_name(write[i], strlen(write[i])) && !acl_client_check(c, write[i], strlen(write[i]), ACL_WRITE))
			__builtin_trap();
	check_view(c, topics, n);
	check_copy(c, topics, n);
	memo_agrees(c, topics, n);
	acl_client_free(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *copy = malloc(size + 1), *parts[3 + MAX_TOPICS];
	size_t nparts = 0, off = 0, flen;
	struct acl *acl = NULL;
	struct acl_client *c;
	char err[256] = "";

	decode_bytes(data, size);
	if (!copy)
		return 0;
	memcpy(copy, data, size);
	copy[size] = '\0';
	flen = strnlen(copy, size);
	/* The file is everything up to the first NUL; then NUL-separated strings. */
	off = flen + 1;
	while (off <= size && nparts < 3 + MAX_TOPICS) {
		parts[nparts++] = copy + off;
		off += strlen(copy + off) + 1;
	}
	if (acl_parse(copy, flen, &lim, &acl, err, sizeof(err)) != 0) {
		if (acl || (strncmp(err, "line ", 5) != 0 && strncmp(err, "larger", 6) != 0))
			__builtin_trap();
		free(copy);
		return 0;
	}
	if (nparts >= 2) {
		const char *user = parts[0][0] ? parts[0] : NULL;

		c = view_of(acl, user, parts[1]);
		if (c) {
			check_view(c, parts + 2, nparts - 2);
			memo_agrees(c, parts + 2, nparts - 2);
			check_copy(c, parts + 2, nparts - 2);
			check_worker_view(acl, c, user, parts[1], parts + 2, nparts - 2);
			acl_client_free(c);
		}
		check_acl_copy(acl, user, parts[1], parts + 2, nparts - 2);
		check_lists(parts + 2, nparts - 2);
	}
	acl_free(acl);
	free(copy);
	return 0;
}
