/*
 * files.h - the unit tests' files and their text: a temporary file holding
 * a given text, a file written or read whole, a text that must contain
 * another, and the questions put to the parser of one of iotd's files.
 * Included after <cmocka.h>.
 */
#ifndef IOTD_TEST_FILES_H
#define IOTD_TEST_FILES_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Fails unless text contains part, saying both. */
static inline void assert_contains(const char *text, const char *part)
{
	if (!strstr(text, part))
		fail_msg("'%s' lacks '%s'", text, part);
}

/* Creates the file path names (a mkstemp template, filled in here) holding text. */
static inline void temp_file(char *path, const char *text)
{
	int fd = mkstemp(path);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	assert_int_equal(close(fd), 0);
}

/* Replaces what the file at path holds with text, creating it if need be. */
static inline void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	assert_int_equal(fputs(text, f) >= 0, 1);
	assert_int_equal(fclose(f), 0);
}

/* The text of the file at path (at most 8191 bytes), until the next call. */
static inline char *read_file(const char *path)
{
	static char buf[8192];
	FILE *f = fopen(path, "r");
	size_t n;

	assert_non_null(f);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

/*
 * For a file whose parser is called as parse(text, len, limits, &made, err,
 * errlen) and returns 0 or -1, where made is a type *:
 *   parse_ok(text): what the parser made of text under the limits `lim`
 *     (the test file's own), failing the test, with the error, if refused;
 *   parse_refuses(limits, text, len, want): fails the test unless the text
 *     is refused under those limits with an error containing want, and
 *     nothing made;
 *   parse_fails(text, want): the same under `lim`.
 * A table of such texts and errors is an array of struct refusal.
 */
struct refusal {
	const char *text, *want;
};

#define FILE_PARSER_CHECKS(type, parse, limits_type) \
	static type *parse_ok(const char *text) \
	{ \
		type *made = NULL; \
		char err[256] = ""; \
\
		if (parse(text, strlen(text), &lim, &made, err, sizeof(err)) != 0) \
			fail_msg("refused: %s", err); \
		return made; \
	} \
\
	static void parse_refuses(const limits_type *l, const char *text, size_t len, \
				  const char *want) \
	{ \
		type *made = NULL; \
		char err[256] = ""; \
\
		if (parse(text, len, l, &made, err, sizeof(err)) != -1) \
			fail_msg("accepted: %.*s", (int)len, text); \
		assert_null(made); \
		assert_contains(err, want); \
	} \
\
	static void parse_fails(const char *text, const char *want) \
	{ \
		parse_refuses(&lim, text, strlen(text), want); \
	}

#endif
