/*
 * acl.h - the ACL file, in Mosquitto's format, and what it lets a client
 * read and write.
 *
 * The file, one rule per line:
 *
 *   user NAME                          the lines after it are NAME's
 *   topic [read|write|readwrite|deny] FILTER
 *   pattern [read|write|readwrite|deny] FILTER
 *
 * No access word means readwrite ("topic read" alone is the filter "read",
 * as in Mosquitto). topic lines before the first user line are the rules
 * of clients without a user name; after it, of that user (a name may have
 * several sections). pattern lines apply to every client wherever they
 * stand, with "%u" replaced by the client's user name and "%c" by its
 * client id; a pattern with %u does not apply to a client without a user
 * name. '#' starts a comment line; blank lines, blanks around words and
 * CRLF ends are fine. Anything else refuses the whole file with its line
 * number: an unknown keyword, an unknown access word, a filter that is
 * not a valid MQTT filter, a user line without a name.
 *
 * What a client may do with a topic, as Mosquitto 2 decides it:
 *   1. a deny among its topic rules that matches: refused;
 *   2. else an allow among them that matches with that access: allowed;
 *   3. else, if its user name or client id holds '+', '#' or '/':
 *      refused (substituted into a pattern, such a name would widen it:
 *      "%c/#" for the id "a/#" or "+" reaches other clients' topics;
 *      Mosquitto 2 checks '+' and '#' alone, 1.x '/' as well);
 *   4. else a matching pattern deny: refused; a matching pattern allow
 *      with that access: allowed;
 *   5. anything else: refused (once there is an ACL, what it does not
 *      allow is denied).
 * Wildcards in the first level of a rule never match a topic that starts
 * with '$' (MQTT 4.7.2).
 *
 * Checking is done on a client's view (acl_client_new): its topic rules
 * are in a trie built when the file is read, its patterns, substituted,
 * in a trie of its own, both made at its first use; a check walks
 * the topic's levels down both, so its cost grows with the topic's depth
 * and not with the number of rules.
 */
#ifndef IOTD_ACL_H
#define IOTD_ACL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct recw;

enum acl_access {
	ACL_READ = 1,   /* receive a message published to the topic */
	ACL_WRITE = 2,  /* publish to the topic */
};

struct acl_limits {
	size_t max_bytes;  /* the whole file */
	size_t max_line;   /* one line, its end of line excluded */
	size_t max_rules;  /* topic and pattern lines */
};

#define ACL_LIMITS_DEFAULT { .max_bytes = 16u << 20, .max_line = 65535 + 32, .max_rules = 100000 }

/* Levels of one filter in the file or a list (a bound on the trie's depth). */
#define ACL_MAX_LEVELS 128

struct acl;
struct acl_client;

/* Parse an ACL file's bytes. Returns 0 with *out set, or -1 with "line N: ..." in err. */
int acl_parse(const char *buf, size_t len, const struct acl_limits *lim, struct acl **out,
	      char *err, size_t errlen);

/* Read and parse the file at path; messages start with the path. */
int acl_load(const char *path, const struct acl_limits *lim, struct acl **out,
	     char *err, size_t errlen);

void acl_free(struct acl *acl);

/*
 * A client's view of acl: user NULL for a client without a user name.
 * Borrows acl's topic rules and patterns (acl must outlive it); NULL when
 * out of memory. The patterns are substituted at the view's first use
 * and its tries built at its first check, so a view that is never asked
 * anything costs little more than the names it keeps.
 */
struct acl_client *acl_client_new(const struct acl *acl, const char *user, size_t ulen,
				  const char *client_id, size_t clen);

/*
 * A view from two lists of filters (a token's claims): read grants
 * ACL_READ, write ACL_WRITE, nothing else is allowed. The filters must be
 * valid (acl_filter_valid); NULL when out of memory.
 */
struct acl_client *acl_client_from_lists(const char *const *read, size_t nread,
					 const char *const *write, size_t nwrite);

void acl_client_free(struct acl_client *c);

/*
 * May the client do access (ACL_READ or ACL_WRITE) on this topic name?
 * The view's tries are built at its first check (no for all, when out of
 * memory).
 */
bool acl_client_check(struct acl_client *c, const char *topic, size_t len,
		      enum acl_access access);

/*
 * The same answer, remembered: the view keeps its last answers for a few
 * short topics (ACL_MEMO_SLOTS, a topic of at most ACL_MEMO_TOPIC bytes),
 * so a client that writes or reads the same topics again and again costs
 * a hash and a compare per message instead of a walk of its tries. The
 * memory is taken at the first call (none for a client that never
 * publishes or receives); without it the answer is acl_client_check's.
 */
bool acl_client_may(struct acl_client *c, const char *topic, size_t len,
		    enum acl_access access);

/*
 * May the client subscribe to this (valid) filter: could it match any
 * topic the client may read? Decided conservatively, towards yes: the
 * filter is granted when it overlaps some rule that allows reading and
 * that overlap does not lie wholly inside one deny rule that applies to
 * it. A filter whose readable part two deny rules cover only together is
 * still granted; its messages are then refused one by one, as every
 * delivery is checked with acl_client_check. A refused filter is answered
 * with SUBACK 0x80.
 */
bool acl_client_may_subscribe(struct acl_client *c, const char *filter, size_t len);

/* One check without keeping a view (tests, tools): user NULL for none. */
bool acl_check(const struct acl *acl, const char *user, const char *client_id,
	       const char *topic, enum acl_access access);

/*
 * The ACL and a client's view as bytes (common/acl_codec.c): the auth role,
 * which alone reads the file, sends the whole ACL to the router; to each
 * worker the patterns once per generation of the ACL, and in each verdict
 * the client's topic rules (a view), or a token's lists (a client). Both
 * ends are on one host: numbers are in host order (rec.h's field writer
 * and reader).
 *
 *   acl:      u32 ACL_WIRE_ACL, rules (anonymous), u32 nusers,
 *             nusers x { str name, rules } (names strictly ascending,
 *             1..65535 bytes, no NUL), rules (patterns, unsubstituted)
 *   client:   u32 ACL_WIRE_CLIENT, u8 patterns_refused (0 or 1),
 *             rules (its topic rules: its section's, or a token's lists),
 *             rules (its patterns, substituted; none when refused)
 *   patterns: u32 ACL_WIRE_PATTERNS, u64 generation (from 1),
 *             rules (the patterns, unsubstituted)
 *   view:     u32 ACL_WIRE_VIEW, u64 generation (of the ACL it is made
 *             from), u8 patterns (1: that generation's patterns apply to
 *             the client, to be substituted by the receiver; 0: none do),
 *             rules (its topic rules: its user's section, or the
 *             anonymous one; none when the file has no section for it)
 *   rules:    u32 n, n x { u8 access (0 deny, 1 read, 2 write, 3 readwrite),
 *             str filter (acl_filter_valid; a client's substituted
 *             pattern may also be empty, as "%c" is for an empty id) }
 *   str:      u16 length, bytes
 *
 * Rules keep the order of the file (the decision does not depend on it).
 * Decoding trusts nothing: every count is bounded by the bytes left, every
 * name and filter is checked, nothing may follow the end; an ACL also
 * stays within lim (max_bytes for the whole, max_rules).
 */
#define ACL_WIRE_ACL 0x31414c41u       /* "ALA1" in little-endian memory */
#define ACL_WIRE_CLIENT 0x31434c41u    /* "ALC1" */
#define ACL_WIRE_PATTERNS 0x31504c41u  /* "ALP1" */
#define ACL_WIRE_VIEW 0x31564c41u      /* "ALV1" */

/* Append the whole ACL to w. 0, or -1 when out of memory (w->oom). */
int acl_encode(const struct acl *acl, struct recw *w);
/* Rebuild an ACL from acl_encode()'s bytes. 0 with *out set, or -1 with a message in err. */
int acl_decode(const void *buf, size_t len, const struct acl_limits *lim, struct acl **out,
	       char *err, size_t errlen);
/*
 * Append the view to w: what acl_client_check and acl_client_may_subscribe
 * consult for this client, and nothing of other clients'. 0, or -1 when
 * out of memory or when a substituted pattern is no filter (longer than
 * 65535 bytes, or a name with a NUL put in it): such a client cannot be
 * given a view.
 */
int acl_client_encode(struct acl_client *c, struct recw *w);
/*
 * A view from acl_client_encode()'s bytes that answers every check as the
 * encoded one did (it owns its rules). NULL with a message in err.
 */
struct acl_client *acl_client_decode(const void *buf, size_t len, char *err, size_t errlen);

/*
 * A worker's side (common/acl_views.c). A view in full repeats every
 * pattern, substituted, for every client: a worker is instead given the
 * patterns once per generation of the ACL (acl_patterns_encode) and, per
 * client, its topic rules and whether the patterns apply
 * (acl_view_encode); it makes the view itself (acl_views_client),
 * borrowing the patterns and substituting the client's names into them at
 * the view's first use, as acl_client_new does. Views made from the same
 * bytes share one decoded copy of their topic rules and its trie.
 */

/* The patterns of acl, for views of this generation. 0, or -1 when out of memory. */
int acl_patterns_encode(const struct acl *acl, uint64_t generation, struct recw *w);
/*
 * A client's view of acl (user NULL: none) as a worker is given it: 1
 * when the patterns apply to it (the worker needs this generation's), 0
 * when none do, -1 when out of memory.
 */
int acl_view_encode(const struct acl *acl, uint64_t generation, const char *user, size_t ulen,
		    const char *client_id, size_t clen, struct recw *w);

/* A worker's patterns and the topic rules its views share. */
struct acl_views;

struct acl_views *acl_views_new(void);
/* Views made from it may outlive it: each keeps what it shares. */
void acl_views_free(struct acl_views *v);
/*
 * acl_patterns_encode()'s bytes: the patterns for views of their
 * generation from now on. 0, or -1 with a message in err (then no views
 * that need patterns can be made until the next).
 */
int acl_views_set_patterns(struct acl_views *v, const void *buf, size_t len, char *err,
			   size_t errlen);
/* The patterns and what is shared are forgotten (a new sender: its generations start again). */
void acl_views_forget(struct acl_views *v);
/*
 * A client's view (user NULL: none) from acl_view_encode()'s bytes: its
 * topic rules shared with every view of the same bytes, the patterns in
 * force (which must be of the view's generation when it needs them)
 * substituted at its first use. NULL with a message in err.
 */
struct acl_client *acl_views_client(struct acl_views *v, const void *buf, size_t len,
				    const char *user, size_t ulen, const char *client_id,
				    size_t clen, char *err, size_t errlen);
/* The generation of the ACL a view of acl_views_client() was made from; 0 for any other view. */
uint64_t acl_client_generation(const struct acl_client *c);

/* An MQTT topic filter: 1..65535 bytes, '+' and '#' alone in their level, '#' last; no NUL. */
bool acl_filter_valid(const char *f, size_t len);

#endif
