/*
 * acl_int.h - what the ACL's two files share (common/acl.c,
 * common/acl_codec.c): the parsed file, a client's view, and the
 * functions that fill a section of rules and build its trie. Nothing
 * outside them includes this; include/acl.h is the interface.
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

struct acl_client {
	const struct acl_section *topics; /* the client's topic rules: acl's, or own */
	struct acl_section own;           /* acl_client_from_lists, acl_client_decode */
	struct acl_section patterns;      /* substituted for this client */
	bool patterns_refused;            /* its name or id would widen a pattern */
};

/* Append a rule (filter copied, not checked); 0, or -1 when out of memory. */
int acl_section_add(struct acl_section *s, const char *f, size_t len, uint8_t access);
/* Build the trie of the section's rules; 0, or -1 when out of memory. */
int acl_section_build(struct acl_section *s);
void acl_section_free(struct acl_section *s);
/* The order of user sections: memcmp, then the shorter first. */
int acl_name_cmp(const char *a, size_t alen, const char *b, size_t blen);

#endif
