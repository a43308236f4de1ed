/*
 * acl_int.h - what the ACL's files share (common/acl.c,
 * common/acl_codec.c, common/acl_views.c): the parsed file, a client's
 * view, a worker's patterns, and the functions that fill a section of
 * rules, build its trie and decode the parts of a worker's views.
 * Nothing outside them includes this; include/acl.h is the interface.
 */
#ifndef IOTD_ACL_INT_H
#define IOTD_ACL_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "acl.h"

#define BIT_READ ACL_READ
#define BIT_WRITE ACL_WRITE
#define BIT_DENY 4
#define ACL_NAME_MAX 65535
#define ACL_FILTER_MAX 65535

struct acl_node {
	struct acl_node **kids;   /* literal levels, sorted by (len, bytes) */
	struct acl_node *plus;
	uint32_t nkids, cap;
	uint32_t len;
	uint8_t bits;             /* rules whose filter ends at this level */
	uint8_t hash_bits;        /* rules whose filter ends with "/#" here ("#" at the root) */
	char level[];
};

struct acl_rule {
	char *filter;
	uint32_t len;
	uint8_t access;           /* ACL_READ | ACL_WRITE; 0: deny */
};

/* Rules in file order: the list answers SUBSCRIBE, the trie each message. */
struct acl_section {
	char *name;               /* NULL: clients without a user name, or a list view */
	uint32_t name_len;
	struct acl_rule *rules;
	size_t n, cap;
	struct acl_node *trie;
};

struct acl {
	struct acl_section anon;
	struct acl_section *users; /* sorted by name, one section per name */
	size_t nusers, cap_users;
	struct acl_section patterns;
};

#define ACL_MEMO_SLOTS 8
#define ACL_MEMO_TOPIC 60

/* One remembered answer (acl_client_may): len 0 is an empty slot. */
struct acl_memo {
	uint16_t len;
	uint8_t access;
	bool yes;
	char topic[ACL_MEMO_TOPIC];
};

/* The patterns of one generation of the ACL, unsubstituted, as a worker holds them: counted. */
struct acl_templates {
	unsigned refs;
	uint64_t generation;
	struct acl_section rules;
};

struct acl_shared;

/*
 * A view: what a connection or a session holds for its client, so kept
 * small; its rule lists are allocated apart, when it has any of its own.
 */
struct acl_client {
	const struct acl_section *topics; /* the client's topic rules: acl's, shared's, or own */
	struct acl_section *own;          /* acl_client_from_lists, acl_client_decode; NULL: none */
	struct acl_section *patterns;     /* substituted for this client; NULL: none (yet) */
	/*
	 * Patterns are substituted at the view's first use, not when it is
	 * made (acl_view_new): until then it keeps the patterns (the ACL's,
	 * or a worker's templates) and the names that go into them (who).
	 */
	const struct acl_section *pending;
	struct acl_memo *memo;            /* ACL_MEMO_SLOTS answers, taken at first use */
	/* A worker's view (acl_views_client): its topics and templates, counted; NULL: none. */
	struct acl_shared *shared;
	bool patterns_refused;            /* its name or id would widen a pattern */
	bool who_user;                    /* who holds a user name (else anonymous) */
	bool built;                       /* own's and patterns' tries (acl_client_check) */
	char who[];                       /* with patterns: user, NUL, client id, NUL */
};

/*
 * A view of topics (NULL: none) and patterns (NULL or empty: none) for a
 * client (user NULL: none); both borrowed, to outlive the view. NULL when
 * out of memory.
 */
struct acl_client *acl_view_new(const struct acl_section *topics, const struct acl_section *patterns,
				const char *user, size_t ulen, const char *client_id, size_t clen);
/* The topic rules of a user (NULL: the anonymous section); NULL when the file has none for it. */
const struct acl_section *acl_user_section(const struct acl *acl, const char *user, size_t ulen);
/* Would these names widen a pattern they are put into (user NULL: none)? */
bool acl_names_widen(const char *user, size_t ulen, const char *client_id, size_t clen);

/* Substitute the view's patterns if not yet done; false when out of memory (the view allows nothing). */
bool acl_client_ready(struct acl_client *c);
/* Append a rule (filter copied, not checked); 0, or -1 when out of memory. */
int acl_section_add(struct acl_section *s, const char *f, size_t len, uint8_t access);
/* Build the trie of the section's rules; 0, or -1 when out of memory. */
int acl_section_build(struct acl_section *s);
void acl_section_free(struct acl_section *s);
/* The order of user sections: memcmp, then the shorter first. */
int acl_name_cmp(const char *a, size_t alen, const char *b, size_t blen);

/* acl_codec.c: a worker's parts (the formats: acl.h). 0, or -1 with a message in err. */
int acl_templates_decode(const void *buf, size_t len, struct acl_templates *t, char *err,
			 size_t errlen);
int acl_view_decode(const void *buf, size_t len, uint64_t *generation, bool *patterns,
		    struct acl_section *topics, char *err, size_t errlen);

/* acl_views.c: what a view made by acl_views_client holds of its worker's store. */
bool acl_shared_build(struct acl_shared *s);       /* its topics' trie; false when out of memory */
void acl_shared_unref(struct acl_shared *s);

#endif
