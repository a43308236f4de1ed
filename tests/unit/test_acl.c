/*
 * test_acl.c - unit tests of the ACL file (common/acl.c): the format and
 * its errors, Mosquitto's order of deny and allow between topic rules and
 * patterns, the substitution of %u and %c and the names that may not be
 * substituted, '$' topics, the SUBSCRIBE question, and the tries checked
 * against a plain walk over the rules (the router's topic_matches) on
 * random rule sets; the ACL and a view as bytes (common/acl_codec.c):
 * round trips that answer every question alike, malformed bytes refused;
 * a worker's views (common/acl_views.c): made from the patterns sent once
 * and each client's topic rules, they answer as the router's do, share
 * their rules, keep the patterns of their own generation and refuse
 * those of another.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "acl.h"
#include "../../common/acl_int.h"
#include "iotd.h"
#include "rec.h"
#include "topic.h"

#include "files.h"

static const struct acl_limits lim = ACL_LIMITS_DEFAULT;

FILE_PARSER_CHECKS(struct acl, acl_parse, struct acl_limits)

static bool sub(const struct acl *acl, const char *user, const char *cid, const char *filter)
{
	struct acl_client *c = acl_client_new(acl, user, user ? strlen(user) : 0, cid, strlen(cid));
	bool yes;

	assert_non_null(c);
	yes = acl_client_may_subscribe(c, filter, strlen(filter));
	acl_client_free(c);
	return yes;
}

/* Steps over word if *p starts with it. */
static bool take(const char **p, const char *word)
{
	size_t n = strlen(word);

	if (strncmp(*p, word, n) != 0)
		return false;
	*p += n;
	return true;
}

/*
 * Puts one question to the ACL and fails the test, naming it, unless the
 * answer is the one it states. A question is a sentence:
 *   <who> <client id> may [not] <read|write|subscribe to> <topic or filter>
 * who being anonymous (no user name) or a quoted user name: 'bob smith',
 * '' (the empty one).
 */
static void ask(const struct acl *acl, const char *q)
{
	char user[32] = "", cid[16] = "";
	const char *p = q, *end, *who;
	bool anonymous = take(&p, "anonymous"), want, yes = false;
	size_t n;

	if (!anonymous) {
		end = take(&p, "'") ? strchr(p, '\'') : NULL;
		if (!end || end - p >= (ptrdiff_t)sizeof(user))
			fail_msg("'%s': who asks?", q);
		memcpy(user, p, (size_t)(end - p));
		p = end + 1;
	}
	who = anonymous ? NULL : user;
	n = take(&p, " ") ? strcspn(p, " ") : 0;
	if (n == 0 || n >= sizeof(cid))
		fail_msg("'%s': no client id", q);
	memcpy(cid, p, n);
	p += n;
	if (!take(&p, " may "))
		fail_msg("'%s': no 'may'", q);
	want = !take(&p, "not ");
	if (take(&p, "read "))
		yes = acl_check(acl, who, cid, p, ACL_READ);
	else if (take(&p, "write "))
		yes = acl_check(acl, who, cid, p, ACL_WRITE);
	else if (take(&p, "subscribe to "))
		yes = sub(acl, who, cid, p);
	else
		fail_msg("'%s': may what?", q);
	if (yes != want)
		fail_msg("'%s': the ACL says %s", q, yes ? "it may" : "it may not");
}

/* Parses text and puts each question to the ACL it makes. */
static void check_acl(const char *text, const char *const *questions, size_t n)
{
	struct acl *acl = parse_ok(text);

	for (size_t i = 0; i < n; i++)
		ask(acl, questions[i]);
	acl_free(acl);
}

/* CHECK_ACL(text, question, ...): check_acl on the questions listed. */
#define CHECK_ACL(text, ...) \
	check_acl(text, (const char *const[]){ __VA_ARGS__ }, \
		  ARRAY_SIZE(((const char *const[]){ __VA_ARGS__ })))

static void deny_carves_out_of_read(void **state)
{
	CHECK_ACL("topic read sensors/#\n"
		  "topic deny sensors/private/#\n",
		  "anonymous c may read sensors/a",
		  "anonymous c may read sensors", /* "#" matches its parent */
		  "anonymous c may read sensors/privateer",
		  "anonymous c may not read sensors/private/a",
		  "anonymous c may not read sensors/private",
		  "anonymous c may not write sensors/a",
		  "anonymous c may not read other");
}

/* The deny is written after or before the allow: the same answer. */
static void deny_wins_whatever_the_order(void **state)
{
	CHECK_ACL("topic deny a/b\n"
		  "topic readwrite a/+\n"
		  "user u\n"
		  "topic a/+\n"
		  "topic deny a/b\n",
		  "anonymous c may not read a/b",
		  "anonymous c may write a/c",
		  "'u' c may not write a/b",
		  "'u' c may read a/c");
}

static void access_words(void **state)
{
	CHECK_ACL("topic read r\n"
		  "topic write w\n"
		  "topic readwrite rw\n"
		  "topic both\n"
		  "topic read\n"
		  "topic deny d\n",
		  "anonymous c may read r",
		  "anonymous c may not write r",
		  "anonymous c may not read w",
		  "anonymous c may write w",
		  "anonymous c may read rw",
		  "anonymous c may write rw",
		  "anonymous c may read both",
		  "anonymous c may write both",
		  /* "topic read" alone: the filter "read", read and write, as Mosquitto reads it. */
		  "anonymous c may write read",
		  "anonymous c may not read d");
}

static void sections_anonymous_and_users(void **state)
{
	CHECK_ACL("# clients without a user name\n"
		  "topic read public/#\n"
		  "user alice\n"
		  "topic alice/#\n"
		  "user bob smith\n"
		  "topic read bob/#\n"
		  "user alice\n"
		  "topic write shared\n",
		  "anonymous c may read public/x",
		  "anonymous c may not read alice/x",
		  /* A user's rules are theirs alone: not the anonymous ones, not another user's. */
		  "'alice' c may not read public/x",
		  "'alice' c may write alice/x",
		  "'alice' c may write shared", /* her second section */
		  "'alice' c may not read bob/x",
		  "'bob smith' c may read bob/x",
		  "'bob' c may not read bob/x",
		  /* A user the file does not name: nothing (no patterns here). */
		  "'carol' c may not read public/x",
		  "'' c may not read public/x");
}

/* Sections of one name are merged, the empty ones too. */
static void empty_and_repeated_sections(void **state)
{
	CHECK_ACL("user a\n"
		  "user a\n"
		  "user b\n"
		  "user a\n"
		  "topic x\n"
		  "user a\n"
		  "user c\n",
		  "'a' c may read x",
		  "'b' c may not read x",
		  "'c' c may not read x");
}

static void patterns_substitute_user_and_client_id(void **state)
{
	CHECK_ACL("pattern readwrite users/%u/#\n"
		  "pattern read devices/%c/in\n"
		  "pattern write devices/%c/out\n"
		  "pattern read x/%u-%c/%%c\n"
		  "user alice\n"
		  "topic read news\n",
		  "'alice' dev1 may write users/alice/inbox",
		  "'alice' dev1 may read news",
		  "'alice' dev1 may not read users/bob/inbox",
		  "'alice' dev1 may read devices/dev1/in",
		  "'alice' dev1 may not write devices/dev1/in",
		  "'alice' dev1 may write devices/dev1/out",
		  "'alice' dev1 may not write devices/dev2/out",
		  "'alice' dev1 may read x/alice-dev1/%dev1",
		  /* Anonymous: %c patterns apply, %u ones do not. */
		  "anonymous dev2 may read devices/dev2/in",
		  "anonymous dev2 may not read users//inbox",
		  "anonymous dev2 may not read users/%u/inbox",
		  "anonymous dev2 may not read x/-dev2/%dev2",
		  /* A user the file does not name still has the patterns. */
		  "'zed' z may read users/zed/a");
}

/* A name with '+', '#' or '/' would widen a pattern: patterns give it nothing. */
static void names_that_would_widen_a_pattern(void **state)
{
	CHECK_ACL("pattern readwrite users/%u/#\n"
		  "pattern readwrite clients/%c/#\n"
		  "user a/b\n"
		  "topic read own\n",
		  "'bob' c1 may read users/bob/x",
		  "'+' c1 may not read users/bob/x",
		  "'#' c1 may not read users/bob/x",
		  "'bob/x' c1 may not read users/bob/x/y",
		  "'bob' + may not read clients/c1/x",
		  "'bob' c1/# may not read clients/c1/x",
		  "anonymous # may not read clients/c1/x",
		  /* Nor its own place: the whole of the patterns is off for such a client. */
		  "'bob' c/1 may not read users/bob/x",
		  /* Its topic rules still apply. */
		  "'a/b' c1 may read own",
		  "'a/b' c1 may not read users/a/b/x");
}

/* Mosquitto's order: topic rules first (deny, then allow), then patterns (deny, then allow). */
static void topic_rules_before_patterns(void **state)
{
	CHECK_ACL("pattern deny users/%u/secret\n"
		  "pattern read users/%u/#\n"
		  "pattern deny pub/%c\n"
		  "user alice\n"
		  "topic read users/alice/secret\n"
		  "topic deny users/alice/locked\n"
		  "topic write pub/#\n",
		  /* A topic allow is decided before the pattern deny is looked at. */
		  "'alice' c may read users/alice/secret",
		  /* A topic deny wins over a pattern allow. */
		  "'alice' c may not read users/alice/locked",
		  "'alice' c may read users/alice/other",
		  /* bob has no topic rules: the pattern deny wins over the pattern allow. */
		  "'bob' c may not read users/bob/secret",
		  "'bob' c may read users/bob/other",
		  /* A topic write rule matched for a read decides nothing: the patterns go on. */
		  "'alice' c may write pub/c",
		  "'alice' c may not read pub/c");
}

static void dollar_topics_and_wildcards(void **state)
{
	CHECK_ACL("topic read #\n"
		  "topic read +/status\n"
		  "topic read $SYS/broker/#\n"
		  "topic read a/+/c\n"
		  "topic write w/#\n",
		  "anonymous c may read anything/at/all",
		  "anonymous c may not read $SYS/load",
		  "anonymous c may not read $x/status",
		  "anonymous c may read $SYS/broker/uptime",
		  "anonymous c may read $SYS/broker",
		  "anonymous c may write w",
		  "anonymous c may write w/x/y",
		  "anonymous c may not write ww",
		  "anonymous c may read a//c"); /* '+' matches an empty level */
	CHECK_ACL("topic read a/+/c\n",
		  "anonymous c may read a//c",
		  "anonymous c may read a/b/c",
		  "anonymous c may not read a/b/c/d",
		  "anonymous c may not read a/b");
}

/* Once there is an ACL, what it does not allow is denied. */
static void empty_acl_denies_everything(void **state)
{
	CHECK_ACL("# nothing\n\n",
		  "anonymous c may not read a",
		  "'u' c may not write a",
		  "'u' c may not subscribe to #");
}

static void layout_comments_blanks_crlf(void **state)
{
	CHECK_ACL("# a comment\r\n"
		  "\r\n"
		  "   \t\n"
		  "  # an indented comment\n"
		  "\ttopic \t read   a b/c  \r\n"
		  "user   spaced name  \r\n"
		  "topic  deny\tx",
		  "anonymous c may read a b/c",
		  "anonymous c may not write a b/c",
		  "'spaced name' c may not read x");
}

static void malformed_lines_refuse_the_file(void **state)
{
	static const struct refusal cases[] = {
		{ "topic read a\nsubscribe a\n", "line 2: unknown keyword 'subscribe'" },
		{ "\n\ntopic reed a/b\n", "line 3: unknown access 'reed'" },
		{ "topic\n", "line 1: no topic filter" },
		{ "pattern \n", "line 1: no topic filter" },
		{ "user\n", "line 1: a user line without a name" },
		{ "user \t\n", "line 1: a user line without a name" },
		{ "topic read a/#/b\n", "line 1: 'a/#/b' is not a valid topic filter" },
		{ "topic read a+\n", "line 1: 'a+' is not a valid topic filter" },
		{ "topic read a/b#\n", "line 1: 'a/b#' is not a valid topic filter" },
		{ "# ok\npattern deny +x/%c\n", "line 2: '+x/%c' is not a valid topic filter" },
		{ "Topic read a\n", "line 1: unknown keyword 'Topic'" },
		{ "topic READ a\n", "line 1: unknown access 'READ'" },
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
		parse_fails(cases[i].text, cases[i].want);
}

static void nul_and_limits(void **state)
{
	static const char nul[] = "topic read a\0b\n";
	const char *three = "topic a\ntopic b\npattern c/%c\n";
	struct acl_limits few_rules = lim, short_lines = lim, small = lim;
	char deep[4 * ACL_MAX_LEVELS + 32];
	struct acl *acl;
	size_t n;

	few_rules.max_rules = 2;
	short_lines.max_line = 6;
	small.max_bytes = 10;
	parse_refuses(&lim, nul, sizeof(nul) - 1, "line 1: a NUL byte");
	parse_refuses(&few_rules, three, strlen(three), "line 3: more rules than the limit");
	parse_refuses(&short_lines, three, strlen(three), "line 1: longer than the line limit");
	parse_refuses(&small, three, strlen(three), "larger than");
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
	CHECK_ACL("topic read sensors/#\n"
		  "topic deny sensors/private/#\n"
		  "topic write cmd/#\n"
		  "topic read $SYS/broker/load\n"
		  "pattern read clients/%c/#\n"
		  "pattern deny clients/%c/secret\n",
		  "anonymous c may subscribe to sensors/#",
		  "anonymous c may subscribe to sensors/+",
		  "anonymous c may subscribe to sensors/a",
		  "anonymous c may subscribe to #", /* overlaps sensors/# */
		  "anonymous c may subscribe to +/a",
		  "anonymous c may subscribe to +/+/+", /* sensors/x/y */
		  "anonymous c may subscribe to sensors/privat",
		  "anonymous c may not subscribe to sensors/private/#",
		  "anonymous c may not subscribe to sensors/private/a/+",
		  "anonymous c may not subscribe to sensors/private",
		  "anonymous c may not subscribe to other/#",
		  "anonymous c may not subscribe to cmd/#", /* write only */
		  "anonymous c may not subscribe to sensor",
		  /* '$' topics: a first-level wildcard reaches none of them. */
		  "anonymous c may subscribe to $SYS/broker/load",
		  "anonymous c may subscribe to $SYS/#",
		  "anonymous c may subscribe to $SYS/+/load",
		  "anonymous c may not subscribe to $SYS/broker/uptime",
		  /* Patterns, and their denies. */
		  "anonymous c may subscribe to clients/c/#",
		  "anonymous c may subscribe to clients/+/in",
		  "anonymous c may not subscribe to clients/d/#",
		  "anonymous c may not subscribe to clients/c/secret",
		  "anonymous c/x may not subscribe to clients/c/#");
}

/*
 * "#" against "topic read +/#" and "topic read $SYS/#": the second is only
 * reachable from filters starting with "$".
 */
static void subscribe_hash_and_dollar(void **state)
{
	CHECK_ACL("topic read $SYS/#\n",
		  "anonymous c may not subscribe to #",
		  "anonymous c may not subscribe to +/broker",
		  "anonymous c may subscribe to $SYS",
		  "anonymous c may subscribe to $SYS/+");
	CHECK_ACL("topic read a/b\ntopic deny a/#\n",
		  "anonymous c may not subscribe to a/b",
		  "anonymous c may not subscribe to #");
	CHECK_ACL("topic read a\ntopic deny a/#\n",
		  "anonymous c may not subscribe to a"); /* "a/#" covers "a" itself */
	CHECK_ACL("topic read a/#\ntopic deny a/+\n",
		  "anonymous c may subscribe to a/#", /* a and a/x/y remain */
		  "anonymous c may not subscribe to a/+",
		  "anonymous c may subscribe to a");
}

/* Two denies that only together cover what is readable: granted, and then refused message by message. */
static void subscribe_is_conservative(void **state)
{
	CHECK_ACL("topic read a/+\n"
		  "topic deny a/x\n"
		  "topic deny a/y\n",
		  "anonymous c may not subscribe to a/x",
		  "anonymous c may subscribe to a/+");
}

/* A token's read and write lists, and what the view made from them answers. */
static const char *const token_read[] = { "sensors/#", "$SYS/broker/load", "a/+/c" };
static const char *const token_write[] = { "cmd/+/set", "cmd/1" };

static struct acl_client *token_view(void)
{
	struct acl_client *c = acl_client_from_lists(token_read, ARRAY_SIZE(token_read),
						     token_write, ARRAY_SIZE(token_write));

	assert_non_null(c);
	return c;
}

static void assert_token_answers(struct acl_client *c)
{
	assert_true(acl_client_check(c, "sensors/a", 9, ACL_READ));
	assert_true(acl_client_check(c, "sensors/x/y", 11, ACL_READ));
	assert_false(acl_client_check(c, "sensors/a", 9, ACL_WRITE));
	assert_true(acl_client_check(c, "cmd/x/set", 9, ACL_WRITE));
	assert_false(acl_client_check(c, "cmd/x/set", 9, ACL_READ));
	assert_true(acl_client_check(c, "cmd/1", 5, ACL_WRITE));
	assert_false(acl_client_check(c, "cmd/2", 5, ACL_WRITE));
	assert_false(acl_client_check(c, "$SYS/x", 6, ACL_READ));
	assert_true(acl_client_may_subscribe(c, "#", 1));
	assert_true(acl_client_may_subscribe(c, "a/b/c", 5));
	assert_false(acl_client_may_subscribe(c, "cmd/#", 5));
}

static void lists_from_a_token(void **state)
{
	struct acl_client *c = token_view();

	assert_token_answers(c);
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
		assert_true(acl_check(acl, user, "c", topic, ACL_READ));
		snprintf(topic, sizeof(topic), "t/%d/x", u + 1);
		assert_false(acl_check(acl, user, "c", topic, ACL_READ));
	}
	for (int r = 0; r < 5000; r += 11) {
		snprintf(topic, sizeof(topic), "dev/%d/z", r);
		assert_int_equal(acl_check(acl, "big", "c", topic, ACL_READ), r % 3 != 0);
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

/* Every topic of one to three ref_levels; returns how many. */
static size_t ref_topics(char topics[][16])
{
	size_t nl = sizeof(ref_levels) / sizeof(ref_levels[0]), n = 0;

	for (size_t a = 0; a < nl; a++) {
		snprintf(topics[n++], 16, "%s", ref_levels[a]);
		for (size_t b = 0; b < nl; b++) {
			snprintf(topics[n++], 16, "%s/%s", ref_levels[a], ref_levels[b]);
			for (size_t c = 0; c < nl; c++)
				snprintf(topics[n++], 16, "%s/%s/%s", ref_levels[a], ref_levels[b], ref_levels[c]);
		}
	}
	return n;
}

/* A random ACL: its n rules as ref_check reads them, its file text, and the ACL parsed. */
struct random_acl {
	struct ref_rule rules[12];
	size_t n;
	char text[1024];
	struct acl *acl;
};

static void random_acl(unsigned *seed, struct random_acl *r)
{
	static const char *words[] = { "deny", "read", "write", "readwrite" };
	struct ref_rule *rules = r->rules;
	char *text = r->text;
	size_t n = 1 + (size_t)(rand_r(seed) % 12), len = 0;

	for (size_t i = 0; i < n; i++) {
		rules[i].kind = (int)(rand_r(seed) % 3);
		rules[i].access = (int)(rand_r(seed) % 4);
		ref_filter(rules[i].filter, sizeof(rules[i].filter), seed, rules[i].kind == 2);
	}
	/* anonymous topic rules, then patterns, then user u's topic rules */
	text[0] = '\0';
	for (int kind = 0; kind < 3; kind++) {
		int k = kind == 1 ? 2 : kind == 2 ? 1 : 0;

		if (k == 1)
			len += (size_t)snprintf(text + len, 1024 - len, "user u\n");
		for (size_t i = 0; i < n; i++)
			if (rules[i].kind == k)
				len += (size_t)snprintf(text + len, 1024 - len, "%s %s %s\n",
							k == 2 ? "pattern" : "topic",
							words[rules[i].access], rules[i].filter);
	}
	r->n = n;
	r->acl = parse_ok(text);
}

static void tries_agree_with_a_plain_walk(void **state)
{
	static char topics[200][16];
	size_t ntopics = ref_topics(topics);
	unsigned seed = 20240601;

	for (int round = 0; round < 300; round++) {
		struct random_acl r;

		random_acl(&seed, &r);
		for (int who = 0; who < 2; who++) {
			struct acl_client *c = acl_client_new(r.acl, who ? "u" : NULL, who, "id", 2);

			for (size_t t = 0; t < ntopics; t++) {
				for (int a = ACL_READ; a <= ACL_WRITE; a++) {
					bool want = ref_check(r.rules, r.n, who, topics[t], a);

					if (acl_client_check(c, topics[t], strlen(topics[t]), a) != want)
						fail_msg("%s as %s, %s: want %d\n%s", topics[t], who ? "u" : "anonymous",
							 a == ACL_READ ? "read" : "write", want, r.text);
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
					fail_msg("refused %s as %s\n%s", filter, who ? "u" : "anonymous", r.text);
			}
			acl_client_free(c);
		}
		acl_free(r.acl);
	}
}

/*
 * acl_client_may remembers answers: asked in a random order, again and
 * again, for short topics that share its slots and for topics too long
 * for them, it must answer as acl_client_check does every time.
 */
static void remembered_answers_agree(void **state)
{
	static char topics[200][16];
	static char longer[4][80];
	size_t ntopics = ref_topics(topics);
	unsigned seed = 20261207;

	for (int i = 0; i < 4; i++)
		snprintf(longer[i], sizeof(longer[i]), "%s/%061d/%s", ref_levels[i % 3], i,
			 ref_levels[(i + 1) % 3]);
	for (int round = 0; round < 100; round++) {
		struct random_acl r;

		random_acl(&seed, &r);
		for (int who = 0; who < 2; who++) {
			struct acl_client *c = acl_client_new(r.acl, who ? "u" : NULL, who, "id", 2);

			for (int q = 0; q < 2000; q++) {
				size_t t = (size_t)rand_r(&seed) % (ntopics + 4);
				const char *topic = t < ntopics ? topics[t] : longer[t - ntopics];
				enum acl_access a = rand_r(&seed) % 2 ? ACL_READ : ACL_WRITE;
				size_t len = strlen(topic);

				if (acl_client_may(c, topic, len, a) != acl_client_check(c, topic, len, a))
					fail_msg("%s as %s, %s: the remembered answer differs\n%s", topic,
						 who ? "u" : "anonymous", a == ACL_READ ? "read" : "write", r.text);
			}
			acl_client_free(c);
		}
		acl_free(r.acl);
	}
}

/* ---- the ACL and a view as bytes ---- */

static struct acl *round_trip(const struct acl *acl)
{
	struct recw w;
	struct acl *back = NULL;
	char err[256];

	recw_init(&w);
	assert_int_equal(acl_encode(acl, &w), 0);
	if (acl_decode(w.buf, w.len, &lim, &back, err, sizeof(err)) != 0)
		fail_msg("decoding an encoded ACL: %s", err);
	recw_free(&w);
	return back;
}

static struct acl_client *client_round_trip(struct acl_client *c)
{
	struct recw w;
	struct acl_client *back;
	char err[256];

	recw_init(&w);
	assert_int_equal(acl_client_encode(c, &w), 0);
	back = acl_client_decode(w.buf, w.len, err, sizeof(err));
	if (!back)
		fail_msg("decoding an encoded view: %s", err);
	recw_free(&w);
	return back;
}

/* Every read, write and SUBSCRIBE question answered alike by views a and b. */
static void views_agree(struct acl_client *a, struct acl_client *b,
			char topics[][16], size_t ntopics, const char *text)
{
	for (size_t t = 0; t < ntopics; t++) {
		size_t len = strlen(topics[t]);

		for (int x = ACL_READ; x <= ACL_WRITE; x++)
			if (acl_client_check(a, topics[t], len, x) != acl_client_check(b, topics[t], len, x))
				fail_msg("%s, %s: the round trip differs\n%s", topics[t],
					 x == ACL_READ ? "read" : "write", text);
		if (len && acl_client_may_subscribe(a, topics[t], len) !=
			   acl_client_may_subscribe(b, topics[t], len))
			fail_msg("subscribe %s: the round trip differs\n%s", topics[t], text);
	}
	for (const char *const *f = (const char *const[]){ "#", "+", "+/#", "a/+", "+/b/#", "$s/#", "u/+/a", NULL };
	     *f; f++)
		if (acl_client_may_subscribe(a, *f, strlen(*f)) != acl_client_may_subscribe(b, *f, strlen(*f)))
			fail_msg("subscribe %s: the round trip differs\n%s", *f, text);
}

/* The worker's view of a client: its topic rules as a verdict carries them, made with views' patterns. */
static struct acl_client *worker_view(struct acl_views *views, const struct acl *acl, uint64_t gen,
				      const char *user, const char *id)
{
	size_t ulen = user ? strlen(user) : 0;
	struct acl_client *c;
	char err[256];
	struct recw w;

	recw_init(&w);
	assert_true(acl_view_encode(acl, gen, user, ulen, id, strlen(id), &w) >= 0);
	c = acl_views_client(views, w.buf, w.len, user, ulen, id, strlen(id), err, sizeof(err));
	if (!c)
		fail_msg("making a worker's view: %s", err);
	recw_free(&w);
	return c;
}

/* A worker's store given acl's patterns, as generation gen. */
static void patterns_given(struct acl_views *views, const struct acl *acl, uint64_t gen)
{
	char err[256];
	struct recw w;

	recw_init(&w);
	assert_int_equal(acl_patterns_encode(acl, gen, &w), 0);
	if (acl_views_set_patterns(views, w.buf, w.len, err, sizeof(err)) < 0)
		fail_msg("taking patterns: %s", err);
	recw_free(&w);
}

static void codec_round_trips_check_alike(void **state)
{
	static char topics[200][16];
	static const char *users[] = { NULL, "u", "x", "a+b" };
	static const char *ids[] = { "id", "u", "c#", "" };
	size_t ntopics = ref_topics(topics);
	unsigned seed = 77;

	for (int round = 0; round < 200; round++) {
		struct acl_views *views = acl_views_new();
		struct random_acl r;
		struct acl *back;

		assert_non_null(views);
		random_acl(&seed, &r);
		back = round_trip(r.acl);
		patterns_given(views, r.acl, (uint64_t)round + 1);
		for (size_t u = 0; u < 4; u++) {
			for (size_t i = 0; i < 4; i++) {
				size_t ulen = users[u] ? strlen(users[u]) : 0;
				struct acl_client *c = acl_client_new(r.acl, users[u], ulen, ids[i], strlen(ids[i]));
				struct acl_client *c2 = acl_client_new(back, users[u], ulen, ids[i], strlen(ids[i]));
				struct acl_client *c3, *c4;

				assert_non_null(c);
				assert_non_null(c2);
				c3 = client_round_trip(c);
				c4 = worker_view(views, r.acl, (uint64_t)round + 1, users[u], ids[i]);
				views_agree(c, c2, topics, ntopics, r.text);
				views_agree(c, c3, topics, ntopics, r.text);
				views_agree(c, c4, topics, ntopics, r.text);
				acl_client_free(c);
				acl_client_free(c2);
				acl_client_free(c3);
				acl_client_free(c4);
			}
		}
		acl_views_free(views);
		acl_free(r.acl);
		acl_free(back);
	}
}

/* A token's lists travel as a view too. */
static void codec_lists_round_trip(void **state)
{
	struct acl_client *c = token_view(), *back = client_round_trip(c);

	assert_token_answers(back);
	acl_client_free(c);
	acl_client_free(back);
}

/* Bytes to decode, written from a spec (see build). */
struct bytes {
	uint8_t b[512];
	size_t n;
};

static void put(struct bytes *x, const void *p, size_t n)
{
	assert_true(x->n + n <= sizeof(x->b));
	memcpy(x->b + x->n, p, n);
	x->n += n;
}

static void put_u32(struct bytes *x, uint32_t v)
{
	put(x, &v, 4);
}

static void put_str(struct bytes *x, const char *s, size_t len)
{
	uint16_t n = (uint16_t)len;

	put(x, &n, 2);
	put(x, s, len);
}

/*
 * The bytes a spec says, its words apart: ACL or VIEW (the tag), a
 * number (u32), bN (one byte), s:NAME (a string), rN:FILTER (a rule of
 * access N).
 */
static struct bytes build(const char *spec)
{
	struct bytes x = { .n = 0 };

	while (*spec) {
		size_t len = strcspn(spec, " ");
		char word[64];

		assert_true(len < sizeof(word));
		memcpy(word, spec, len);
		word[len] = '\0';
		spec += len + (spec[len] == ' ');
		if (!strcmp(word, "ACL") || !strcmp(word, "VIEW")) {
			put_u32(&x, word[0] == 'A' ? ACL_WIRE_ACL : ACL_WIRE_CLIENT);
		} else if (word[0] == 'b') {
			put(&x, &(uint8_t){ (uint8_t)atoi(word + 1) }, 1);
		} else if (word[0] == 's' && word[1] == ':') {
			put_str(&x, word + 2, strlen(word + 2));
		} else if (word[0] == 'r') {
			put(&x, &(uint8_t){ (uint8_t)(word[1] - '0') }, 1);
			put_str(&x, word + 3, strlen(word + 3));
		} else {
			put_u32(&x, (uint32_t)strtoul(word, NULL, 10));
		}
	}
	return x;
}

static void codec_refuses_malformed_bytes(void **state)
{
	static const struct refused { const char *spec, *why; } acls[] = {
		{ "VIEW", "wrong tag" },
		{ "ACL 1073741824", "more rules than bytes" },
		{ "ACL 1 r4:a 0 0", "unknown access" },
		{ "ACL 1 r1:a/#/b 0 0", "not valid" },
		{ "ACL 0 2 s:bob 0 s:alice 0 0", "ascending" },
		{ "ACL 0 2 s:bob 0 s:bob 0 0", "ascending" },
		{ "ACL 0 1 s: 0 0", "empty user name" },
		{ "ACL 0 100", "more users than bytes" },
		{ "ACL 0 0 0 b1", "bytes after the end" },
	}, views[] = {
		{ "ACL", "wrong tag" },
		{ "VIEW b2", "neither 0 nor 1" },
		{ "VIEW b1 0 1 r1:a", "refused" },
		{ "VIEW b0 1 r1:a+ 0", "not valid" },
		{ "VIEW b0 0 0 b0", "bytes after the end" },
	};
	const struct acl_limits one_rule = { .max_bytes = 1 << 20, .max_line = 100, .max_rules = 1 };
	struct bytes x = build("ACL 1 r1:a/# 2 s:alice 0 s:bob 1 r0:b 0");
	struct acl *acl = NULL;
	char err[256];
	struct recw w;

	/* Two users in order, two rules: taken as they are. */
	assert_int_equal(acl_decode(x.b, x.n, &lim, &acl, err, sizeof(err)), 0);
	assert_true(acl_check(acl, NULL, "c", "a/x", ACL_READ));
	assert_false(acl_check(acl, "bob", "c", "b", ACL_READ));
	acl_free(acl);
	/* Past the limits, and cut short anywhere: refused. */
	assert_int_equal(acl_decode(x.b, x.n, &one_rule, &acl, err, sizeof(err)), -1);
	assert_contains(err, "more rules than the limit");
	assert_int_equal(acl_decode(x.b, x.n, &(struct acl_limits){ .max_bytes = 10, .max_rules = 10 },
				    &acl, err, sizeof(err)), -1);
	assert_contains(err, "more than the limit");
	for (size_t n = 0; n < x.n; n++) {
		acl = NULL;
		assert_int_equal(acl_decode(x.b, n, &lim, &acl, err, sizeof(err)), -1);
		assert_null(acl);
	}
	for (size_t i = 0; i < ARRAY_SIZE(acls); i++) {
		x = build(acls[i].spec);
		acl = (struct acl *)1;
		err[0] = '\0';
		if (acl_decode(x.b, x.n, &lim, &acl, err, sizeof(err)) != -1 || acl)
			fail_msg("'%s' taken", acls[i].spec);
		if (!strstr(err, acls[i].why))
			fail_msg("'%s': want '%s' in '%s'", acls[i].spec, acls[i].why, err);
	}
	for (size_t i = 0; i < ARRAY_SIZE(views); i++) {
		x = build(views[i].spec);
		err[0] = '\0';
		if (acl_client_decode(x.b, x.n, err, sizeof(err)))
			fail_msg("'%s' taken", views[i].spec);
		if (!strstr(err, views[i].why))
			fail_msg("'%s': want '%s' in '%s'", views[i].spec, views[i].why, err);
	}

	/* Every truncation of a real view is refused, and every one-byte change decodes or is refused. */
	{
		struct acl *a = parse_ok("topic read a/#\nuser u\ntopic deny a/b\npattern readwrite %u/%c/#\n");
		struct acl_client *c = acl_client_new(a, "u", 1, "id", 2), *d;

		recw_init(&w);
		assert_int_equal(acl_client_encode(c, &w), 0);
		for (size_t n = 0; n < w.len; n++)
			assert_null(acl_client_decode(w.buf, n, err, sizeof(err)));
		for (size_t i = 0; i < w.len; i++) {
			w.buf[i] ^= 0x5a;
			d = acl_client_decode(w.buf, w.len, err, sizeof(err));
			acl_client_free(d);
			w.buf[i] ^= 0x5a;
		}
		recw_free(&w);
		acl_client_free(c);
		acl_free(a);
	}
}

/*
 * A worker's views: a verdict carries the topic rules alone; views of one
 * user share them (and their trie); a view keeps the patterns of its
 * generation when newer ones come, and outlives its store; a view of a
 * generation whose patterns did not come is refused.
 */
static void worker_views_share_and_keep_their_generation(void **state)
{
	struct acl *one = parse_ok("user u\ntopic read a/#\npattern write p/%u/%c\n");
	struct acl *two = parse_ok("user u\ntopic read a/#\npattern write q/%u\n");
	struct acl_views *views = acl_views_new();
	struct acl_client *x, *y, *z;
	char err[256];
	struct recw w;

	assert_non_null(views);
	/* What a verdict carries: no pattern. */
	recw_init(&w);
	assert_int_equal(acl_view_encode(one, 1, "u", 1, "c1", 2, &w), 1);
	assert_null(memmem(w.buf, w.len, "p/", 2));
	/* No patterns yet: a view that needs them is refused. */
	assert_null(acl_views_client(views, w.buf, w.len, "u", 1, "c1", 2, err, sizeof(err)));
	assert_contains(err, "did not come");
	patterns_given(views, one, 1);
	x = acl_views_client(views, w.buf, w.len, "u", 1, "c1", 2, err, sizeof(err));
	y = acl_views_client(views, w.buf, w.len, "u", 1, "c2", 2, err, sizeof(err));
	assert_non_null(x);
	assert_non_null(y);
	assert_ptr_equal(x->topics, y->topics);
	assert_int_equal(acl_client_generation(x), 1);
	/* Generation 2 comes: x and y, not substituted yet, keep generation 1's patterns. */
	patterns_given(views, two, 2);
	assert_null(acl_views_client(views, w.buf, w.len, "u", 1, "c1", 2, err, sizeof(err)));
	assert_true(acl_client_check(x, "p/u/c1", 6, ACL_WRITE));
	assert_false(acl_client_check(x, "p/u/c2", 6, ACL_WRITE));
	assert_false(acl_client_check(x, "q/u", 3, ACL_WRITE));
	assert_true(acl_client_check(y, "a/b", 3, ACL_READ));
	recw_free(&w);
	/* A view of generation 2 gets its patterns; one whose names widen them gets none. */
	z = worker_view(views, two, 2, "u", "c1");
	assert_true(acl_client_check(z, "q/u", 3, ACL_WRITE));
	assert_false(acl_client_check(z, "p/u/c1", 6, ACL_WRITE));
	assert_ptr_not_equal(x->topics, z->topics);
	acl_client_free(z);
	z = worker_view(views, two, 2, "u/x", "c1");
	assert_false(acl_client_check(z, "q/u/x", 5, ACL_WRITE));
	acl_client_free(z);
	/* Forgotten (a new sender): new views need its patterns; those made stay whole. */
	acl_views_forget(views);
	recw_init(&w);
	assert_int_equal(acl_view_encode(two, 2, "u", 1, "c1", 2, &w), 1);
	assert_null(acl_views_client(views, w.buf, w.len, "u", 1, "c1", 2, err, sizeof(err)));
	recw_free(&w);
	/* Views outlive their store. */
	acl_views_free(views);
	assert_true(acl_client_check(y, "p/u/c2", 6, ACL_WRITE));
	acl_client_free(x);
	acl_client_free(y);
	acl_free(one);
	acl_free(two);
}

/* A worker's bytes: every truncation refused, every one-byte change decoded or refused. */
static void worker_bytes_refused_when_malformed(void **state)
{
	struct acl *a = parse_ok("topic read a/#\nuser u\ntopic deny a/b\npattern readwrite %u/%c/#\n");
	struct acl_views *views = acl_views_new();
	struct acl_client *c;
	struct recw p, w;
	char err[256];

	recw_init(&p);
	recw_init(&w);
	assert_int_equal(acl_patterns_encode(a, 7, &p), 0);
	assert_int_equal(acl_view_encode(a, 7, "u", 1, "id", 2, &w), 1);
	for (size_t n = 0; n < p.len; n++)
		assert_int_equal(acl_views_set_patterns(views, p.buf, n, err, sizeof(err)), -1);
	assert_int_equal(acl_views_set_patterns(views, p.buf, p.len, err, sizeof(err)), 0);
	for (size_t n = 0; n < w.len; n++)
		assert_null(acl_views_client(views, w.buf, n, "u", 1, "id", 2, err, sizeof(err)));
	for (size_t i = 0; i < w.len; i++) {
		w.buf[i] ^= 0x5a;
		acl_client_free(acl_views_client(views, w.buf, w.len, "u", 1, "id", 2, err,
						 sizeof(err)));
		w.buf[i] ^= 0x5a;
	}
	for (size_t i = 0; i < p.len; i++) {
		p.buf[i] ^= 0x5a;
		acl_views_set_patterns(views, p.buf, p.len, err, sizeof(err));
		p.buf[i] ^= 0x5a;
	}
	assert_int_equal(acl_views_set_patterns(views, p.buf, p.len, err, sizeof(err)), 0);
	/* A flag of 2; a flag of 0: the topic rules alone. */
	w.buf[12] = 2;
	assert_null(acl_views_client(views, w.buf, w.len, "u", 1, "id", 2, err, sizeof(err)));
	assert_contains(err, "neither 0 nor 1");
	w.buf[12] = 0;
	c = acl_views_client(views, w.buf, w.len, "u", 1, "id", 2, err, sizeof(err));
	assert_non_null(c);
	assert_false(acl_client_check(c, "u/id/x", 6, ACL_READ));
	assert_false(acl_client_check(c, "a/b", 3, ACL_READ));
	assert_false(acl_client_check(c, "a/x", 3, ACL_READ));
	acl_client_free(c);
	/* Generation 0, another format's tag. */
	memset(p.buf + 4, 0, 8);
	assert_int_equal(acl_views_set_patterns(views, p.buf, p.len, err, sizeof(err)), -1);
	assert_contains(err, "generation 0");
	memcpy(p.buf, &(uint32_t){ ACL_WIRE_VIEW }, 4);
	assert_int_equal(acl_views_set_patterns(views, p.buf, p.len, err, sizeof(err)), -1);
	assert_contains(err, "wrong tag");
	recw_free(&p);
	recw_free(&w);
	acl_views_free(views);
	acl_free(a);
}

static void load_names_the_path(void **state)
{
	char path[] = "/tmp/iotd-test-acl-XXXXXX", err[512];
	struct acl *acl = NULL;

	temp_file(path, "topic a\nbogus\n");
	assert_int_equal(acl_load(path, &lim, &acl, err, sizeof(err)), -1);
	assert_true(strncmp(err, path, strlen(path)) == 0);
	assert_contains(err, ": line 2: unknown keyword 'bogus'");
	write_file(path, "topic a\n");
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
		cmocka_unit_test(remembered_answers_agree),
		cmocka_unit_test(codec_round_trips_check_alike),
		cmocka_unit_test(codec_lists_round_trip),
		cmocka_unit_test(codec_refuses_malformed_bytes),
		cmocka_unit_test(worker_views_share_and_keep_their_generation),
		cmocka_unit_test(worker_bytes_refused_when_malformed),
		cmocka_unit_test(load_names_the_path),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
