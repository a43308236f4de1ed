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
 * rights. The record takes its grant out of the table (the token's rules
 * go with the CONNECT, router_session.c).
 *
 * The table is bounded per worker (grants_per_worker): each worker's
 * connections have a share, and a full share forgets its own oldest
 * grant, so a worker that makes the auth role grant CONNECTs it never
 * sends can push out only its own. A grant no CONNECT took is forgotten
 * after ROUTER_GRANT_TTL_MS.
 */
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "router_int.h"

#define ROUTER_GRANT_TTL_MS 60000
#define ROUTER_GRANTS_MIN 1024       /* all workers' shares together hold at least this many */

static void grant_free(struct router *r, struct router_grant *g)
{
	struct router_grant_share *sh = &r->grant_share[conn_id_worker(g->conn)];

	HASH_DEL(r->grants, g);
	*g->prev_next = g->next;
	if (g->next)
		g->next->prev_next = g->prev_next;
	else
		sh->tail = g->prev_next;
	sh->n--;
	free(g->rules);
	free(g);
}

/*
 * What one worker's share may hold: every CONNECT the worker may hold for
 * the auth role (auth.max_pending), twice, for verdicts in flight while
 * their records are on the way; and no less than an even part of
 * ROUTER_GRANTS_MIN.
 */
static size_t grants_per_worker(const struct router *r)
{
	size_t n = (size_t)MAX(r->cfg->auth_max_pending, 1) * 2;
	size_t floor = (ROUTER_GRANTS_MIN + r->nworkers - 1) / r->nworkers;

	return MAX(n, floor);
}

void router_set_grants(struct router *r, bool required, router_grant_fetch_fn *fetch, void *arg)
{
	r->grants_required = required;
	r->grant_fetch = fetch;
	r->grant_fetch_arg = arg;
}

static struct router_grant *grant_new(conn_id_t conn, uint64_t now_ms, const char *user,
				      size_t ulen, bool token, const void *rules, size_t rlen)
{
	struct router_grant *g = malloc(sizeof(*g) + ulen + 1);

	if (!g)
		return NULL;
	*g = (struct router_grant){ .conn = conn, .at_ms = now_ms, .user_len = ulen,
				    .token = token };
	memcpy(g->user, user, ulen);
	g->user[ulen] = '\0';
	if (token && rlen > 0) {
		g->rules = malloc(rlen);
		if (!g->rules) {
			free(g);
			return NULL;
		}
		memcpy(g->rules, rules, rlen);
		g->rules_len = rlen;
	}
	return g;
}

int router_grant(struct router *r, conn_id_t conn, const char *user, size_t ulen, bool token,
		 const void *rules, size_t rlen)
{
	unsigned w = conn_id_worker(conn);
	struct router_grant_share *sh;
	struct router_grant *g;

	if (w >= r->nworkers) {
		log_warn("router: a grant for a connection of worker %u, which does not exist; dropped",
			 w);
		return -1;
	}
	sh = &r->grant_share[w];
	HASH_FIND(hh, r->grants, &conn, sizeof(conn), g);
	if (g)
		grant_free(r, g);            /* sent again: the later one holds */
	while (sh->n >= grants_per_worker(r))
		grant_free(r, sh->head);
	if (!(g = grant_new(conn, r->now_ms, user, ulen, token, rules, rlen))) {
		log_error("router: out of memory keeping a grant: its CONNECT will be refused");
		return -1;
	}
	HASH_ADD(hh, r->grants, conn, sizeof(g->conn), g);
	if (!g->hh.tbl) {
		log_error("router: out of memory keeping a grant: its CONNECT will be refused");
		free(g->rules);
		free(g);
		return -1;
	}
	if (!sh->tail)
		sh->tail = &sh->head;
	g->prev_next = sh->tail;
	*g->prev_next = g;
	sh->tail = &g->next;
	sh->n++;
	return 0;
}

static struct router_grant *grant_find(struct router *r, conn_id_t conn)
{
	struct router_grant *g;

	HASH_FIND(hh, r->grants, &conn, sizeof(conn), g);
	return g;
}

bool router_grant_vouches(struct router *r, conn_id_t conn, const char *user, size_t ulen,
			  struct router_grant **gp)
{
	struct router_grant *g = grant_find(r, conn);

	if (!g && r->grants_required && r->grant_fetch) {
		r->grant_fetch(r->grant_fetch_arg);
		g = grant_find(r, conn);
	}
	if (g && (g->user_len != ulen || memcmp(g->user, user, ulen) != 0))
		g = NULL;
	*gp = g;
	return g || !r->grants_required;
}

void router_grant_used(struct router *r, struct router_grant *g)
{
	if (g)
		grant_free(r, g);
}

void router_grants_expire(struct router *r)
{
	for (unsigned w = 0; w < r->nworkers; w++) {
		struct router_grant_share *sh = &r->grant_share[w];

		while (sh->head && r->now_ms - sh->head->at_ms > ROUTER_GRANT_TTL_MS)
			grant_free(r, sh->head);
	}
}

void router_grants_free(struct router *r)
{
	for (unsigned w = 0; w < r->nworkers; w++)
		while (r->grant_share[w].head)
			grant_free(r, r->grant_share[w].head);
}
