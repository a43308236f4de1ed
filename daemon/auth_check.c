/*
 * auth_check.c - the auth role's decisions: the files it holds and the
 * verdict on one CONNECT's credentials, or on one step of its SCRAM-SHA-256
 * exchange (scram.h; the secret, the user's verifier, never leaves here).
 *
 * Owns the files in force (struct auth_creds): the password file, the JWT
 * key file and the ACL file, read together as one transaction (all of
 * them parse or none is taken) and counted, so that a reload replaces
 * them while threads still decide with the old ones. auth_decide() runs
 * on the pool's threads and touches nothing but its job and the files,
 * which are read-only once loaded.
 *
 * The client's rules in a verdict: a JWT's filter lists
 * (acl_client_encode's bytes), made here when the token has either list
 * claim; else its view of the ACL file (acl_view_encode's: its topic
 * rules, the patterns being the worker's already), made by auth.c as the
 * verdict is sent (auth_rules_from_acl), from the ACL in force then; else
 * nothing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "acl.h"
#include "addrlimit.h"
#include "auth.h"
#include "auth_int.h"
#include "jwt.h"
#include "log.h"
#include "mqtt.h"
#include "passwd.h"
#include "rec.h"

/* ---- the files ---- */

int auth_creds_load(const struct iotd_config *cfg, struct auth_creds **out, char *err,
		    size_t errlen)
{
	static const struct passwd_limits pw_lim = PASSWD_LIMITS_DEFAULT;
	static const struct acl_limits acl_lim = ACL_LIMITS_DEFAULT;
	struct auth_creds *c = calloc(1, sizeof(*c));

	if (c == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	atomic_init(&c->refs, 1);
	if ((strcmp(cfg->auth_backend, "file") == 0 &&
	     passwd_load(cfg->auth_password_file, &pw_lim, &c->pw, err, errlen) < 0) ||
	    (strcmp(cfg->auth_backend, "jwt") == 0 &&
	     jwt_keys_load(cfg->auth_jwt_key_file, &c->keys, err, errlen) < 0) ||
	    (cfg->auth_acl_file[0] != '\0' &&
	     acl_load(cfg->auth_acl_file, &acl_lim, &c->acl, err, errlen) < 0)) {
		auth_creds_unref(c);
		return -1;
	}
	*out = c;
	return 0;
}

int auth_files_check(const struct iotd_config *cfg, char *err, size_t errlen)
{
	struct auth_creds *c;

	if (!config_auth_role(cfg))
		return 0;
	if (auth_creds_load(cfg, &c, err, errlen) < 0)
		return -1;
	auth_creds_unref(c);
	return 0;
}

void auth_creds_unref(struct auth_creds *c)
{
	if (c == NULL || atomic_fetch_sub(&c->refs, 1) != 1)
		return;
	passwd_free(c->pw);
	jwt_keys_free(c->keys);
	acl_free(c->acl);
	free(c);
}

/* "3 users, ACL": what a load read, for the log. */
void auth_creds_describe(const struct auth_creds *c, char *buf, size_t len)
{
	int n = 0;

	buf[0] = '\0';
	if (c->pw != NULL)
		n = snprintf(buf, len, "%zu users", passwd_count(c->pw));
	else if (c->keys != NULL)
		n = snprintf(buf, len, "%zu keys", jwt_keys_count(c->keys));
	if (c->acl != NULL && n >= 0 && (size_t)n < len)
		snprintf(buf + n, len - (size_t)n, "%sACL", n > 0 ? ", " : "");
}

void auth_policy_from(const struct iotd_config *cfg, struct auth_policy *p)
{
	*p = (struct auth_policy){
		.backend = strcmp(cfg->auth_backend, "file") == 0 ? AUTH_FILE :
			   strcmp(cfg->auth_backend, "jwt") == 0 ? AUTH_JWT : AUTH_NONE,
		.allow_anonymous = cfg->auth_allow_anonymous,
		.use_identity_as_username = cfg->tls_use_identity_as_username,
		.leeway = (uint32_t)cfg->auth_jwt_leeway,
	};
	snprintf(p->user_claim, sizeof(p->user_claim), "%s", cfg->auth_jwt_username_claim);
	snprintf(p->read_claim, sizeof(p->read_claim), "%s", cfg->auth_jwt_read_claim);
	snprintf(p->write_claim, sizeof(p->write_claim), "%s", cfg->auth_jwt_write_claim);
}

/* ---- one decision ---- */

static void accept_as(struct auth_job *j, const char *user, size_t len)
{
	j->out_user = malloc(len + 1);
	if (j->out_user == NULL) {
		j->code = MQTT_CONNACK_UNAVAILABLE;
		j->why = "out of memory";
		return;
	}
	memcpy(j->out_user, user, len);
	j->out_user[len] = '\0';
	j->out_user_len = len;
	j->code = MQTT_CONNACK_ACCEPTED;
}

static void refuse(struct auth_job *j, uint8_t code, const char *why)
{
	j->code = code;
	j->why = why;
	j->bad_credentials = code == MQTT_CONNACK_BAD_AUTH;
}

/*
 * A view as a verdict's rules (acl_client_encode), malloc'd in *rules;
 * frees v. false when out of memory or when the view cannot be encoded.
 */
static bool rules_of_view(struct acl_client *v, uint8_t **rules, size_t *len)
{
	struct recw w;
	bool ok;

	if (v == NULL)
		return false;
	recw_init(&w);
	ok = acl_client_encode(v, &w) == 0 && !w.oom;
	acl_client_free(v);
	if (!ok) {
		recw_free(&w);
		return false;
	}
	*rules = w.buf;
	*len = w.len;
	return true;
}

bool auth_rules_from_acl(const struct acl *acl, uint64_t generation, bool patterns_sent,
			 const char *user, size_t ulen, const char *client_id, size_t clen,
			 uint8_t **rules, size_t *len)
{
	struct recw w;
	int rc;

	*rules = NULL;
	*len = 0;
	if (acl == NULL)
		return true;
	recw_init(&w);
	rc = acl_view_encode(acl, generation, ulen ? user : NULL, ulen, client_id, clen, &w);
	if (rc < 0 || w.oom || (rc == 1 && !patterns_sent)) {
		recw_free(&w);
		return false;
	}
	*rules = w.buf;
	*len = w.len;
	return true;
}

/* A token's lists, when it has either claim: they are its rules, whatever the ACL file says. */
static bool rules_of_token(struct auth_job *j, const struct jwt_claims *cl)
{
	if (!cl->has_read && !cl->has_write)
		return true;
	j->rules_from_token = true;
	return rules_of_view(acl_client_from_lists((const char *const *)cl->read, cl->nread,
						   (const char *const *)cl->write, cl->nwrite),
			     &j->rules, &j->rules_len);
}

static void decide_file(struct auth_job *j)
{
	switch (passwd_verify(j->creds->pw, j->user, j->user_len, j->password, j->password_len)) {
	case PASSWD_OK:
		j->good_credentials = true;
		accept_as(j, j->user, j->user_len);
		break;
	case PASSWD_BAD:
		refuse(j, MQTT_CONNACK_BAD_AUTH, "bad user name or password");
		break;
	case PASSWD_ERROR:
		refuse(j, MQTT_CONNACK_UNAVAILABLE, "cannot verify the password (out of memory)");
		break;
	}
}

/*
 * A SCRAM step (scram.h). The first: the user's verifier (or a stand-in
 * that fails as a wrong password would, for an unknown user or one whose
 * entry is another hash) and server-first; the exchange is the job's,
 * kept by auth.c once server-first is sent. The final: the proof checked
 * against the exchange auth.c gave the job.
 */
static void decide_scram(struct auth_job *j)
{
	struct scram_verifier v;
	char nonce[32];
	const char *why;

	if (j->policy.backend != AUTH_FILE) {
		refuse(j, MQTT_CONNACK_NOT_AUTHORIZED, "SCRAM-SHA-256 without a password file");
		return;
	}
	if (j->scram_step == IPC_AUTH_SCRAM_FIRST) {
		if ((j->ex = calloc(1, sizeof(*j->ex))) == NULL) {
			refuse(j, MQTT_CONNACK_UNAVAILABLE, "out of memory");
			return;
		}
		if ((why = scram_client_first(&j->ex->x, (const char *)j->data, j->data_len)) != NULL) {
			refuse(j, MQTT_CONNACK_NOT_AUTHORIZED, why);
			j->bad_credentials = true;   /* counts as a failure of its address */
			return;
		}
		j->user = j->ex->x.user;
		j->user_len = j->ex->x.user_len;
		(void)passwd_scram_verifier(j->creds->pw, j->user, j->user_len, &v);
		if (!scram_server_nonce(nonce) ||
		    (why = scram_server_first(&j->ex->x, nonce, strlen(nonce), &v)) != NULL) {
			refuse(j, MQTT_CONNACK_UNAVAILABLE, "cannot make server-first");
		} else {
			j->cont = true;
			j->code = MQTT_CONNACK_ACCEPTED;
			j->out_data = j->ex->x.server_first;
			j->out_data_len = j->ex->x.server_first_len;
		}
		explicit_bzero(&v, sizeof(v));
		return;
	}
	j->user = j->ex->x.user;
	j->user_len = j->ex->x.user_len;
	switch (scram_client_final(&j->ex->x, (const char *)j->data, j->data_len, j->server_final,
				   sizeof(j->server_final), &j->out_data_len, &why)) {
	case SCRAM_OK:
		j->good_credentials = true;
		j->out_data = j->server_final;
		accept_as(j, j->user, j->user_len);
		break;
	case SCRAM_BAD_PROOF:
		refuse(j, MQTT_CONNACK_BAD_AUTH, "bad user name or password");
		break;
	case SCRAM_MALFORMED:
		refuse(j, MQTT_CONNACK_NOT_AUTHORIZED, why);
		j->bad_credentials = true;
		break;
	}
}

/* The password is the token; the user name the client sent is not used. */
static void decide_jwt(struct auth_job *j)
{
	const struct auth_policy *p = &j->policy;
	struct jwt_options opt = JWT_OPTIONS_DEFAULT;
	struct jwt_claims cl;
	char err[96];
	enum jwt_result r;

	opt.now = (int64_t)time(NULL);
	opt.leeway = p->leeway;
	opt.user_claim = p->user_claim;
	opt.read_claim = p->read_claim[0] ? p->read_claim : NULL;
	opt.write_claim = p->write_claim[0] ? p->write_claim : NULL;
	r = jwt_verify(j->creds->keys, (const char *)j->password, j->password_len, &opt, &cl,
		       err, sizeof(err));
	if (r == JWT_ERROR) {
		refuse(j, MQTT_CONNACK_UNAVAILABLE, "cannot verify the token (out of memory)");
		return;
	}
	if (r != JWT_OK) {
		snprintf(j->why_buf, sizeof(j->why_buf), "bad token: %s", err);
		refuse(j, MQTT_CONNACK_BAD_AUTH, j->why_buf);
		return;
	}
	j->good_credentials = true;
	if (!rules_of_token(j, &cl))
		refuse(j, MQTT_CONNACK_UNAVAILABLE, "out of memory");
	else
		accept_as(j, cl.user, strlen(cl.user));
	jwt_claims_free(&cl);
}

void auth_decide(struct auth_job *j)
{
	const struct auth_policy *p = &j->policy;

	if (j->scram_step) {
		decide_scram(j);
		return;
	}
	/*
	 * A client certificate's identity as the user name, without a
	 * password, as Mosquitto's use_identity_as_username: the worker's
	 * word (docs/arch.md, "Authentication"), taken only when configured.
	 */
	if (j->user_from_cert) {
		if (p->use_identity_as_username)
			accept_as(j, j->user, j->user_len);
		else
			refuse(j, MQTT_CONNACK_NOT_AUTHORIZED, "a certificate's identity, and "
			       "tls.use_identity_as_username is false");
		return;
	}
	/* No backend (an ACL file alone): the user name is taken as given, from loopback only. */
	if (p->backend == AUTH_NONE) {
		if (!p->allow_anonymous && !addr_remote_is_loopback(j->remote))
			refuse(j, MQTT_CONNACK_NOT_AUTHORIZED, "not a loopback client, and "
			       "auth.allow_anonymous is false");
		else
			accept_as(j, j->user, j->user_len);
		return;
	}
	if (!j->has_user) {
		if (p->allow_anonymous)
			accept_as(j, "", 0);
		else
			refuse(j, MQTT_CONNACK_NOT_AUTHORIZED, "no user name, and "
			       "auth.allow_anonymous is false");
		return;
	}
	if (!j->has_password) {
		refuse(j, MQTT_CONNACK_BAD_AUTH, "no password");
		return;
	}
	if (p->backend == AUTH_FILE)
		decide_file(j);
	else
		decide_jwt(j);
}
