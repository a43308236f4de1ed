/*
 * test_passwd.c - unit tests of the password file (common/passwd.c) and
 * of the iotd-passwd tool that writes it.
 *
 * Mosquitto's hashes come from two places: fixtures made once and kept
 * here (how each was made is said beside it), and, where Debian's
 * mosquitto_passwd is installed, files it writes during the test.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pty.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "b64.h"
#include "iotd.h"
#include "passwd.h"
#include "scram.h"

#include "files.h"

static const struct passwd_limits lim = PASSWD_LIMITS_DEFAULT;

/*
 * dave: `mosquitto_passwd -H sha512 -c -b FILE dave 'tr0ub4dor&3'` (Mosquitto 2.0.11);
 * erin: `mosquitto_passwd -b FILE erin ''` (an empty password, $7$ by default);
 * frank: `mosquitto_passwd -c -b FILE frank 'p4ss w0rd'`.
 */
#define DAVE "dave:$6$OcfeX5qhmqaJGrDS$gH7uC+px7naybPU5G0UirjHcrfhroURwc49/6OByCj/L1qFrwhQMBsqgrKuMEbHqgrBlESQ8xUb7RbzPqkBGHA=="
#define ERIN "erin:$7$101$HzXYqhg8+wptrTo6$l8+PzrzXCmM/JxoTkTo9icf+501wy9kfnPr8pTNmgi+JbE1PI9+3InDHb2Kf0Y3VEJUVkxejIT4tZGox80UKuA=="
#define FRANK "frank:$7$101$4shopy6i9CqBfu8W$Dzx3w4RnPVNmViXRZecYAGs8z43mvwjAL7QYMbc7TUcXCqV+s7OBVlDdy3RVwcaiPy+SGcWTboezS4wSm8SPow=="

/*
 * carol, 'correct horse', salt 0f1e2d3c4b5a69788796a5b4, computed by the
 * documented algorithms with the openssl command:
 *   s=$(printf '\x0f\x1e\x2d\x3c\x4b\x5a\x69\x78\x87\x96\xa5\xb4')
 *   $6$: (printf 'correct horse'; printf "$s") | openssl dgst -sha512 -binary | base64 -w0
 *   $7$: openssl kdf -keylen 64 -kdfopt digest:SHA512 -kdfopt pass:'correct horse' \
 *          -kdfopt hexsalt:0f1e2d3c4b5a69788796a5b4 -kdfopt iter:101 PBKDF2 | tr -d : | xxd -r -p | base64 -w0
 */
#define CAROL6 "carol:$6$Dx4tPEtaaXiHlqW0$bFB+EJBx5jgZOvthhspW9QQ48R0Oxqk2AYQfg6LBMWhVC6K3D59tXj06Nj+pnp4Swy1QW7rG6CTcNepU6IwW3A=="
#define CAROL7 "carol7:$7$101$Dx4tPEtaaXiHlqW0$CaIikY+0p/ahIWzUXWsIgFeEt/AUJyR3YyviXx7AaTpIlivDW5jC1ru1sJfm9UTi+ro/yzE02/fIxWX1JCQeLw=="

/* Cheap Argon2 parameters: the tests hash many times. */
static const struct passwd_argon2_params cheap = { .t_cost = 1, .m_kib = 64, .lanes = 1 };

FILE_PARSER_CHECKS(struct passwd_table, passwd_parse, struct passwd_limits)

/* Fails unless each login, "user:password", gets want from passwd_verify; names the one that does not. */
static void check_logins(const struct passwd_table *t, enum passwd_result want,
			 const char *const *logins, size_t n)
{
	static const char *name[] = { [PASSWD_OK] = "OK", [PASSWD_BAD] = "BAD", [PASSWD_ERROR] = "ERROR" };

	for (size_t i = 0; i < n; i++) {
		const char *colon = strchr(logins[i], ':');
		enum passwd_result got;

		assert_non_null(colon);
		got = passwd_verify(t, logins[i], (size_t)(colon - logins[i]), colon + 1, strlen(colon + 1));
		if (got != want)
			fail_msg("'%s': %s, want %s", logins[i], name[got], name[want]);
	}
}

/* LOGINS(t, want, "user:password", ...): check_logins on the logins listed. */
#define LOGINS(t, want, ...) \
	check_logins(t, want, (const char *const[]){ __VA_ARGS__ }, \
		     ARRAY_SIZE(((const char *const[]){ __VA_ARGS__ })))

static void mosquitto_fixtures_verify(void **state)
{
	struct passwd_table *t = parse_ok("# made by mosquitto_passwd\n"
					  DAVE "\r\n"
					  "\n"
					  "   \t\n"
					  ERIN "\n"
					  "  # an indented comment\n"
					  FRANK);

	assert_int_equal(passwd_count(t), 3);
	LOGINS(t, PASSWD_OK, "dave:tr0ub4dor&3", "erin:", "frank:p4ss w0rd");
	LOGINS(t, PASSWD_BAD, "dave:tr0ub4dor&4", "dave:", "erin: ", "frank:p4ss w0rd ",
	       /* Another user's password, and names that are not quite there. */
	       "frank:tr0ub4dor&3", "Dave:tr0ub4dor&3", "dav:tr0ub4dor&3", "davey:tr0ub4dor&3",
	       ":");
	passwd_free(t);
}

static void openssl_fixtures_verify(void **state)
{
	struct passwd_table *t = parse_ok(CAROL6 "\n" CAROL7 "\n");

	LOGINS(t, PASSWD_OK, "carol:correct horse", "carol7:correct horse");
	LOGINS(t, PASSWD_BAD, "carol:correct horse battery", "carol7:correct hors");
	passwd_free(t);
}

/*
 * $7$ is checked by PBKDF2 of iotd's own: it must agree with OpenSSL's
 * PKCS5_PBKDF2_HMAC for passwords shorter and longer than a SHA-512
 * block (a longer key is hashed first), several salt lengths and rounds.
 */
static void pbkdf2_agrees_with_openssl(void **state)
{
	static const size_t pwlens[] = { 0, 1, 13, 127, 128, 129, 300 };
	static const size_t saltlens[] = { 1, 12, 16, 64 };
	static const int rounds[] = { 1, 2, 101, 1000 };
	uint8_t pw[300], salt[64], hash[64];
	unsigned seed = 7;

	for (size_t i = 0; i < sizeof(pw); i++)
		pw[i] = (uint8_t)rand_r(&seed);
	for (size_t i = 0; i < sizeof(salt); i++)
		salt[i] = (uint8_t)rand_r(&seed);
	for (size_t p = 0; p < ARRAY_SIZE(pwlens); p++)
		for (size_t sl = 0; sl < ARRAY_SIZE(saltlens); sl++)
			for (size_t r = 0; r < ARRAY_SIZE(rounds); r++) {
				char line[512], s64[128], h64[128];
				struct passwd_table *t;

				assert_int_equal(PKCS5_PBKDF2_HMAC((const char *)pw, (int)pwlens[p], salt,
								   (int)saltlens[sl], rounds[r], EVP_sha512(),
								   64, hash), 1);
				assert_true(b64_encode(B64_STD, salt, saltlens[sl], s64, sizeof(s64)) > 0);
				assert_true(b64_encode(B64_STD, hash, 64, h64, sizeof(h64)) > 0);
				snprintf(line, sizeof(line), "u:$7$%d$%s$%s", rounds[r], s64, h64);
				t = parse_ok(line);
				if (passwd_verify(t, "u", 1, pw, pwlens[p]) != PASSWD_OK)
					fail_msg("password of %zu bytes, salt %zu, %d rounds: refused",
						 pwlens[p], saltlens[sl], rounds[r]);
				pw[0] ^= 1;
				if (pwlens[p] && passwd_verify(t, "u", 1, pw, pwlens[p]) != PASSWD_BAD)
					fail_msg("a changed password of %zu bytes accepted", pwlens[p]);
				pw[0] ^= 1;
				passwd_free(t);
			}
}

/* A password is bytes: a NUL inside one is part of it, not its end. */
static void passwords_are_bytes(void **state)
{
	char line[PASSWD_HASH_MAX + 16] = "nul:";
	struct passwd_table *t;

	assert_int_equal(passwd_hash_argon2id("a\0b", 3, &cheap, line + 4, sizeof(line) - 4), 0);
	t = parse_ok(line);
	assert_int_equal(passwd_verify(t, "nul", 3, "a\0b", 3), PASSWD_OK);
	assert_int_equal(passwd_verify(t, "nul", 3, "a\0c", 3), PASSWD_BAD);
	assert_int_equal(passwd_verify(t, "nul", 3, "a", 1), PASSWD_BAD);
	passwd_free(t);
}

static void argon2id_round_trip(void **state)
{
	const struct passwd_argon2_params def = {
		.t_cost = PASSWD_ARGON2_T, .m_kib = PASSWD_ARGON2_M_KIB, .lanes = PASSWD_ARGON2_P
	};
	const struct passwd_argon2_params two_lanes = { .t_cost = 2, .m_kib = 256, .lanes = 2 };
	char a[PASSWD_HASH_MAX], b[PASSWD_HASH_MAX], c[PASSWD_HASH_MAX], text[1024];
	struct passwd_table *t;

	assert_int_equal(passwd_hash_argon2id("s3cret", 6, &def, a, sizeof(a)), 0);
	assert_int_equal(passwd_hash_argon2id("s3cret", 6, &cheap, b, sizeof(b)), 0);
	assert_int_equal(passwd_hash_argon2id("other", 5, &two_lanes, c, sizeof(c)), 0);
	assert_contains(a, "$argon2id$v=19$m=19456,t=2,p=1$");
	assert_contains(c, "$argon2id$v=19$m=256,t=2,p=2$");
	/* The salt is new each time: one password, two hashes. */
	assert_int_equal(passwd_hash_argon2id("s3cret", 6, &cheap, text, sizeof(text)), 0);
	assert_string_not_equal(text, b);
	snprintf(text, sizeof(text), "default:%s\ncheap:%s\nlanes:%s\n", a, b, c);
	t = parse_ok(text);
	LOGINS(t, PASSWD_OK, "default:s3cret", "cheap:s3cret", "lanes:other");
	LOGINS(t, PASSWD_BAD, "default:s3creT", "cheap:s3cre", "lanes:s3cret");
	passwd_free(t);
}

/*
 * $scram-sha-256$: a plain password checks against its StoredKey and
 * ServerKey; its verifier is what scram_verifier_make gives. An unknown
 * user, or one of another kind of hash, gets a stand-in: the same salt
 * for the same name, other keys.
 */
static void scram_entries(void **state)
{
	char a[PASSWD_HASH_MAX], b[PASSWD_HASH_MAX], text[1024];
	struct scram_verifier v, w, mine;
	struct passwd_table *t;

	assert_int_equal(passwd_hash_scram("pencil", 6, 4096, a, sizeof(a)), 0);
	assert_int_equal(passwd_hash_argon2id("s3cret", 6, &cheap, b, sizeof(b)), 0);
	assert_int_equal(passwd_hash_scram("pencil", 6, 4095, text, sizeof(text)), -1);
	assert_contains(a, "$scram-sha-256$4096$");
	snprintf(text, sizeof(text), "user:%s\nargon:%s\n", a, b);
	t = parse_ok(text);
	LOGINS(t, PASSWD_OK, "user:pencil", "argon:s3cret");
	LOGINS(t, PASSWD_BAD, "user:pencils", "user:", "nobody:pencil");
	assert_true(passwd_scram_verifier(t, "user", 4, &v));
	assert_int_equal(v.iterations, 4096);
	assert_true(scram_verifier_make("pencil", 6, v.salt, v.salt_len, 4096, &mine));
	assert_memory_equal(v.stored_key, mine.stored_key, SCRAM_KEY_LEN);
	assert_memory_equal(v.server_key, mine.server_key, SCRAM_KEY_LEN);
	assert_false(passwd_scram_verifier(t, "argon", 5, &v));
	assert_false(passwd_scram_verifier(t, "ghost", 5, &w));
	assert_int_equal(v.iterations, 4096);
	assert_int_equal(w.salt_len, v.salt_len);
	assert_false(passwd_scram_verifier(t, "ghost", 5, &v));
	assert_memory_equal(v.salt, w.salt, v.salt_len);
	assert_memory_not_equal(v.stored_key, w.stored_key, SCRAM_KEY_LEN);
	passwd_free(t);
	/* Fewer than 4096 iterations, keys of another length: the file is refused. */
	parse_fails("u:$scram-sha-256$4095$c2FsdA==$"
		    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=$"
		    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", "line 1");
	parse_fails("u:$scram-sha-256$4096$c2FsdA==$AAAA$"
		    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", "line 1");
}

static void argon2id_bad_parameters_refused(void **state)
{
	char out[PASSWD_HASH_MAX];
	const struct passwd_argon2_params no_lane = { .t_cost = 1, .m_kib = 64, .lanes = 0 };
	const struct passwd_argon2_params no_pass = { .t_cost = 0, .m_kib = 64, .lanes = 1 };
	const struct passwd_argon2_params small = { .t_cost = 1, .m_kib = 15, .lanes = 2 };

	assert_int_equal(passwd_hash_argon2id("x", 1, &no_lane, out, sizeof(out)), -1);
	assert_int_equal(passwd_hash_argon2id("x", 1, &no_pass, out, sizeof(out)), -1);
	assert_int_equal(passwd_hash_argon2id("x", 1, &small, out, sizeof(out)), -1);
	assert_int_equal(passwd_hash_argon2id("x", 1, &cheap, out, 20), -1);
}

static void unknown_user_is_bad(void **state)
{
	struct passwd_table *t = parse_ok(FRANK "\n");
	struct passwd_table *empty = parse_ok("# nobody\n\n");

	LOGINS(t, PASSWD_BAD, "nobody:p4ss w0rd", "nobody:");
	assert_int_equal(passwd_count(empty), 0);
	LOGINS(empty, PASSWD_BAD, "frank:p4ss w0rd");
	passwd_free(t);
	passwd_free(empty);
}

/* Mosquitto 2 finds the entry it added last: so does iotd. */
static void duplicate_user_later_line_wins(void **state)
{
	struct passwd_table *t = parse_ok(CAROL6 "\n" FRANK "\n"
					  "carol:$7$101$Dx4tPEtaaXiHlqW0$CaIikY+0p/ahIWzUXWsIgFeEt/AUJyR3YyviXx7AaTpIlivDW5jC1ru1sJfm9UTi+ro/yzE02/fIxWX1JCQeLw==\n"
					  "frank:$6$OcfeX5qhmqaJGrDS$gH7uC+px7naybPU5G0UirjHcrfhroURwc49/6OByCj/L1qFrwhQMBsqgrKuMEbHqgrBlESQ8xUb7RbzPqkBGHA==\n");

	assert_int_equal(passwd_count(t), 2);
	/* carol's second line is CAROL7's hash: the same password, PBKDF2 now. */
	LOGINS(t, PASSWD_OK, "carol:correct horse");
	/* frank's second line is dave's hash. */
	LOGINS(t, PASSWD_OK, "frank:tr0ub4dor&3");
	LOGINS(t, PASSWD_BAD, "frank:p4ss w0rd");
	passwd_free(t);
}

static void blanks_around_user_and_hash_ignored(void **state)
{
	struct passwd_table *t = parse_ok("  frank \t: $7$101$4shopy6i9CqBfu8W$Dzx3w4RnPVNmViXRZecYAGs8z43mvwjAL7QYMbc7TUcXCqV+s7OBVlDdy3RVwcaiPy+SGcWTboezS4wSm8SPow==  \r\n");

	LOGINS(t, PASSWD_OK, "frank:p4ss w0rd");
	passwd_free(t);
}

static void malformed_lines_refuse_the_file(void **state)
{
	static const struct refusal cases[] = {
		{ "# ok\n" FRANK "\nnocolon\n", "line 3: no ':'" },
		{ ":$6$Dx4tPEtaaXiHlqW0$x\n", "line 1: an empty user name" },
		{ "\n\nbob:\n", "line 3: no hash" },
		{ "bob:plaintext\n", "line 1: the hash does not start" },
		{ "bob:$5$abc$def\n", "line 1: the hash does not start" },
		{ "bob:$7$0$Dx4tPEtaaXiHlqW0$CaIikY+0p/ahIWzUXWsIgFeEt/AUJyR3YyviXx7AaTpIlivDW5jC1ru1sJfm9UTi+ro/yzE02/fIxWX1JCQeLw==\n",
		  "line 1: $7$: iterations" },
		{ "bob:$7$x1$Dx4tPEtaaXiHlqW0$CaIikY+0p/ahIWzUXWsIgFeEt/AUJyR3YyviXx7AaTpIlivDW5jC1ru1sJfm9UTi+ro/yzE02/fIxWX1JCQeLw==\n",
		  "line 1: $7$: iterations" },
		{ "bob:$7$101$Dx4tPEtaaXiHlqW$CaIikY+0p/ahIWzUXWsIgFeEt/AUJyR3YyviXx7AaTpIlivDW5jC1ru1sJfm9UTi+ro/yzE02/fIxWX1JCQeLw==\n",
		  "line 1: salt" },
		/* A hash one byte short (the last group dropped), and one with a stray character. */
		{ FRANK "\nbob:$7$101$Dx4tPEtaaXiHlqW0$CaIikY+0p/ahIWzUXWsIgFeEt/AUJyR3YyviXx7AaTpIlivDW5jC1ru1sJfm9UTi+ro/yzE02/fIxWX1JCQe\n",
		  "line 2: hash not 64 bytes" },
		{ "bob:$6$Dx4tPEtaaXiHlqW0$bFB+EJBx5jgZOvthhspW9QQ48R0Oxqk2AYQfg6LBMWhVC6K3D59tXj06Nj+pnp4Swy1QW7rG6CTcNepU6IwW3A=*\n",
		  "line 1: hash not 64 bytes" },
		{ "bob:$6$Dx4tPEtaaXiHlqW0$bFB+EJBx5jgZOvthhspW9QQ48R0Oxqk2AYQfg6LBMWhVC6K3D59tXj06Nj+pnp4Swy1QW7rG6CTcNepU6IwW3A==$\n",
		  "line 1: more '$' fields" },
		{ "bob:$6$Dx4tPEtaaXiHlqW0$bFB+EJBx5jgZOvthhspW9QQ48R0Oxqk2AYQfg6LBMWhVC6K3D59tXj06Nj+pnp4Swy1QW7rG6CTcNepU6IwW3A==:x\n",
		  "line 1: a second ':'" },
		{ "bob:$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\n",
		  "line 1: the hash" },
		{ "bob:$argon2id$v=16$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\n",
		  "line 1: $argon2id$: only version" },
		{ "bob:$argon2id$v=19$t=1,m=64,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\n",
		  "line 1: $argon2id$: parameters" },
		{ "bob:$argon2id$v=19$m=8,t=1,p=2$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\n",
		  "line 1: $argon2id$: parameters" },
		{ "bob:$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaGhhc2hoYXNoaGFzaA\n",
		  "line 1: $argon2id$: salt" },
		{ "bob:$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaA\n",
		  "line 1: $argon2id$: hash" },
		{ "bob:$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA\n",
		  "line 1: $argon2id$: salt" },
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
		parse_fails(cases[i].text, cases[i].want);
}

static void nul_byte_refused(void **state)
{
	static const char text[] = "frank\0:$6$x\n";

	parse_refuses(&lim, text, sizeof(text) - 1, "line 1: a NUL byte");
}

static void limits_refuse_the_file(void **state)
{
	struct passwd_limits one_user = lim, short_lines = lim, small = lim;
	struct passwd_limits few_iterations = lim, little_memory = lim;
	const char *two = CAROL6 "\n" FRANK "\n";
	const char *argon2 = "b:$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

	one_user.max_entries = 1;
	short_lines.max_line = strlen(CAROL6) - 1;
	small.max_bytes = strlen(two) - 1;
	few_iterations.max_pbkdf2_iterations = 100;
	little_memory.max_argon2_m_kib = 63;
	parse_refuses(&one_user, two, strlen(two), "line 2: more users than the limit");
	parse_refuses(&short_lines, two, strlen(two), "line 1: longer than the line limit");
	parse_refuses(&small, two, strlen(two), "larger than");
	/* An entry that costs more to verify than the operator allows. */
	parse_refuses(&few_iterations, two, strlen(two), "line 2: $7$: iterations");
	parse_refuses(&little_memory, argon2, strlen(argon2), "line 1: $argon2id$: parameters");
}

static void user_name_of_65535_bytes(void **state)
{
	size_t n = 65535;
	char *text = malloc(n + 200), *user = malloc(n + 1);
	struct passwd_table *t;

	memset(user, 'u', n + 1);
	memcpy(text, user, n);
	strcpy(text + n, strchr(FRANK, ':'));
	t = parse_ok(text);
	assert_int_equal(passwd_verify(t, user, n, "p4ss w0rd", 9), PASSWD_OK);
	assert_int_equal(passwd_verify(t, user, n + 1, "p4ss w0rd", 9), PASSWD_BAD);
	passwd_free(t);
	memset(text, 'u', n + 1);
	strcpy(text + n + 1, strchr(FRANK, ':'));
	parse_fails(text, "line 1: a user name longer than 65535 bytes");
	free(text);
	free(user);
}

/* ---- files on disk: passwd_load, mosquitto_passwd and iotd-passwd ---- */

static char dir[64];

static int make_dir(void **state)
{
	snprintf(dir, sizeof(dir), "/tmp/iotd-test-passwd-XXXXXX");
	return mkdtemp(dir) ? 0 : -1;
}

static int remove_dir(void **state)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static void path_in_dir(char *out, size_t len, const char *name)
{
	snprintf(out, len, "%s/%s", dir, name);
}

/* Run argv (stdin from /dev/null, or from in when given); its exit status. */
static int run(char *const argv[], const char *in)
{
	int fds[2] = { -1, -1 };
	pid_t pid;
	int status;

	if (in)
		assert_int_equal(pipe(fds), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);

		dup2(in ? fds[0] : null, 0);
		dup2(null, 1);
		dup2(null, 2);
		if (in) {
			close(fds[0]);
			close(fds[1]);
		}
		execv(argv[0], argv);
		_exit(127);
	}
	if (in) {
		close(fds[0]);
		assert_int_equal(write(fds[1], in, strlen(in)), (ssize_t)strlen(in));
		close(fds[1]);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static struct passwd_table *load_ok(const char *path)
{
	struct passwd_table *t = NULL;
	char err[512] = "";

	if (passwd_load(path, &lim, &t, err, sizeof(err)) != 0)
		fail_msg("refused: %s", err);
	return t;
}

static void load_names_the_path(void **state)
{
	char path[128], err[512];
	struct passwd_table *t = NULL;

	path_in_dir(path, sizeof(path), "bad");
	write_file(path, FRANK "\n\nx\n");
	assert_int_equal(passwd_load(path, &lim, &t, err, sizeof(err)), -1);
	assert_true(strncmp(err, path, strlen(path)) == 0);
	assert_contains(err, ": line 3: no ':'");
	path_in_dir(path, sizeof(path), "missing");
	assert_int_equal(passwd_load(path, &lim, &t, err, sizeof(err)), -1);
	assert_contains(err, "No such file");
	assert_int_equal(passwd_load(dir, &lim, &t, err, sizeof(err)), -1);
	assert_contains(err, "not a regular file");
	assert_null(t);
}

#define MOSQUITTO_PASSWD "/usr/bin/mosquitto_passwd"

/* Files written by Debian's mosquitto_passwd now, both hash kinds it makes. */
static void files_from_mosquitto_passwd(void **state)
{
	char path[128];
	struct passwd_table *t;

	if (access(MOSQUITTO_PASSWD, X_OK) != 0)
		skip();
	path_in_dir(path, sizeof(path), "mosquitto");
	{
		char *c[] = { MOSQUITTO_PASSWD, "-c", "-b", path, "alice", "wonder land", NULL };
		char *b[] = { MOSQUITTO_PASSWD, "-b", path, "bob", "b0b:with:colons", NULL };
		char *s[] = { MOSQUITTO_PASSWD, "-H", "sha512", "-b", path, "sam", "sha-512 only", NULL };
		char *u[] = { MOSQUITTO_PASSWD, "-b", path, "alice", "looking glass", NULL };

		assert_int_equal(run(c, NULL), 0);
		assert_int_equal(run(b, NULL), 0);
		assert_int_equal(run(s, NULL), 0);
		t = load_ok(path);
		assert_int_equal(passwd_count(t), 3);
		LOGINS(t, PASSWD_OK, "alice:wonder land", "bob:b0b:with:colons", "sam:sha-512 only");
		assert_contains(read_file(path), "sam:$6$");
		assert_contains(read_file(path), "alice:$7$");
		LOGINS(t, PASSWD_BAD, "alice:looking glass");
		passwd_free(t);
		/* Changed in place by mosquitto_passwd: the new password, not the old. */
		assert_int_equal(run(u, NULL), 0);
		t = load_ok(path);
		LOGINS(t, PASSWD_OK, "alice:looking glass");
		LOGINS(t, PASSWD_BAD, "alice:wonder land");
		passwd_free(t);
	}
}

/* build/tests/test_passwd -> build/contrib/iotd-passwd */
static const char *tool_path(void)
{
	static char path[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
	char *slash;

	assert_true(n > 0);
	path[n] = '\0';
	slash = strrchr(path, '/');
	assert_non_null(slash);
	*slash = '\0';
	slash = strrchr(path, '/');
	assert_non_null(slash);
	strcpy(slash, "/contrib/iotd-passwd");
	return path;
}

static int tool(const char *in, ...)
{
	char *argv[12];
	int n = 0;
	va_list ap;

	argv[n++] = (char *)tool_path();
	va_start(ap, in);
	while (n < 11 && (argv[n] = va_arg(ap, char *)) != NULL)
		n++;
	va_end(ap);
	argv[n] = NULL;
	return run(argv, in);
}

static void tool_batch_create_add_change_delete(void **state)
{
	char path[128], before[8192];
	struct passwd_table *t;
	struct stat st;
	const char *kept = "# operators' notes, kept as they are\r\n" FRANK "\n  \n" CAROL6;

	path_in_dir(path, sizeof(path), "tool");
	assert_int_equal(tool(NULL, "-c", "-b", path, "ann", "first pass", NULL), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	t = load_ok(path);
	assert_int_equal(passwd_count(t), 1);
	LOGINS(t, PASSWD_OK, "ann:first pass");
	passwd_free(t);
	assert_contains(read_file(path), "ann:$argon2id$v=19$m=19456,t=2,p=1$");

	/* Other lines kept byte for byte (a missing last newline too); ann added at the end. */
	write_file(path, kept);
	assert_int_equal(tool(NULL, "-b", path, "ann", "second", NULL), 0);
	strcpy(before, read_file(path));
	assert_true(strncmp(before, kept, strlen(kept)) == 0);
	assert_true(strncmp(before + strlen(kept), "\nann:$argon2id$", 15) == 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);

	/* Changing frank rewrites his line in place and nothing else. */
	assert_int_equal(tool(NULL, "-b", "-t", "1", "-m", "1024", path, "frank", "new", NULL), 0);
	t = load_ok(path);
	assert_int_equal(passwd_count(t), 3);
	LOGINS(t, PASSWD_OK, "frank:new");
	LOGINS(t, PASSWD_BAD, "frank:p4ss w0rd");
	LOGINS(t, PASSWD_OK, "carol:correct horse", "ann:second");
	passwd_free(t);
	{
		const char *want = "# operators' notes, kept as they are\r\nfrank:$argon2id$v=19$m=1024,t=1,p=1$";

		assert_true(strncmp(read_file(path), want, strlen(want)) == 0);
	}
	assert_contains(read_file(path), "\n  \n" CAROL6 "\nann:");

	/* Deleting carol; deleting someone absent fails and changes nothing. */
	assert_int_equal(tool(NULL, "-D", path, "carol", NULL), 0);
	assert_null(strstr(read_file(path), "carol"));
	strcpy(before, read_file(path));
	assert_int_equal(tool(NULL, "-D", path, "carol", NULL), 1);
	assert_string_equal(read_file(path), before);
	t = load_ok(path);
	assert_int_equal(passwd_count(t), 2);
	passwd_free(t);

	/* -c replaces the whole file. */
	assert_int_equal(tool(NULL, "-c", "-b", path, "zed", "z", NULL), 0);
	t = load_ok(path);
	assert_int_equal(passwd_count(t), 1);
	LOGINS(t, PASSWD_OK, "zed:z");
	passwd_free(t);
}

static void tool_prompts_twice(void **state)
{
	char path[128];
	struct passwd_table *t;

	path_in_dir(path, sizeof(path), "prompt");
	/* Not a terminal: the two lines are read as they come. */
	assert_int_equal(tool("typed in\ntyped in\n", "-c", path, "pat", NULL), 0);
	t = load_ok(path);
	LOGINS(t, PASSWD_OK, "pat:typed in");
	passwd_free(t);
	/* The two differ: nothing is written. */
	assert_int_equal(tool("one\ntwo\n", path, "pat", NULL), 1);
	assert_int_equal(tool("one\n", path, "pat", NULL), 1);
	t = load_ok(path);
	LOGINS(t, PASSWD_OK, "pat:typed in");
	passwd_free(t);
}

/* Read from the terminal's master side until want shows up or the child closes it. */
static bool pty_read_until(int fd, char *seen, size_t cap, size_t *len, const char *want)
{
	while (!want || !strstr(seen, want)) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t n;

		if (poll(&p, 1, 10000) != 1)
			return false;
		n = read(fd, seen + *len, cap - 1 - *len);
		if (n <= 0)
			return want == NULL; /* EIO: the child is gone */
		*len += (size_t)n;
		seen[*len] = '\0';
	}
	return true;
}

/* On a terminal: two prompts, and the password is never echoed. */
static void tool_prompts_on_a_terminal_without_echo(void **state)
{
	char path[128], seen[4096] = "";
	size_t len = 0;
	struct passwd_table *t;
	int fd, status;
	pid_t pid;

	path_in_dir(path, sizeof(path), "tty");
	pid = forkpty(&fd, NULL, NULL, NULL);
	assert_true(pid >= 0);
	if (pid == 0) {
		char *argv[] = { (char *)tool_path(), "-c", "-t", "1", "-m", "64", path, "tty", NULL };

		execv(argv[0], argv);
		_exit(127);
	}
	assert_true(pty_read_until(fd, seen, sizeof(seen), &len, "Password: "));
	assert_int_equal(write(fd, "hidden words\n", 13), 13);
	assert_true(pty_read_until(fd, seen, sizeof(seen), &len, "Reenter password: "));
	assert_int_equal(write(fd, "hidden words\n", 13), 13);
	assert_true(pty_read_until(fd, seen, sizeof(seen), &len, NULL));
	close(fd);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	assert_null(strstr(seen, "hidden"));
	t = load_ok(path);
	LOGINS(t, PASSWD_OK, "tty:hidden words");
	passwd_free(t);
}

/* As root: the file keeps its owner and group, -c or not; the mode becomes 0600. */
static void tool_keeps_owner_and_group(void **state)
{
	char path[128];
	struct stat st;

	if (geteuid() != 0)
		skip();
	path_in_dir(path, sizeof(path), "owned");
	write_file(path, FRANK "\n");
	assert_int_equal(chown(path, 65534, 65534), 0);
	assert_int_equal(chmod(path, 0640), 0);
	assert_int_equal(tool(NULL, "-b", "-t", "1", "-m", "64", path, "frank", "x", NULL), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_uid, 65534);
	assert_int_equal(st.st_gid, 65534);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(tool(NULL, "-c", "-b", "-t", "1", "-m", "64", path, "new", "x", NULL), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_uid, 65534);
	assert_int_equal(st.st_gid, 65534);
}

static void tool_refuses_bad_use(void **state)
{
	char path[128], missing[128];

	path_in_dir(path, sizeof(path), "refuse");
	path_in_dir(missing, sizeof(missing), "absent/file");
	write_file(path, FRANK "\n");
	assert_int_equal(tool(NULL, "-b", path, "a:b", "pw", NULL), 1);
	assert_int_equal(tool(NULL, "-b", path, "", "pw", NULL), 1);
	assert_int_equal(tool(NULL, "-b", path, " lead", "pw", NULL), 1);
	assert_int_equal(tool(NULL, "-b", path, "#hash", "pw", NULL), 1);
	assert_int_equal(tool(NULL, "-b", path, "user", NULL), 1);
	assert_int_equal(tool(NULL, "-c", "-D", path, "frank", NULL), 1);
	assert_int_equal(tool(NULL, "-b", missing, "user", "pw", NULL), 1);
	assert_int_equal(tool(NULL, "-b", "-m", "4", path, "user", "pw", NULL), 1);
	assert_int_equal(tool(NULL, NULL), 1);
	assert_string_equal(read_file(path), FRANK "\n");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(mosquitto_fixtures_verify),
		cmocka_unit_test(openssl_fixtures_verify),
		cmocka_unit_test(pbkdf2_agrees_with_openssl),
		cmocka_unit_test(passwords_are_bytes),
		cmocka_unit_test(argon2id_round_trip),
		cmocka_unit_test(argon2id_bad_parameters_refused),
		cmocka_unit_test(scram_entries),
		cmocka_unit_test(unknown_user_is_bad),
		cmocka_unit_test(duplicate_user_later_line_wins),
		cmocka_unit_test(blanks_around_user_and_hash_ignored),
		cmocka_unit_test(malformed_lines_refuse_the_file),
		cmocka_unit_test(nul_byte_refused),
		cmocka_unit_test(limits_refuse_the_file),
		cmocka_unit_test(user_name_of_65535_bytes),
		cmocka_unit_test_setup_teardown(load_names_the_path, make_dir, remove_dir),
		cmocka_unit_test_setup_teardown(files_from_mosquitto_passwd, make_dir, remove_dir),
		cmocka_unit_test_setup_teardown(tool_batch_create_add_change_delete, make_dir, remove_dir),
		cmocka_unit_test_setup_teardown(tool_prompts_twice, make_dir, remove_dir),
		cmocka_unit_test_setup_teardown(tool_prompts_on_a_terminal_without_echo, make_dir, remove_dir),
		cmocka_unit_test_setup_teardown(tool_keeps_owner_and_group, make_dir, remove_dir),
		cmocka_unit_test_setup_teardown(tool_refuses_bad_use, make_dir, remove_dir),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
