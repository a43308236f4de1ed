/*
 * test_b64.c - unit tests of strict base64 (common/b64.c): every length
 * round trips in each form, and each kind of sloppy input is refused.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "b64.h"

static void round_trips_every_length(void **state)
{
	const enum b64_form forms[] = { B64_STD, B64_STD_NOPAD, B64_URL };
	uint8_t in[400], out[400];
	char text[600];

	for (size_t i = 0; i < sizeof(in); i++)
		in[i] = (uint8_t)(i * 37 + 11);
	for (size_t f = 0; f < 3; f++) {
		for (size_t n = 0; n <= sizeof(in); n++) {
			ssize_t len = b64_encode(forms[f], in, n, text, sizeof(text));

			assert_true(len >= 0);
			assert_int_equal(strlen(text), (size_t)len);
			if (forms[f] == B64_STD)
				assert_int_equal(len % 4, 0);
			else
				assert_null(strchr(text, '='));
			if (forms[f] == B64_URL)
				assert_null(strpbrk(text, "+/"));
			else
				assert_null(strpbrk(text, "-_"));
			assert_int_equal(b64_decode(forms[f], text, (size_t)len, out, sizeof(out)), (ssize_t)n);
			assert_memory_equal(in, out, n);
		}
	}
}

static void known_answers(void **state)
{
	uint8_t out[16];
	char text[32];

	assert_int_equal(b64_encode(B64_STD, (const uint8_t *)"\xfb\xff", 2, text, sizeof(text)), 4);
	assert_string_equal(text, "+/8=");
	assert_int_equal(b64_encode(B64_URL, (const uint8_t *)"\xfb\xff", 2, text, sizeof(text)), 3);
	assert_string_equal(text, "-_8");
	assert_int_equal(b64_decode(B64_URL, "-_8", 3, out, sizeof(out)), 2);
	assert_memory_equal(out, "\xfb\xff", 2);
	assert_int_equal(b64_decode(B64_STD, "c2FsdA==", 8, out, sizeof(out)), 4);
	assert_memory_equal(out, "salt", 4);
	assert_int_equal(b64_decode(B64_STD_NOPAD, "c2FsdA", 6, out, sizeof(out)), 4);
}

static void sloppy_input_refused(void **state)
{
	static const struct { enum b64_form form; const char *in; } bad[] = {
		{ B64_STD, "c2FsdA" },       /* padding missing */
		{ B64_STD, "c2FsdA=" },      /* half the padding */
		{ B64_STD, "c2Fsd===" },     /* three '=' */
		{ B64_STD, "c2F=dA==" },     /* '=' inside */
		{ B64_STD, "c2Fs dA==" },    /* a blank */
		{ B64_STD, "c2Fs\ndA=" },    /* a line end */
		{ B64_STD, "c2FsdB==" },     /* bits past the last byte */
		{ B64_STD, "-_8=" },         /* the url alphabet */
		{ B64_STD_NOPAD, "c2FsdA==" },
		{ B64_STD_NOPAD, "c2Fsd" },  /* a length no encoding has */
		{ B64_STD_NOPAD, "c2FsdB" },
		{ B64_URL, "+/8" },          /* the standard alphabet */
		{ B64_URL, "-_8=" },
		{ B64_URL, "-_9" },          /* bits past the last byte */
		{ B64_URL, "a" },
	};
	uint8_t out[16];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (b64_decode(bad[i].form, bad[i].in, strlen(bad[i].in), out, sizeof(out)) != -1)
			fail_msg("accepted %s", bad[i].in);
}

static void room_is_checked(void **state)
{
	uint8_t out[3];
	char text[5];

	assert_int_equal(b64_decode(B64_STD, "c2FsdA==", 8, out, 3), -1);
	assert_int_equal(b64_decode(B64_STD, "c2Fs", 4, out, 3), 3);
	assert_int_equal(b64_encode(B64_STD, (const uint8_t *)"salt", 4, text, sizeof(text)), -1);
	assert_int_equal(b64_encode(B64_STD, (const uint8_t *)"sal", 3, text, sizeof(text)), 4);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(round_trips_every_length),
		cmocka_unit_test(known_answers),
		cmocka_unit_test(sloppy_input_refused),
		cmocka_unit_test(room_is_checked),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
