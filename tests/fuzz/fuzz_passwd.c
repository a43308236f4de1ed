/*
 * fuzz_passwd.c - libFuzzer harness for the password file (passwd.h).
 *
 * Input: the bytes of a password file, parsed by passwd_parse under small
 * cost limits (so that every entry that loads is cheap to verify). A file
 * that loads is then asked about the user of its first line and about a
 * user it cannot hold (a name with a ':'), with the input's last line as
 * the password; the second must be refused. A refused file must say why,
 * with a line number unless the whole file is too large.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "passwd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct passwd_limits lim = {
	.max_bytes = 1 << 16, .max_line = 4096, .max_entries = 64,
	.max_pbkdf2_iterations = 50, .max_argon2_t = 1, .max_argon2_m_kib = 64, .max_argon2_p = 2,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *text = (const char *)data;
	struct passwd_table *t = NULL;
	const char *colon, *nl;
	const void *pw = "";
	size_t pwlen = 0;
	char err[256] = "";
	enum passwd_result r;

	if (passwd_parse(text, size, &lim, &t, err, sizeof(err)) != 0) {
		if (t || (strncmp(err, "line ", 5) != 0 && strncmp(err, "larger", 6) != 0))
			__builtin_trap();
		return 0;
	}
	if (passwd_count(t) > lim.max_entries)
		__builtin_trap();
	nl = size ? memrchr(text, '\n', size) : NULL;
	if (nl) {
		pw = nl + 1;
		pwlen = size - (size_t)(nl + 1 - text);
	}
	colon = memchr(text, ':', size);
	if (colon) {
		r = passwd_verify(t, text, (size_t)(colon - text), pw, pwlen);
		if (r != PASSWD_OK && r != PASSWD_BAD && r != PASSWD_ERROR)
			__builtin_trap();
	}
	if (passwd_verify(t, "no:such", 7, pw, pwlen) == PASSWD_OK)
		__builtin_trap();
	passwd_free(t);
	return 0;
}
