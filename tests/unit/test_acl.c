/*
 * test_acl.c - unit tests of the ACL file (common/acl.c): the format and
 * its errors, Mosquitto's order of deny and allow between topic rules and
 * patterns, the substitution of %u and %c and the names that may not be
 * substituted, '$' topics, the SUBSCRIBE question, and the tries checked
 * against a plain walk over the rules (the router's topic_matches) on
 * random rule sets.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "acl.h"
#include "topic.h"

static const struct acl_limits lim = ACL_LIMITS_DEFAULT;

static struct acl *parse_ok(const char *text)
{
	struct acl *acl = NULL;
	char err[256] = "";

	if (acl_parse(text, strlen(text), &lim, &acl, err, sizeof(err)) != 0)
		fail_msg("refused: %s", err);
	return acl;
}

static void parse_fails(const char *text, const char *want)
{
	struct acl *acl = NULL;
	char err[256] = "";

	assert_int_equal(acl_parse(text, strlen(text), &lim, &acl, err, sizeof(err)), -1);
	assert_null(acl);
	if (!strstr(err, want))
		fail_msg("error '%s' lacks '%s'", err, want);
}

static bool can(const struct acl *acl, const char *user, const char *cid, const char *topic,
		enum acl_access a)
{
	return acl_check(acl, user, cid, topic, a);
}

static bool sub(const struct acl *acl, const char *user, const char *cid, const char *filter)
{
	struct acl_client *c = acl_client_new(acl, user, user ? strlen(user) : 0, cid, strlen(cid));
	bool yes;

	assert_non_null(c);
	yes = acl_client_may_subscribe(c, filter, strlen(filter));
	acl_client_free(c);
	return yes;
}

static void deny_carves_out_of_read(void **state)
{
	struct acl *acl = parse_ok("topic read sensors/#\n"
				   "topic deny sensors/private/#\n");

	assert_true(can(acl, NULL, "c", "sensors/a", ACL_READ));
	assert_true(can(acl, NULL, "c", "sensors", ACL_READ)); /* "#" matches its parent */
	assert_true(can(acl, NULL, "c", "sensors/privateer", ACL_READ));
	assert_false(can(acl, NULL, "c", "sensors/private/a", ACL_READ));
	assert_false(can(acl, NULL, "c", "sensors/private", ACL_READ));
	assert_false(can(acl, NULL, "c", "sensors/a", ACL_WRITE));
	assert_false(can(acl, NULL, "c", "other", ACL_READ));
	acl_free(acl);
}

/* The deny is written after or before the allow: the same answer. */
static void deny_wins_whatever_the_order(void **state)
{
	struct acl *acl = parse_ok("topic deny a/b\n"
				   "topic readwrite a/+\n"
				   "user u\n"
				   "topic a/+\n"
				   "topic deny a/b\n");

	assert_false(can(acl, NULL, "c", "a/b", ACL_READ));
	assert_true(can(acl, NULL, "c", "a/c", ACL_WRITE));
	assert_false(can(acl, "u", "c", "a/b", ACL_WRITE));
	assert_true(can(acl, "u", "c", "a/c", ACL_READ));
	acl_free(acl);
}

static void access_words(void **state)
{
	struct acl *acl = parse_ok("topic read r\n"
				   "topic write w\n"
				   "topic readwrite rw\n"
				   "topic both\n"
				   "topic read\n"
				   "topic deny d\n");

	assert_true(can(acl, NULL, "c", "r", ACL_READ));
	assert_false(can(acl, NULL, "c", "r", ACL_WRITE));
	assert_false(can(acl, NULL, "c", "w", ACL_READ));
	assert_true(can(acl, NULL, "c", "w", ACL_WRITE));
	assert_true(can(acl, NULL, "c", "rw", ACL_READ));
	assert_true(can(acl, NULL, "c", "rw", ACL_WRITE));
	assert_true(can(acl, NULL, "c", "both", ACL_READ));
	assert_true(can(acl, NULL, "c", "both", ACL_WRITE));
	/* "topic read" alone: the filter "read", read and write, as Mosquitto reads it. */
	assert_true(can(acl, NULL, "c", "read", ACL_WRITE));
	assert_false(can(acl, NULL, "c", "d", ACL_READ));
	acl_free(acl);
}

static void sections_anonymous_and_users(void **state)
{
	struct acl *acl = parse_ok("# clients without a user name\n"
				   "topic read public/#\n"
				   "user alice\n"
				   "topic alice/#\n"
				   "user bob smith\n"
				   "topic read bob/#\n"
				   "user alice\n"
				   "topic write shared\n");

	assert_true(can(acl, NULL, "c", "public/x", ACL_READ));
	assert_false(can(acl, NULL, "c", "alice/x", ACL_READ));
	/* A user's rules are theirs alone: not the anonymous ones, not another user's. */
	assert_false(can(acl, "alice", "c", "public/x", ACL_READ));
	assert_true(can(acl, "alice", "c", "alice/x", ACL_WRITE));
	assert_true(can(acl, "alice", "c", "shared", ACL_WRITE)); /* her second section */
	assert_false(can(acl, "alice", "c", "bob/x", ACL_READ));
	assert_true(can(acl, "bob smith", "c", "bob/x", ACL_READ));
	assert_false(can(acl, "bob", "c", "bob/x", ACL_READ));
	/* A user the file does not name: nothing (no patterns here). */
	assert_false(can(acl, "carol", "c", "public/x", ACL_READ));
	assert_false(can(acl, "", "c", "public/x", ACL_READ));
	acl_free(acl);
}

/* Sections of one name are merged, the empty ones too. */
static void empty_and_repeated_sections(void **state)
{
	struct acl *acl = parse_ok("user a\nuser a\nuser b\nuser a\ntopic x\nuser a\nuser c\n");

	assert_true(can(acl, "a", "c", "x", ACL_READ));
	assert_false(can(acl, "b", "c", "x", ACL_READ));
	assert_false(can(acl, "c", "c", "x", ACL_READ));
	acl_free(acl);
}

static void patterns_substitute_user_and_client_id(void **state)
{
	struct acl *acl = parse_ok("pattern readwrite users/%u/#\n"
				   "pattern read devices/%c/in\n"
				   "pattern write devices/%c/out\n"
				   "pattern read x/%u-%c/%%c\n"
				   "user alice\n"
				   "topic read news\n");

	assert_true(can(acl, "alice", "dev1", "users/alice/inbox", ACL_WRITE));
	assert_true(can(acl, "alice", "dev1", "news", ACL_READ));
	assert_false(can(acl, "alice", "dev1", "users/bob/inbox", ACL_READ));
	assert_true(can(acl, "alice", "dev1", "devices/dev1/in", ACL_READ));
	assert_false(can(acl, "alice", "dev1", "devices/dev1/in", ACL_WRITE));
	assert_true(can(acl, "alice", "dev1", "devices/dev1/out", ACL_WRITE));
	assert_false(can(acl, "alice", "dev1", "devices/dev2/out", ACL_WRITE));
	assert_true(can(acl, "alice", "dev1", "x/alice-dev1/%dev1", ACL_READ));
	/* Anonymous: %c patterns apply, %u ones do not. */
	assert_true(can(acl, NULL, "dev2", "devices/dev2/in", ACL_READ));
	assert_false(can(acl, NULL, "dev2", "users//inbox", ACL_READ));
	assert_false(can(acl, NULL, "dev2", "users/%u/inbox", ACL_READ));
	assert_false(can(acl, NULL, "dev2", "x/-dev2/%dev2", ACL_READ));
	/* A user the file does not name still has the patterns. */
	assert_true(can(acl, "zed", "z", "users/zed/a", ACL_READ));
	acl_free(acl);
}

/* A name with '+', '#' or '/' would widen a pattern: patterns give it nothing. */
static void names_that_would_widen_a_pattern(void **state)
{
	struct acl *acl = parse_ok("pattern readwrite users/%u/#\n"
				   "pattern readwrite clients/%c/#\n"
				   "user a/b\n"
				   "topic read own\n");

	assert_true(can(acl, "bob", "c1", "users/bob/x", ACL_READ));
	assert_false(can(acl, "+", "c1", "users/bob/x", ACL_READ));
	assert_false(can(acl, "#", "c1", "users/bob/x", ACL_READ));
	assert_false(can(acl, "bob/x", "c1", "users/bob/x/y", ACL_READ));
	assert_false(can(acl, "bob", "+", "clients/c1/x", ACL_READ));
	assert_false(can(acl, "bob", "c1/#", "clients/c1/x", ACL_READ));
	assert_false(can(acl, NULL, "#", "clients/c1/x", ACL_READ));
	/* Nor its own place: the whole of the patterns is off for such a client. */
	assert_false(can(acl, "bob", "c/1", "users/bob/x", ACL_READ));
	/* Its topic rules still apply. */
	assert_true(can(acl, "a/b", "c1", "own", ACL_READ));
	assert_false(can(acl, "a/b", "c1", "users/a/b/x", ACL_READ));
	acl_free(acl);
}

/* Mosquitto's order: topic rules first (deny, then allow), then patterns (deny, then allow). */
static void topic_rules_before_patterns(void **state)
{
	struct acl *acl = parse_ok("pattern deny users/%u/secret\n"
				   "pattern read users/%u/#\n"
				   "pattern deny pub/%c\n"
				   "user alice\n"
				   "topic read users/alice/secret\n"
				   "topic deny users/alice/locked\n"
				   "topic write pub/#\n");

	/* A topic allow is decided before the pattern deny is looked at. */
	assert_true(can(acl, "alice", "c", "users/alice/secret", ACL_READ));
	/* A topic deny wins over a pattern allow. */
	assert_false(can(acl, "alice", "c", "users/alice/locked", ACL_READ));
	assert_true(can(acl, "alice", "c", "users/alice/other", ACL_READ));
	/* bob has no topic rules: the pattern deny wins over the pattern allow. */
	assert_false(can(acl, "bob", "c", "users/bob/secret", ACL_READ));
	assert_true(can(acl, "bob", "c", "users/bob/other", ACL_READ));
	/* A topic write rule matched for a read decides nothing: the patterns go on. */
	assert_true(can(acl, "alice", "c", "pub/c", ACL_WRITE));
	assert_false(can(acl, "alice", "c", "pub/c", ACL_READ));
	acl_free(acl);
}

static void dollar_topics_and_wildcards(void **state)
{
	struct acl *acl = parse_ok("topic read #\n"
				   "topic read +/status\n"
				   "topic read $SYS/broker/#\n"
				   "topic read a/+/c\n"
				   "topic write w/#\n");

	assert_true(can(acl, NULL, "c", "anything/at/all", ACL_READ));
	assert_false(can(acl, NULL, "c", "$SYS/load", ACL_READ));
	assert_false(can(acl, NULL, "c", "$x/status", ACL_READ));
	assert_true(can(acl, NULL, "c", "$SYS/broker/uptime", ACL_READ));
	assert_true(can(acl, NULL, "c", "$SYS/broker", ACL_READ));
	assert_true(can(acl, NULL, "c", "w", ACL_WRITE));
	assert_true(can(acl, NULL, "c", "w/x/y", ACL_WRITE));
	assert_false(can(acl, NULL, "c", "ww", ACL_WRITE));
	assert_true(can(acl, NULL, "c", "a//c", ACL_READ)); /* '+' matches an empty level */
	acl_free(acl);
	acl = parse_ok("topic read a/+/c\n");
	assert_true(can(acl, NULL, "c", "a//c", ACL_READ));
	assert_true(can(acl, NULL, "c", "a/b/c", ACL_READ));
	assert_false(can(acl, NULL, "c", "a/b/c/d", ACL_READ));
	assert_false(can(acl, NULL, "c", "a/b", ACL_READ));
	acl_free(acl);
}

/* Once there is an ACL, what it does not allow is denied. */
static void empty_acl_denies_everything(void **state)
{
	struct acl *acl = parse_ok("# nothing\n\n");

	assert_false(can(acl, NULL, "c", "a", ACL_READ));
	assert_false(can(acl, "u", "c", "a", ACL_WRITE));
	assert_false(sub(acl, "u", "c", "#"));
	acl_free(acl);
}

static void layout_comments_blanks_crlf(void **state)
{
	struct acl *acl = parse_ok("# a comment\r\n"
				   "\r\n"
				   "   \t\n"
				   "  # an indented comment\n"
				   "\ttopic \t read   a b/c  \r\n"
				   "user   spaced name  \r\n"
				   "topic  deny\tx");

	assert_true(can(acl, NULL, "c", "a b/c", ACL_READ));
	assert_false(can(acl, NULL, "c", "a b/c", ACL_WRITE));
	assert_false(can(acl, "spaced name", "c", "x", ACL_READ));
	acl_free(acl);
}

static void malformed_lines_refuse_the_file(void **state)
{
	parse_fails("topic read a\nsubscribe a\n", "line 2: unknown keyword 'subscribe'");
	parse_fails("\n\ntopic reed a/b\n", "line 3: unknown access 'reed'");
	parse_fails("topic\n", "line 1: no topic filter");
	parse_fails("pattern   \n", "line 1: no topic filter");
	parse_fails("user\n", "line 1: a user line without a name");
	parse_fails("user  \t\n", "line 1: a user line without a name");
	parse_fails("topic read a/#/b\n", "line 1: 'a/#/b' is not a valid topic filter");
	parse_fails("topic read a+\n", "line 1: 'a+' is not a valid topic filter");
	parse_fails("topic read a/b#\n", "line 1: 'a/b#' is not a valid topic filter");
	parse_fails("# ok\npattern deny +x/%c\n", "line 2: '+x/%c' is not a valid topic filter");
	parse_fails("Topic read a\n", "line 1: unknown keyword 'Topic'");
	parse_fails("topic READ a\n", "line 1: unknown access 'READ'");
}

static void nul_and_limits(void **state)
{
	static const char nul[] = "topic read a\0b\n";
	struct acl_limits l = lim;
	struct acl *acl = NULL;
	char err[256], deep[4 * ACL_MAX_LEVELS + 32];
	const char *three = "topic a\ntopic b\npattern c/%c\n";
	size_t n;

	assert_int_equal(acl_parse(nul, sizeof(nul) - 1, &lim, &acl, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "line 1: a NUL byte"));
	l.max_rules = 2;
	assert_int_equal(acl_parse(three, strlen(three), &l, &acl, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "line 3: more rules than the limit"));
	l = lim;
	l.max_line = 6;
	assert_int_equal(acl_parse(three, strlen(three), &l, &acl, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "line 1: longer than the line limit"));
	l = lim;
	l.max_bytes = 10;
	assert_int_equal(acl_parse(three, strlen(three), &l, &acl, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "larger than"));
	assert_null(acl);
	/* ACL_MAX_LEVELS levels are fine, one more is not. */
	n = (size_t)snprintf(deep, sizeof(deep), "topic ");
	for (int i = 0; i < ACL_MAX_LEVELS; i++)
		n += (size_t)snprintf(deep + n, sizeof(deep) - n, i ? "/%d" : "%d", i % 10);
	acl = parse_ok(deep);
	acl_free(acl);
	strcpy(deep + n, "/x");
	parse_fails(deep, "is not a valid topic filter");
}

static void filter_validity(void **state)
{
	static const char *good[] = { "#", "+", "a", "a/b", "a/+/c", "a/#", "+/+", "/", "//", "$SYS/#", "a b" };
	static const char *bad[] = { "", "a#", "#/a", "a/#/", "++", "a+/b", "a/b+", "#a" };

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		if (!acl_filter_valid(good[i], strlen(good[i])))
			fail_msg("refused %s", good[i]);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (acl_filter_valid(bad[i], strlen(bad[i])))
			fail_msg("accepted %s", bad[i]);
	assert_false(acl_filter_valid("a\0b", 3));
}

static void subscribe_granted_when_something_is_readable(void **state)
{
	struct acl *acl = parse_ok("topic read sensors/#\n"
				   "topic deny sensors/private/#\n"
				   "topic write cmd/#\n"
				   "topic read $SYS/broker/load\n"
				   "pattern read clients/%c/#\n"
				   "pattern deny clients/%c/secret\n");

	assert_true(sub(acl, NULL, "c", "sensors/#"));
	assert_true(sub(acl, NULL, "c", "sensors/+"));
	assert_true(sub(acl, NULL, "c", "sensors/a"));
	assert_true(sub(acl, NULL, "c", "#"));         /* overlaps sensors/# */
	assert_true(sub(acl, NULL, "c", "+/a"));
	assert_true(sub(acl, NULL, "c", "+/+/+"));     /* sensors/x/y */
	assert_true(sub(acl, NULL, "c", "sensors/privat"));
	assert_false(sub(acl, NULL, "c", "sensors/private/#"));
	assert_false(sub(acl, NULL, "c", "sensors/private/a/+"));
	assert_false(sub(acl, NULL, "c", "sensors/private"));
	assert_false(sub(acl, NULL, "c", "other/#"));
	assert_false(sub(acl, NULL, "c", "cmd/#"));    /* write only */
	assert_false(sub(acl, NULL, "c", "sensor"));
	/* '$' topics: a first-level wildcard reaches none of them. */
	assert_true(sub(acl, NULL, "c", "$SYS/broker/load"));
	assert_true(sub(acl, NULL, "c", "$SYS/#"));
	assert_true(sub(acl, NULL, "c", "$SYS/+/load"));
	assert_false(sub(acl, NULL, "c", "$SYS/broker/uptime"));
	/* Patterns, and their denies. */
	assert_true(sub(acl, NULL, "c", "clients/c/#"));
	assert_true(sub(acl, NULL, "c", "clients/+/in"));
	assert_false(sub(acl, NULL, "c", "clients/d/#"));
	assert_false(sub(acl, NULL, "c", "clients/c/secret"));
	assert_false(sub(acl, NULL, "c/x", "clients/c/#"));
	acl_free(acl);
}

/*
 * "#" against "topic read +/#" and "topic read $SYS/#": the second is only
 * reachable from filters starting with "$".
 */
static void subscribe_hash_and_dollar(void **state)
{
	struct acl *acl = parse_ok("topic read $SYS/#\n");

	assert_false(sub(acl, NULL, "c", "#"));
	assert_false(sub(acl, NULL, "c", "+/broker"));
	assert_true(sub(acl, NULL, "c", "$SYS"));
	assert_true(sub(acl, NULL, "c", "$SYS/+"));
	acl_free(acl);
	acl = parse_ok("topic read a/b\ntopic deny a/#\n");
	assert_false(sub(acl, NULL, "c", "a/b"));
	assert_false(sub(acl, NULL, "c", "#"));
	acl_free(acl);
	acl = parse_ok("topic read a\ntopic deny a/#\n");
	assert_false(sub(acl, NULL, "c", "a")); /* "a/#" covers "a" itself */
	acl_free(acl);
	acl = parse_ok("topic read a/#\ntopic deny a/+\n");
	assert_true(sub(acl, NULL, "c", "a/#"));  /* a and a/x/y remain */
	assert_false(sub(acl, NULL, "c", "a/+"));
	assert_true(sub(acl, NULL, "c", "a"));
	acl_free(acl);
}

/* Two denies that only together cover what is readable: granted, and then refused message by message. */
static void subscribe_is_conservative(void **state)
{
	struct acl *acl = parse_ok("topic read a/+\n"
				   "topic deny a/x\n"
				   "topic deny a/y\n");

	assert_false(sub(acl, NULL, "c", "a/x"));
	assert_true(sub(acl, NULL, "c", "a/+"));
	acl_free(acl);
}

static void lists_from_a_token(void **state)
{
	const char *read[] = { "sensors/#", "$SYS/broker/load" };
	const char *write[] = { "cmd/+/set" };
	struct acl_client *c = acl_client_from_lists(read, 2, write, 1);

	assert_non_null(c);
	assert_true(acl_client_check(c, "sensors/a", 9, ACL_READ));
	assert_false(acl_client_check(c, "sensors/a", 9, ACL_WRITE));
	assert_true(acl_client_check(c, "cmd/x/set", 9, ACL_WRITE));
	assert_false(acl_client_check(c, "cmd/x/set", 9, ACL_READ));
	assert_false(acl_client_check(c, "$SYS/x", 6, ACL_READ));
	assert_true(acl_client_may_subscribe(c, "#", 1));
	assert_false(acl_client_may_subscribe(c, "cmd/#", 5));
	acl_client_free(c);
	c = acl_client_from_lists(NULL, 0, NULL, 0);
	assert_false(acl_client_check(c, "a", 1, ACL_READ));
	assert_false(acl_client_may_subscribe(c, "#", 1));
	acl_client_free(c);
}

/* Many users and many rules: each still finds its own. */
static void many_users_and_rules(void **state)
{
	size_t cap = 2u << 20, n = 0;
	char *text = malloc(cap), topic[64], user[32];
	struct acl *acl;

	for (int u = 0; u < 2000; u++)
		n += (size_t)snprintf(text + n, cap - n, "user u%d\ntopic read t/%d/#\n", u, u);
	n += (size_t)snprintf(text + n, cap - n, "user big\n");
	for (int r = 0; r < 5000; r++)
		n += (size_t)snprintf(text + n, cap - n, "topic %s dev/%d/%s\n",
				      r % 3 ? "read" : "deny", r, r % 2 ? "+" : "#");
	acl = parse_ok(text);
	for (int u = 0; u < 2000; u += 7) {
		snprintf(user, sizeof(user), "u%d", u);
		snprintf(topic, sizeof(topic), "t/%d/x", u);
		assert_true(can(acl, user, "c", topic, ACL_READ));
		snprintf(topic, sizeof(topic), "t/%d/x", u + 1);
		assert_false(can(acl, user, "c", topic, ACL_READ));
	}
	for (int r = 0; r < 5000; r += 11) {
		snprintf(topic, sizeof(topic), "dev/%d/z", r);
		assert_int_equal(can(acl, "big", "c", topic, ACL_READ), r % 3 != 0);
	}
	acl_free(acl);
	free(text);
}

/* ---- the tries against a plain walk over the rules ---- */

struct ref_rule {
	char filter[32];
	int kind;     /* 0 topic (anonymous), 1 topic (user u), 2 pattern */
	int access;   /* 0 deny */
};

static const char *ref_levels[] = { "a", "b", "$s", "u", "" };

static void ref_filter(char *out, size_t cap, unsigned *seed, bool pattern)
{
	int levels = 1 + (int)(rand_r(seed) % 3);
	size_t n = 0;

	for (int i = 0; i < levels; i++) {
		int r = (int)(rand_r(seed) % 8);
		const char *lv = r < 5 ? ref_levels[r] : r == 5 ? "+" : r == 6 && pattern ? "%u" : "+";

		if (i == levels - 1 && rand_r(seed) % 4 == 0)
			lv = "#";
		n += (size_t)snprintf(out + n, cap - n, "%s%s", i ? "/" : "", lv);
		if (lv[0] == '#')
			break;
	}
	if (n == 0)
		snprintf(out, cap, "a");
}

/* Mosquitto's order, rule by rule, with topic_matches deciding each match. */
static bool ref_check(const struct ref_rule *rules, size_t n, bool has_user, const char *topic,
		      int access)
{
	bool allow = false, deny = false;

	for (size_t i = 0; i < n; i++) {
		if (rules[i].kind != (has_user ? 1 : 0))
			continue;
		if (!topic_matches(rules[i].filter, strlen(rules[i].filter), topic, strlen(topic)))
			continue;
		deny |= rules[i].access == 0;
		allow |= (rules[i].access & access) != 0;
	}
	if (deny)
		return false;
	if (allow)
		return true;
	for (size_t i = 0; i < n; i++) {
		char f[64];
		size_t k = 0;

		if (rules[i].kind != 2)
			continue;
		if (strstr(rules[i].filter, "%u") && !has_user)
			continue;
		for (const char *p = rules[i].filter; *p; p++) {
			if (p[0] == '%' && p[1] == 'u') {
				f[k++] = 'u';
				p++;
			} else {
				f[k++] = *p;
			}
		}
		f[k] = '\0';
		if (!topic_matches(f, k, topic, strlen(topic)))
			continue;
		deny |= rules[i].access == 0;
		allow |= (rules[i].access & access) != 0;
	}
	return !deny && allow;
}

static void ref_topics(char topics[][16], size_t *n)
{
	size_t nl = sizeof(ref_levels) / sizeof(ref_levels[0]);

	*n = 0;
	for (size_t a = 0; a < nl; a++) {
		snprintf(topics[(*n)++], 16, "%s", ref_levels[a]);
		for (size_t b = 0; b < nl; b++) {
			snprintf(topics[(*n)++], 16, "%s/%s", ref_levels[a], ref_levels[b]);
			for (size_t c = 0; c < nl; c++)
				snprintf(topics[(*n)++], 16, "%s/%s/%s", ref_levels[a], ref_levels[b], ref_levels[c]);
		}
	}
}

static void tries_agree_with_a_plain_walk(void **state)
{
	static const char *words[] = { "deny", "read", "write", "readwrite" };
	static char topics[200][16];
	size_t ntopics;
	unsigned seed = 20240601;

	ref_topics(topics, &ntopics);
	for (int round = 0; round < 300; round++) {
		struct ref_rule rules[12];
		size_t n = 1 + (size_t)(rand_r(&seed) % 12);
		char text[1024];
		size_t len = 0;
		struct acl *acl;

		for (size_t i = 0; i < n; i++) {
			rules[i].kind = (int)(rand_r(&seed) % 3);
			rules[i].access = (int)(rand_r(&seed) % 4);
			ref_filter(rules[i].filter, sizeof(rules[i].filter), &seed, rules[i].kind == 2);
		}
		/* anonymous topic rules, then patterns, then user u's topic rules */
		for (int kind = 0; kind < 3; kind++) {
			int k = kind == 1 ? 2 : kind == 2 ? 1 : 0;

			if (k == 1)
				len += (size_t)snprintf(text + len, sizeof(text) - len, "user u\n");
			for (size_t i = 0; i < n; i++)
				if (rules[i].kind == k)
					len += (size_t)snprintf(text + len, sizeof(text) - len, "%s %s %s\n",
								k == 2 ? "pattern" : "topic",
								words[rules[i].access], rules[i].filter);
		}
		acl = parse_ok(text);
		for (int who = 0; who < 2; who++) {
			struct acl_client *c = acl_client_new(acl, who ? "u" : NULL, who, "id", 2);

			for (size_t t = 0; t < ntopics; t++) {
				for (int a = ACL_READ; a <= ACL_WRITE; a++) {
					bool want = ref_check(rules, n, who, topics[t], a);

					if (acl_client_check(c, topics[t], strlen(topics[t]), a) != want)
						fail_msg("%s as %s, %s: want %d\n%s", topics[t], who ? "u" : "anonymous",
							 a == ACL_READ ? "read" : "write", want, text);
				}
			}
			/* SUBSCRIBE: never refuse a filter through which some readable topic would come. */
			for (int f = 0; f < 30; f++) {
				char filter[32];
				bool reachable = false;

				ref_filter(filter, sizeof(filter), &seed, false);
				for (size_t t = 0; t < ntopics && !reachable; t++)
					reachable = topic_matches(filter, strlen(filter), topics[t], strlen(topics[t])) &&
						    acl_client_check(c, topics[t], strlen(topics[t]), ACL_READ);
				if (reachable && !acl_client_may_subscribe(c, filter, strlen(filter)))
					fail_msg("refused %s as %s\n%s", filter, who ? "u" : "anonymous", text);
			}
			acl_client_free(c);
		}
		acl_free(acl);
	}
}

static void load_names_the_path(void **state)
{
	char path[] = "/tmp/iotd-test-acl-XXXXXX", err[512];
	struct acl *acl = NULL;
	int fd = mkstemp(path);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, "topic a\nbogus\n", 14), 14);
	close(fd);
	assert_int_equal(acl_load(path, &lim, &acl, err, sizeof(err)), -1);
	assert_true(strncmp(err, path, strlen(path)) == 0);
	assert_non_null(strstr(err, ": line 2: unknown keyword 'bogus'"));
	fd = open(path, O_WRONLY | O_TRUNC);
	assert_int_equal(write(fd, "topic a\n", 8), 8);
	close(fd);
	assert_int_equal(acl_load(path, &lim, &acl, err, sizeof(err)), 0);
	assert_true(acl_check(acl, NULL, "c", "a", ACL_READ));
	acl_free(acl);
	unlink(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(deny_carves_out_of_read),
		cmocka_unit_test(deny_wins_whatever_the_order),
		cmocka_unit_test(access_words),
		cmocka_unit_test(sections_anonymous_and_users),
		cmocka_unit_test(empty_and_repeated_sections),
		cmocka_unit_test(patterns_substitute_user_and_client_id),
		cmocka_unit_test(names_that_would_widen_a_pattern),
		cmocka_unit_test(topic_rules_before_patterns),
		cmocka_unit_test(dollar_topics_and_wildcards),
		cmocka_unit_test(empty_acl_denies_everything),
		cmocka_unit_test(layout_comments_blanks_crlf),
		cmocka_unit_test(malformed_lines_refuse_the_file),
		cmocka_unit_test(nul_and_limits),
		cmocka_unit_test(filter_validity),
		cmocka_unit_test(subscribe_granted_when_something_is_readable),
		cmocka_unit_test(subscribe_hash_and_dollar),
		cmocka_unit_test(subscribe_is_conservative),
		cmocka_unit_test(lists_from_a_token),
		cmocka_unit_test(many_users_and_rules),
		cmocka_unit_test(tries_agree_with_a_plain_walk),
		cmocka_unit_test(load_names_the_path),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
