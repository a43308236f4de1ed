/*
 * test_scram.c - SCRAM-SHA-256's server side (common/scram.c): RFC 7677's
 * exchange, and the messages it refuses.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "b64.h"
#include "scram.h"

/* RFC 7677, section 3: user "user", password "pencil". */
#define CLIENT_FIRST "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
#define SERVER_NONCE "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
#define SERVER_FIRST "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0," \
		     "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
#define FINAL_NO_PROOF "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
#define CLIENT_FINAL FINAL_NO_PROOF ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
#define SERVER_FINAL "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

static struct scram_exchange x;

/* The RFC's exchange up to server-first, with the password "pencil". */
static void rfc_first(const char *password)
{
	uint8_t salt[16];
	struct scram_verifier v;

	assert_int_equal(b64_decode(B64_STD, "W22ZaJ0SNY7soEsUEjb6gQ==", 24, salt, sizeof(salt)), 16);
	assert_true(scram_verifier_make(password, strlen(password), salt, 16, 4096, &v));
	assert_null(scram_client_first(&x, CLIENT_FIRST, strlen(CLIENT_FIRST)));
	assert_null(scram_server_first(&x, SERVER_NONCE, strlen(SERVER_NONCE), &v));
}

static enum scram_result final(const char *msg, char *out, size_t cap, size_t *n)
{
	const char *why = NULL;
	enum scram_result r = scram_client_final(&x, msg, strlen(msg), out, cap, n, &why);

	if (r != SCRAM_OK)
		assert_non_null(why);
	return r;
}

static void test_rfc7677(void **state)
{
	char out[128];
	size_t n = 0;

	(void)state;
	rfc_first("pencil");
	assert_int_equal(x.user_len, 4);
	assert_memory_equal(x.user, "user", 4);
	assert_int_equal(x.server_first_len, strlen(SERVER_FIRST));
	assert_memory_equal(x.server_first, SERVER_FIRST, strlen(SERVER_FIRST));
	assert_int_equal(final(CLIENT_FINAL, out, sizeof(out), &n), SCRAM_OK);
	assert_int_equal(n, strlen(SERVER_FINAL));
	assert_memory_equal(out, SERVER_FINAL, n);
}

static void test_wrong_password(void **state)
{
	char out[128];
	size_t n;

	(void)state;
	rfc_first("pencils");
	assert_int_equal(final(CLIENT_FINAL, out, sizeof(out), &n), SCRAM_BAD_PROOF);
}

static void test_client_first_refused(void **state)
{
	static const char *bad[] = {
		"", "n", "n,", "n,,", "p=tls-unique,,n=user,r=abc", "x,,n=user,r=abc",
		"n,a=admin,n=user,r=abc", "n,,r=abc,n=user", "n,,n=,r=abc", "n,,n=us=er,r=abc",
		"n,,n=us=2,r=abc", "n,,n=user", "n,,n=user,r=", "n,,n=user,r=a b",
		"n,,n=user,r=abc,1x", "n,,m=ext,n=user,r=abc",
	};
	struct scram_exchange y;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (scram_client_first(&y, bad[i], strlen(bad[i])) == NULL)
			fail_msg("accepted: %s", bad[i]);
	assert_null(scram_client_first(&y, "y,,n=a=2Cb=3Dc,r=xyz,e=ext", 26));
	assert_int_equal(y.user_len, 5);
	assert_memory_equal(y.user, "a,b=c", 5);
	assert_int_equal(y.gs2_len, 3);
}

static void test_client_final_refused(void **state)
{
	static const char *bad[] = {
		"", "c=biws", FINAL_NO_PROOF, FINAL_NO_PROOF ",p=", FINAL_NO_PROOF ",p=AAAA",
		"c=eSws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
		"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
		"c=biws,r=rOprNGfwEbeRWgbNEkqO,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
		FINAL_NO_PROOF ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=,x=1",
		FINAL_NO_PROOF ",=x,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
	};
	char out[128];
	size_t n;

	(void)state;
	rfc_first("pencil");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (final(bad[i], out, sizeof(out), &n) == SCRAM_OK)
			fail_msg("accepted: %s", bad[i]);
	/* An extension changes the AuthMessage: well formed, but not the proof made without it. */
	assert_int_equal(final(FINAL_NO_PROOF ",x=1,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
			       out, sizeof(out), &n), SCRAM_BAD_PROOF);
}

static void test_bounds(void **state)
{
	static char big[SCRAM_MSG_MAX + 16];
	struct scram_exchange y;
	char out[128];
	size_t n;

	(void)state;
	memcpy(big, "n,,n=user,r=", 12);
	memset(big + 12, 'a', sizeof(big) - 13);
	assert_non_null(scram_client_first(&y, big, sizeof(big) - 1));
	rfc_first("pencil");
	assert_int_not_equal(final(big, out, sizeof(out), &n), SCRAM_OK);
	/* server-final needs room: too little is a failure, not an overflow. */
	assert_int_not_equal(final(CLIENT_FINAL, out, 8, &n), SCRAM_OK);
}

static void test_nonce(void **state)
{
	char a[32], b[32];

	(void)state;
	assert_true(scram_server_nonce(a));
	assert_true(scram_server_nonce(b));
	assert_int_equal(strlen(a), 24);
	assert_string_not_equal(a, b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rfc7677),
		cmocka_unit_test(test_wrong_password),
		cmocka_unit_test(test_client_first_refused),
		cmocka_unit_test(test_client_final_refused),
		cmocka_unit_test(test_bounds),
		cmocka_unit_test(test_nonce),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
