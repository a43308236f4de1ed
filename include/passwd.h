/*
 * passwd.h - the password file, in Mosquitto's format, and checking a
 * user's password against it.
 *
 * The file is read as Mosquitto's own is: one "user:hash" per line, blank
 * lines and lines whose first non-blank character is '#' skipped, blanks
 * around the user and the hash ignored, CRLF line ends accepted. Three
 * hash forms are understood:
 *
 *   $7$<iterations>$<salt>$<hash>   Mosquitto 2 (mosquitto_passwd's default):
 *                                   PBKDF2-HMAC-SHA512 of the password
 *   $6$<salt>$<hash>                Mosquitto 1.x (mosquitto_passwd -H sha512):
 *                                   SHA-512 of the password then the salt
 *   $argon2id$v=19$m=..,t=..,p=..$<salt>$<hash>
 *                                   iotd's own (iotd-passwd), libargon2's
 *                                   encoded form
 *   $scram-sha-256$<iterations>$<salt>$<StoredKey>$<ServerKey>
 *                                   iotd's own (iotd-passwd -s): a SCRAM
 *                                   verifier (RFC 5802, RFC 7677), for MQTT
 *                                   5's enhanced authentication and plain
 *                                   passwords alike
 *
 * Salts and hashes are base64: padded in the first two forms (the hash is
 * 64 bytes, the salt 1 to 64, mosquitto_passwd writes 12) and in SCRAM's
 * (salt 1 to 64 bytes, each key 32, at least 4096 iterations), unpadded in
 * Argon2's (salt 8 to 64 bytes, hash 16 to 64). A line that is none of
 * these refuses the whole file, with its line number in the message: a
 * file half understood would lock out some users without a word.
 *
 * A user named on two lines: the later line wins, as in Mosquitto 2
 * (its table keeps both and finds the one added last).
 *
 * Verification costs the same whether the user exists or not: a user who
 * is not in the file has their password hashed against a stand-in entry
 * of the same kind as the file's first one, so the time of an answer does
 * not tell which user names exist.
 */
#ifndef IOTD_PASSWD_H
#define IOTD_PASSWD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bounds on the file and on what one entry may cost to verify. */
struct passwd_limits {
	size_t max_bytes;                /* the whole file */
	size_t max_line;                 /* one line, its end of line excluded */
	size_t max_entries;              /* user lines */
	uint32_t max_pbkdf2_iterations;  /* $7$ */
	uint32_t max_argon2_t;           /* Argon2 passes */
	uint32_t max_argon2_m_kib;       /* Argon2 memory, KiB */
	uint32_t max_argon2_p;           /* Argon2 lanes */
};

/*
 * Defaults: user names up to MQTT's 65535 bytes; 100,000 users; a $7$ entry
 * at most 10 million iterations and an Argon2 entry at most 1 GiB, 64
 * passes and 16 lanes, so that no single line can stall every connect.
 */
#define PASSWD_LIMITS_DEFAULT { \
	.max_bytes = 64u << 20, .max_line = 65535 + 512, .max_entries = 100000, \
	.max_pbkdf2_iterations = 10000000, .max_argon2_t = 64, \
	.max_argon2_m_kib = 1u << 20, .max_argon2_p = 16 }

enum passwd_result {
	PASSWD_OK,     /* the user exists and the password is theirs */
	PASSWD_BAD,    /* no such user, or another password */
	PASSWD_ERROR,  /* could not compute (out of memory): neither yes nor no */
};

struct passwd_table;

/*
 * Parse a password file's bytes. Returns 0 with *out set, or -1 with a
 * message in err ("line 3: no ':' between user and hash").
 */
int passwd_parse(const char *buf, size_t len, const struct passwd_limits *lim,
		 struct passwd_table **out, char *err, size_t errlen);

/* Read and parse the file at path; messages start with the path. */
int passwd_load(const char *path, const struct passwd_limits *lim,
		struct passwd_table **out, char *err, size_t errlen);

void passwd_free(struct passwd_table *t);

/* Users in the table (each named once). */
size_t passwd_count(const struct passwd_table *t);

/*
 * Is password (pwlen bytes, any bytes) user's? The comparison of hashes
 * takes constant time, and an unknown user costs one stand-in hash.
 */
enum passwd_result passwd_verify(const struct passwd_table *t, const char *user, size_t ulen,
				 const void *password, size_t pwlen);

/*
 * New Argon2id entries. The broker hashes at every connect, so the defaults
 * are OWASP's minimum for Argon2id (19 MiB, 2 passes, 1 lane) rather than
 * RFC 9106's 64 MiB and 3 passes: measured on one core, about a fifth of
 * the time (50 ms against 250) and under a third of the memory per connect
 * in flight. iotd-passwd -m and -t raise them; verification reads each
 * entry's own parameters.
 */
#define PASSWD_ARGON2_T 2
#define PASSWD_ARGON2_M_KIB 19456
#define PASSWD_ARGON2_P 1
#define PASSWD_ARGON2_SALT 16        /* bytes, from RAND_bytes */
#define PASSWD_ARGON2_HASH 32        /* bytes */
#define PASSWD_HASH_MAX 256          /* room for any hash passwd_hash_argon2id writes */

struct passwd_argon2_params {
	uint32_t t_cost;   /* passes */
	uint32_t m_kib;    /* memory, KiB; at least 8 per lane */
	uint32_t lanes;
};

/*
 * Write a new "$argon2id$v=19$m=..,t=..,p=..$salt$hash" for password into
 * out (NUL-terminated). Returns 0, or -1 (bad parameters, no randomness,
 * out of memory, out too small).
 */
int passwd_hash_argon2id(const void *password, size_t pwlen,
			 const struct passwd_argon2_params *p, char *out, size_t outlen);

/*
 * New SCRAM-SHA-256 entries (iotd-passwd -s): a 16-byte salt and 4096
 * iterations (RFC 7677's minimum) unless told more.
 */
#define PASSWD_SCRAM_ITERATIONS 4096
#define PASSWD_SCRAM_SALT 16

struct scram_verifier;

/*
 * user's SCRAM verifier: true when the user has a $scram-sha-256$ entry.
 * Otherwise (no such user, or another kind of hash) false, with a
 * stand-in that looks the same to a client (a salt made from the name
 * under a key hashed from the file's bytes, so the same across restarts
 * while the file is unchanged; the first SCRAM entry's iterations, else
 * 4096) and that no proof matches: an exchange with it fails as with a wrong password.
 */
bool passwd_scram_verifier(const struct passwd_table *t, const char *user, size_t ulen,
			   struct scram_verifier *v);

/* Write a new "$scram-sha-256$..." for password into out. Returns 0, or -1. */
int passwd_hash_scram(const void *password, size_t pwlen, uint32_t iterations, char *out,
		      size_t outlen);

#endif
