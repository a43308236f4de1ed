/*
 * test_json.c - unit tests of the strict JSON reader (common/json.c):
 * what it accepts and gives back, what it refuses, and its bounds.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

static const struct json_limits lim = JSON_LIMITS_DEFAULT;

static void parse_ok(const char *text, struct json_doc *d)
{
	char err[128] = "";

	if (json_parse(text, strlen(text), &lim, d, err, sizeof(err)) != 0)
		fail_msg("refused %s: %s", text, err);
}

static void refused(const char *text, size_t len, const char *want)
{
	struct json_doc d;
	char err[128] = "";

	if (json_parse(text, len, &lim, &d, err, sizeof(err)) == 0)
		fail_msg("accepted %s", text);
	assert_null(d.v);
	if (want && !strstr(err, want))
		fail_msg("%s: error '%s' lacks '%s'", text, err, want);
}

static void objects_arrays_and_lookups(void **state)
{
	struct json_doc d;
	const struct json_value *root, *arr, *it;
	int64_t n;

	parse_ok(" {\"sub\":\"alice\", \"exp\" : 1700000000,\n\t\"read\":[\"a/#\",\"b\"],"
		 "\"o\":{\"x\":[[],{}]},\"t\":true,\"f\":false,\"n\":null,\"e\":[]}\r\n", &d);
	root = json_root(&d);
	assert_int_equal(root->type, JSON_OBJECT);
	assert_int_equal(root->len, 8);
	assert_string_equal(json_text(&d, json_get(&d, root, "sub")), "alice");
	assert_true(json_int64(&d, json_get(&d, root, "exp"), &n));
	assert_int_equal(n, 1700000000);
	arr = json_get(&d, root, "read");
	assert_int_equal(arr->type, JSON_ARRAY);
	assert_int_equal(arr->len, 2);
	it = json_item(&d, arr, NULL);
	assert_string_equal(json_text(&d, it), "a/#");
	it = json_item(&d, arr, it);
	assert_string_equal(json_text(&d, it), "b");
	assert_null(json_item(&d, arr, it));
	assert_null(json_item(&d, json_get(&d, root, "e"), NULL));
	assert_int_equal(json_get(&d, json_get(&d, root, "o"), "x")->len, 2);
	assert_int_equal(json_get(&d, root, "t")->type, JSON_TRUE);
	assert_int_equal(json_get(&d, root, "f")->type, JSON_FALSE);
	assert_int_equal(json_get(&d, root, "n")->type, JSON_NULL);
	/* Keys of inner objects are not the outer one's. */
	assert_null(json_get(&d, root, "x"));
	assert_null(json_get(&d, root, "absent"));
	assert_null(json_get(&d, arr, "read"));
	assert_null(json_item(&d, root, NULL));
	assert_null(json_text(&d, root));
	json_free(&d);
}

static void strings_decoded(void **state)
{
	struct json_doc d;

	parse_ok("[\"q\\\"b\\\\s\\/\\b\\f\\n\\r\\t\", \"\\u00e9\\u20AC\\ud83d\\ude00\", \"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\", \"\"]", &d);
	assert_string_equal(json_text(&d, json_item(&d, json_root(&d), NULL)), "q\"b\\s/\b\f\n\r\t");
	assert_string_equal(json_text(&d, &d.v[2]), "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
	assert_int_equal(d.v[2].len, 9);
	assert_string_equal(json_text(&d, &d.v[3]), "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
	assert_string_equal(json_text(&d, &d.v[4]), "");
	json_free(&d);
}

static void numbers(void **state)
{
	static const struct { const char *text; bool ok; int64_t v; } cases[] = {
		{ "0", true, 0 }, { "-0", true, 0 }, { "42", true, 42 }, { "-7", true, -7 },
		{ "1.9", true, 1 }, { "-1.5", true, -1 }, { "1e3", true, 1000 }, { "2.5E+1", true, 25 },
		{ "1e-3", true, 0 }, { "9223372036854775807", true, INT64_MAX },
		{ "-9223372036854775808", true, INT64_MIN },
		{ "9223372036854775808", false, 0 }, { "1e19", false, 0 }, { "-1e19", false, 0 },
		{ "1e400", false, 0 },
	};
	struct json_doc d;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int64_t v = -99;

		parse_ok(cases[i].text, &d);
		assert_int_equal(json_root(&d)->type, JSON_NUMBER);
		assert_string_equal(json_text(&d, json_root(&d)), cases[i].text);
		assert_int_equal(json_int64(&d, json_root(&d), &v), cases[i].ok);
		if (cases[i].ok)
			assert_int_equal(v, cases[i].v);
		json_free(&d);
	}
	parse_ok("\"12\"", &d);
	assert_false(json_int64(&d, json_root(&d), &(int64_t){ 0 }));
	json_free(&d);
}

static void sloppy_json_refused(void **state)
{
	static const char *bad[] = {
		"", " ", "{", "[1,]", "{\"a\":1,}", "[1 2]", "{\"a\" 1}", "{a:1}", "{'a':1}",
		"01", "+1", ".5", "1.", "1e", "1e+", "-", "--1", "0x10", "NaN", "Infinity", "-Infinity",
		"tru", "nulll", "True", "[1]]", "{}{}", "1 2", "/* c */ 1", "[1] // c",
		"\"a", "\"\\x\"", "\"\\u12\"", "\"\\u12G4\"", "\"tab\there\"", "\"nl\nhere\"",
		"\"\\u0000\"", "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"", "\"\\ud800x\"",
		"\"\xc0\x80\"", "\"\xc3\"", "\"\xed\xa0\x80\"", "\"\xf5\x80\x80\x80\"", "\"\xe0\x80\xaf\"",
		"\"\xff\"", "\"\x80\"", "{\"a\":1,\"a\":2}", "{\"x\":{\"a\":1},\"x\":2}",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		refused(bad[i], strlen(bad[i]), NULL);
	refused("[1,\x00]", 5, NULL);
	refused("{\"a\":1,\"a\":2}", 13, "a key named twice");
	refused("[1] x", 5, "offset 4: more after the value");
}

/* The same key in two different objects is fine. */
static void keys_repeat_across_objects(void **state)
{
	struct json_doc d;

	parse_ok("{\"a\":{\"a\":1},\"b\":{\"a\":2}}", &d);
	json_free(&d);
}

static void bounds(void **state)
{
	struct json_limits l = lim;
	struct json_doc d;
	char err[128], deep[64];
	const char *many = "[1,2,3,4,5]";

	memset(deep, '[', 16);
	memset(deep + 16, ']', 16);
	deep[32] = '\0';
	assert_int_equal(json_parse(deep, 32, &lim, &d, err, sizeof(err)), 0);
	json_free(&d);
	memset(deep, '[', 17);
	memset(deep + 17, ']', 17);
	assert_int_equal(json_parse(deep, 34, &lim, &d, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "nested deeper than the limit"));
	l.max_values = 5;
	assert_int_equal(json_parse(many, strlen(many), &l, &d, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "more values than the limit"));
	l.max_values = 6;
	assert_int_equal(json_parse(many, strlen(many), &l, &d, err, sizeof(err)), 0);
	json_free(&d);
	l = lim;
	l.max_bytes = strlen(many) - 1;
	assert_int_equal(json_parse(many, strlen(many), &l, &d, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "larger than"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(objects_arrays_and_lookups),
		cmocka_unit_test(strings_decoded),
		cmocka_unit_test(numbers),
		cmocka_unit_test(sloppy_json_refused),
		cmocka_unit_test(keys_repeat_across_objects),
		cmocka_unit_test(bounds),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
