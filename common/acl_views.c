/*
 * acl_views.c - a worker's views of the ACL (acl.h, "A worker's side"):
 * the patterns of the generation in force and the topic rules its views
 * share.
 *
 * Owns the store (struct acl_views): the templates last given (counted:
 * a view not yet substituted keeps its own generation's alive, so that a
 * reload never puts new patterns into an old view) and an index of the
 * shared parts of views (struct acl_shared) by the bytes they were
 * decoded from. A shared part is counted by its views and freed with the
 * last of them; the index lists only parts made since the templates in
 * force came, so that no view shares with one of another generation or
 * of another sender.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acl_int.h"
#include "keyhash.h"

struct acl_shared {
	UT_hash_handle hh;
	struct acl_views *index;          /* the store that lists it; NULL once unlisted */
	unsigned refs;                    /* views made from it */
	uint64_t generation;
	bool built;                       /* topics' trie */
	struct acl_section topics;
	struct acl_templates *templates;  /* counted; NULL: no patterns apply */
	size_t len;
	uint8_t bytes[];                  /* what it was decoded from: its key */
};

struct acl_views {
	struct acl_templates *templates;  /* of the generation in force; NULL: none yet */
	struct acl_shared *by_bytes;
};

static void templates_unref(struct acl_templates *t)
{
	if (t && --t->refs == 0) {
		acl_section_free(&t->rules);
		free(t);
	}
}

struct acl_views *acl_views_new(void)
{
	return calloc(1, sizeof(struct acl_views));
}

/* Every shared part leaves the index; those views still use stay with them. */
static void unlist_all(struct acl_views *v)
{
	struct acl_shared *s, *tmp;

	HASH_ITER(hh, v->by_bytes, s, tmp) {
		HASH_DEL(v->by_bytes, s);
		s->index = NULL;
	}
}

void acl_views_forget(struct acl_views *v)
{
	unlist_all(v);
	templates_unref(v->templates);
	v->templates = NULL;
}

void acl_views_free(struct acl_views *v)
{
	if (!v)
		return;
	acl_views_forget(v);
	free(v);
}

int acl_views_set_patterns(struct acl_views *v, const void *buf, size_t len, char *err,
			   size_t errlen)
{
	struct acl_templates *t = calloc(1, sizeof(*t));

	acl_views_forget(v);
	if (!t) {
		snprintf(err, errlen, "ACL bytes: out of memory");
		return -1;
	}
	if (acl_templates_decode(buf, len, t, err, errlen) < 0) {
		free(t);
		return -1;
	}
	t->refs = 1;
	v->templates = t;
	return 0;
}

/* A shared part decoded from buf, listed; NULL with a message in err. */
static struct acl_shared *shared_new(struct acl_views *v, const void *buf, size_t len, char *err,
				     size_t errlen)
{
	struct acl_shared *s = calloc(1, sizeof(*s) + len);
	bool patterns;

	if (!s) {
		snprintf(err, errlen, "ACL bytes: out of memory");
		return NULL;
	}
	if (acl_view_decode(buf, len, &s->generation, &patterns, &s->topics, err, errlen) < 0) {
		free(s);
		return NULL;
	}
	if (patterns && (!v->templates || v->templates->generation != s->generation)) {
		snprintf(err, errlen, "a view of generation %llu, whose patterns did not come",
			 (unsigned long long)s->generation);
		acl_section_free(&s->topics);
		free(s);
		return NULL;
	}
	if (patterns) {
		s->templates = v->templates;
		s->templates->refs++;
	}
	memcpy(s->bytes, buf, len);
	s->len = len;
	s->index = v;
	HASH_ADD_KEYPTR(hh, v->by_bytes, s->bytes, s->len, s);
	return s;
}

struct acl_client *acl_views_client(struct acl_views *v, const void *buf, size_t len,
				    const char *user, size_t ulen, const char *client_id,
				    size_t clen, char *err, size_t errlen)
{
	struct acl_shared *s;
	struct acl_client *c;

	HASH_FIND(hh, v->by_bytes, buf, len, s);
	if (!s && !(s = shared_new(v, buf, len, err, errlen)))
		return NULL;
	c = acl_view_new(&s->topics, s->templates ? &s->templates->rules : NULL, user, ulen,
			 client_id, clen);
	if (!c) {
		if (s->refs == 0) {
			s->refs = 1;
			acl_shared_unref(s);
		}
		snprintf(err, errlen, "ACL bytes: out of memory");
		return NULL;
	}
	c->shared = s;
	s->refs++;
	return c;
}

uint64_t acl_client_generation(const struct acl_client *c)
{
	return c->shared ? c->shared->generation : 0;
}

bool acl_shared_build(struct acl_shared *s)
{
	if (!s->built && acl_section_build(&s->topics) == 0)
		s->built = true;
	return s->built;
}

void acl_shared_unref(struct acl_shared *s)
{
	if (--s->refs > 0)
		return;
	if (s->index)
		HASH_DEL(s->index->by_bytes, s);
	acl_section_free(&s->topics);
	templates_unref(s->templates);
	free(s);
}
