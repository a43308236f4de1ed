/*
 * router_grants.c - who the auth role accepted, for the router to believe
 * a CONNECT record only when the auth role vouches for it.
 *
 * Owns the grants (struct router_grant): the auth role sends one per
 * accepted CONNECT (its connection id, the user name it is known by and,
 * for a token with lists, its rules) before it answers the worker, so the
 * grant is in the channel before the CONNECT record can be in a ring.
 * While grants are required (an ACL is in force), a CONNECT record is
 * taken only when a grant of its connection names its user name: a
 * worker, assumed compromised, cannot claim another user's name and
 * rights. The table is bounded: a grant no CONNECT took is forgotten after
 * ROUTER_GRANT_TTL_MS, and the oldest first when it is full.
 */
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "router_int.h"

#define ROUTER_GRANT_TTL_MS 60000
#define ROUTER_GRANTS_MIN 1024

static void grant_free(struct router *r, struct router_grant *g)
{
	HASH_DEL(r->grants, g);
	*g->prev_next = g->next;
	if (g->next)
		g->next->prev_next = g->prev_next;
	else
		r->grant_tail = g->prev_next;
	r->n_grants--;
	free(g->rules);
	free(g);
}

/* What one grant table may hold: every CONNECT the workers may hold for the auth role, twice. */
static size_t grants_max(const struct router *r)
{
	size_t n = (size_t)r->nworkers * (size_t)MAX(r->cfg->auth_max_pending, 1) * 2;

	return MAX(n, ROUTER_GRANTS_MIN);
}

void router_set_grants(struct router *r, bool required, router_grant_fetch_fn *fetch, void *arg)
{
	r->grants_required = required;
	r->grant_fetch = fetch;
	r->grant_fetch_arg = arg;
}

int router_grant(struct router *r, conn_id_t conn, const char *user, size_t ulen,
		 const void *rules, size_t rlen)
{
	struct router_grant *g;

	HASH_FIND(hh, r->grants, &conn, sizeof(conn), g);
	if (g)
		grant_free(r, g);            /* sent again: the later one holds */
	while (r->n_grants >= grants_max(r))
		grant_free(r, r->grant_head);
	g = malloc(sizeof(*g) + ulen + 1);
	if (!g)
		return -1;
	*g = (struct router_grant){ .conn = conn, .at_ms = r->now_ms, .user_len = ulen };
	memcpy(g->user, user, ulen);
	g->user[ulen] = '\0';
	if (rlen > 0) {
		g->rules = malloc(rlen);
		if (!g->rules) {
			free(g);
			return -1;
		}
		memcpy(g->rules, rules, rlen);
		g->rules_len = rlen;
	}
	HASH_ADD(hh, r->grants, conn, sizeof(g->conn), g);
	if (!r->grant_tail)
		r->grant_tail = &r->grant_head;
	g->prev_next = r->grant_tail;
	*g->prev_next = g;
	r->grant_tail = &g->next;
	r->n_grants++;
	return 0;
}

static struct router_grant *grant_find(struct router *r, conn_id_t conn)
{
	struct router_grant *g;

	HASH_FIND(hh, r->grants, &conn, sizeof(conn), g);
	return g;
}

bool router_grant_vouches(struct router *r, conn_id_t conn, const char *user, size_t ulen)
{
	struct router_grant *g;

	if (!r->grants_required)
		return true;
	if (!(g = grant_find(r, conn)) && r->grant_fetch) {
		r->grant_fetch(r->grant_fetch_arg);
		g = grant_find(r, conn);
	}
	return g && g->user_len == ulen && memcmp(g->user, user, ulen) == 0;
}

void router_grant_take_rules(struct router *r, conn_id_t conn, uint8_t **rules, size_t *len)
{
	struct router_grant *g = grant_find(r, conn);

	*rules = NULL;
	*len = 0;
	if (!g)
		return;
	*rules = g->rules;
	*len = g->rules_len;
	g->rules = NULL;
	grant_free(r, g);
}

void router_grants_expire(struct router *r)
{
	while (r->grant_head && r->now_ms - r->grant_head->at_ms > ROUTER_GRANT_TTL_MS)
		grant_free(r, r->grant_head);
}

void router_grants_free(struct router *r)
{
	while (r->grant_head)
		grant_free(r, r->grant_head);
}
