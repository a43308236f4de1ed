/*
 * levels.h - deep topic names and filters for the unit tests: n copies of
 * one level joined by '/'. Included after <cmocka.h>.
 */
#ifndef IOTD_TEST_LEVELS_H
#define IOTD_TEST_LEVELS_H

#include <stdlib.h>
#include <string.h>

/* n copies of level joined by '/', then "/last" when last is set; its length in *len. */
static char *repeat_levels(const char *level, size_t n, const char *last, size_t *len)
{
	size_t ll = strlen(level), lastl = last ? strlen(last) : 0;
	size_t cap = n * (ll + 1) + lastl + 1;
	char *s = malloc(cap);
	size_t o = 0;

	assert_non_null(s);
	for (size_t i = 0; i < n; i++) {
		if (i)
			s[o++] = '/';
		memcpy(s + o, level, ll);
		o += ll;
	}
	if (last) {
		s[o++] = '/';
		memcpy(s + o, last, lastl);
		o += lastl;
	}
	s[o] = '\0';
	*len = o;
	return s;
}

#endif
